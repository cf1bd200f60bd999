"""The leaderboard's rows as data: each row's ``fusion_bench`` method arguments, the pools, the
settings (full and quick), which rows run on text pools and which need CUDA. Read by
leaderboard.py, ablation.py and the tests (never a script imported by another)."""

from __future__ import annotations

from pathlib import Path

from _common import quote

# mini-benchmark defaults: FW keeps 10 iterations and 100 samples per task; FW-soft uses 30 inner
# steps instead of 100 (the inner loss flattens by then, and each step is a pass over all samples)
# ent_inner: the entropy inner steps of fw_soft_paper (the authors' 500 take 190 s per iteration
# on mini_TA8 on 2 shared cores; see benchmarks/ablation.py)
# fw_iters / soft_iters / fw_inner: FW-hard's and FW-soft's iterations and FW-soft's inner steps
# (FULL: their defaults)
FULL = dict(ada_steps=200, surgery_steps=200, fw_iters=10, soft_iters=5, fw_inner=30, ent_inner=100, n_per_task=100)
QUICK = dict(ada_steps=20, surgery_steps=20, fw_iters=3, soft_iters=2, fw_inner=20, ent_inner=10, n_per_task=32)
# the text benchmark: each FW-soft inner step is a forward and backward pass of MiniLM over every
# sample (100 x 4 texts), about 8 s on one core, so 10 inner steps instead of 30 (AdaMerging and
# Surgery are CLIP-only: their steps are unused)
TEXT_FULL = dict(FULL, fw_inner=10)


def _mini_pools() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """``--pool`` name -> (model pool, task pool, evaluated tasks)."""
    from fusion_bench_fw.offline.minibench import ALL_TASKS, TALL14, TARGETS, TASKS

    return {
        "mini_TA8": ("mini_TA8", "mini_TA8", TASKS),
        "mini_TALL14": ("mini_TALL14", "mini_TALL14", TALL14),
        "mini_TALL20": ("mini_TALL20", "mini_TALL20", ALL_TASKS),
        # the 4 targets plus 16 irrelevant models (the scaling experiments' largest pool)
        "mini_TA20": ("mini_TA20", "mini_TA20", TARGETS),
        # the authors' ViT protocol: 20 real tasks' models, 4 of them the targets
        "mini_TALL20_TA4": ("mini_TALL20", "mini_TA4", TARGETS),
    }


MINI_POOLS = _mini_pools()


def _text_pools() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    from fusion_bench_fw.offline.textbench import TARGETS

    return {"text_TA4": ("text_TA4", "text_TA4", TARGETS)}


TEXT_POOLS = _text_pools()

# how the plots draw a method: (label, colour, marker)
STYLE = {
    "task_arithmetic": ("Task Arithmetic", "tab:orange", "s"),
    "fw_hard": ("FW-hard", "tab:green", "^"),
    "fw_soft": ("FW-soft", "tab:blue", "o"),
    "fw_hard_guard": ("FW-hard + guard", "tab:olive", "v"),
    "fw_soft_guard": ("FW-soft + guard", "tab:cyan", "P"),
    "fw_hard_screen": ("FW-hard + screen", "tab:brown", "<"),
    "fw_soft_screen": ("FW-soft + screen", "tab:pink", ">"),
    "fw_soft_from_tsv_m": ("FW-soft from TSV-M", "tab:olive", "*"),
    "fw_soft_from_tsv_m_screen": ("FW-soft from TSV-M + screen", "black", "*"),
    "simple_average": ("Simple average", "tab:gray", "x"),
    "ties_merging": ("TIES", "tab:red", "d"),
    "tsv_m": ("TSV-M", "tab:purple", "*"),
}

# rows that fail inside FusionBench 0.2.33 itself on this stack; they keep their row and the reason
UPSTREAM_FAILURES = {
    "regmean_plusplus": "IndexError in RegMeanAlgorithmForCLIPPlusPlus.layer_batches_forward "
    "(a CLIP encoder layer called with 2-D hidden states; transformers 5.5)",
}

