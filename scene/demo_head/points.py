"""Initial Gaussians of the demo (``points3d.ply``): points on faces, in each face's local frame.

Binding convention (STGA's): for corners v1, v2, v3 in file order, origin o = centroid,
x = normalize(v1 - o), n = normalize((v2 - v1) x (v3 - v1)), y = n x x, R = [x | y | n];
a local position maps to the world as R @ local + o, so local = R^T (p - o).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement


def write_points_ply(path: Path, local: np.ndarray, face: np.ndarray, rgb: np.ndarray) -> None:
    """Write ``loc_x, loc_y, loc_z`` (float32), ``index`` (int32), ``red, green, blue`` (uint8)."""
    data = np.empty(len(face), dtype=[("loc_x", "<f4"), ("loc_y", "<f4"), ("loc_z", "<f4"),
                                      ("index", "<i4"), ("red", "u1"), ("green", "u1"),
                                      ("blue", "u1")])
    data["loc_x"], data["loc_y"], data["loc_z"] = local[:, 0], local[:, 1], local[:, 2]
    data["index"] = face
    data["red"], data["green"], data["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    PlyData([PlyElement.describe(data, "vertex")], byte_order="<").write(str(path))
