"""The authors' protocol (issue: FW-hard's step, FW-soft's inner problem, the paper presets),
each claim checked against an independent computation on the tiny CLIP pool."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from composed import method_config, run_method
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")

TASKS = ["tiny_colors", "tiny_stripes", "tiny_quadrants", "tiny_sizes"]
FAST = ["method.n_per_task=16", "method.batch_size=16", "method.progress=false", "method.targets=null"]


def weights(root, name) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in load_file(str(root / "models" / name / "model.safetensors")).items()}


def task_arithmetic(root, scaling: float) -> dict[str, torch.Tensor]:
    """pretrained + scaling * sum_i (m_i - pretrained), in float64, straight from the files."""
    pre = weights(root, "_pretrained_")
    models = [weights(root, t) for t in TASKS]
    return {k: pre[k] + scaling * sum(m[k] - pre[k] for m in models) for k in models[0]}


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_fw_soft_paper_first_iterate_is_task_arithmetic(tiny_env, tmp_path):
    """k = N (one per target), no inner step, the authors' init 0.3, unconstrained: TA(0.3)."""
    merged, history, _ = run_method(
        ["method=fw_soft_paper", "method.max_iters=1", "method.inner_steps=0", *FAST], tmp_path
    )
    assert history["config"]["k_effective"] == len(TASKS)
    expected = task_arithmetic(tiny_env, 0.3)
    for key, value in expected.items():
        torch.testing.assert_close(merged[key].double(), value, atol=1e-6, rtol=1e-6)


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_fw_hard_paper_step_keeps_the_start(tiny_env, tmp_path):
    """With gamma_t = 0.3 * 0.01 * 2/(t+2) the start keeps prod(1 - gamma_s) of the weight (more
    where the LMO picked the start itself), read from the history's coefficients, which
    reproduce the merged tensors."""
    start_file = tmp_path / "start.safetensors"
    save_file({k: v.float() for k, v in task_arithmetic(tiny_env, 0.3).items()}, str(start_file))
    merged, history, _ = run_method(
        ["method=fw_hard_paper", "method.init=file", f"method.init_path={start_file}", "method.max_iters=3", *FAST],
        tmp_path,
    )
    gammas = [it["step_size"] for it in history["iterations"]]
    assert gammas == pytest.approx([0.003 * 2 / (t + 2) for t in range(3)])
    keep = 1.0
    for g in gammas:
        keep *= 1 - g
    alpha = torch.tensor(history["coefficients"], dtype=torch.float64)
    basis, vertices = history["basis"], history["vertices"]
    start_row = alpha[basis.index("__init_path__")]
    assert bool((start_row >= keep - 1e-12).all())
    start_vertex = vertices.index("__init__")  # the start, as the LMO sees it
    never = [
        p for p in range(alpha.shape[1]) if all(it["chosen"][0][p] != start_vertex for it in history["iterations"])
    ]
    assert never, "the LMO picked the start for every tensor: the exact case is not exercised"
    torch.testing.assert_close(start_row[never], torch.full((len(never),), keep, dtype=torch.float64))
    files = {"__init_path__": load_file(str(start_file))}
    files.update({n: load_file(str(tiny_env / "models" / n / "model.safetensors")) for n in basis if n in TASKS})
    files["_pretrained_"] = load_file(str(tiny_env / "models" / "_pretrained_" / "model.safetensors"))
    assert set(history["keys"]) <= set(files["__init_path__"])
    for p, key in enumerate(history["keys"]):
        rebuilt = sum(alpha[i, p] * files[name][key].double() for i, name in enumerate(basis))
        torch.testing.assert_close(merged[key].double(), rebuilt, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_textbook_step_leaves_the_start_at_once(tiny_env, tmp_path):
    """The same run with the textbook step (gamma_0 = 1): after one iteration each tensor is exactly
    the vertex the LMO chose for it, read from the model files, and the start keeps no weight
    where the LMO did not pick it."""
    start_file = tmp_path / "start.safetensors"
    save_file({k: v.float() for k, v in task_arithmetic(tiny_env, 0.3).items()}, str(start_file))
    merged, history, _ = run_method(
        [
            "method=fw_hard_paper",
            "method.init=file",
            f"method.init_path={start_file}",
            "method.max_iters=1",
            "method.step_scale=1.0",
            *FAST,
        ],
        tmp_path,
    )
    assert history["iterations"][0]["step_size"] == 1.0
    chosen, vertices = history["iterations"][0]["chosen"][0], history["vertices"]
    files = {"__init__": load_file(str(start_file))}
    files.update({n: load_file(str(tiny_env / "models" / n / "model.safetensors")) for n in vertices if n in TASKS})
    assert {vertices[c] for c in chosen} - {"__init__"}, "the LMO kept the start everywhere: nothing to check"
    alpha = torch.tensor(history["coefficients"], dtype=torch.float64)
    start_row = alpha[history["basis"].index("__init_path__")]
    for p, key in enumerate(history["keys"]):
        picked = vertices[chosen[p]]
        torch.testing.assert_close(merged[key].float(), files[picked][key].float(), atol=1e-6, rtol=1e-6)
        if picked != "__init__":
            assert start_row[p] == 0.0, key


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_merging_weights_start_is_fusionbench_layer_wise_merge(tiny_env, tmp_path):
    """init=merging_weights gives the start FusionBench's LayerWiseMergedModel builds from the same weights."""
    from fusion_bench.models.wrappers.layer_wise_fusion import LayerWiseMergedModel
    from fusion_bench.utils import instantiate

    from fusion_bench_fw.core.solver import materialise
    from fusion_bench_fw.core.stores import InMemoryVertexStore
    from fusion_bench_fw.fusionbench.start import merging_weights_start

    pool = instantiate(method_config([]).modelpool)
    pretrained = pool.load_model("_pretrained_")
    keys = [n for n, p in pretrained.named_parameters()]
    w = torch.rand(len(pool.model_names), len(keys), generator=torch.Generator().manual_seed(0)) * 0.6 - 0.1
    torch.save(w, tmp_path / "merging_weights.pt")
    reference = LayerWiseMergedModel(
        layer_wise_weight=w.clone(),
        pretrained_model=pool.load_model("_pretrained_"),
        finetuned_models=[pool.load_model(n) for n in pool.model_names],
        clamp_weights=False,
        tie_weights=True,
        strict=False,
    ).merge_and_unload()
    start = merging_weights_start(str(tmp_path / "merging_weights.pt"), pool.model_names, keys)
    names = ["_pretrained_", *pool.model_names]
    state = {n: {k: v.detach().float() for k, v in pool.load_model(n).state_dict().items() if k in keys} for n in names}
    alpha = torch.tensor([start[n] for n in names], dtype=torch.float64)
    ours = materialise(InMemoryVertexStore(state, keys), alpha, keys, "cpu", torch.float32)
    ref = reference.state_dict()
    for key in keys:
        torch.testing.assert_close(ours[key], ref[key].float(), atol=1e-5, rtol=1e-5)


def test_merging_weights_of_another_pool_are_refused(tiny_env, tmp_path):
    from fusion_bench_fw.fusionbench.start import merging_weights_start

    torch.save(torch.zeros(3, 7), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"expected \(4, 5\).*same pool"):
        merging_weights_start(str(tmp_path / "w.pt"), TASKS, ["a", "b", "c", "d", "e"])


@pytest.mark.slow  # a whole merge on the tiny CLIP pool (seconds): full suite only
def test_entropy_inner_objective_is_fusionbench_adamerging_entropy(tiny_env, tmp_path):
    """On the same batches and the same merge, TestEntropyObjective's loss equals FusionBench's
    CLIP AdaMerging: LayerWiseMergedModel + its compute_logits + entropy_loss, summed over tasks."""
    import lightning as L
    from fusion_bench.method.adamerging.clip_layer_wise_adamerging import CLIPLayerWiseAdaMergingAlgorithm
    from fusion_bench.method.adamerging.entropy_loss import entropy_loss
    from fusion_bench.models.wrappers.layer_wise_fusion import LayerWiseMergedModel
    from fusion_bench.utils import instantiate

    from fusion_bench_fw.core.distributed import SINGLE_PROCESS
    from fusion_bench_fw.fusionbench.objectives.clip import TestEntropyObjective, ZeroShotHeads

    fabric = L.Fabric(accelerator="cpu", devices=1)
    pool = instantiate(method_config([]).modelpool)
    template = pool.load_model("_pretrained_")
    objective = TestEntropyObjective(template, ZeroShotHeads(pool, fabric), TASKS, 8, SINGLE_PROCESS)
    batches = {t: next(objective.loaders[t]) for t in TASKS}
    objective.loaders = {t: iter([batches[t], batches[t]]) for t in TASKS}
    params = {k: v.float() for k, v in task_arithmetic(tiny_env, 0.3).items()}
    ours = objective.loss(params)
    ours_with_grad = objective.loss_and_grad(params).loss

    algorithm = CLIPLayerWiseAdaMergingAlgorithm(
        OmegaConf.create({"batch_size": 8, "num_workers": 0, "weights": None, "init_values": 0.3})
    )
    algorithm.modelpool = pool
    algorithm._fabric_instance = fabric
    algorithm.zeroshot_weights = {}
    algorithm.on_test_time_adaptation_start()
    n = len(pool.model_names)
    merged = LayerWiseMergedModel(
        layer_wise_weight=torch.full((n, len(list(template.parameters()))), 0.3),
        pretrained_model=pool.load_model("_pretrained_"),
        finetuned_models=[pool.load_model(t) for t in pool.model_names],
        clamp_weights=False,
        tie_weights=True,
        strict=False,
    )
    with torch.no_grad():
        reference = sum(float(entropy_loss(algorithm.compute_logits(merged, batches[t][0], t))) for t in TASKS)
    assert ours == pytest.approx(reference, rel=1e-5)
    assert ours_with_grad == pytest.approx(reference, rel=1e-5)


AUTHORS_COMMANDS = Path(__file__).resolve().parents[1] / "data" / "authors_commands.yaml"


def _code_constant(module: str, pattern: str) -> str:
    """A literal of FusionBench's installed FW-Merging code (the authors' code as FusionBench ships
    it), found by ``pattern``'s one group: the values their yaml does not expose."""
    import importlib

    source = Path(importlib.import_module(f"fusion_bench.method.fw_merging.{module}").__file__).read_text()
    found = re.findall(pattern, source)
    assert len(found) == 1, f"{pattern!r} in fw_merging/{module}.py: {found} (FusionBench's code changed?)"
    return found[0]


def authors_protocol(preset: str) -> dict:
    """The options of ``preset`` derived from the authors' published command composed with
    FusionBench's own in-tree ``fw_merging`` config and code, translated to this plugin's names."""
    from composed import compose

    command = yaml.safe_load(AUTHORS_COMMANDS.read_text())[preset]
    fb = OmegaConf.to_container(
        compose("modelpool=clip-vit-b32_TA20", f"method={command['fusionbench_method']}", *command["overrides"]).method,
        resolve=True,
    )
    common = dict(
        targets=fb["tasks"], n_per_task=fb["dataset_size"], max_iters=fb["max_iters"], granularity=fb["granularity"]
    )
    if fb["_target_"].endswith("FrankWolfeSoftAlgorithm"):
        assert fb["merge_fn"] == "adamerging"  # the inner problem is layer-wise AdaMerging
        assert fb["init_weight"] in ("base", "", None)  # the merge starts at the pretrained model
        return dict(
            common,
            _target_="fusion_bench_fw.FWSoft",
            init="pretrained",
            coef_granularity="layer",
            inner_steps=fb["ada_iters"],
            inner_init_later=fb["ada_coeff"],
            inner_loss={"entropy_loss": "entropy_test", "cross_entropy": "ce_train"}[fb["ada_loss"]],
            inner_lr=float(
                _code_constant("fw_soft", r"torch\.optim\.Adam\(\[module\.merge_weight\], lr=([0-9.e-]+)\)")
            ),
            inner_init=float(_code_constant("fw_soft", r"init_values=self\.ada_coeff if step_idx > 0 else ([0-9.]+)")),
            inner_batch_size=int(
                _code_constant("fw_soft", r"get_shuffled_test_loader_iter\(\s*task, batch_size=(\d+)\)")
            ),
        )
    # FW-hard: gamma_t = 2/(t+2) * step_size, applied as a Task Arithmetic step scaled by scaling_factor
    _code_constant("fw_hard", r"step = 2 / \(step_idx \+ 2\) \* (self\.step_size)")
    _code_constant("fw_hard", r"scaling_factor=step \* (self\.scaling_factor)")
    _code_constant("fw_hard", r'finetuned_models\[("initial")\] = initial_model')  # the start is a vertex
    assert fb["init_weight"].endswith(".pt")  # a merging-weights file (AdaMerging's)
    return dict(
        common,
        _target_="fusion_bench_fw.FWHard",
        merge_fn=fb["merge_fn"],
        init="merging_weights",
        include_init_vertex=True,
        step_rule="fw_default",
        step_scale=fb["step_size"] * fb["scaling_factor"],
    )


@pytest.mark.parametrize("preset", ["fw_soft_paper", "fw_hard_paper"])
def test_paper_presets_match_the_authors_published_commands(preset):
    """Each ``*_paper`` preset, as the CLI resolves it, against the authors' command composed with
    FusionBench's in-tree FW-Merging config and code (data the yaml under test did not produce)."""
    ours = OmegaConf.to_container(method_config([f"method={preset}"]).method, resolve=False)
    expected = authors_protocol(preset)
    wrong = {k: (ours.get(k), v) for k, v in expected.items() if ours.get(k) != pytest.approx(v) and ours.get(k) != v}
    assert not wrong, f"{preset}: option: (ours, authors') {wrong}"


def test_the_4_target_taskpool_alias():
    from composed import compose

    cfg = compose("modelpool=clip-vit-b32_TA20", "taskpool=clip-vit-b32_TA4")
    assert list(cfg.taskpool.test_datasets) == ["sun397", "stanford-cars", "gtsrb", "dtd"]
    assert cfg.taskpool.test_datasets.sun397.path == "tanganke/sun397"
    assert set(cfg.taskpool.test_datasets) <= set(cfg.modelpool.models)