ALL_METHODS = (
    "pretrained",
    "individual",
    "simple_average",
    "task_arithmetic",
    "ties_merging",
    "tsv_m",
    "iso_c",
    "iso_cts",
    "wudi",
    "regmean",
    "regmean_plusplus",
    "adamerging_task_wise",
    "adamerging_layer_wise",
    "surgery",
    "fusionbench_fw_soft",
    "fusionbench_fw_hard",
    "fw_hard",
    "fw_soft",
    "fw_hard_from_tsv_m",
    "fw_soft_from_tsv_m",
    "fw_hard_guard",
    "fw_soft_guard",
    "fw_hard_screen",
    "fw_soft_screen",
    "fw_soft_from_tsv_m_screen",
    "fw_hard_paper",
    "fw_soft_paper",
)


# the rows that run on a text pool (backbones handed out, each task's own head): FusionBench's CLIP-only
# methods (AdaMerging, Surgery, RegMean++) and its in-tree FW (CLIP and CUDA) are left out; RegMean runs
# as FusionBench's GPT-2 RegMean on the backbone's linear layers (regmean_text), and WUDI without the word
# embeddings (wudi_text)
# (fw_hard_paper starts from AdaMerging's weights, fw_soft_paper's entropy search uses the CLIP loaders)
CLIP_ONLY = {
    "regmean_plusplus",
    "adamerging_task_wise",
    "adamerging_layer_wise",
    "surgery",
    "fw_hard_paper",
    "fw_soft_paper",
}
TEXT_ROWS = {"regmean": "regmean_text", "wudi": "wudi_text"}
TEXT_METHODS = tuple(
    TEXT_ROWS.get(m, m) for m in ALL_METHODS if m not in CLIP_ONLY and not m.startswith("fusionbench_fw")
)


