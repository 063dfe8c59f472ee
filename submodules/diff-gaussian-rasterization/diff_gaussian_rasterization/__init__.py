"""Differentiable 3D Gaussian splatting rasterizer with the 3DGS Python API.

Two backends implement one function (see the package README for its exact definition):
``torch_backend`` (pure PyTorch, any device; the reference) and ``cuda_backend`` (the CUDA
extension). ``GaussianRasterizer`` picks CUDA for CUDA tensors when the extension is available.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn

from . import cuda_backend, torch_backend

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "cuda_available"]


class GaussianRasterizationSettings(NamedTuple):
    """Camera and image settings for one rasterization call (field names as in 3DGS)."""

    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    bg: torch.Tensor
    scale_modifier: float
    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    sh_degree: int
    campos: torch.Tensor
    prefiltered: bool
    debug: bool


def cuda_available() -> bool:
    """True when the CUDA extension can be used (built, or compiled on first use)."""
    return cuda_backend.available()


def rasterize_gaussians(
    settings: GaussianRasterizationSettings,
    means3D: torch.Tensor,
    means2D: torch.Tensor,
    opacities: torch.Tensor,
    shs: Optional[torch.Tensor] = None,
    colors_precomp: Optional[torch.Tensor] = None,
    scales: Optional[torch.Tensor] = None,
    rotations: Optional[torch.Tensor] = None,
    cov3D_precomp: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Render ``(color (3,H,W), radii (N,) int32)``; ``backend`` is "auto", "torch" or "cuda"."""
    if (shs is None) == (colors_precomp is None):
        raise ValueError("pass exactly one of shs and colors_precomp")
    if (cov3D_precomp is None) == (scales is None or rotations is None):
        raise ValueError("pass either scales and rotations, or cov3D_precomp")
    if backend not in ("auto", "torch", "cuda"):
        raise ValueError(f"unknown backend {backend!r}: use 'auto', 'torch' or 'cuda'")
    use_cuda = backend == "cuda" or (backend == "auto" and means3D.is_cuda
                                     and cuda_backend.available())
    impl = cuda_backend if use_cuda else torch_backend
    return impl.rasterize(settings, means3D, means2D, opacities, shs, colors_precomp, scales,
                          rotations, cov3D_precomp)


class GaussianRasterizer(nn.Module):
    """The 3DGS module interface: construct with settings, call with the Gaussians."""

    def __init__(self, raster_settings: GaussianRasterizationSettings, backend: str = "auto"):
        super().__init__()
        self.raster_settings = raster_settings
        self.backend = backend

    def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                rotations=None, cov3D_precomp=None):
        return rasterize_gaussians(self.raster_settings, means3D, means2D, opacities, shs,
                                   colors_precomp, scales, rotations, cov3D_precomp,
                                   backend=self.backend)

    def markVisible(self, positions: torch.Tensor) -> torch.Tensor:
        """Boolean mask of points in front of the near plane (3DGS API)."""
        with torch.no_grad():
            vm = self.raster_settings.viewmatrix.to(positions)
            hom = torch.cat([positions, torch.ones_like(positions[:, :1])], dim=1)
            return (hom @ vm)[:, 2] > 0.2
