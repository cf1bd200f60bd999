#!/usr/bin/env python
"""Numbers in prose come from results files: checked, or rewritten from them.

Two mechanisms, one script:

* **Figures.** A number in a page followed by a reference comment, ``61.2<!-- r: FILE#PATH|% -->``
  (invisible when rendered), is the value at ``PATH`` in ``benchmarks/results/FILE``, written
  with as many decimals as the page shows (``|%``: times 100, for accuracies stored as fractions).
  ``PATH`` steps through the JSON with ``/``: a key of an object, an index of a list, or
  ``field=value[,field=value]`` to pick the one element of a list whose fields match.
* **Claims.** :data:`CLAIMS` is every claim the project makes about FW-Merging, each with the
  results file that decides it and the test on its numbers; the table between
  ``<!-- claims-table:begin -->`` and ``<!-- claims-table:end -->`` in ``benchmarks/README.md``
  is rendered from it, held or not held as the results say.

    python benchmarks/claims.py           # check every page (exit 1 on a mismatch)
    python benchmarks/claims.py --write   # rewrite the figures and the claims table from the results

``tests/unit/test_claims.py`` runs the check, so a page that quotes a number its results file does not
hold fails the tests.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGES = ("README.md", "benchmarks/README.md", "docs/*.md")
FIGURE = re.compile(r"(?P<number>-?\d+(?:\.\d+)?)<!-- r: (?P<file>[^#\s]+)#(?P<path>[^|\s]+)(?:\|(?P<fmt>%))? -->")
TABLE = re.compile(r"(<!-- claims-table:begin -->\n)(.*?)(<!-- claims-table:end -->)", re.S)


def lookup(data, path: str):
    """The value at ``path`` (``a/0/method=x,added=4/average``) in ``data``."""
    for step in path.split("/"):
        if isinstance(data, list) and "=" in step:
            want = dict(kv.split("=", 1) for kv in step.split(","))
            found = [e for e in data if all(str(e.get(k)) == v for k, v in want.items())]
            if len(found) != 1:
                raise KeyError(f"{step!r} matches {len(found)} elements, not 1")
            data = found[0]
        elif isinstance(data, list):
            data = data[int(step)]
        else:
            data = data[step]
    return data


def _load(file: str, cache: dict) -> dict:
    if file not in cache:
        cache[file] = json.loads((RESULTS / file).read_text())
    return cache[file]


def figure_value(file: str, path: str, percent: bool, cache: dict) -> float:
    value = lookup(_load(file, cache), path)
    if not isinstance(value, (int, float)):
        raise TypeError(f"{file}#{path} is {value!r}, not a number")
    return 100 * value if percent else value


def _render(value: float, shown: str) -> str:
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return f"{value:.{decimals}f}"


def check_figures(text: str, cache: dict) -> list[str]:
    """Every figure of ``text`` whose number is not its results file's value (at its decimals)."""
    problems = []
    for m in FIGURE.finditer(text):
        where = f"{m['file']}#{m['path']}"
        try:
            value = figure_value(m["file"], m["path"], bool(m["fmt"]), cache)
        except (OSError, KeyError, IndexError, TypeError, ValueError) as exc:
            problems.append(f"{m['number']} <- {where}: {exc}")
            continue
        if _render(value, m["number"]) != m["number"]:
            problems.append(f"{m['number']} <- {where}: the file gives {_render(value, m['number'])}")
    return problems


def write_figures(text: str, cache: dict) -> str:
    """``text`` with every figure rewritten from its file (one that cannot be read stays as it is:
    the check reports it)."""

    def sub(m):
        try:
            value = figure_value(m["file"], m["path"], bool(m["fmt"]), cache)
        except (OSError, KeyError, IndexError, TypeError, ValueError):
            return m.group(0)
        return _render(value, m["number"]) + m.group(0)[len(m["number"]) :]

    return FIGURE.sub(sub, text)


# ------------------------------------------------------------------ claims
@dataclass(frozen=True)
class Claim:
    """A claim, the results files that decide it, and the test: ``decide(*their data)`` gives
    (held, the numbers it rests on, in words)."""

    claim: str
    files: tuple[str, ...]
    decide: Callable[..., tuple[bool, str]]


def _scaling(data: dict, exp: str, added: int, method: str) -> float:
    return 100 * lookup(data, f"experiments/{exp}/added={added},method={method}/average")


# a loss of at most this many points counts as "does not hurt": about the build-to-build difference
# of one seed on two CPUs (pretrained 40.6 vs 41.8, TIES 49.3 vs 50.2 on mini_TA8), until the
# scaling runs carry their own spread
TOLERANCE = 1.0


