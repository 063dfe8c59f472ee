"""Ground-truth images: uint8 pixels as stored by the dataset, to the float targets of the loss.

Kept separate from ``Camera`` so that the training loss (``training/loss.py``), which can take the
uint8 image straight to the fused CUDA kernel, and the PyTorch fallback share one definition of
the compositing.
"""
from __future__ import annotations

import torch

__all__ = ["composite_rgba"]


def composite_rgba(image_u8: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(H, W, 3|4) uint8 -> (3, H, W) float in [0, 1] on ``background``'s device.

    RGB is divided by 255; RGBA is composited onto ``background`` (3,):
    ``rgb * a + background * (1 - a)`` with ``a = alpha / 255``. The result is float32 for a
    float32 background (the dtype of the float32 pixels combined with the background's).
    """
    if image_u8.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image, got {image_u8.dtype}")
    if image_u8.dim() != 3 or image_u8.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) or (H, W, 4) image, got {tuple(image_u8.shape)}")
    if background.numel() != 3:
        raise ValueError(f"background must hold 3 values, got shape {tuple(background.shape)}")
    img = image_u8.to(background.device, non_blocking=True).permute(2, 0, 1).float() / 255.0
    if img.shape[0] == 4:
        alpha = img[3:4]
        return img[:3] * alpha + background.view(3, 1, 1) * (1.0 - alpha)
    return img
