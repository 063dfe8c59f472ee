"""The photometric training loss of 3DGS: (1 - w) L1 + w (1 - SSIM).

``photometric_loss`` is the PyTorch definition (and the reference of the fused kernel).
``training_loss`` is what the training loop calls: it takes the uint8 ground truth as stored and,
on CUDA, computes the loss and its gradient in one fused kernel (``utils/fused/csrc/loss.cu``)
instead of ~40 small PyTorch kernels forward and backward.
"""
from __future__ import annotations

import torch

from utils import fused
from utils.image_metrics import ssim
from utils.images import composite_rgba

__all__ = ["photometric_loss", "training_loss"]


def photometric_loss(image: torch.Tensor, gt: torch.Tensor, lambda_dssim: float) -> torch.Tensor:
    l1 = (image - gt).abs().mean()
    if lambda_dssim == 0.0:
        return l1
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - ssim(image, gt))


class _FusedPhotometricLoss(torch.autograd.Function):
    """The fused kernel as an autograd node: the forward already computes d loss / d image, so
    the backward only scales it (the loss is a scalar, so grad_output is too)."""

    @staticmethod
    def forward(ctx, image: torch.Tensor, target_u8: torch.Tensor, background: torch.Tensor,
                lambda_dssim: float) -> torch.Tensor:
        loss, grad = fused.ext().photometric_loss_with_grad(image, target_u8, background,
                                                            float(lambda_dssim))
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None


def _use_fused(image: torch.Tensor, target_u8: torch.Tensor, background: torch.Tensor) -> bool:
    return (image.is_cuda and image.dtype == torch.float32 and target_u8.dtype == torch.uint8
            and background.dtype == torch.float32 and fused.available())


def training_loss(image: torch.Tensor, target_u8: torch.Tensor, background: torch.Tensor,
                  lambda_dssim: float) -> torch.Tensor:
    """``photometric_loss`` of a (3, H, W) render against ``composite_rgba(target_u8, background)``.

    ``target_u8`` is the (H, W, 3|4) uint8 ground truth (any device: it is moved to the render's).
    Returns a 0-d tensor, differentiable with respect to ``image``. Uses the fused CUDA kernel
    when it can (a float32 CUDA render and the extension built), PyTorch operations otherwise;
    both give the same value up to float32 rounding.
    """
    target_u8 = target_u8.to(image.device, non_blocking=True)
    background = background.to(image.device, non_blocking=True)
    if _use_fused(image, target_u8, background):
        return _FusedPhotometricLoss.apply(image, target_u8, background, lambda_dssim)
    return photometric_loss(image, composite_rgba(target_u8, background), lambda_dssim)
