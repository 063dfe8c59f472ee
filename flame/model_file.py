"""The official FLAME model file, read into validated NumPy arrays (no chumpy, no unsafe pickle).

FLAME is distributed by the Max Planck Institute for Intelligent Systems at
https://flame.is.tue.mpg.de under its own licence: every user downloads it there (FLAME 2020's
``generic_model.pkl`` or FLAME 2023's ``flame2023.pkl``). This project never ships or downloads it.

Layout (both versions): ``v_template`` (V, 3), ``shapedirs`` (V, 3, K) = 300 identity + K - 300
expression components (K = 400), ``posedirs`` (V, 3, 36), ``J_regressor`` (5, V) (sparse),
``weights`` (V, 5), ``kintree_table`` (2, 5), ``f`` (F, 3); V = 5023 and F = 9976 in the official
files, any V and F are accepted (tests use smaller synthetic models).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import numpy as np

from flame.safe_pickle import UnsafePickleError, restricted_load, to_array

NUM_JOINTS = 5            # root (global), neck, jaw, left eye, right eye
JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
NUM_SHAPE = 300           # identity components at the front of shapedirs
NUM_POSE_FEATURES = 9 * (NUM_JOINTS - 1)
WHERE_TO_GET = ("download the FLAME model yourself from https://flame.is.tue.mpg.de (free "
                "registration, FLAME licence) and pass generic_model.pkl (FLAME 2020) or "
                "flame2023.pkl (FLAME 2023) with --flame_model")


class FlameModelError(ValueError):
    """The FLAME model file is missing, unsafe or of an unknown layout (message names the file)."""


@dataclass
class FlameModelData:
    """The arrays of a FLAME model, float64 / int64, validated against each other."""

    v_template: np.ndarray   # (V, 3)
    shapedirs: np.ndarray    # (V, 3, K): [:, :, :num_shape] identity, the rest expression
    posedirs: np.ndarray     # (V, 3, 36): pose correctives on the 4 non-root (R - I), row-major
    J_regressor: np.ndarray  # (5, V) dense
    weights: np.ndarray      # (V, 5) skinning weights
    parents: np.ndarray      # (5,) parent joint of each joint, -1 for the root
    faces: np.ndarray        # (F, 3)
    num_shape: int = NUM_SHAPE
    source: str = ""

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_expression(self) -> int:
        return int(self.shapedirs.shape[2] - self.num_shape)


def _get(raw: Dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in raw:
        raise FlameModelError(f"{path}: unknown layout, key '{key}' is missing (found keys: "
                              f"{sorted(map(str, raw))[:20]}); expected the official FLAME model: "
                              f"{WHERE_TO_GET}")
    try:
        return to_array(raw[key], f"{path}: '{key}'")
    except ValueError as exc:
        raise FlameModelError(str(exc)) from None


def _parents(kintree: np.ndarray, path: Path) -> np.ndarray:
    parents = kintree[0].astype(np.int64)
    parents[0] = -1  # the root's parent is stored as -1 or as 2**32 - 1
    bad = [j for j in range(1, len(parents)) if not 0 <= parents[j] < j]
    if bad:
        raise FlameModelError(f"{path}: 'kintree_table' is not a tree in joint order (joint "
                              f"{bad[0]} has parent {parents[bad[0]]})")
    return parents


def validate_model(raw: Dict[str, Any], path: Path, num_shape: int = NUM_SHAPE) -> FlameModelData:
    """Check and convert the unpickled dict (shapes, finiteness, index ranges)."""
    if not isinstance(raw, dict):
        raise FlameModelError(f"{path}: unknown layout, the pickle holds a {type(raw).__name__}, "
                              f"not a dict of arrays; {WHERE_TO_GET}")
    arrays = {k: _get(raw, k, path) for k in ("v_template", "shapedirs", "posedirs",
                                                "J_regressor", "weights", "kintree_table", "f")}
    V = arrays["v_template"].shape[0] if arrays["v_template"].ndim == 2 else -1
    K = arrays["shapedirs"].shape[2] if arrays["shapedirs"].ndim == 3 else -1
    expected = {  # key: (shape, how to say it)
        "v_template": ((V, 3), "V x 3"), "shapedirs": ((V, 3, K), "V x 3 x K"),
        "posedirs": ((V, 3, NUM_POSE_FEATURES), f"V x 3 x {NUM_POSE_FEATURES}"),
        "J_regressor": ((NUM_JOINTS, V), f"{NUM_JOINTS} x V"),
        "weights": ((V, NUM_JOINTS), f"V x {NUM_JOINTS}"),
        "kintree_table": ((2, NUM_JOINTS), f"2 x {NUM_JOINTS}"),
        "f": ((arrays["f"].shape[0], 3), "F x 3"),
    }
    for key, (shape, said) in expected.items():
        if V <= 0 or arrays[key].shape != shape:
            raise FlameModelError(f"{path}: unknown layout, '{key}' has shape "
                                  f"{arrays[key].shape}, expected {said} (V vertices, F faces, "
                                  f"K blendshapes); {WHERE_TO_GET}")
    if K < num_shape:
        raise FlameModelError(f"{path}: 'shapedirs' has {K} components, fewer than the "
                              f"{num_shape} identity components FLAME has")
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        if not np.issubdtype(arrays[key].dtype, np.number) or not np.isfinite(arrays[key]).all():
            raise FlameModelError(f"{path}: '{key}' holds non-numeric, NaN or Inf values")
    faces = arrays["f"]
    if not np.issubdtype(faces.dtype, np.integer) or faces.size == 0 or faces.min() < 0 \
            or faces.max() >= V:
        raise FlameModelError(f"{path}: 'f' must hold vertex indices in [0, {V})")
    return FlameModelData(
        v_template=arrays["v_template"].astype(np.float64),
        shapedirs=arrays["shapedirs"].astype(np.float64),
        posedirs=arrays["posedirs"].astype(np.float64),
        J_regressor=arrays["J_regressor"].astype(np.float64),
        weights=arrays["weights"].astype(np.float64),
        parents=_parents(arrays["kintree_table"], path),
        faces=faces.astype(np.int64),
        num_shape=num_shape, source=str(path))


def load_flame_model(path: Path, num_shape: int = NUM_SHAPE) -> FlameModelData:
    """Read the official FLAME pickle safely (see ``flame.safe_pickle``) and validate it.

    Raises FlameModelError naming the file when it is missing, refers to code it should not, or
    does not have FLAME's layout.
    """
    path = Path(path)
    if not path.is_file():
        raise FlameModelError(f"{path}: FLAME model file not found; {WHERE_TO_GET}")
    try:
        with open(path, "rb") as f:
            raw = restricted_load(f)
    except UnsafePickleError as exc:
        raise FlameModelError(f"{path}: not loaded: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError, OSError) as exc:
        raise FlameModelError(f"{path}: not a readable FLAME model pickle ({type(exc).__name__}: "
                              f"{exc}); {WHERE_TO_GET}") from None
    return validate_model(raw, path, num_shape)
