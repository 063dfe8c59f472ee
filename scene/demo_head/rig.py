"""Animation of the demo head: an expression per keyframe and the pose it gives the mesh.

Expression parameters: jaw opening, blink, smile, gaze and a small rigid head motion. Posing
order: smile offsets, eyelids (rotation about the eyes' axis; a blink of 1 closes the slit), gaze
(eyeballs about their centres), jaw (weighted rotation about a pivot near the ears), then the rigid
head motion. The schedule puts every event's peak on a training keyframe, so test keyframes
(interleaved) stay inside the range the training frames cover.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scene.demo_head.mesh import HeadMesh, JAW_PIVOT

JAW_MAX = np.radians(15.0)
GAZE_MAX = np.radians((7.0, 4.0))       # yaw, pitch
HEAD_ROT_MAX = np.radians((4.0, 3.0, 2.0))  # yaw, pitch, roll
HEAD_SHIFT_MAX = np.array([0.004, 0.003, 0.004])


@dataclass(frozen=True)
class Expression:
    """Animation parameters of one keyframe (arrays over keyframes when batched)."""

    jaw: float           # 0 closed .. 1 fully open
    blink: float         # 0 open .. 1 closed
    smile: float         # 0 .. 1
    gaze: np.ndarray     # (2,) yaw, pitch in radians
    head_R: np.ndarray   # (3, 3) rigid rotation head -> world
    head_t: np.ndarray   # (3,) rigid translation (metres)


def rot_x(a: float) -> np.ndarray:
    """Rotation by ``a`` radians about +x (positive opens the jaw, lowers a front point)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a: float) -> np.ndarray:
    """Rotation by ``a`` radians about +y (yaw)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a: float) -> np.ndarray:
    """Rotation by ``a`` radians about +z (roll)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def split_keyframes(n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Keyframe ids 0..T-1 split into train and test, test ones interleaved (never first/last)."""
    T = n_train + n_test
    if n_train < 2:
        raise ValueError("need at least 2 training keyframes")
    test = np.array(sorted({int((i + 0.5) * T / n_test) for i in range(n_test)}), np.int64) \
        if n_test > 0 else np.zeros(0, np.int64)
    test = np.clip(test, 1, T - 2)
    if len(np.unique(test)) != n_test:
        raise ValueError(f"cannot interleave {n_test} test keyframes among {T}")
    train = np.setdiff1d(np.arange(T), test)
    return train, test


def _snap(u: float, train_u: np.ndarray) -> float:
    return float(train_u[np.argmin(np.abs(train_u - u))])


def expression_schedule(n_train: int, n_test: int, seed: int = 0) -> list[Expression]:
    """One expression per keyframe (index = keyframe id). The first keyframe is near neutral."""
    train, _ = split_keyframes(n_train, n_test)
    T = n_train + n_test
    u = np.arange(T) / max(T - 1, 1)
    tu = train / max(T - 1, 1)
    rng = np.random.default_rng(seed + 7919)
    ph = rng.uniform(0.0, 2.0 * np.pi, 8)
    step = 1.0 / max(T - 1, 1)

    def bump(centre: float, width: float) -> np.ndarray:
        # an event peaking on the training keyframe nearest to ``centre``
        c = _snap(centre, tu)
        return np.exp(-0.5 * ((u - c) / max(width, 0.6 * step)) ** 2)

    jaw = np.clip(bump(0.27, 0.07) + 0.65 * bump(0.86, 0.06), 0.0, 1.0)
    blink = np.clip(bump(0.46, 0.028) + bump(0.74, 0.025), 0.0, 1.0)
    smile = np.clip(bump(0.60, 0.08) + 0.5 * bump(0.90, 0.05), 0.0, 1.0)
    jaw[0] = blink[0] = smile[0] = 0.0
    out = []
    for k in range(T):
        gz = GAZE_MAX * np.sin(2 * np.pi * np.array([1.3, 0.9]) * u[k] + ph[:2])
        ang = HEAD_ROT_MAX * np.sin(2 * np.pi * np.array([0.8, 1.1, 0.6]) * u[k] + ph[2:5])
        sh = HEAD_SHIFT_MAX * np.sin(2 * np.pi * np.array([0.7, 1.0, 0.5]) * u[k] + ph[5:8])
        R = rot_y(ang[0]) @ rot_x(ang[1]) @ rot_z(ang[2])
        out.append(Expression(jaw=float(jaw[k]), blink=float(blink[k]), smile=float(smile[k]),
                              gaze=gz, head_R=R, head_t=sh))
    return out


def _rotate_x_about(p: np.ndarray, centre: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate points ``p`` (N, 3) about the x-parallel line through ``centre``, per-point angles."""
    d = p - centre
    c, s = np.cos(angle), np.sin(angle)
    y = c * d[:, 1] - s * d[:, 2]
    z = s * d[:, 1] + c * d[:, 2]
    return np.stack([p[:, 0], centre[1] + y, centre[2] + z], -1)


def pose_local(mesh: HeadMesh, ex: Expression) -> np.ndarray:
    """(V, 3) vertices in head space (before the rigid head motion)."""
    p = mesh.rest + ex.smile * mesh.smile_offset
    lid = mesh.lid_angle * (1.0 - ex.blink)
    moving = lid != 0.0
    p[moving] = _rotate_x_about(p[moving], mesh.lid_axis, lid[moving])
    G = rot_y(float(ex.gaze[0])) @ rot_x(-float(ex.gaze[1]))
    for k, c in enumerate(mesh.eye_centres):
        sel = mesh.eye_of_vertex == k
        p[sel] = (p[sel] - c) @ G.T + c
    w = mesh.jaw_weight
    sel = w > 0.0
    jawed = (p[sel] - JAW_PIVOT) @ rot_x(ex.jaw * JAW_MAX).T + JAW_PIVOT
    p[sel] = p[sel] + w[sel, None] * (jawed - p[sel])
    return p


def pose(mesh: HeadMesh, ex: Expression) -> np.ndarray:
    """(V, 3) world vertices of the mesh for expression ``ex``."""
    return pose_local(mesh, ex) @ ex.head_R.T + ex.head_t
