"""The real ``fusion_bench`` CLI, killed with SIGKILL in the middle of a run and restarted with
``method.resume=true``, ends with the same merged model as an uninterrupted run; no run changes
a byte of the pool; a failed run leaves no merged model behind."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import torch

from fusion_bench_fw.offline.cli import CLIRun, cli_args, cli_env, fusion_bench_executable, run_fusion_bench

MAX_ITERS = 4
# FW-soft: each iteration costs inner_steps gradient evaluations (about a second here), so the
# kill, sent as soon as the checkpoint shows a finished iteration, lands inside a later one.
ARGS = [
    "method=fw_soft",
    "modelpool=fw_tiny_clip",
    "taskpool=dummy",
    "method.granularity=task",
    "method.inner_steps=30",
    f"method.max_iters={MAX_ITERS}",
    "method.n_per_task=32",
    "method.batch_size=32",
    "method.progress=false",
    "method.seed=3",
]


def _env(tiny_clip_root, out: Path) -> dict:
    from fusion_bench_fw.offline.tiny_clip import ENV_VAR

    return cli_env(out, env={ENV_VAR: str(tiny_clip_root)})


def _args(out: Path, *extra: str) -> list:
    return [*ARGS, f"merged_model_save_path={out / 'merged'}", *extra]


def _run(tiny_clip_root, out: Path, *extra: str) -> CLIRun:
    from fusion_bench_fw.offline.tiny_clip import ENV_VAR

    return run_fusion_bench(_args(out, *extra), out, env={ENV_VAR: str(tiny_clip_root)})


def _iterations_done(checkpoint: Path) -> int:
    """Iterations recorded in the (atomically replaced) checkpoint; 0 while there is none."""
    try:
        return len(_saved_iterations(checkpoint)) if checkpoint.exists() else 0
    except FileNotFoundError:  # replaced between exists() and open()
        return 0


def _saved_iterations(checkpoint: Path) -> list:
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt", device="cpu") as f:
        return json.loads(f.metadata()["history"])["iterations"]


def _merged(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "merged" / "model.safetensors"))


def _hashes(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_merge(tiny_clip_root, tmp_path):
    pool_before = _hashes(tiny_clip_root)
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir()
    killed.mkdir()
    t0 = time.perf_counter()
    _run(tiny_clip_root, full).check()
    t_full = time.perf_counter() - t0

    # the same run, SIGKILLed once its checkpoint holds a finished iteration
    checkpoint = killed / "log" / "fw_checkpoint.safetensors"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [fusion_bench_executable(), *cli_args(_args(killed), killed)],
        cwd=killed,
        env=_env(tiny_clip_root, killed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while _iterations_done(checkpoint) < 1:
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.perf_counter() - t0 < 300, "no checkpoint after 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    t_killed = time.perf_counter() - t0
    assert proc.returncode == -signal.SIGKILL
    done = _iterations_done(checkpoint)
    assert 1 <= done < MAX_ITERS, done  # really interrupted, and the state file is whole
    assert not (killed / "merged").exists()  # a killed run leaves no merged model
    saved = _saved_iterations(checkpoint)

    # restart with the same log dir and resume=true
    t0 = time.perf_counter()
    _run(tiny_clip_root, killed, "method.resume=true").check()
    t_resumed = time.perf_counter() - t0
    # it continued from the checkpoint: the first iterations, timings included, are the killed run's
    assert json.loads((killed / "log" / "fw_history.json").read_text())["iterations"][:done] == saved

    a, b = _merged(full), _merged(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history_full = json.loads((full / "log" / "fw_history.json").read_text())
    history_resumed = json.loads((killed / "log" / "fw_history.json").read_text())
    assert history_resumed["seed"] == history_full["seed"] == 3
    assert len(history_resumed["iterations"]) == MAX_ITERS
    assert [r["selected"] for r in history_resumed["iterations"]] == [r["selected"] for r in history_full["iterations"]]
    assert history_resumed["coefficients"] == history_full["coefficients"]

    # no run touched the pool's checkpoints or data; no temporary file was left next to outputs
    assert _hashes(tiny_clip_root) == pool_before
    leftovers = [p for p in tmp_path.rglob(".tmp-*")] + [p for p in tmp_path.rglob(".old-*")]
    assert leftovers == []
    print(
        f"\nkill-and-resume timing: uninterrupted {t_full:.1f} s, killed after {t_killed:.1f} s "
        f"({done}/{MAX_ITERS} iterations saved), resumed {t_resumed:.1f} s"
    )


def test_failed_run_reports_the_bad_model_and_leaves_no_merged_model(tiny_clip_root, tmp_path):
    broken = tmp_path / "tiny_stripes"
    import shutil

    shutil.copytree(tiny_clip_root / "models" / "tiny_stripes", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    run = _run(tiny_clip_root, tmp_path, f"modelpool.models.tiny_stripes={broken}")
    output = " ".join(run.output.replace("│", " ").split())  # rich wraps long lines
    assert run.returncode != 0
    assert "checkpoint 'tiny_stripes': cannot read safetensors file" in output
    assert "truncated or corrupt: re-download or re-save it" in output
    assert not (tmp_path / "merged").exists()
    assert not (tmp_path / "log" / "fw_checkpoint.safetensors").exists()  # it failed before any iteration
