"""The photometric training loss of 3DGS: (1 - w) L1 + w (1 - SSIM)."""
from __future__ import annotations

import torch

from utils.image_metrics import ssim


def photometric_loss(image: torch.Tensor, gt: torch.Tensor, lambda_dssim: float) -> torch.Tensor:
    l1 = (image - gt).abs().mean()
    if lambda_dssim == 0.0:
        return l1
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - ssim(image, gt))