def _no_worse(exp: str, method: str, last: int, tolerance: float = TOLERANCE):
    """``method`` loses at most ``tolerance`` points from 0 to ``last`` added models."""

    def decide(data):
        a, b = _scaling(data, exp, 0, method), _scaling(data, exp, last, method)
        return b >= a - tolerance, f"{method}: {a:.1f} with none added, {b:.1f} with {last}"

    return decide


def _screen_keeps_only_targets(data: dict) -> tuple[bool, str]:
    """A screen report keeps the targets and refuses every other model: a screened run on that pool
    then merges exactly the targets' models, the same run as on the targets alone."""
    report = data["screen"]
    kept, refused = report["kept"], {r["model"]: r["share"] for r in report["refused"]}
    worst = max(refused.values(), default=0.0)
    ok = bool(refused) and kept == data["targets"]
    return (
        ok,
        f"kept {len(kept)} ({', '.join(kept)}), refused {len(refused)} (best share {worst:.2f}, bar {report['share']:g})",
    )


def _above(a: dict, b: dict, method: str, rival: str) -> tuple[bool, str]:
    """Row ``a``'s average above row ``b``'s by more than the spread: the larger standard deviation
    over builds where the rows have several, else :data:`TOLERANCE`."""
    if a["average"] is None or b["average"] is None:
        return False, f"{method} or {rival} did not run"
    std = max(a.get("average_std") or 0.0, b.get("average_std") or 0.0)
    spread = 100 * std if std else TOLERANCE
    margin = 100 * (a["average"] - b["average"])
    note = f"spread {spread:.1f} over builds" if std else f"one build: {TOLERANCE:.0f} point taken as the spread"
    return margin > spread, f"{method} {100 * a['average']:.1f} vs {rival} {100 * b['average']:.1f} ({note})"


def _beats(method: str, rival: str, file_key: str = "rows"):
    """``method``'s average above ``rival``'s on one leaderboard by more than the spread (:func:`_above`)."""

    def decide(data):
        rows = {r["method"]: r for r in data[file_key]}
        return _above(rows[method], rows[rival], method, rival)

    return decide


def _beats_across(method: str, rival: str):
    """``method`` (a row of the first leaderboard) above ``rival`` (a row of the second) by more than
    the larger spread over builds; both leaderboards must have run on the same builds (build ids)."""

    def decide(data, rival_data):
        ids = [[b["provenance"].get("build_id") for b in d["per_build"]] for d in (data, rival_data)]
        if ids[0] != ids[1]:
            return False, f"not the same builds ({ids[0]} vs {ids[1]})"
        row = next(r for r in data["rows"] if r["method"] == method)
        rival_row = next(r for r in rival_data["rows"] if r["method"] == rival)
        return _above(row, rival_row, method, rival)

    return decide


def _beats_best(method: str, rivals: tuple[str, ...]):
    """``method``'s average above the best of ``rivals`` on a leaderboard, by more than the spread
    (as :func:`_beats`)."""

    def decide(data):
        rows = {r["method"]: r for r in data["rows"]}
        ran = [r for r in rivals if r in rows and rows[r]["average"] is not None]
        best = max(ran, key=lambda r: rows[r]["average"])
        return _beats(method, best)(data)

    return decide


def _tuned_row(data: dict, method: str) -> dict:
    """A ``tuning.json``'s method at its validation-chosen setting, as a leaderboard row."""
    entry = next(m for m in data["methods"] if m["method"] == method)
    return {"average": entry["test_chosen"]["average"], "build_id": entry["provenance"]["build_id"]}


def _tuned_vs(method: str, rival: str, at_least: bool = False):
    """``method`` (of the first ``tuning.json``) against ``rival`` (of the second), each at its
    validation-chosen setting, on test and on the same build: above it by more than the spread
    (:func:`_above`), or, with ``at_least``, not below it."""

    def decide(data, rival_data):
        a, b = _tuned_row(data, method), _tuned_row(rival_data, rival)
        if a["build_id"] != b["build_id"]:
            return False, f"not the same build ({a['build_id']} vs {b['build_id']})"
        if at_least:
            return a["average"] >= b[
                "average"
            ], f"{method} {100 * a['average']:.1f} vs {rival} {100 * b['average']:.1f}"
        return _above(a, b, method, rival)

    return decide


