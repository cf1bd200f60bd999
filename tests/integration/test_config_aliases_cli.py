"""The real ``fusion_bench`` CLI resolves a clip-vit alias offline, without downloading anything
(the aliases themselves are compared with FusionBench's configs in tests/unit/test_config_aliases.py)."""

from __future__ import annotations

import yaml


def test_cli_resolves_b32_ta20_without_downloading(run_fusion_bench, tmp_path):
    run = run_fusion_bench(
        ["--cfg", "job", "method=task_arithmetic", "modelpool=clip-vit-b32_TA20", "taskpool=clip-vit-b32_TA20"],
        cwd=tmp_path,
        tiny=False,
    ).check()
    cfg = yaml.safe_load(run.stdout)
    models = cfg["modelpool"]["models"]
    assert models.pop("_pretrained_") == "openai/clip-vit-base-patch32"
    tasks = list(cfg["taskpool"]["test_datasets"])
    assert len(tasks) == 20 and tasks[:3] == ["sun397", "stanford-cars", "resisc45"] and tasks[-1] == "rendered-sst2"
    assert models == {t: f"tanganke/clip-vit-base-patch32_{t}" for t in tasks}
    assert cfg["taskpool"]["base_model"] == "openai/clip-vit-base-patch32"
    assert cfg["method"]["_target_"] == "fusion_bench.method.TaskArithmeticAlgorithm"


def test_cli_resolves_the_roberta_glue_alias_without_downloading(run_fusion_bench, tmp_path):
    run = run_fusion_bench(
        ["--cfg", "job", "method=fw_hard", "modelpool=roberta-base_glue_fw", "taskpool=roberta-base_glue_fw"],
        cwd=tmp_path,
        tiny=False,
    ).check()
    cfg = yaml.safe_load(run.stdout)
    assert cfg["modelpool"]["_target_"] == "fusion_bench_fw.SequenceClassificationBackbonePool"
    assert len(cfg["modelpool"]["models"]) == 9 and list(cfg["modelpool"]["train_datasets"]) == [
        "glue-qqp",
        "glue-mnli",
        "glue-qnli",
        "glue-rte",
    ]
    assert cfg["method"]["_target_"] == "fusion_bench_fw.FWHard"
