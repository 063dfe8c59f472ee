"""Viewer-ready export: the avatar posed at a keyframe as a plain 3D Gaussian Splatting PLY.

The model's own ``point_cloud.ply`` carries STGA's binding (``em_*``, ``index``) next to the 3DGS
fields; some Gaussian-splat viewers reject or misread files with unknown properties, and some
accept only the 45 ``f_rest_*`` fields of SH degree 3. The export holds exactly 3DGS's properties
(x y z, nx ny nz, f_dc_*, all 45 f_rest_* (zero beyond the trained degree, which renders the
same), opacity, scale_*, rot_*), in world space at the chosen keyframe, so any standard viewer
opens it. ``render.py --export_ply K`` writes ``<model>/export/keyframe_<K>.ply``;
``--export_ply all`` writes every keyframe and ``export/index.json``, the list of keyframes and
files in sequence order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from scene.binding import FaceFrames
from scene.gaussian_model import GaussianModel, write_vertex_ply
from utils.atomic import atomic_path

EXPORT_DIR = "export"
INDEX_NAME = "index.json"
VIEWER_REST = 45          # f_rest_* fields of SH degree 3: 15 coefficients x 3 channels


def export_path(model_dir: Path, keyframe: int) -> Path:
    """Where the export of ``keyframe`` goes inside a model folder."""
    return Path(model_dir) / EXPORT_DIR / f"keyframe_{keyframe}.ply"


def viewer_attributes(model: GaussianModel, frames: FaceFrames) -> tuple:
    """The 3DGS property names and (N, 62) float32 values, f_rest padded to degree 3."""
    names = model.splat_attribute_names()
    values = model.splat_attributes(frames)
    n_rest = sum(name.startswith("f_rest_") for name in names)
    if n_rest < VIEWER_REST:
        # channel-major: each colour's coefficients are contiguous, so pad each channel's block
        per = n_rest // 3
        first = names.index("f_dc_2") + 1
        blocks = [values[:, first + c * per:first + (c + 1) * per] for c in range(3)]
        pad = np.zeros((values.shape[0], VIEWER_REST // 3 - per), np.float32)
        rest = np.concatenate([x for b in blocks for x in (b, pad)], axis=1)
        values = np.concatenate([values[:, :first], rest, values[:, first + n_rest:]], axis=1)
        names = (names[:first] + [f"f_rest_{i}" for i in range(VIEWER_REST)]
                 + names[first + n_rest:])
    return names, values


def export_splat_ply(model: GaussianModel, frames: FaceFrames, path: Path) -> Path:
    """Write ``model`` posed with ``frames`` as a 3DGS PLY with no extra fields (atomically)."""
    # no header comments either: a few minimal PLY readers in web viewers do not skip them
    write_vertex_ply(path, *viewer_attributes(model, frames))
    return Path(path)


def write_export_index(model_dir: Path, paths: Dict[int, Path], keyframes: Sequence[int]) -> Path:
    """``export/index.json``: the exported keyframes in sequence order, with their files."""
    path = Path(model_dir) / EXPORT_DIR / INDEX_NAME
    entries = [{"keyframe": int(k), "file": paths[k].name} for k in keyframes if k in paths]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"format": "3dgs-ply", "frames": entries}, indent=1))
    return path