CLAIMS = (
    Claim(
        "Adding irrelevant models (other real tasks') does not hurt FW-hard (mini, 4 targets + 16)",
        ("scaling_mini_TALL20/scaling.json",),
        _no_worse("irrelevant", "fw_hard", 16),
    ),
    Claim(
        "Adding irrelevant models (other real tasks') does not hurt FW-soft (mini, 4 targets + 16)",
        ("scaling_mini_TALL20/scaling.json",),
        _no_worse("irrelevant", "fw_soft", 16),
    ),
    Claim(
        "Adding noise-trained models does not hurt FW-hard (mini, 4 targets + 16)",
        ("scaling_mini_all_noisy/scaling.json",),
        _no_worse("noisy", "fw_hard", 16),
    ),
    Claim(
        "Adding noise-trained models does not hurt FW-soft (mini, 4 targets + 16)",
        ("scaling_mini_all_noisy/scaling.json",),
        _no_worse("noisy", "fw_soft", 16),
    ),
    Claim(
        "With the hold-out guard, adding noise-trained models does not hurt FW-soft (mini, 4 targets + 16, "
        "validation splits, one build)",
        ("guard_noisy_val/scaling.json",),
        _no_worse("noisy", "fw_soft_guard", 16),
    ),
    Claim(
        "With the hold-out guard, adding noise-trained models does not hurt FW-hard (mini, 4 targets + 16, "
        "validation splits, one build)",
        ("guard_noisy_val/scaling.json",),
        _no_worse("noisy", "fw_hard_guard", 16),
    ),
    Claim(
        "With the screen, adding noise-trained models does not hurt FW-soft (mini, 4 targets + 16, validation "
        "splits, one build; the screen's bar was set after seeing this pool's shares)",
        ("screen_noisy_val/scaling.json",),
        _no_worse("noisy", "fw_soft_screen", 16),
    ),
    Claim(
        "With the screen, adding noise-trained models does not hurt FW-hard (mini, 4 targets + 16, validation "
        "splits, one build; the screen's bar was set after seeing this pool's shares)",
        ("screen_noisy_val/scaling.json",),
        _no_worse("noisy", "fw_hard_screen", 16),
    ),
    Claim(
        "With the screen, adding noise-trained models does not hurt FW-soft from TSV-M's merge (mini, 4 targets "
        "+ 16, validation splits, one build; the bar was set after seeing this pool's shares)",
        ("screen_noisy_val/scaling.json",),
        _no_worse("noisy", "fw_soft_from_tsv_m_screen", 16),
    ),
    Claim(
        "With the screen, irrelevant text models stay out of every FW run (MiniLM, 4 targets + 5: the screen "
        "keeps the 4 targets' models only, so the run is the one without them; held-out train samples, one build)",
        ("screen_text_probe/screen.json",),
        _screen_keeps_only_targets,
    ),
    Claim(
        "Adding irrelevant text models does not hurt FW-hard (MiniLM, 4 targets + 5)",
        ("scaling_text/scaling.json",),
        _no_worse("irrelevant", "fw_hard", 5),
    ),
    Claim(
        "Adding irrelevant text models does not hurt FW-soft (MiniLM, 4 targets + 5)",
        ("scaling_text/scaling.json",),
        _no_worse("irrelevant", "fw_soft", 5),
    ),
    Claim(
        "FW-soft (FW-soft's previous default) beats TSV-M on the text benchmark (one build)",
        ("leaderboard_text_TA4/leaderboard.json",),
        _beats("fw_soft", "tsv_m"),
    ),
    Claim(
        "FW-soft (default) beats TSV-M at FusionBench's default on mini_TA8, beyond the spread over 3 builds",
        ("leaderboard_mini_TA8_builds/leaderboard.json",),
        _beats("fw_soft", "tsv_m"),
    ),
    Claim(
        "FW-soft (default) beats the data-free baselines tuned on validation (Task Arithmetic, TSV-M, WUDI) on mini_TA8, "
        "beyond the spread over 3 builds",
        ("leaderboard_mini_TA8_builds/leaderboard.json",),
        _beats_best("fw_soft", ("task_arithmetic@val", "ties_merging@val", "tsv_m@val", "iso_c@val", "wudi@val")),
    ),
    Claim(
        "FW-soft (default) beats Task Arithmetic with lambda chosen on FW's own labelled samples (0.3) on mini_TA8, "
        "beyond the spread over 3 builds",
        ("leaderboard_mini_TA8_builds/leaderboard.json",),
        _beats("fw_soft", "task_arithmetic"),
    ),
    Claim(
        "FW-soft from TSV-M's merge (method.init=tsv_m, alpha 1.0, FW-soft's defaults otherwise) beats TSV-M with "
        "alpha tuned on validation on mini_TA8, beyond the spread over 3 builds",
        ("leaderboard_mini_TA8_builds_fw_start/leaderboard.json", "leaderboard_mini_TA8_builds/leaderboard.json"),
        _beats_across("fw_soft_from_tsv_m", "tsv_m@val"),
    ),
    Claim(
        "FW-soft from TSV-M's merge beats WUDI with its iterations tuned on validation on mini_TA8, beyond the "
        "spread over 3 builds",
        ("leaderboard_mini_TA8_builds_fw_start/leaderboard.json", "leaderboard_mini_TA8_builds/leaderboard.json"),
        _beats_across("fw_soft_from_tsv_m", "wudi@val"),
    ),
    Claim(
        "FW-soft from TSV-M's merge beats FW-soft from the pretrained model (the default) on mini_TA8, beyond the "
        "spread over 3 builds",
        ("leaderboard_mini_TA8_builds_fw_start/leaderboard.json", "leaderboard_mini_TA8_builds/leaderboard.json"),
        _beats_across("fw_soft_from_tsv_m", "fw_soft"),
    ),
    Claim(
        "FW-hard from TSV-M's merge (alpha 1.5, 15 iterations: chosen on validation) beats TSV-M tuned on "
        "validation on mini_TA8, beyond the spread over 3 builds",
        ("leaderboard_mini_TA8_builds_fw_start/leaderboard.json", "leaderboard_mini_TA8_builds/leaderboard.json"),
        _beats_across("fw_hard_from_tsv_m@val", "tsv_m@val"),
    ),
    Claim(
        "With 20 targets FW-soft (default) at least matches FW-hard (default) (mini_TALL20, one build)",
        ("fw_targets_mini_TALL20/tuning.json", "fw_targets_mini_TALL20/tuning.json"),
        _tuned_vs("fw_soft", "fw_hard", at_least=True),
    ),
    Claim(
        "With 20 targets FW-soft from TSV-M's merge beats TSV-M with alpha tuned on validation (mini_TALL20, one build)",
        ("fw_targets_mini_TALL20/tuning.json", "tune_mini_TALL20/tuning.json"),
        _tuned_vs("fw_soft_from_tsv_m", "tsv_m"),
    ),
    Claim(
        "With 14 targets FW-soft from TSV-M's merge beats TSV-M with alpha tuned on validation (mini_TALL14, one build)",
        ("fw_targets_mini_TALL14/tuning.json", "tune_mini_TALL14/tuning.json"),
        _tuned_vs("fw_soft_from_tsv_m", "tsv_m"),
    ),
    Claim(
        "On the 4-of-20 pool FW-soft from TSV-M's merge with the screen beats TSV-M with alpha tuned on validation "
        "(mini_TALL20's models, 4 targets, one build)",
        ("fw_screen_mini_TALL20_TA4/tuning.json", "tune_mini_TALL20_TA4/tuning.json"),
        _tuned_vs("fw_soft_from_tsv_m_screen", "tsv_m"),
    ),
    Claim(
        "FW-hard (default) beats Task Arithmetic(0.3) on mini_TA8, beyond the spread over 3 builds",
        ("leaderboard_mini_TA8_builds/leaderboard.json",),
        _beats("fw_hard", "task_arithmetic"),
    ),
)


