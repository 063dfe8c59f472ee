"""Baked, view-independent shading of the demo head.

A Lambertian factor per vertex from a fixed light in head space, computed once on the neutral
pose and carried with the vertices through the animation: the rendered colour of a surface point
never depends on the camera or the frame, which is what mesh-bound Gaussians with a constant colour
can represent. The mouth cavity is kept dark (it is lit only through the lips).
"""
from __future__ import annotations

import numpy as np

from scene.demo_head.mesh import PART_CAVITY, PART_EYEBALL, PART_TEETH, HeadMesh

LIGHT_DIR = np.array([0.35, 0.55, 0.76]) / np.linalg.norm([0.35, 0.55, 0.76])
AMBIENT = 0.42
DIFFUSE = 0.68


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals, shared by vertices at the same position (so seams and the
    closed mouth line shade smoothly)."""
    v = verts[faces]
    fn = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    key = np.round(verts / 1e-7).astype(np.int64)
    _, weld = np.unique(key, axis=0, return_inverse=True)
    weld = weld.ravel()
    acc = np.zeros((weld.max() + 1, 3))
    for k in range(3):
        np.add.at(acc, weld[faces[:, k]], fn)
    n = acc[weld]
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)


def vertex_shade(mesh: HeadMesh, neutral: np.ndarray) -> np.ndarray:
    """(V,) float32 shading factor from the neutral-pose vertices ``neutral`` (head space)."""
    n = vertex_normals(neutral, mesh.faces)
    lam = np.clip(n @ LIGHT_DIR, 0.0, 1.0)
    wrap = np.clip(0.5 + 0.5 * (n @ LIGHT_DIR), 0.0, 1.0)   # soft fill so the far side is not flat
    shade = AMBIENT * (0.7 + 0.3 * wrap) + DIFFUSE * lam
    shade[mesh.vertex_part == PART_EYEBALL] = 0.82 + 0.18 * lam[mesh.vertex_part == PART_EYEBALL]
    shade[mesh.vertex_part == PART_CAVITY] = 0.55
    shade[mesh.vertex_part == PART_TEETH] = 0.85
    return shade.astype(np.float32)
