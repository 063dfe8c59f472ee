"""Rotations and linear blend skinning, batched over frames, for the FLAME layer.

Conventions: axis-angle vectors (..., 3) whose norm is the angle in radians (right-hand rule);
rotation matrices act on column vectors; a kinematic tree is a ``parents`` array in joint order
(``parents[j] < j``, -1 for the root).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: (..., 3) axis-angle -> (..., 3, 3) rotation matrices.

    Written as R = I + a(t) K + b(t) K^2 with K the cross-product matrix of the unnormalised
    vector, a = sin(t)/t, b = (1 - cos t)/t^2, switching to their Taylor series near t = 0 so the
    value and its gradient stay finite at the zero rotation.
    """
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(rotvec.shape + (3,))
    theta2 = (rotvec * rotvec).sum(-1)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def pose_features(rotations: torch.Tensor) -> torch.Tensor:
    """(B, J, 3, 3) joint rotations -> (B, 9 (J - 1)) pose-corrective features.

    The features are (R_j - I) of every non-root joint, each flattened row-major, in joint order:
    they vanish in the rest pose, so the correctives do too.
    """
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    return (rotations[:, 1:] - eye).reshape(rotations.shape[0], -1)


def rigid_transforms(rotations: torch.Tensor, joints: torch.Tensor,
                     parents: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """World transforms of the joints and the skinning transforms that move rest-pose points.

    ``rotations`` (B, J, 3, 3) are local (relative to the parent), ``joints`` (B, J, 3) rest
    positions. Returns the posed joint positions (B, J, 3) and per-joint skinning transforms
    (B, J, 3, 4) = [R_world | t] with t chosen so that a rest-pose point p moves to
    R_world (p - joint) + posed joint. The root is not re-centred: it rotates about its own joint.
    """
    B, J = joints.shape[:2]
    world_R = [rotations[:, 0]]
    world_t = [joints[:, 0]]
    for j in range(1, J):
        p = int(parents[j])
        offset = joints[:, j] - joints[:, p]
        world_R.append(world_R[p] @ rotations[:, j])
        world_t.append(world_t[p] + (world_R[p] @ offset[..., None])[..., 0])
    R = torch.stack(world_R, dim=1)
    posed = torch.stack(world_t, dim=1)
    t = posed - (R @ joints[..., None])[..., 0]
    return posed, torch.cat([R, t[..., None]], dim=-1)


def skin(vertices: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning: (B, V, 3) points, (V, J) weights, (B, J, 3, 4) -> (B, V, 3)."""
    blended = torch.einsum("vj,bjrc->bvrc", weights, transforms)  # (B, V, 3, 4)
    return (blended[..., :3] @ vertices[..., None])[..., 0] + blended[..., 3]
