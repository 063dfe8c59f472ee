"""GaussianAvatars' regularisers of the face-local parameters, over the trainable Gaussians.

    lambda_xyz   * mean relu(|mu_local| - threshold_xyz)
  + lambda_scale * mean |relu(exp(s_local) - threshold_scale)|

They keep Gaussians near their face and small relative to it. The means run over the trainable
rows only (all rows when ``selection`` is None). On CUDA the value and gradient come from one
fused kernel (utils/fused/csrc/pose.cu); the PyTorch expression below is the reference.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from scene.gaussian_model import RowSelection
from utils import fused


class _FusedRegulariser(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xyz, scaling, mask, count, lambda_xyz, threshold_xyz, lambda_scale,
                threshold_scale):
        value, d_xyz, d_scaling = fused.ext().regulariser_with_grad(
            xyz.detach(), scaling.detach(), mask if mask is not None else xyz.new_empty(0).bool(),
            count, lambda_xyz, threshold_xyz, lambda_scale, threshold_scale)
        ctx.save_for_backward(d_xyz, d_scaling)
        return value

    @staticmethod
    def backward(ctx, grad):
        d_xyz, d_scaling = ctx.saved_tensors
        return d_xyz * grad, d_scaling * grad, None, None, None, None, None, None


def local_regularisation(xyz: torch.Tensor, scaling: torch.Tensor,
                         selection: Optional[RowSelection], lambda_xyz: float,
                         threshold_xyz: float, lambda_scale: float,
                         threshold_scale: float) -> torch.Tensor:
    """The regularisers' value (0-d), differentiable in ``xyz`` and ``scaling`` (N, 3)."""
    if xyz.is_cuda and xyz.dtype == torch.float32 and fused.available():
        mask = None if selection is None else selection.mask
        count = xyz.shape[0] if selection is None else selection.count
        return _FusedRegulariser.apply(xyz, scaling, mask, count, lambda_xyz, threshold_xyz,
                                       lambda_scale, threshold_scale)
    if selection is not None:
        xyz, scaling = xyz[selection.rows], scaling[selection.rows]
    loss = xyz.new_zeros(())
    if lambda_xyz > 0:
        loss = loss + lambda_xyz * F.relu(xyz.norm(dim=1) - threshold_xyz).mean()
    if lambda_scale > 0:
        loss = loss + lambda_scale * F.relu(torch.exp(scaling) - threshold_scale).norm(dim=1).mean()
    return loss
