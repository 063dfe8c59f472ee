"""Pinhole cameras with full intrinsics, and the matrices the rasterizer wants.

Conventions: intrinsics ``K`` in pixels with x right, y down and the origin at the image's top-left
corner, pixel (u, v) covering [u, u+1) x [v, v+1) (a centred camera has cx = W/2). Extrinsics as
world-to-camera in OpenCV axes (x right, y down, z forward). Dataset files store camera-to-world
in OpenGL/Blender axes (x right, y up, z back); ``opengl_c2w_to_opencv_w2c`` converts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from utils.images import composite_rgba

ZNEAR = 0.01
ZFAR = 100.0


def opengl_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world in OpenGL axes -> world-to-camera in OpenCV axes (4x4, float64)."""
    c2w = np.asarray(c2w, dtype=np.float64).copy()
    c2w[:3, 1:3] *= -1.0
    return np.linalg.inv(c2w)


def look_at_gl(position: np.ndarray, target: np.ndarray,
               up: np.ndarray = np.array([0.0, 1.0, 0.0])) -> np.ndarray:
    """OpenGL camera-to-world of a camera at ``position`` looking at ``target`` (y up)."""
    back = position - target
    back = back / np.linalg.norm(back)
    right = np.cross(up, back)
    right = right / np.linalg.norm(right)
    upv = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, upv, back, position
    return m


def intrinsics_from_fov(fov_x: float, fov_y: float, width: int, height: int) -> np.ndarray:
    """K of a centred camera with full fields of view ``fov_x``, ``fov_y`` (radians)."""
    fx = width / (2.0 * math.tan(fov_x / 2.0))
    fy = height / (2.0 * math.tan(fov_y / 2.0))
    return np.array([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])


def projection_matrix(K: np.ndarray, width: int, height: int, znear: float = ZNEAR,
                      zfar: float = ZFAR) -> np.ndarray:
    """OpenCV-camera projection to clip space with w = z, principal point included.

    ndc.x = 2 (fx x/z + cx) / W - 1, so pixel position = (ndc + 1) W / 2 in K's pixel convention.
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = np.zeros((4, 4))
    P[0, 0] = 2.0 * fx / width
    P[0, 2] = 2.0 * cx / width - 1.0
    P[1, 1] = 2.0 * fy / height
    P[1, 2] = 2.0 * cy / height - 1.0
    P[2, 2] = zfar / (zfar - znear)
    P[2, 3] = -zfar * znear / (zfar - znear)
    P[3, 2] = 1.0
    return P


@dataclass
class Camera:
    """One image of one split: where it was taken from, its intrinsics, its keyframe, its pixels.

    ``image`` is uint8 (H, W, 3) or (H, W, 4), on the CPU as loaded (training may move it to the
    GPU or pin it: training/image_feeder.py); ``gt_image`` composites it.
    """

    uid: int
    split: str
    image_name: str
    keyframe: int
    width: int
    height: int
    K: np.ndarray
    world_to_camera: np.ndarray
    image: Optional[torch.Tensor] = None
    camera_index: Optional[int] = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def tanfovx(self) -> float:
        return self.width / (2.0 * self.K[0, 0])

    @property
    def tanfovy(self) -> float:
        return self.height / (2.0 * self.K[1, 1])

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        R, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -R.T @ t

    def matrices(self, device: torch.device, dtype: torch.dtype = torch.float32):
        """(viewmatrix, projmatrix, campos) in the rasterizer's transposed layout, cached."""
        key = (str(device), dtype)
        if key not in self._cache:
            view = self.world_to_camera
            full = projection_matrix(self.K, self.width, self.height) @ view
            self._cache[key] = (
                torch.tensor(view.T, dtype=dtype, device=device),
                torch.tensor(full.T, dtype=dtype, device=device),
                torch.tensor(self.center, dtype=dtype, device=device),
            )
        return self._cache[key]

    def gt_image(self, background: torch.Tensor) -> torch.Tensor:
        """Ground truth (3, H, W) float in [0, 1], RGBA composited onto ``background`` (3,)."""
        if self.image is None:
            raise RuntimeError(f"camera {self.image_name} has no image loaded")
        return composite_rgba(self.image, background)

