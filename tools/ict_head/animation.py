"""A seeded performance at 25 fps: expression weights and head motion over time.

Events are drawn once for the whole sequence (their times, lengths and strengths) from a seeded
generator, then every frame's weights are smooth functions of time, so any frame can be
evaluated alone. What happens: talking in phrases (syllables at about 4.5 per second opening the
jaw and shaping the lips), smiles, brow raises and frowns, blinks every two to five seconds, gaze
shifts (quick saccades, then fixation), and the slow sway of a seated person's head (turns up to
15 degrees, about a centimetre of translation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FPS = 25.0
MAX_YAW_DEG = 15.0
PIVOT = np.array([0.0, -0.075, -0.01])   # the head turns about a point in the upper neck


@dataclass(frozen=True)
class Performance:
    """Weights (T, E) in the asset's expression order, and per frame a rotation (T, 3, 3) and a
    translation (T, 3) of the head about ``PIVOT``."""

    weights: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    names: tuple

    def weight(self, name: str) -> np.ndarray:
        return self.weights[:, self.names.index(name)]


def _envelope(t: np.ndarray, start: float, rise: float, hold: float, fall: float) -> np.ndarray:
    """0 -> 1 -> 0 with smooth ramps: up over ``rise`` s, ``hold`` s at 1, down over ``fall``."""
    def ramp(x):
        x = np.clip(x, 0.0, 1.0)
        return x * x * (3.0 - 2.0 * x)
    up = ramp((t - start) / max(rise, 1e-6))
    down = 1.0 - ramp((t - start - rise - hold) / max(fall, 1e-6))
    return up * down


def _events(rng: np.random.Generator, duration: float, gap: tuple[float, float],
            first: float = 0.3) -> np.ndarray:
    """Start times with gaps drawn uniformly from ``gap`` seconds."""
    times, t = [], first + rng.uniform(0.0, gap[0])
    while t < duration:
        times.append(t)
        t += rng.uniform(*gap)
    return np.array(times)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Ry @ Rx @ Rz


def _sway(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    """Sum of three slow sinusoids (0.05-0.4 Hz) with random phases, peak about ``amplitude``."""
    out = np.zeros_like(t)
    for _ in range(3):
        f = rng.uniform(0.05, 0.4)
        out += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return amplitude * out / 2.0


def perform(names: tuple, n_frames: int, seed: int = 0, fps: float = FPS) -> Performance:
    """The performance of ``n_frames`` frames at ``fps`` for a head with expression ``names``."""
    rng = np.random.default_rng([seed, 17])
    t = np.arange(n_frames) / fps
    duration = n_frames / fps + 1.0
    W = {n: np.zeros(n_frames) for n in names}

    def add(name, value):
        if name in W:
            W[name] += value

    # talking: phrases of 1.5-3.5 s with 0.6-1.5 s pauses; each syllable opens the jaw and
    # picks a lip shape (open, rounded, spread, closed)
    start = rng.uniform(0.0, 0.5)
    while start < duration:
        length = rng.uniform(1.5, 3.5)
        s = start
        while s < start + length:
            dur = rng.uniform(0.16, 0.28)
            amp = rng.uniform(0.15, 0.55)
            env = _envelope(t, s, dur * 0.45, 0.0, dur * 0.55)
            add("jawOpen", amp * env)
            shape = rng.integers(4)
            if shape == 1:
                add("mouthFunnel", rng.uniform(0.3, 0.7) * env)
                add("mouthPucker", rng.uniform(0.2, 0.5) * env)
            elif shape == 2:
                add("mouthStretch_L", rng.uniform(0.2, 0.5) * env)
                add("mouthStretch_R", rng.uniform(0.2, 0.5) * env)
            elif shape == 3:
                add("mouthClose", 0.8 * amp * env)
                add("mouthPress_L", 0.4 * env)
                add("mouthPress_R", 0.4 * env)
            add("mouthLowerDown_L", 0.3 * amp * env)
            add("mouthLowerDown_R", 0.3 * amp * env)
            add("mouthUpperUp_L", 0.2 * amp * env)
            add("mouthUpperUp_R", 0.2 * amp * env)
            s += dur
        start += length + rng.uniform(0.6, 1.5)
    # smiles: a ramp of 0.4-0.8 s, held 1-2.5 s, slightly lopsided
    for s in _events(rng, duration, (3.0, 7.0), first=0.8):
        env = _envelope(t, s, rng.uniform(0.4, 0.8), rng.uniform(1.0, 2.5), rng.uniform(0.5, 0.9))
        amp = rng.uniform(0.5, 0.9)
        lop = rng.uniform(-0.15, 0.15)
        for side, k in (("L", 1.0 + lop), ("R", 1.0 - lop)):
            add(f"mouthSmile_{side}", amp * k * env)
            add(f"cheekSquint_{side}", 0.5 * amp * env)
            add(f"eyeSquint_{side}", 0.25 * amp * env)
    # brows: raises and frowns
    for s in _events(rng, duration, (2.5, 6.0), first=1.5):
        env = _envelope(t, s, 0.3, rng.uniform(0.4, 1.2), 0.5)
        if rng.random() < 0.6:
            amp = rng.uniform(0.4, 0.9)
            for side in ("L", "R"):
                add(f"browInnerUp_{side}", amp * env)
                add(f"browOuterUp_{side}", 0.8 * amp * env)
                add(f"eyeWide_{side}", 0.3 * amp * env)
        else:
            amp = rng.uniform(0.4, 0.8)
            for side in ("L", "R"):
                add(f"browDown_{side}", amp * env)
                add(f"noseSneer_{side}", 0.2 * amp * env)
    # blinks every 2-5 s, about a quarter of a second each
    for s in _events(rng, duration, (2.0, 5.0), first=0.5):
        env = _envelope(t, s, 0.07, 0.04, 0.13)
        add("eyeBlink_L", env)
        add("eyeBlink_R", env)
    # gaze: saccades to a new target every 0.6-2 s
    gx = np.zeros(n_frames)
    gy = np.zeros(n_frames)
    for s in _events(rng, duration, (0.6, 2.0), first=0.0):
        step = np.clip((t - s) / 0.05, 0.0, 1.0)
        tx, ty = rng.uniform(-0.6, 0.6), rng.uniform(-0.35, 0.45)
        gx = gx + (tx - gx) * step * (t >= s)
        gy = gy + (ty - gy) * step * (t >= s)
    # gaze to the subject's left (+x): the left eye looks out, the right eye looks in
    add("eyeLookOut_L", np.clip(gx, 0, None))
    add("eyeLookIn_R", np.clip(gx, 0, None))
    add("eyeLookIn_L", np.clip(-gx, 0, None))
    add("eyeLookOut_R", np.clip(-gx, 0, None))
    for side in ("L", "R"):
        add(f"eyeLookUp_{side}", np.clip(gy, 0, None))
        add(f"eyeLookDown_{side}", np.clip(-gy, 0, None))
    weights = np.stack([np.clip(W[n], 0.0, 1.0) for n in names], 1)
    # head: slow sway
    yaw = np.clip(_sway(rng, t, np.radians(MAX_YAW_DEG)), -np.radians(MAX_YAW_DEG),
                  np.radians(MAX_YAW_DEG))
    pitch = _sway(rng, t, np.radians(7.0))
    roll = _sway(rng, t, np.radians(3.0))
    rot = np.stack([_rotation(a, b, c) for a, b, c in zip(yaw, pitch, roll)])
    trans = np.stack([_sway(rng, t, 0.008), _sway(rng, t, 0.004), _sway(rng, t, 0.008)], 1)
    return Performance(weights=weights, rotations=rot, translations=trans, names=tuple(names))
