"""Write-then-rename outputs, and the clean-up of what a killed writer leaves behind."""

from __future__ import annotations

import os

import pytest

from fusion_bench_fw.core.atomic import atomic_path, remove_stale_temporaries


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(str(target)) as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".tmp-abc.json").write_text("half")  # as SIGKILL between mkstemp and rename leaves it
    (tmp_path / ".old-def").mkdir()
    (tmp_path / ".old-def" / "model.safetensors").write_text("x")
    (tmp_path / "fw_history.json").write_text("{}")
    (tmp_path / ".hidden").write_text("keep")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [".old-def", ".tmp-abc.json"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "fw_history.json"]
    assert remove_stale_temporaries(str(tmp_path / "missing")) == []
