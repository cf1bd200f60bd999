"""benchmarks/claims.py: every referenced figure in README.md, benchmarks/README.md and docs/*.md is
its results file's value, the claims table is what the results decide, and the checker itself
catches a wrong number, a wrong decimal count, a bad path and a stale table."""

from __future__ import annotations

import pytest
from bench_scripts import load_script


@pytest.fixture(scope="module")
def claims():
    return load_script("claims")


def test_every_page_quotes_its_results(claims):
    problems = claims.check()
    assert not problems, "\n".join(problems) + "\n(python benchmarks/claims.py --write rewrites them)"


def test_the_pages_hold_figures_and_the_claims_table(claims):
    text = {
        p.name if p.parent == claims.REPO else str(p.relative_to(claims.REPO)): p.read_text() for p in claims.pages()
    }
    assert claims.FIGURE.search(text["README.md"]), "README.md quotes no referenced figure"
    assert claims.TABLE.search(text["benchmarks/README.md"]), "benchmarks/README.md lost its claims table"


def test_lookup_steps_through_objects_lists_and_selections(claims):
    data = {"rows": [{"method": "a", "added": 0, "v": 1}, {"method": "a", "added": 4, "v": 2}], "x": [5, 6]}
    assert claims.lookup(data, "rows/method=a,added=4/v") == 2
    assert claims.lookup(data, "x/1") == 6
    with pytest.raises(KeyError, match="matches 2 elements"):
        claims.lookup(data, "rows/method=a/v")


def test_the_checker_catches_what_it_should(claims, tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    (tmp_path / "r.json").write_text(json.dumps({"rows": [{"method": "m", "average": 0.61234}]}))
    ok = "FW 61.2<!-- r: r.json#rows/method=m/average|% --> and 61.23<!-- r: r.json#rows/method=m/average|% -->"
    assert claims.check_figures(ok, {}) == []
    assert claims.check_figures("61.3<!-- r: r.json#rows/method=m/average|% -->", {})  # wrong number
    assert claims.check_figures("61.20<!-- r: r.json#rows/method=m/average|% -->", {})  # 61.23 at 2 decimals
    assert claims.check_figures("61<!-- r: r.json#rows/method=m/average|% -->", {}) == []  # 61.234 at 0 decimals
    assert claims.check_figures("0.6<!-- r: r.json#rows/method=m/average -->", {}) == []  # no |%: the raw value
    assert claims.check_figures("61.2<!-- r: r.json#rows/method=x/average|% -->", {})  # no such row
    assert claims.check_figures("61.2<!-- r: missing.json#a|% -->", {})  # no such file
    assert claims.write_figures("1.0<!-- r: r.json#rows/method=m/average|% -->", {}).startswith("61.2<!--")


def test_tuned_comparisons_need_the_same_build_and_a_margin(claims):
    """``_tuned_vs`` reads each tuning file's test score at its validation-chosen setting: above the
    one-build spread, or at least level; two builds are never compared."""

    def tuning(method, average, build="b0"):
        return {"methods": [{"method": method, "test_chosen": {"average": average}, "provenance": {"build_id": build}}]}

    beats, level = claims._tuned_vs("fw", "tsv"), claims._tuned_vs("fw", "tsv", at_least=True)
    assert beats(tuning("fw", 0.60), tuning("tsv", 0.58))[0]
    assert not beats(tuning("fw", 0.60), tuning("tsv", 0.595))[0]  # within the 1-point spread
    assert level(tuning("fw", 0.60), tuning("tsv", 0.60))[0] and not level(tuning("fw", 0.59), tuning("tsv", 0.60))[0]
    held, why = beats(tuning("fw", 0.9), tuning("tsv", 0.1, build="b1"))
    assert not held and "not the same build" in why
