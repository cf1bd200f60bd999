"""The text benchmark's data: fortune files and apt package lists parsed, and honest splits
(no text in both splits, a source package's binaries on one side, balanced classes, seeded)."""

from __future__ import annotations

import pytest

from fusion_bench_fw.offline import textbench as tb

SPEC = tb._spec("toy", "package", {"a": ["games"], "b": ["sound"], "c": ["graphics"], "d": ["science"]})


def _rows(n_groups=40, per_group=3):
    rows = []
    for g in range(n_groups):
        for i in range(per_group):
            rows.append((f"text {g}-{i}", g % 4, f"src{g}"))
    return rows


def test_splits_are_disjoint_by_group_balanced_and_seeded():
    rows = _rows() + [("shared text", 0, "x1"), ("shared text", 1, "x2"), ("dup", 2, "y"), ("dup", 2, "y")]
    a = tb.split_examples(rows, SPEC, n_train=40, n_test=8, seed=0)
    assert a == tb.split_examples(list(reversed(rows)), SPEC, n_train=40, n_test=8, seed=0)  # order-free
    group = {t: g for t, _, g in rows}
    train_groups = {group[t] for t, _ in a["train"]}
    test_groups = {group[t] for t, _ in a["test"]}
    assert train_groups.isdisjoint(test_groups) and test_groups
    texts = [t for t, _ in a["train"] + a["test"]]
    assert "shared text" not in texts  # a text under two labels is dropped
    assert len(texts) == len(set(texts))
    small = tb.split_examples(rows, SPEC, n_train=5, n_test=2, seed=0)  # n per class: balanced
    assert [sum(1 for _, y in small["train"] if y == c) for c in range(4)] == [5] * 4
    assert [sum(1 for _, y in small["test"] if y == c) for c in range(4)] == [2] * 4
    assert small != tb.split_examples(rows, SPEC, n_train=5, n_test=2, seed=1)


def test_too_few_texts_names_the_class_and_the_fix():
    with pytest.raises(ValueError, match=r"class 'a' .*lower --n-train"):
        tb.split_examples(_rows(n_groups=4), SPEC, n_train=400, n_test=100, seed=0)


def test_fortune_files_and_apt_lists_are_parsed(tmp_path):
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "witze").write_text("Erster  Witz\nzweite Zeile\n%\nZweiter Witz\n%\n")
    (tmp_path / "de" / "witze.dat").write_bytes(b"\0")
    (tmp_path / "de" / "witze.u8").symlink_to(tmp_path / "de" / "witze")
    assert tb.fortune_files("de/*", str(tmp_path)) == [str(tmp_path / "de" / "witze")]
    assert tb.read_fortune_file(str(tmp_path / "de" / "witze")) == ["Erster Witz zweite Zeile", "Zweiter Witz"]

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "x_main_binary-amd64_Packages").write_text(
        "Package: foo\nSource: foosrc (1.0)\nSection: contrib/games\nDescription: a fine  game\n more text\n\n"
        "Package: bar\nSection: sound\nDescription: plays music\n\n"
        "Package: foo\nSection: sound\nDescription: a duplicate from another list\n"
    )
    index = tb.load_package_index(str(lists))
    assert index == {"foo": ("games", "foosrc", "a fine game"), "bar": ("sound", "bar", "plays music")}
    assert sorted(tb.load_packages(SPEC, index)) == [("a fine game", 0, "foosrc"), ("plays music", 1, "bar")]


def test_missing_data_names_the_packages(tmp_path):
    with pytest.raises(tb.MissingData, match="fortunes-de"):
        tb.load_fortunes(tb.SPECS["fortune_language"], str(tmp_path))
    with pytest.raises(tb.MissingData, match="apt-get update"):
        tb.load_package_index(str(tmp_path))


def test_generated_configs_are_current(repo_root):
    for rel, text in tb.render_configs().items():
        assert (repo_root / "config" / rel).read_text() == text, (
            f"{rel}: run python -m fusion_bench_fw.offline.textbench configs"
        )


def test_a_models_cache_key_is_the_same_in_every_scope():
    """A model's key holds the build parameters, its task and its own data, never the scope or the
    other tasks' data: a "targets" build reuses the models of an "all" build."""
    spec = tb.SPECS["package_app"]
    a = tb.model_key(tb.BuildParams(scope="all", threads=2), spec, "d1")
    assert a == tb.model_key(tb.BuildParams(scope="targets"), spec, "d1")
    assert a != tb.model_key(tb.BuildParams(), spec, "d2")
    assert a != tb.model_key(tb.BuildParams(finetune_steps=10), spec, "d1")
    assert a != tb.model_key(tb.BuildParams(), tb.SPECS["package_dev"], "d1")


def test_the_val_split_comes_from_what_train_and_test_leave_and_changes_neither():
    """Validation texts: none in train or test, no source package shared with either, up to
    ``n_val`` per class; train and test are exactly those of a split without validation (the
    models and test sets built before it stand)."""
    rows = _rows(n_groups=80) + [("shared text", 0, "x1"), ("shared text", 1, "x2")]
    plain = tb.split_examples(rows, SPEC, n_train=6, n_test=3, seed=0)
    with_val = tb.split_examples(rows, SPEC, n_train=6, n_test=3, seed=0, n_val=4)
    assert {s: with_val[s] for s in ("train", "test")} == plain
    group = {t: g for t, _, g in rows}
    groups = {s: {group[t] for t, _ in with_val[s]} for s in with_val}
    assert groups["val"] and groups["val"].isdisjoint(groups["train"] | groups["test"])
    assert [sum(1 for _, y in with_val["val"] if y == c) for c in range(4)] == [4] * 4
    assert "shared text" not in {t for t, _ in with_val["val"]}
    assert with_val == tb.split_examples(list(reversed(rows)), SPEC, n_train=6, n_test=3, seed=0, n_val=4)
    with pytest.raises(ValueError, match=r"val texts, fewer than .*lower --n-train/--n-val"):
        tb.split_examples(_rows(n_groups=16), SPEC, n_train=3, n_test=1, seed=0, n_val=40)


def test_n_val_keys_the_manifest_not_the_models():
    """A root built before the validation splits keeps its models but is not taken for a build with them."""
    spec = tb.SPECS["package_app"]
    assert tb.model_key(tb.BuildParams(n_val=7), spec, "d1") == tb.model_key(tb.BuildParams(), spec, "d1")
    assert tb.BuildParams(n_val=7).manifest_key() != tb.BuildParams().manifest_key()
    assert tb.BuildParams().manifest_key()["data_version"] == tb.DATA_VERSION >= 2
