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
from typing import Dict, Optional, Sequence

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


def footprint_box(camera: Camera, world: WorldGaussians, trainable: torch.Tensor) -> torch.Tensor:
    """The trainable rows' screen footprint (x_lo, y_lo, x_hi, y_hi) in pixels, on the device and
    without a sync: ``inf`` coordinates when no trainable Gaussian is in front of the camera."""
    xyz = world.xyz.detach()
    scale = world.scales.detach().amax(1)
    W2C = torch.as_tensor(camera.world_to_camera, dtype=xyz.dtype, device=xyz.device)
    p = xyz @ W2C[:3, :3].T + W2C[:3, 3]
    use = trainable & (p[:, 2] > NEAR)        # masked rather than indexed: no sync
    z = torch.where(use, p[:, 2], torch.ones_like(p[:, 2]))
    fx, fy = float(camera.K[0, 0]), float(camera.K[1, 1])
    cx, cy = float(camera.K[0, 2]), float(camera.K[1, 2])
    u = fx * p[:, 0] / z + cx
    v = fy * p[:, 1] / z + cy
    # 3 sigma of the projected largest axis, with the rasterizer's 0.3 px^2 low-pass, plus 1 px
    r = SAFETY * 3.0 * torch.sqrt((scale * max(fx, fy) / z) ** 2 + 0.3) + 1.0
    inf = torch.full_like(u, math.inf)
    return torch.stack([torch.where(use, u - r, inf).amin(), torch.where(use, v - r, inf).amin(),
                        torch.where(use, u + r, -inf).amax(), torch.where(use, v + r, -inf).amax()])


def crop_from_box(box: Sequence[float], width: int, height: int,
                  margin: int = 2 * SSIM_RADIUS, quantum: int = TILE) -> Optional[Crop]:
    """The tile-aligned crop of a ``width`` x ``height`` image holding ``box`` widened by
    ``margin`` pixels, its sides rounded up to multiples of ``quantum`` (a multiple of the tile:
    fewer distinct sizes let the rasterizer's per-size caches hit) except where they reach the
    image's edge; None when the box is empty or off the image."""
    if quantum <= 0 or quantum % TILE:
        raise ValueError(f"quantum must be a positive multiple of {TILE}, got {quantum}")
    if not math.isfinite(box[0]):
        return None
    W, H = width, height
    x_lo = math.floor(max(box[0], 0.0) / TILE) * TILE - margin
    y_lo = math.floor(max(box[1], 0.0) / TILE) * TILE - margin
    x_hi = math.ceil(min(box[2], W) / TILE) * TILE + margin
    y_hi = math.ceil(min(box[3], H) / TILE) * TILE + margin
    x0 = max(0, math.floor(x_lo / TILE) * TILE)
    y0 = max(0, math.floor(y_lo / TILE) * TILE)
    x1, y1 = min(W, x_hi), min(H, y_hi)
    if x1 <= x0 or y1 <= y0:
        return None

    def fit(lo: int, hi: int, full: int) -> int:   # a quantised size, clipped at the edge
        return min(math.ceil((hi - lo) / quantum) * quantum, full - lo)

    w, h = fit(x0, x1, W), fit(y0, y1, H)
    return Crop(x0, y0, w, h, W, H)


def footprint_crop(camera: Camera, world: WorldGaussians, trainable: torch.Tensor,
                   margin: int = 2 * SSIM_RADIUS) -> Optional[Crop]:
    """The crop for the rows of ``trainable`` ((N,) bool) posed as ``world``, or None when no
    trainable Gaussian is in front of the camera (one device sync)."""
    box = footprint_box(camera, world, trainable).tolist()
    return crop_from_box(box, camera.width, camera.height, margin)


class CropPlanner:
    """Crops for a run's local steps, without a device sync on a GPU.

    On the CPU each step's crop is its exact footprint (``footprint_crop``). On a GPU, reading the
    footprint back would stall the queue of kernels every step, so each step computes its
    footprint on the device, copies it to pinned memory asynchronously, and uses the footprint of
    the *previous* visit of the same image (long finished by then), widened by ``lag_pad`` pixels
    for the Gaussians' movement since; a first visit renders the whole image. Crop sides are
    rounded to ``quantum`` pixels and crop cameras are kept, so repeated crops reuse their
    matrices and the rasterizer's per-size plans.
    """

    def __init__(self, device: torch.device, lagged: Optional[bool] = None,
                 lag_pad: int = 2 * TILE, quantum: int = 4 * TILE, max_cameras: int = 8192):
        self.lagged = torch.device(device).type == "cuda" if lagged is None else lagged
        self.lag_pad = lag_pad
        self.quantum = quantum if self.lagged else TILE
        self.max_cameras = max_cameras
        self._boxes: Dict[int, tuple] = {}
        self._cameras: Dict[tuple, Camera] = {}

    def plan(self, camera: Camera, world: WorldGaussians,
             trainable: torch.Tensor) -> Optional[Crop]:
        """This step's crop of ``camera`` for the ``trainable`` rows (None: the whole image)."""
        if not self.lagged:
            return footprint_crop(camera, world, trainable)
        box = footprint_box(camera, world, trainable)
        host = torch.empty(4, dtype=box.dtype, pin_memory=box.is_cuda)
        host.copy_(box, non_blocking=True)
        event = None
        if box.is_cuda:
            event = torch.cuda.Event()
            event.record()
        previous = self._boxes.get(camera.uid)
        self._boxes[camera.uid] = (host, event)
        if previous is None:
            return None
        last, last_event = previous
        if last_event is not None:
            last_event.synchronize()          # recorded a visit ago: long complete
        x_lo, y_lo, x_hi, y_hi = last.tolist()
        pad = self.lag_pad
        return crop_from_box((x_lo - pad, y_lo - pad, x_hi + pad, y_hi + pad), camera.width,
                             camera.height, quantum=self.quantum)

    def camera(self, camera: Camera, crop: Crop) -> Camera:
        """``crop_camera``, kept per (image, crop) so its matrices stay on the device."""
        key = (camera.uid, crop)
        cam = self._cameras.get(key)
        if cam is None:
            if len(self._cameras) >= self.max_cameras:
                self._cameras.clear()
            cam = self._cameras[key] = crop_camera(camera, crop)
        return cam


def crop_camera(camera: Camera, crop: Crop) -> Camera:
    """The camera seeing only ``crop``: same pose and focal lengths, shifted principal point."""
    K = camera.K.copy()
    K[0, 2] -= crop.x0
    K[1, 2] -= crop.y0
    return dataclasses.replace(camera, width=crop.width, height=crop.height, K=K, image=None,
                               _cache={})
