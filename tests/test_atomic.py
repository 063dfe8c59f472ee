"""Atomic writes (utils/atomic.py): whole files or none, usual permissions, no umask changes."""
from __future__ import annotations

import os
import threading

import pytest

from utils.atomic import atomic_folder, atomic_path


def process_umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_atomic_path_replaces_whole_files_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "a.json"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".json" and tmp.parent == target.parent
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "one"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_atomic_path_never_touches_the_umask_and_gives_usual_permissions(tmp_path, monkeypatch):
    """Changing the umask to read it races with other threads (a file written meanwhile could be
    world-writable, or the umask left at 0): the writer must not call it at all."""
    expected = 0o666 & ~process_umask()

    def forbidden(*args):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", forbidden)
    errors = []

    def write(i: int) -> None:
        try:
            for k in range(20):
                with atomic_path(tmp_path / f"f{i}_{k}.txt") as tmp:
                    tmp.write_text(str(k))
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = list(tmp_path.glob("*.txt"))
    assert len(files) == 160
    assert {f.stat().st_mode & 0o777 for f in files} == {expected}


def test_atomic_folder_refuses_an_existing_folder_unless_told(tmp_path):
    with atomic_folder(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_folder(tmp_path / "d"):
            pass
    with atomic_folder(tmp_path / "d", overwrite=True) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["y"]
