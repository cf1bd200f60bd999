"""The mission's own command, offline with an empty hub cache, ends with an error that blames the
unreachable hub and gives its fixes, not a "corrupt file" (the three causes in process:
tests/unit/test_load_errors.py)."""

from __future__ import annotations


def test_offline_ta20_run_names_the_hub_not_a_corrupt_file(run_fusion_bench, tmp_path):
    run = run_fusion_bench(
        ["method=fw_soft", "modelpool=clip-vit-b32_TA20", "taskpool=clip-vit-b32_TA20"],
        env={"HF_HOME": str(tmp_path / "empty_hf_home"), "HF_HUB_CACHE": None},  # OFFLINE_ENV: HF_HUB_OFFLINE=1
        tiny=False,
    )
    output = " ".join(run.output.replace("│", " ").split())  # rich wraps long lines
    assert run.returncode != 0
    assert "checkpoint '_pretrained_': cannot load it" in output
    assert "'openai/clip-vit-base-patch32' is not a local path, so it is read as a hub id" in output
    assert "HF_HUB_OFFLINE is set but the hub cache" in output and "HF_ENDPOINT" in output
    assert "corrupt" not in output
