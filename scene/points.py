"""Initial Gaussians of a dataset: ``points3d.ply``, or random points on the faces."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Tuple

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


def random_barycentrics(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) barycentric coordinates uniform over a triangle's area."""
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return np.stack([1.0 - s, s * (1.0 - r2), s * r2], -1)


def points_on_faces(triangles: np.ndarray, per_face: int, rng: np.random.Generator
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``per_face`` uniform random points on every face of a (F, 3, 3) soup.

    Returns face ids (N,), barycentrics (N, 3), world positions (N, 3) and positions in the
    face's local frame (N, 3), all float64 but the ids.
    """
    tris = np.asarray(triangles, dtype=np.float64)
    face = np.repeat(np.arange(tris.shape[0]), per_face)
    bary = random_barycentrics(rng, face.size)
    world = np.einsum("nk,nkc->nc", bary, tris[face])
    frames = face_frames(torch.from_numpy(tris))
    local = world_to_local_positions(torch.from_numpy(world), torch.from_numpy(face), frames)
    return face, bary, world, local.numpy()


def random_points_on_faces(triangles: np.ndarray, per_face: int, seed: int = 0) -> InitialPoints:
    """``per_face`` grey points per face at uniformly random positions (no points3d.ply)."""
    face, _, _, local = points_on_faces(triangles, per_face, np.random.default_rng(seed))
    rgb = np.full((face.size, 3), 0.5, dtype=np.float32)
    return InitialPoints(local.astype(np.float32), face, rgb)
