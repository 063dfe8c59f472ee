"""Local steps that cost what they train: render and score only the part of the image that the
trainable Gaussians can reach.

In a selective step only pixels that trainable Gaussians touch carry gradient to them, and the
D-SSIM term spreads that dependence by the SSIM window's radius. So the crop is the trainable
Gaussians' screen footprint (each one's conservative radius box, grown to whole 16-pixel tiles,
because the rasterizer lists a Gaussian in every tile its box touches), widened by twice the
window radius (pixels whose SSIM reads a footprint pixel, then the windows of those pixels),
with its origin on the tile grid so that the crop's tiles are the full image's tiles. Inside the
crop the frozen Gaussians are rendered as usual: a crop is the same camera with a smaller image
and a shifted principal point. Scored with the loss scaled by crop pixels / image pixels, the
trainable rows get the gradients of the full-image step (float rounding aside).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from scene.cameras import Camera
from scene.gaussian_model import WorldGaussians

TILE = 16                 # the rasterizer's tile size (both backends)
SSIM_RADIUS = 5           # the 11x11 window of the loss's SSIM
NEAR = 0.2                # the rasterizer's near plane (camera-space depth)
SAFETY = 1.25             # radius bound over 3 sigma of the largest axis (perspective stretch)


@dataclass(frozen=True)
class Crop:
    """A window of a camera's image: origin (x0, y0) and size, in the full image's pixels."""

    x0: int
    y0: int
    width: int
    height: int
    full_width: int
    full_height: int

    @property
    def fraction(self) -> float:
        """Crop pixels / image pixels: the loss's scale factor."""
        return self.width * self.height / (self.full_width * self.full_height)

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)


def footprint_crop(camera: Camera, world: WorldGaussians, trainable: torch.Tensor,
                   margin: int = 2 * SSIM_RADIUS) -> Optional[Crop]:
    """The crop for the rows of ``trainable`` ((N,) bool) posed as ``world``, or None when no
    trainable Gaussian is in front of the camera (one device sync)."""
    xyz = world.xyz.detach()
    scale = world.scales.detach().amax(1)
    W2C = torch.as_tensor(camera.world_to_camera, dtype=xyz.dtype, device=xyz.device)
    p = xyz @ W2C[:3, :3].T + W2C[:3, 3]
    use = trainable & (p[:, 2] > NEAR)        # masked rather than indexed: no sync until .tolist
    z = torch.where(use, p[:, 2], torch.ones_like(p[:, 2]))
    fx, fy = float(camera.K[0, 0]), float(camera.K[1, 1])
    cx, cy = float(camera.K[0, 2]), float(camera.K[1, 2])
    u = fx * p[:, 0] / z + cx
    v = fy * p[:, 1] / z + cy
    # 3 sigma of the projected largest axis, with the rasterizer's 0.3 px^2 low-pass, plus 1 px
    r = SAFETY * 3.0 * torch.sqrt((scale * max(fx, fy) / z) ** 2 + 0.3) + 1.0
    inf = torch.full_like(u, math.inf)
    box = torch.stack([torch.where(use, u - r, inf).amin(), torch.where(use, v - r, inf).amin(),
                       torch.where(use, u + r, -inf).amax(),
                       torch.where(use, v + r, -inf).amax()]).tolist()
    if box[0] == math.inf:                    # no trainable Gaussian in front of the camera
        return None
    W, H = camera.width, camera.height
    x_lo = math.floor(max(box[0], 0.0) / TILE) * TILE - margin
    y_lo = math.floor(max(box[1], 0.0) / TILE) * TILE - margin
    x_hi = math.ceil(min(box[2], W) / TILE) * TILE + margin
    y_hi = math.ceil(min(box[3], H) / TILE) * TILE + margin
    x0 = max(0, math.floor(x_lo / TILE) * TILE)
    y0 = max(0, math.floor(y_lo / TILE) * TILE)
    x1, y1 = min(W, x_hi), min(H, y_hi)
    if x1 <= x0 or y1 <= y0:
        return None
    return Crop(x0, y0, x1 - x0, y1 - y0, W, H)


def crop_camera(camera: Camera, crop: Crop) -> Camera:
    """The camera seeing only ``crop``: same pose and focal lengths, shifted principal point."""
    K = camera.K.copy()
    K[0, 2] -= crop.x0
    K[1, 2] -= crop.y0
    return dataclasses.replace(camera, width=crop.width, height=crop.height, K=K, image=None,
                               _cache={})
