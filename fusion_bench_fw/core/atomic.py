"""Write-then-rename: readers (and a resumed run) never see half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: str) -> None:
    """Delete a file, a link or a whole folder."""
    import shutil

    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary folder next to ``path``; it becomes ``path`` only if the block succeeds.

    An existing ``path`` is moved aside first and deleted after the swap, so at no instant does
    ``path`` hold a half-written model (at worst, after a crash, it is briefly absent)."""
    import shutil

    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700 folders
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            _remove(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def remove_stale_temporaries(directory: str) -> list[str]:
    """Remove the ``.tmp-*`` / ``.old-*`` entries a killed writer left in ``directory``.

    A SIGKILL between ``mkstemp`` and the rename leaves the temporary behind (the target itself
    stays whole). Only call this where no other writer is active, e.g. when a run resumes into
    its own output folder. Returns the removed paths."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        if name.startswith((".tmp-", ".old-")):
            path = os.path.join(directory, name)
            _remove(path)
            removed.append(path)
    return removed