def method_args(name: str, s: dict, run_dir: Path, device_args: list[str]) -> list[str]:
    ada_common = [
        f"method.max_steps={s['ada_steps']}",
        "method.num_workers=0",
        "method.batch_size=16",
        # absolute: the CLI runs with the run folder as its working directory
        f"method.cache_dir={quote(Path(run_dir).resolve())}",
        "method.save_merging_weights=merging_weights.pt",
    ]
    samples = [f"method.n_per_task={s['n_per_task']}", "method.progress=false"]
    targets = f"[{','.join(s['fw_targets'])}]" if s.get("fw_targets") else "null"
    # a pool whose evaluated tasks are a subset of its models' tasks names them; the presets always set theirs
    fw_common = [*samples, f"method.targets={targets}"] if s.get("fw_targets") else samples
    paper_common = [f"method.targets={targets}", *samples]
    return {
        "pretrained": ["method=dummy"],
        "simple_average": ["method=simple_average"],
        "task_arithmetic": ["method=task_arithmetic", "method.scaling_factor=0.3"],
        "ties_merging": ["method=ties_merging", "method.scaling_factor=0.3", "method.threshold=20"],
        # FusionBench 0.2.33's current strongest data-free and data-light baselines, at their defaults
        "tsv_m": ["method=task_singular_vector/TaskSingularVectorMerging"],
        "iso_c": ["method=isotropic_merging/iso_c"],
        "iso_cts": ["method=isotropic_merging/iso_cts"],
        "wudi": ["method=wudi/wudi"],
        # WUDI optimises every 2-D tensor through a (models x rows x rows) product: for a word-embedding matrix
        # that is 4 x 30522^2 floats (15 GB; the text row was killed for memory), and the embeddings are frozen
        # while fine-tuning, so their task vectors are 0 and WUDI's division by ||tau||^2 gives NaN. Left out,
        # they are averaged (FusionBench's own exclude_keys); every other matrix gets WUDI's optimisation.
        "wudi_text": ["method=wudi/wudi", "method.exclude_keys=[embeddings.word_embeddings.weight]"],
        "regmean": ["method=regmean/clip_regmean", "method.dataloader_kwargs.num_workers=0"],
        # FusionBench 0.2.33's class cannot be constructed (see fusion_bench_fw.fusionbench.upstream_fixes);
        # once constructed, its layer-by-layer forward still fails under transformers 5.5 (UPSTREAM_FAILURES)
        "regmean_text": [
            "method=regmean/gpt2_regmean",
            "method._target_=fusion_bench_fw.fusionbench.upstream_fixes.RegMeanForSequenceClassification",
            "method.weight_transpose=true",
        ],
        "regmean_plusplus": [
            "method=regmean_plusplus/clip_regmean_plusplus",
            "method._target_=fusion_bench_fw.fusionbench.upstream_fixes.RegMeanPlusPlusForCLIP",
            "method.dataloader_kwargs.num_workers=0",
        ],
        "adamerging_task_wise": ["method=adamerging/clip", "method.name=clip_task_wise_adamerging", *ada_common],
        "adamerging_layer_wise": ["method=adamerging/clip", "method.name=clip_layer_wise_adamerging", *ada_common],
        "surgery": [
            "method=surgery/adamerging_surgery",
            *ada_common,
            f"method.surgery_steps={s['surgery_steps']}",
            f"method.eval_iterations={max(1, s['surgery_steps'] // 2)}",
        ],
        # FusionBench's in-tree FW (hard-codes .cuda()); init_weight=base as its yaml default crashes
        "fusionbench_fw_soft": [
            "method=fw_merging/fw_soft",
            "method.init_weight=base",
            f"method.max_iters={s['fw_iters']}",
            f"method.ada_iters={s['fw_inner']}",
            f"method.dataset_size={s['n_per_task']}",
        ],
        "fusionbench_fw_hard": [
            "method=fw_merging/fw_hard",
            "method.init_weight=base",
            f"method.max_iters={s['fw_iters']}",
            f"method.dataset_size={s['n_per_task']}",
        ],
        "fw_hard": ["method=fw_hard", *fw_common, f"method.max_iters={s['fw_iters']}"],
        # the authors' protocol (their iteration counts); FW-hard starts from the AdaMerging row's weights
        "fw_hard_paper": ["method=fw_hard_paper", f"method.init_path={quote(ada_weights(run_dir))}", *paper_common],
        "fw_soft_paper": ["method=fw_soft_paper", f"method.inner_steps={s['ent_inner']}", *paper_common],
        "fw_soft": [
            "method=fw_soft",
            *fw_common,
            f"method.max_iters={s['soft_iters']}",
            f"method.inner_steps={s['fw_inner']}",
        ],
        # FW refining the strongest data-free merge (issue 22): FusionBench's TSV-M runs inside the FW
        # run on the same pool and its merge is the start (TSV-M's own options: method.init_options)
        "fw_hard_from_tsv_m": ["method=fw_hard", "method.init=tsv_m", *fw_common, f"method.max_iters={s['fw_iters']}"],
        "fw_soft_from_tsv_m": [
            "method=fw_soft",
            "method.init=tsv_m",
            *fw_common,
            f"method.max_iters={s['soft_iters']}",
            f"method.inner_steps={s['fw_inner']}",
        ],
        # the hold-out guard (issue 22): the start and every step checked on 50 more labelled samples per task
        "fw_hard_guard": ["method=fw_hard", "method.guard=true", *fw_common, f"method.max_iters={s['fw_iters']}"],
        "fw_soft_guard": [
            "method=fw_soft",
            "method.guard=true",
            *fw_common,
            f"method.max_iters={s['soft_iters']}",
            f"method.inner_steps={s['fw_inner']}",
        ],
        # the screen (issue 22): models that lower no target's held-out loss leave the run before the start
        "fw_hard_screen": ["method=fw_hard", "method.screen=true", *fw_common, f"method.max_iters={s['fw_iters']}"],
        "fw_soft_screen": [
            "method=fw_soft",
            "method.screen=true",
            *fw_common,
            f"method.max_iters={s['soft_iters']}",
            f"method.inner_steps={s['fw_inner']}",
        ],
        "fw_soft_from_tsv_m_screen": [
            "method=fw_soft",
            "method.init=tsv_m",
            "method.screen=true",
            *fw_common,
            f"method.max_iters={s['soft_iters']}",
            f"method.inner_steps={s['fw_inner']}",
        ],
    }[name] + device_args


def ada_weights(run_dir: Path) -> Path:
    """Where the adamerging_layer_wise row of the same leaderboard saves its merging weights."""
    return (Path(run_dir).parent / "adamerging_layer_wise" / "log" / "merging_weights.pt").resolve()


# rows that cannot run without CUDA (FusionBench's in-tree FW hard-codes .cuda()): on a machine
# without it they are listed as such without a run (about 20 s each of CLI start-up and failure)
NEEDS_CUDA = ("fusionbench_fw_soft", "fusionbench_fw_hard")


def cuda_available(device_args) -> bool:
    """Whether the runs would get a CUDA device (``fabric.accelerator=cpu`` in the args: no)."""
    import torch

    return torch.cuda.is_available() and "fabric.accelerator=cpu" not in (device_args or [])
