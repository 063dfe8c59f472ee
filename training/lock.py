"""One training per model folder: an exclusive lock on ``<model>/.train.lock``.

The lock is an OS file lock (``fcntl.flock``), so it is released on any exit, a crash or a kill
included, and a stale lock file never blocks a later run. The file holds the holder's process id
and host, so the refusal names who is writing the folder.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # not a POSIX system: no locking (documented in the README)
    fcntl = None

LOCK_NAME = ".train.lock"


class FolderLockedError(RuntimeError):
    """Another process holds the model folder's training lock."""


class FolderLock:
    """``with FolderLock(folder):`` holds the folder's lock for the block (not re-entrant)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: Optional[int] = None
        self._created = False

    def acquire(self) -> "FolderLock":
        self._created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise FolderLockedError(
                    f"{self.path.parent}: another training is writing this model folder "
                    f"({holder}); wait for it, stop it, or choose another -m") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock; a folder the lock created and nothing else used is removed."""
        if self._fd is None:
            return
        if self._created and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
            self.path.unlink()
            self.path.parent.rmdir()
        os.close(self._fd)              # closing releases the lock; the file may stay
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
