"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

An interrupted run never leaves a truncated model, checkpoint or cache behind, and a write that
fails for lack of space raises ``DiskFullError`` naming the file it was writing.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the file that was being written."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError for lack of disk space (or quota)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else is removed.

    The temporary name keeps ``path``'s extension (writers such as cv2 choose the format by it).
    The file is created with mode 0o666, so the kernel applies the process umask as for any new
    file (mkstemp's would be owner-only); the umask itself is never touched, which would race
    with other threads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(exc.errno, f"{path}: the disk is full (the previous version, "
                                           f"if any, is intact)") from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; on success it becomes ``path`` (an existing
    one is replaced only with ``overwrite``), else it is removed: a reader never sees half a
    folder. Raises FileExistsError if ``path`` exists and not ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():   # overwrite: move the old one aside first, drop it afterwards
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
