"""Tracked FLAME parameters of one timestep, as GaussianAvatars' tracker writes them (``.npz``).

Keys: ``translation`` (1, 3), ``rotation`` (1, 3) root axis-angle, ``neck_pose`` (1, 3),
``jaw_pose`` (1, 3), ``eyes_pose`` (1, 6), ``expr`` (1, N), ``shape`` (S,), and when tracked
``static_offset`` / ``dynamic_offset`` (1, V, 3). ``neck_pose`` and ``eyes_pose`` default to zero
when absent; the leading 1 of every array is optional.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from scene.errors import DatasetError

_VECTORS = {"translation": 3, "rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6}
_OPTIONAL_ZERO = ("neck_pose", "eyes_pose")


@dataclass
class FlameParams:
    """One timestep's parameters, float64, leading frame axis removed."""

    translation: np.ndarray        # (3,)
    rotation: np.ndarray           # (3,)
    neck_pose: np.ndarray          # (3,)
    jaw_pose: np.ndarray           # (3,)
    eyes_pose: np.ndarray          # (6,)
    expr: np.ndarray               # (N,)
    shape: np.ndarray              # (S,)
    static_offset: Optional[np.ndarray] = None   # (V, 3)
    dynamic_offset: Optional[np.ndarray] = None  # (V, 3)


def read_flame_params(path: Path) -> FlameParams:
    """Read and validate one ``flame_param/TTTTT.npz``; DatasetError names the file on any fault."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: FLAME parameter file is missing")
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw: Dict[str, np.ndarray] = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as exc:
        raise DatasetError(f"{path}: corrupt or unreadable FLAME parameter file "
                           f"({type(exc).__name__}: {exc})") from None
    values = {}
    for key, width in _VECTORS.items():
        if key not in raw:
            if key in _OPTIONAL_ZERO:
                values[key] = np.zeros(width)
                continue
            raise DatasetError(f"{path}: key '{key}' is missing (found {sorted(raw)})")
        values[key] = _vector(raw[key], path, key, width)
    for key in ("expr", "shape"):
        if key not in raw:
            raise DatasetError(f"{path}: key '{key}' is missing (found {sorted(raw)})")
        values[key] = _vector(raw[key], path, key, None)
    for key in ("static_offset", "dynamic_offset"):
        if key in raw:
            arr = _numeric(raw[key], path, key)
            if arr.ndim == 3 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 2 or arr.shape[1] != 3:
                raise DatasetError(f"{path}: '{key}' must have shape (1, V, 3), got "
                                   f"{raw[key].shape}")
            values[key] = arr
    return FlameParams(**values)


def _numeric(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DatasetError(f"{path}: '{key}' is not numeric (dtype {arr.dtype})")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: '{key}' contains NaN or Inf")
    return arr


def _vector(arr: np.ndarray, path: Path, key: str, width: Optional[int]) -> np.ndarray:
    arr = _numeric(arr, path, key)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or (width is not None and arr.shape[0] != width):
        want = f"({width},) or (1, {width})" if width else "(N,) or (1, N)"
        raise DatasetError(f"{path}: '{key}' must have shape {want}, got {arr.shape}")
    return arr
