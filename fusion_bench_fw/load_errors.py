"""Why a checkpoint failed to load, and what fixes it.

A failed load has three common causes with three different fixes, and the exception alone
rarely says which (offline, ``transformers`` reports a hub id it cannot fetch as a missing
file; a local path that does not exist is reported as a malformed hub id):

* the source is a hub id and the hub cannot be reached -> a mirror, or ``HF_HUB_OFFLINE=1``
  with a filled cache, or local paths in the pool;
* the source is a local path that does not exist -> the path, or the command that builds it
  (the embedded mini benchmark and the tiny test pools are built locally, never downloaded);
* the file exists but cannot be read -> re-download or re-save it.

:func:`explain_load_failure` tells them apart from the source string, the file system and the
exception chain. It imports neither FusionBench nor the hub client (the builders' constants
are imported only when a message is written), so the core's store uses it too.
"""

from __future__ import annotations

import os
import re

# Exception classes (matched by name along the __cause__/__context__ chain, so that neither
# httpx, requests nor huggingface_hub needs importing) that mean "the hub was not reached".
_NETWORK_ERRORS = {
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "NetworkError",
    "ProxyError",
    "ReadTimeout",
    "TimeoutException",
    "gaierror",
}
# A hub id: "name" or "namespace/name" (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUTHY = {"1", "true", "yes", "on"}


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def hub_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the hub could not be reached."""
    return any({c.__name__ for c in type(e).__mro__} & _NETWORK_ERRORS for e in _chain(exc))


def _offline() -> bool:
    """Offline mode as the hub client sees it (its constants read the environment once, at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub comes with transformers
        return False


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except Exception:  # pragma: no cover - huggingface_hub comes with transformers
        return "$HF_HUB_CACHE"


def _under(path: str, root: str) -> bool:
    root = os.path.abspath(os.path.expanduser(root))
    return path == root or path.startswith(root + os.sep)


def builder_hint(path: str, rebuild: bool = False) -> str | None:
    """The command that builds (``rebuild``: rebuilds) ``path`` when it lies under the root of
    the embedded mini benchmark or of a tiny pool, else None."""
    from fusion_bench_fw.offline import minibench, tiny_clip, tiny_lm

    path = os.path.abspath(os.path.expanduser(path))
    root = minibench.default_root()
    if _under(path, root):
        # the smallest build scope that holds the model or data set (the scopes nest)
        parts = os.path.relpath(path, os.path.abspath(os.path.expanduser(root))).split(os.sep)
        name = parts[1] if len(parts) > 1 and parts[0] in ("models", "data") else "?"
        return minibench.build_command([name]) + (" --force" if rebuild else "")
    for module, force in ((tiny_clip, "--force"), (tiny_lm, None)):
        root = os.environ.get(module.ENV_VAR)
        if root and _under(path, root):
            command = f"python -m {module.__name__} {root}"
            if rebuild:  # tiny_lm rebuilds once its manifest is gone
                command = f"{command} {force}" if force else f"rm {root}/manifest.json && {command}"
            return command
    return None


def _looks_local(source: str) -> bool:
    """A path rather than a hub id: absolute, relative with ./ or ../, ~, deeper than
    namespace/name, or with characters a hub id cannot hold."""
    return (
        os.path.isabs(os.path.expanduser(source))
        or source.startswith(".")
        or (os.sep != "/" and os.sep in source)
        or _HUB_ID.match(source) is None
    )


def _fix(model_name: str, source: str | None, exc: BaseException) -> str:
    if isinstance(source, str) and source:
        path = os.path.abspath(os.path.expanduser(source))
        if os.path.exists(path):
            hint = builder_hint(path, rebuild=True)
            fix = f"{path} exists but is truncated or corrupt: re-download or re-save it"
            return fix + (f" (it was built locally: rebuild it with `{hint}`)" if hint else "")
        if _looks_local(source):
            hint = builder_hint(path)
            fix = f"the local path {path} does not exist: fix modelpool.models.{model_name}"
            return fix + (f", or build it with `{hint}`" if hint else "")
        if _offline():
            return (
                f"{source!r} is not a local path, so it is read as a hub id, and HF_HUB_OFFLINE is set but the hub "
                f"cache ({_hub_cache()}) does not hold it: fill that cache (HF_HOME) with the model, or unset "
                "HF_HUB_OFFLINE and set HF_ENDPOINT to a reachable mirror, or point "
                f"modelpool.models.{model_name} at a local copy (as a local path, {path} does not exist)"
            )
        if hub_unreachable(exc):
            return (
                f"{source!r} is not a local path, so it is read as a hub id, and the hub cannot be reached: set "
                "HF_ENDPOINT to a reachable mirror, or HF_HUB_OFFLINE=1 with the model in the local cache (HF_HOME), "
                f"or point modelpool.models.{model_name} at a local copy (as a local path, {path} does not exist)"
            )
        return (
            f"{source!r} is not a local path ({path} does not exist), so it is read as a hub id, and the hub "
            "could not serve it: check the id (and HF_TOKEN for a gated or private model)"
        )
    if hub_unreachable(exc):
        return (
            "the hub cannot be reached: set HF_ENDPOINT to a reachable mirror, or HF_HUB_OFFLINE=1 with a filled "
            "cache, or point the model pool at local paths"
        )
    return "the files are missing, truncated or corrupt: re-download or re-save them"


def explain_load_failure(model_name: str, source: str | None, exc: BaseException, what: str = "cannot load it") -> str:
    """One message naming the checkpoint, the error, its cause and the fix.

    ``source`` is what the pool gives for the model (a local path or a hub id; None for an
    in-memory model or a config without one); ``what`` says what failed."""
    return f"checkpoint {model_name!r}: {what} ({type(exc).__name__}: {exc}); {_fix(model_name, source, exc)}"


def model_source(modelpool, name: str) -> str | None:
    """The local path or hub id a FusionBench pool loads ``name`` from, when its config has one."""
    try:
        config = modelpool.get_model_config(name, return_copy=False)
    except Exception:  # not a BaseModelPool, or no such model
        return None
    if isinstance(config, str):
        return config
    getter = getattr(config, "get", None)  # a dict config: FusionBench's loaders take this key
    value = getter("pretrained_model_name_or_path") if getter is not None else None
    return value if isinstance(value, str) else None
