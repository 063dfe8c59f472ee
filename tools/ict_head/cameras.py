"""A camera rig like NeRSemble's: 16 cameras on a frontal arc about a metre from the head.

Cameras 0-15 sweep from the subject's right to left (yaw -70 to +70 degrees), alternating
between an upper and a lower row, at 0.96-1.04 m; portrait images 550 wide and 802 tall at full
size, the focal length framing 0.34 m of height at 1 m, principal points a few pixels off centre
(fixed per camera). Camera 8, just right of centre, is held out as the novel-view (val) camera,
as GaussianAvatars holds out one of NeRSemble's 16. Smaller sizes scale the intrinsics.
"""
from __future__ import annotations

import numpy as np

from scene.cameras import look_at_gl
from scene.demo_head.cameras import Camera

FULL_WIDTH, FULL_HEIGHT = 550, 802
N_CAMERAS = 16
TARGET = np.array([0.0, -0.012, 0.02])
FRAMED_HEIGHT = 0.34
YAW_DEG = 70.0
ROW_PITCH_DEG = (9.0, -4.0)


def build_rig(width: int = FULL_WIDTH, height: int = FULL_HEIGHT,
              n_cameras: int = N_CAMERAS) -> list[Camera]:
    """All cameras of the rig (index = position on the arc); ``held_out`` marks the val camera.

    ``n_cameras`` below 16 spreads fewer cameras over the same arc (the held-out one stays the
    one just right of the middle)."""
    if n_cameras < 3:
        raise ValueError(f"the rig needs at least 3 cameras, got {n_cameras}")
    rng = np.random.default_rng(20260101)          # fixed: the rig is the same for every seed
    shifts = rng.uniform(-6.0, 6.0, size=(n_cameras, 2))
    yaws = np.linspace(-YAW_DEG, YAW_DEG, n_cameras)
    val = n_cameras // 2
    cams = []
    for i in range(n_cameras):
        yaw = np.radians(yaws[i])
        pitch = np.radians(ROW_PITCH_DEG[i % 2])
        dist = 1.0 + 0.04 * np.sin(1.7 * i + 0.3)
        pos = TARGET + dist * np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch),
                                        np.cos(yaw) * np.cos(pitch)])
        f = FULL_HEIGHT * dist / FRAMED_HEIGHT
        sx, sy = width / FULL_WIDTH, height / FULL_HEIGHT
        K = np.array([[f * sx, 0.0, (FULL_WIDTH / 2 + shifts[i, 0]) * sx],
                      [0.0, f * sy, (FULL_HEIGHT / 2 + shifts[i, 1]) * sy],
                      [0.0, 0.0, 1.0]])
        cams.append(Camera(index=i, K=K, c2w_gl=look_at_gl(pos, TARGET), width=width,
                           height=height, held_out=i == val))
    return cams
