"""Initial Gaussians of a dataset: ``points3d.ply``, or random points on the faces."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from plyfile import PlyData

from scene.binding import face_frames, world_to_local_positions
from scene.errors import DatasetError


class InitialPoints(NamedTuple):
    """Local positions (N,3), face ids (N,) and colours in [0,1] (N,3)."""

    local: np.ndarray
    face: np.ndarray
    rgb: np.ndarray


def read_points3d(path: Path, num_faces: int) -> InitialPoints:
    """Read ``points3d.ply`` (loc_x/y/z in the face frame, index, red/green/blue 0-255)."""
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing") from None
    except Exception as exc:  # plyfile raises several types for malformed files
        raise DatasetError(f"{path}: not a readable PLY file with a 'vertex' element "
                           f"({exc})") from None
    names = set(vertex.data.dtype.names or ())
    needed = ["loc_x", "loc_y", "loc_z", "index", "red", "green", "blue"]
    missing = [n for n in needed if n not in names]
    if missing:
        raise DatasetError(f"{path}: missing vertex properties {missing} (needs {needed})")
    local = np.stack([vertex[n] for n in needed[:3]], axis=1).astype(np.float32)
    face = np.asarray(vertex["index"])
    rgb = np.stack([vertex[n] for n in needed[4:]], axis=1).astype(np.float32)
    if len(face) == 0:
        raise DatasetError(f"{path}: holds no points")
    if not np.isfinite(local).all():
        raise DatasetError(f"{path}: NaN or Inf in loc_x/loc_y/loc_z")
    if not np.issubdtype(face.dtype, np.integer):
        if not np.all(np.mod(face, 1) == 0):
            raise DatasetError(f"{path}: 'index' must hold integer face ids")
    face = face.astype(np.int64)
    if face.min() < 0 or face.max() >= num_faces:
        bad = face[(face < 0) | (face >= num_faces)][0]
        raise DatasetError(f"{path}: face index {bad} is out of range (the meshes have "
                           f"{num_faces} faces)")
    if rgb.max() > 1.0 or vertex["red"].dtype == np.uint8:
        rgb = rgb / 255.0
    return InitialPoints(local, face, np.clip(rgb, 0.0, 1.0))


def random_points_on_faces(triangles: np.ndarray, per_face: int, seed: int = 0) -> InitialPoints:
    """``per_face`` grey points per face at uniformly random barycentric positions."""
    rng = np.random.default_rng(seed)
    num_faces = triangles.shape[0]
    face = np.repeat(np.arange(num_faces), per_face)
    u, v = rng.random((2, face.size))
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    tri = torch.from_numpy(triangles[face].astype(np.float64))
    u, v = torch.from_numpy(u)[:, None], torch.from_numpy(v)[:, None]
    world = tri[:, 0] + u * (tri[:, 1] - tri[:, 0]) + v * (tri[:, 2] - tri[:, 0])
    frames = face_frames(torch.from_numpy(triangles.astype(np.float64)))
    local = world_to_local_positions(world, torch.from_numpy(face), frames).numpy()
    rgb = np.full((face.size, 3), 0.5, dtype=np.float32)
    return InitialPoints(local.astype(np.float32), face, rgb)