def render_table(cache: dict) -> str:
    lines = ["| claim | held? | decided by | the numbers |", "|---|---|---|---|"]
    for c in CLAIMS:
        held, why = c.decide(*[_load(f, cache) for f in c.files])
        files = ", ".join(f"`{f}`" for f in c.files)
        lines.append(f"| {c.claim} | {'held' if held else '**not held**'} | {files} | {why} |")
    return "\n".join(lines) + "\n"


def pages() -> list[Path]:
    return sorted({p for pattern in PAGES for p in REPO.glob(pattern)})


def check(cache: dict | None = None) -> list[str]:
    """Every mismatch on every page: figures, and the claims table against :data:`CLAIMS`."""
    cache = {} if cache is None else cache
    problems = []
    for page in pages():
        text = page.read_text()
        problems += [f"{page.relative_to(REPO)}: {p}" for p in check_figures(text, cache)]
        for m in TABLE.finditer(text):
            if m.group(2) != render_table(cache):
                problems.append(f"{page.relative_to(REPO)}: the claims table is not what the results decide")
    return problems


def write() -> list[Path]:
    cache, changed = {}, []
    for page in pages():
        text = page.read_text()
        new = TABLE.sub(lambda m: m.group(1) + render_table(cache) + m.group(3), write_figures(text, cache))
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="rewrite the figures and the claims table from the results")
    args = p.parse_args(argv)
    if args.write:
        for page in write():
            print(f"rewritten: {page.relative_to(REPO)}")
    problems = check()
    for line in problems:
        print(line)
    print(f"{len(problems)} mismatch(es) in {len(pages())} pages")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
