"""Camera rig of the procedural head, and what both synthetic heads share about their rigs: the
rig ``Camera``, the splits (``RigSplits``: train, test, val) and their ``transforms_*.json``.

The procedural rig: training cameras on an arc in front of the head plus one held-out view.

Cameras look at a point just below the head centre from 0.7-0.9 m, yaw spread over -60..+60
degrees with a little pitch; the held-out validation camera sits between the two central training
cameras (a novel view inside the arc). The focal length frames 0.30 m of height at the camera's
distance. Some cameras get an off-centre principal point to exercise ``K``.

Conventions (those of the STGA format): ``K`` in pixels, x right, y down, origin at the image's
top-left corner with pixel (u, v) covering [u, u+1) x [v, v+1), so a centred camera has cx = W/2;
``c2w_gl`` is camera-to-world in OpenGL axes (x right, y up, z back);
``scene.cameras.opengl_c2w_to_opencv_w2c`` converts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scene.cameras import look_at_gl, opengl_c2w_to_opencv_w2c

TARGET = np.array([0.0, -0.018, 0.0])
FRAMED_HEIGHT = 0.30
YAW_RANGE_DEG = 60.0
_PITCH_DEG = (6.0, -4.0, 2.0, 8.0, -2.0, 4.0, -6.0, 0.0)
_DIST = (0.70, 0.85, 0.76, 0.90, 0.80, 0.72, 0.88, 0.78)
_PP_SHIFT = {1: (3.5, -2.5), 3: (-4.25, 3.0), 6: (2.0, 4.5)}   # pixels at 128 px wide


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in the STGA convention."""

    index: int            # camera id used in image names
    K: np.ndarray         # (3, 3)
    c2w_gl: np.ndarray    # (4, 4) camera-to-world, OpenGL axes
    width: int
    height: int
    held_out: bool        # the novel-view validation camera

    @property
    def w2c(self) -> np.ndarray:
        """World-to-camera in OpenCV axes (x right, y down, z forward)."""
        return opengl_c2w_to_opencv_w2c(self.c2w_gl)


class RigSplits:
    """The splits of a synthetic sequence filmed by a rig (mixed into the procedural and the
    realistic head's sequences, which give ``cameras``, ``train_keyframes`` and
    ``test_keyframes``): train = every training camera on the training keyframes, test = the
    training cameras on the held-out keyframes, val = the held-out camera on the training
    keyframes."""

    cameras: list[Camera]

    @property
    def train_cameras(self) -> list[Camera]:
        """The cameras of the train and test splits."""
        return [c for c in self.cameras if not c.held_out]

    @property
    def val_camera(self) -> Camera:
        """The held-out camera of the val (novel-view) split."""
        return next(c for c in self.cameras if c.held_out)


def image_name(keyframe: int, camera: int) -> str:
    """Image file stem for a keyframe seen by a camera."""
    return f"{keyframe:05d}_{camera:02d}"


def transforms_entry(keyframe: int, cam: Camera) -> dict:
    """One frame of a ``transforms_*.json`` file (the STGA format) for a rig camera."""
    return {"keyframe": int(keyframe), "camera_index": int(cam.index),
            "file_path": f"images/{image_name(keyframe, cam.index)}.png",
            "transform_matrix": np.asarray(cam.c2w_gl, np.float64).tolist(),
            "K": np.asarray(cam.K, np.float64).tolist(), "w": int(cam.width),
            "h": int(cam.height)}


def write_transforms(seq: RigSplits, root: Path) -> None:
    """``transforms_{train,test,val}.json`` of a rig sequence, one frame per line (compact, yet
    easy to read)."""
    splits = {
        "train": [transforms_entry(k, c) for k in seq.train_keyframes for c in seq.train_cameras],
        "test": [transforms_entry(k, c) for k in seq.test_keyframes for c in seq.train_cameras],
        "val": [transforms_entry(k, seq.val_camera) for k in seq.train_keyframes],
    }
    for name, frames in splits.items():
        body = ",\n  ".join(json.dumps(f) for f in frames)
        (Path(root) / f"transforms_{name}.json").write_text(f'{{"frames": [\n  {body}\n]}}\n')


def _camera(index: int, yaw: float, pitch: float, dist: float, shift: tuple[float, float],
            width: int, height: int, held_out: bool) -> Camera:
    y, p = np.radians(yaw), np.radians(pitch)
    pos = TARGET + dist * np.array([np.sin(y) * np.cos(p), np.sin(p), np.cos(y) * np.cos(p)])
    f = height * dist / FRAMED_HEIGHT
    scale = width / 128.0
    K = np.array([[f, 0.0, width / 2.0 + shift[0] * scale],
                  [0.0, f, height / 2.0 + shift[1] * scale],
                  [0.0, 0.0, 1.0]])
    return Camera(index=index, K=K, c2w_gl=look_at_gl(pos, TARGET), width=width, height=height,
                  held_out=held_out)


def build_cameras(n_train: int = 8, width: int = 128, height: int = 160) -> list[Camera]:
    """``n_train`` training cameras (indices 0..n-1, left to right) and the held-out camera
    (index n)."""
    if n_train < 2:
        raise ValueError("need at least 2 training cameras")
    yaws = np.linspace(-YAW_RANGE_DEG, YAW_RANGE_DEG, n_train)
    cams = [_camera(i, float(yaws[i]), _PITCH_DEG[i % 8], _DIST[i % 8],
                    _PP_SHIFT.get(i % 8, (0.0, 0.0)), width, height, False) for i in range(n_train)]
    mid = n_train // 2
    lo = mid - 1 if n_train % 2 == 0 else mid
    val_yaw = 0.5 * (yaws[lo] + yaws[lo + 1])
    cams.append(_camera(n_train, float(val_yaw), 3.0, 0.80, (0.0, 0.0), width, height, True))
    return cams
