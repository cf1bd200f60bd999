"""The CLI runner's output folders survive Hydra's override grammar whatever their names hold."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from fusion_bench_fw.offline.cli import cli_args


@pytest.mark.parametrize(
    "name", ["plain", "a,b", "with space", "x=y", "q'uote", 'dq"uote', "br[ack]et", "back\\slash", "end\\", 'bs\\"q']
)
def test_output_folders_parse_back_to_themselves(tmp_path, name):
    out = tmp_path / name
    args = cli_args(["method=dummy"], out)
    parsed = OverridesParser.create().parse_overrides(args[1:])
    assert [o.value() for o in parsed] == [str(out / "outputs"), str(out / "log")]
