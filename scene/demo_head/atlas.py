"""Texture atlas layout: which rectangle of the one texture image each part of the head uses.

UV convention used throughout the demo head: (0, 0) is the top-left corner of the texture image,
u grows to the right and v downwards, and texel (i, j) has its centre at ((i + 0.5) / W,
(j + 0.5) / H).
"""
from __future__ import annotations

import numpy as np

# (u0, v0, width, height) in atlas units
SKIN = (0.0, 0.0, 1.0, 0.75)
EYE = (0.0, 0.75, 0.25, 0.25)
CAVITY = (0.25, 0.75, 0.25, 0.25)
TEETH = (0.50, 0.75, 0.25, 0.25)
INSET = 0.94  # fraction of a small rectangle actually used, so bilinear taps never cross rects


def to_atlas(rect: tuple[float, float, float, float], local: np.ndarray,
             inset: float = INSET) -> np.ndarray:
    """Map local coordinates in [0, 1]^2 into ``rect``, shrunk by ``inset`` about its centre."""
    u0, v0, w, h = rect
    local = 0.5 + (np.asarray(local, np.float64) - 0.5) * inset
    return np.stack([u0 + local[..., 0] * w, v0 + local[..., 1] * h], -1)


def texel_grid(rect: tuple[float, float, float, float], size: int
               ) -> tuple[slice, slice, np.ndarray]:
    """Rows/columns of a ``size`` x ``size`` texture covered by ``rect`` and the local [0, 1]^2
    coordinates of their texel centres (the inverse of :func:`to_atlas`), shape (h, w, 2)."""
    u0, v0, w, h = rect
    c0, c1 = int(round(u0 * size)), int(round((u0 + w) * size))
    r0, r1 = int(round(v0 * size)), int(round((v0 + h) * size))
    uu = (np.arange(c0, c1) + 0.5) / size
    vv = (np.arange(r0, r1) + 0.5) / size
    inset = 1.0 if rect == SKIN else INSET
    lu = 0.5 + ((uu - u0) / w - 0.5) / inset
    lv = 0.5 + ((vv - v0) / h - 0.5) / inset
    grid = np.stack(np.meshgrid(lu, lv, indexing="xy"), -1)
    return slice(r0, r1), slice(c0, c1), grid
