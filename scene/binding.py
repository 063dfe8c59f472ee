"""STGA's binding convention: each Gaussian lives in the local frame of one mesh triangle.

For a face with corners v1, v2, v3 (file order): origin o = centroid, x = normalize(v1 - o),
n = normalize((v2 - v1) x (v3 - v1)), y = n x x, R = [x | y | n]. A Gaussian's world position is
R mu_local (* k) + o, its scale exp(s_local) (* k), its rotation q(R) * normalize(q_local), where
k is the face size (GaussianAvatars' convention), applied only with ``face_scale``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class FaceFrames(NamedTuple):
    """Per-face local frames of one mesh: rotation (F,3,3), origin (F,3), size (F,)."""

    rotation: torch.Tensor
    origin: torch.Tensor
    size: torch.Tensor


def face_frames(triangles: torch.Tensor) -> FaceFrames:
    """Local frame of every face of a (F, 3, 3) triangle soup (corners in file order)."""
    v1, v2, v3 = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    origin = (v1 + v2 + v3) / 3.0
    x = F.normalize(v1 - origin, dim=-1)
    cross = torch.cross(v2 - v1, v3 - v1, dim=-1)
    n = F.normalize(cross, dim=-1)
    y = torch.cross(n, x, dim=-1)
    rotation = torch.stack([x, y, n], dim=-1)
    edge = (v2 - v1).norm(dim=-1)
    height = cross.norm(dim=-1) / edge.clamp_min(1e-12)
    return FaceFrames(rotation, origin, 0.5 * (edge + height))


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b of w-first quaternions (..., 4)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) of w-first quaternions (normalised here)."""
    w, x, y, z = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """w-first unit quaternions (..., 4) of rotation matrices (..., 3, 3), w >= 0.

    Evaluates the four standard candidate formulas and keeps, per matrix, the one whose pivot
    (the largest of w, x, y, z) is best conditioned: branch-free, so it vectorises.
    """
    m = R
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    pivots = torch.stack([1 + trace, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                          1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                          1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], dim=-1)
    r = torch.sqrt(pivots.clamp_min(1e-12))  # = 2 * |component| for the pivot component
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s01, s02, s12 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    candidates = torch.stack([
        torch.stack([r[..., 0] ** 2, d21, d02, d10], -1) / (2 * r[..., 0:1]),
        torch.stack([d21, r[..., 1] ** 2, s01, s02], -1) / (2 * r[..., 1:2]),
        torch.stack([d02, s01, r[..., 2] ** 2, s12], -1) / (2 * r[..., 2:3]),
        torch.stack([d10, s02, s12, r[..., 3] ** 2], -1) / (2 * r[..., 3:4]),
    ], dim=-2)
    best = pivots.argmax(dim=-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def local_to_world_positions(local: torch.Tensor, binding: torch.Tensor, frames: FaceFrames,
                             face_scale: bool = False) -> torch.Tensor:
    """World positions of Gaussians bound to faces ``binding`` (N,) with local offsets (N,3)."""
    offset = local * frames.size[binding, None] if face_scale else local
    return torch.einsum("nij,nj->ni", frames.rotation[binding], offset) + frames.origin[binding]


def world_to_local_positions(world: torch.Tensor, binding: torch.Tensor, frames: FaceFrames,
                             face_scale: bool = False) -> torch.Tensor:
    """Inverse of ``local_to_world_positions``."""
    local = torch.einsum("nji,nj->ni", frames.rotation[binding], world - frames.origin[binding])
    return local / frames.size[binding, None] if face_scale else local
