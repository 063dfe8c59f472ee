"""Synthetic "heads" for tests and benchmarks: a UV sphere as triangle soup with a hinged jaw.

Real FLAME meshes cannot ship with the project, but the selection only needs a closed surface
with a rigid part and a part that moves relative to it, which a sphere with a jaw provides.
Axes follow the data format: x right, y up, z toward the viewer (the face looks along +z).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def uv_sphere(n_lat: int = 51, n_lon: int = 100, radius: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and faces (F, 3) of a UV sphere: F = 2 * n_lon * (n_lat - 1).

    The defaults give 10000 faces and 5002 vertices, the size of a FLAME mesh.
    """
    lat = np.linspace(0.0, np.pi, n_lat + 1)[1:-1]           # rings without the poles
    lon = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    ring = np.stack([np.sin(la) * np.sin(lo), np.cos(la), np.sin(la) * np.cos(lo)], axis=-1)
    verts = np.concatenate([[[0.0, 1.0, 0.0]], ring.reshape(-1, 3), [[0.0, -1.0, 0.0]]]) * radius
    top, bottom = 0, len(verts) - 1

    def vid(i, j):
        return 1 + i * n_lon + (j % n_lon)

    j = np.arange(n_lon)
    faces = [np.stack([np.full(n_lon, top), vid(0, j), vid(0, j + 1)], axis=1)]
    for i in range(n_lat - 2):
        a, b, c, d = vid(i, j), vid(i + 1, j), vid(i + 1, j + 1), vid(i, j + 1)
        faces.append(np.stack([a, b, c], axis=1))
        faces.append(np.stack([a, c, d], axis=1))
    i = n_lat - 2
    faces.append(np.stack([vid(i, j), np.full(n_lon, bottom), vid(i, j + 1)], axis=1))
    return verts, np.concatenate(faces).astype(np.int64)


def jaw_vertices(verts: np.ndarray, radius: float = 0.1) -> np.ndarray:
    """Boolean mask of the 'jaw': the lower front of the sphere (about a fifth of the vertices)."""
    return (verts[:, 1] < -0.25 * radius) & (verts[:, 2] > 0.1 * radius)


def forehead_vertices(verts: np.ndarray, radius: float = 0.1) -> np.ndarray:
    """Boolean mask of the 'forehead': the upper front of the sphere, far from the jaw."""
    return (verts[:, 1] > 0.4 * radius) & (verts[:, 2] > 0.3 * radius)


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis`` by ``angle`` radians."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * (K @ K)


def open_jaw(verts: np.ndarray, jaw: np.ndarray, angle: float, radius: float = 0.1) -> np.ndarray:
    """Rotate the jaw vertices down about a hinge (x axis) behind the jaw, like a mandible."""
    hinge = np.array([0.0, 0.0, -0.6 * radius])
    out = verts.copy()
    out[jaw] = (verts[jaw] - hinge) @ rotation([1.0, 0.0, 0.0], angle).T + hinge
    return out


def random_rigid(rng: np.random.Generator, max_angle: float = 0.6,
                 max_shift: float = 0.05) -> Tuple[np.ndarray, np.ndarray]:
    """A random head pose: rotation of up to ``max_angle`` radians and a shift in metres."""
    axis = rng.normal(size=3)
    R = rotation(axis, rng.uniform(-max_angle, max_angle))
    return R, rng.uniform(-max_shift, max_shift, size=3)


def soup(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Triangle soup (F, 3, 3) of an indexed mesh, as stored in the mesh files."""
    return verts[faces]


def jaw_sequence(T: int = 8, seed: int = 0, n_lat: int = 51, n_lon: int = 100,
                 max_jaw_deg: float = 15.0, pose: bool = True,
                 dtype: type = np.float32) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A (T, F, 3, 3) sequence: random jaw openings in [0, max_jaw_deg] plus random head poses.

    Frame 0 is neutral (jaw closed). Returns meshes, faces, vertices (rest) and jaw angles (deg).
    """
    rng = np.random.default_rng(seed)
    verts, faces = uv_sphere(n_lat, n_lon)
    jaw = jaw_vertices(verts)
    angles = rng.uniform(0.0, max_jaw_deg, size=T)
    angles[0] = 0.0
    out = np.empty((T, len(faces), 3, 3), dtype=dtype)
    for t in range(T):
        v = open_jaw(verts, jaw, np.radians(angles[t]))
        if pose:
            R, sh = random_rigid(rng)
            v = v @ R.T + sh
        out[t] = v[faces]
    return out, faces, verts, angles
