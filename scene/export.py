"""Viewer-ready export: the avatar posed at one keyframe as a plain 3D Gaussian Splatting PLY.

The model's own ``point_cloud.ply`` carries STGA's binding (``em_*``, ``index``) next to the 3DGS
fields; some Gaussian-splat viewers reject or misread files with unknown properties. The export
holds exactly 3DGS's properties (x y z, nx ny nz, f_dc_*, f_rest_*, opacity, scale_*, rot_*), in
world space at the chosen keyframe, so any standard viewer opens it. ``render.py --export_ply K``
writes ``<model>/export/keyframe_<K>.ply``.
"""
from __future__ import annotations

from pathlib import Path

from scene.binding import FaceFrames
from scene.gaussian_model import GaussianModel, write_vertex_ply

EXPORT_DIR = "export"


def export_path(model_dir: Path, keyframe: int) -> Path:
    """Where the export of ``keyframe`` goes inside a model folder."""
    return Path(model_dir) / EXPORT_DIR / f"keyframe_{keyframe}.ply"


def export_splat_ply(model: GaussianModel, frames: FaceFrames, path: Path) -> Path:
    """Write ``model`` posed with ``frames`` as a 3DGS PLY with no extra fields (atomically)."""
    # no header comments either: a few minimal PLY readers in web viewers do not skip them
    write_vertex_ply(path, model.splat_attribute_names(), model.splat_attributes(frames))
    return Path(path)
