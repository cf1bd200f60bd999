"""A failed checkpoint load names its real cause and that cause's fix: a hub that cannot be
reached, a local path that does not exist (with the build command when the path belongs to
the mini benchmark or a tiny pool), or a file that exists but is truncated or corrupt.

Nothing here touches the network: the hub cases run with HF_HUB_OFFLINE=1 (or a faked
connection error), and ``no_network`` fails any attempt to open a connection."""

from __future__ import annotations

import socket

import pytest

from fusion_bench_fw.core.stores import StoreError, checkpoint_header
from fusion_bench_fw.load_errors import explain_load_failure

HUB_ID = "openai/clip-vit-base-patch32"


@pytest.fixture
def no_network(monkeypatch):
    """Any DNS lookup or connection fails the test (and is recorded, in case it was swallowed)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"the test touched the network: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert attempts == []


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty hub cache, as the hub client sees it after import too."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    return tmp_path / "empty_hub_cache"


@pytest.fixture
def hub_online(monkeypatch):
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def clip_pool(models: dict):
    from omegaconf import OmegaConf

    from fusion_bench_fw import CLIPVisionModelPoolWithTasks

    return CLIPVisionModelPoolWithTasks(OmegaConf.create(models), processor=next(iter(models.values())), platform="hf")


def load_error(pool, name: str) -> str:
    from fusion_bench_fw.fusionbench.pool import load_model_checked

    with pytest.raises(StoreError) as info:
        load_model_checked(pool, name)
    return str(info.value)


def assert_not_blamed_on_the_file(message: str) -> None:
    assert "corrupt" not in message and "re-download" not in message, message


# ------------------------------------------------------------------ (a) the hub cannot be reached
def test_hub_id_offline_with_an_empty_cache_names_the_hub_and_its_fixes(hub_offline, no_network, tmp_path):
    """The real FusionBench pool and transformers' loader, offline: what the mission's
    clip-vit-b32_TA20 command hits without a network (its models are hub ids)."""
    message = load_error(
        clip_pool({"_pretrained_": HUB_ID, "sun397": "tanganke/clip-vit-base-patch32_sun397"}), "_pretrained_"
    )
    assert message.startswith("checkpoint '_pretrained_': cannot load it (")
    assert f"'{HUB_ID}' is not a local path, so it is read as a hub id" in message
    assert f"HF_HUB_OFFLINE is set but the hub cache ({hub_offline}) does not hold it" in message
    assert "HF_ENDPOINT" in message and "point modelpool.models._pretrained_ at a local copy" in message
    assert_not_blamed_on_the_file(message)


def test_hub_id_without_a_network_names_the_mirror_and_offline_fixes(hub_online):
    class ConnectError(Exception):  # what httpx raises when the host cannot be resolved
        pass

    try:
        try:
            raise ConnectError("[Errno -2] Name or service not known")
        except ConnectError as cause:
            raise FileNotFoundError(f"Could not resolve checkpoint: {HUB_ID}") from cause
    except FileNotFoundError as exc:
        message = explain_load_failure("sun397", HUB_ID, exc)
    assert "is read as a hub id, and the hub cannot be reached" in message
    assert "HF_ENDPOINT to a reachable mirror, or HF_HUB_OFFLINE=1 with the model in the local cache" in message
    assert "modelpool.models.sun397" in message
    assert_not_blamed_on_the_file(message)


def test_hub_id_the_hub_refuses_is_not_called_unreachable(hub_online):
    message = explain_load_failure("m", "someone/no-such-model", OSError("404 Repository Not Found"))
    assert "the hub could not serve it: check the id" in message
    assert "cannot be reached" not in message
    assert_not_blamed_on_the_file(message)


# ------------------------------------------------------------------ (b) a local path that does not exist
def test_missing_local_path_is_named(hub_offline, no_network, tmp_path):
    missing = tmp_path / "models" / "finetuned_a"
    message = load_error(clip_pool({"_pretrained_": str(missing), "a": str(missing)}), "a")
    assert f"the local path {missing} does not exist: fix modelpool.models.a" in message
    assert "hub id" not in message and "build it with" not in message
    assert_not_blamed_on_the_file(message)


@pytest.mark.parametrize(
    "model,scope", [("_pretrained_", "ta8"), ("mnist", "ta8"), ("fashion_rot90", "ta8"), ("noisy3", "all")]
)
def test_missing_minibench_model_names_the_build_command(monkeypatch, tmp_path, model, scope):
    root = tmp_path / "minibench"
    monkeypatch.setenv("FUSION_BENCH_FW_MINIBENCH_ROOT", str(root))
    message = explain_load_failure(model, str(root / "models" / model), FileNotFoundError("no such folder"))
    assert f"the local path {root / 'models' / model} does not exist" in message
    assert f"build it with `python -m fusion_bench_fw.offline.minibench build --scope {scope}`" in message
    assert_not_blamed_on_the_file(message)


def test_missing_minibench_model_under_the_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSION_BENCH_FW_MINIBENCH_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / ".cache" / "fusion_bench_fw" / "minibench" / "models" / "irr_pixels1"
    message = explain_load_failure("irr_pixels1", str(path), FileNotFoundError(str(path)))
    assert "`python -m fusion_bench_fw.offline.minibench build --scope all`" in message


@pytest.mark.parametrize(
    "env,module", [("FUSION_BENCH_FW_TINY_ROOT", "tiny_clip"), ("FUSION_BENCH_FW_TINY_LM_ROOT", "tiny_lm")]
)
def test_missing_tiny_pool_model_names_its_builder(monkeypatch, tmp_path, env, module):
    root = tmp_path / "tiny"
    monkeypatch.setenv(env, str(root))
    message = explain_load_failure("m", str(root / "models" / "m"), FileNotFoundError("gone"))
    assert f"build it with `python -m fusion_bench_fw.offline.{module} {root}`" in message


def test_missing_safetensors_file_as_the_pool_reads_it(tmp_path):
    from fusion_bench_fw.fusionbench.pool import read_header

    path = tmp_path / "gone.safetensors"
    with pytest.raises(StoreError) as info:
        read_header("m0", str(path))
    message = str(info.value)
    assert f"checkpoint 'm0': cannot read safetensors file '{path}'" in message
    assert f"the local path {path} does not exist" in message
    assert_not_blamed_on_the_file(message)


# ------------------------------------------------------------------ (c) a file that exists but is bad
def test_corrupt_file_as_the_pool_reads_it_says_re_download(tmp_path):
    from fusion_bench_fw.fusionbench.pool import read_header

    path = tmp_path / "m0.safetensors"
    path.write_bytes(b"\x07" * 64)
    with pytest.raises(StoreError) as info:
        read_header("m0", str(path))
    message = str(info.value)
    assert f"{path} exists but is truncated or corrupt: re-download or re-save it" in message
    assert "hub" not in message and "does not exist" not in message


@pytest.mark.parametrize("exists", [False, True])
def test_the_core_store_names_the_file_and_keeps_the_cause(tmp_path, exists):
    """The core (no FusionBench, no builders) says what failed; the adapter adds where it came from."""
    from fusion_bench_fw.core.stores import UnreadableCheckpointError

    path = tmp_path / "m0.safetensors"
    if exists:
        path.write_bytes(b"\x07" * 64)
    with pytest.raises(UnreadableCheckpointError) as info:
        checkpoint_header("m0", str(path))
    assert (info.value.name, info.value.path) == ("m0", str(path)) and info.value.cause is not None
    assert str(info.value).endswith("re-download or re-save it" if exists else "the file does not exist")


def test_corrupt_model_folder_through_the_pool(hub_offline, no_network, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "clip_vision_model"}')
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    message = load_error(clip_pool({"_pretrained_": str(folder), "broken": str(folder)}), "broken")
    assert "checkpoint 'broken': cannot load it (" in message
    assert f"{folder} exists but is truncated or corrupt: re-download or re-save it" in message
    assert "hub id" not in message


def test_corrupt_minibench_model_names_the_rebuild(monkeypatch, tmp_path):
    root = tmp_path / "minibench"
    path = root / "models" / "digits" / "model.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00" * 16)
    monkeypatch.setenv("FUSION_BENCH_FW_MINIBENCH_ROOT", str(root))
    message = explain_load_failure("digits", str(path), ValueError("bad header"))
    assert "exists but is truncated or corrupt: re-download or re-save it" in message
    assert "rebuild it with `python -m fusion_bench_fw.offline.minibench build --scope ta8 --force`" in message


def test_a_model_without_a_source_keeps_the_generic_message():
    message = explain_load_failure("m", None, RuntimeError("boom"))
    assert message == (
        "checkpoint 'm': cannot load it (RuntimeError: boom); the files are missing, truncated or corrupt: "
        "re-download or re-save them"
    )
