"""Procedural texture atlas of the demo head, and bilinear sampling of it.

Skin texels are painted from their 3D position on the undecorated head surface (a solid texture
baked into the atlas), so noise scales are in millimetres on the face whatever the UV stretch:
skin-tone blotches, pores, freckles on the nose and cheeks, blush, eyebrows of hair strokes, a
hairline with strands, darker lips with fine vertical lines, lash lines along the eye slits and
nostrils. The eyeball, mouth cavity and teeth have their own rectangles (see :mod:`atlas`).
"""
from __future__ import annotations

import numpy as np

from scene.demo_head import atlas
from scene.demo_head.mesh import HeadMesh
from scene.demo_head.profile import (Y_BROW, Y_EYE, Y_MOUTH, Y_NOSE_TIP, base_surface,
                                     build_profile, phi_of_s, smoothstep)

_M32 = np.uint64(0xFFFFFFFF)


def _hash(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Integer lattice coordinates -> pseudo-random floats in [0, 1) (a 32-bit integer mixer)."""
    h = (ix.astype(np.int64).astype(np.uint64) * np.uint64(73856093)) \
        ^ (iy.astype(np.int64).astype(np.uint64) * np.uint64(19349663)) \
        ^ (iz.astype(np.int64).astype(np.uint64) * np.uint64(83492791)) \
        ^ np.uint64((seed * 2654435761) & 0xFFFFFFFF)
    h &= _M32
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & _M32
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & _M32
    h ^= h >> np.uint64(16)
    return h.astype(np.float64) * (1.0 / 4294967296.0)


def value_noise(p: np.ndarray, cell: np.ndarray | float, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] at points ``p`` (..., 3); ``cell`` = lattice spacing (per
    axis allowed: anisotropic cells give strands and strokes)."""
    f = p / np.asarray(cell, np.float64)
    i = np.floor(f)
    u = f - i
    u = u * u * (3.0 - 2.0 * u)
    i = i.astype(np.int64)
    out = np.zeros(p.shape[:-1])
    for dx in (0, 1):
        wx = u[..., 0] if dx else 1.0 - u[..., 0]
        for dy in (0, 1):
            wy = u[..., 1] if dy else 1.0 - u[..., 1]
            for dz in (0, 1):
                wz = u[..., 2] if dz else 1.0 - u[..., 2]
                out += wx * wy * wz * _hash(i[..., 0] + dx, i[..., 1] + dy, i[..., 2] + dz, seed)
    return out


def _mix(a: np.ndarray, b, w: np.ndarray) -> np.ndarray:
    return a + (np.asarray(b, np.float64) - a) * w[..., None]


def _bump(d2: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * d2)


def _paint_skin(mesh: HeadMesh, local: np.ndarray, seed: int) -> np.ndarray:
    profile = build_profile()
    s = 2.0 * local[..., 0] - 1.0
    t = local[..., 1]
    P, _ = base_surface(profile, s, t)
    x, y, z = P[..., 0], P[..., 1], P[..., 2]
    ax = np.abs(x)
    phi = np.abs(phi_of_s(s))
    front = smoothstep(0.02, 0.05, z)

    blot = 0.6 * value_noise(P, 0.018, seed) + 0.4 * value_noise(P, 0.007, seed + 1)
    col = np.empty(P.shape)
    col[...] = (0.86, 0.655, 0.555)
    col *= (0.93 + 0.14 * blot)[..., None]
    # blush on cheeks, nose tip and ears; a slightly paler, cooler neck
    red = 0.55 * _bump(((ax - 0.040) / 0.016) ** 2 + ((y - (Y_EYE - 0.030)) / 0.014) ** 2) * front
    red += 0.6 * _bump((x / 0.008) ** 2 + ((y - Y_NOSE_TIP) / 0.008) ** 2) * front
    red += 0.5 * _bump(((y - (Y_EYE - 0.014)) / 0.016) ** 2 + ((z + 0.006) / 0.012) ** 2) \
        * smoothstep(0.055, 0.072, ax)
    col = _mix(col, (0.86, 0.50, 0.46), 0.32 * np.clip(red, 0.0, 1.0))
    col = _mix(col, (0.80, 0.64, 0.56), 0.5 * smoothstep(-0.105, -0.14, y))
    # darker, slightly violet under the eyes
    under = _bump(((ax - mesh.eye_x) / 0.013) ** 2 + ((y - (Y_EYE - 0.011)) / 0.005) ** 2) * front
    col = _mix(col, (0.70, 0.52, 0.50), 0.35 * under)
    # freckles on the nose and cheeks, pores everywhere
    fmask = np.clip(_bump((x / 0.03) ** 2 + ((y - (Y_EYE - 0.022)) / 0.016) ** 2) * 1.2, 0, 1)
    spots = smoothstep(0.74, 0.80, value_noise(P, 0.0015, seed + 2)) * fmask * front
    col = _mix(col, (0.64, 0.42, 0.30), 0.6 * spots)
    pores = smoothstep(0.55, 0.9, value_noise(P, 0.0008, seed + 3))
    col *= (1.0 - 0.07 * pores)[..., None]
    # nostrils
    nos = _bump(((ax - 0.0062) / 0.0024) ** 2 + ((y - (Y_NOSE_TIP - 0.0105)) / 0.0014) ** 2) * front
    col = _mix(col, (0.32, 0.16, 0.13), 0.85 * np.clip(nos * 1.3, 0, 1))
    # ears: a darker rim (helix) and bowl, so they read from the side
    ey, ez = (y - (Y_EYE - 0.014)) / 0.017, (z + 0.006) / 0.0105
    er = np.sqrt(ey ** 2 + ez ** 2)
    side = smoothstep(0.06, 0.072, ax)
    rim = _bump(((er - 0.85) / 0.08) ** 2) * side
    bowl = smoothstep(0.55, 0.25, np.sqrt(ey ** 2 + (ez - 0.25) ** 2)) * side
    col = _mix(col, (0.62, 0.40, 0.34), 0.55 * rim + 0.45 * bowl)

    # lips: cupid's bow above, fuller below, fine vertical lines
    hw = mesh.mouth_half_width
    r = np.clip(1.0 - (x / hw) ** 2, 0.0, None)
    up_h = 0.0072 * r ** 0.5 + 0.0012 * _bump(((ax - 0.0052) / 0.0028) ** 2) \
        - 0.0010 * _bump((x / 0.0022) ** 2)
    lo_h = 0.0095 * r ** 0.6
    dy = y - Y_MOUTH
    lip = np.where(dy >= 0, smoothstep(0.0008, -0.0006, dy - up_h),
                   smoothstep(0.0008, -0.0006, -dy - lo_h)) * (r > 0) * front
    lines = value_noise(P, np.array([0.0007, 0.006, 0.0007]), seed + 4)
    lip_col = np.empty(P.shape)
    lip_col[...] = (0.73, 0.37, 0.39)
    lip_col *= (0.86 + 0.2 * lines)[..., None]
    lip_col = _mix(lip_col, (0.55, 0.24, 0.27), smoothstep(0.0025, 0.0, np.abs(dy)))
    col = _mix(col, lip_col, lip)

    # eyebrows: arched bands of strokes running outwards
    bx = ax - 0.009
    yc = Y_BROW + 0.003 + 0.0045 * (1.0 - ((ax - 0.031) / 0.025) ** 2)
    th = 0.0060 - 0.0030 * np.clip(bx / 0.047, 0.0, 1.0)
    brow = smoothstep(0.5 * th + 0.0008, 0.5 * th - 0.0006, np.abs(y - yc))
    brow *= smoothstep(0.0, 0.004, bx) * smoothstep(0.059, 0.052, ax) * front
    strokes = value_noise(P, np.array([0.004, 0.0006, 0.004]), seed + 5)
    col = _mix(col, (0.22, 0.15, 0.10), brow * (0.55 + 0.45 * strokes))

    # eyelids: a darker lid above each slit, dark lash lines on both edges
    L = profile.length
    t_eye = profile.t_of_y(Y_EYE)
    along = np.clip(1.0 - ((ax - mesh.eye_x) / mesh.eye_half_width) ** 2, 0.0, None)
    dt = (t - t_eye) * L            # metres down the face from the slit
    lid = smoothstep(-0.008, -0.002, dt) * smoothstep(0.0005, -0.0005, dt) * np.sqrt(along) * front
    col = _mix(col, (0.70, 0.50, 0.46), 0.55 * lid)
    lash_up = smoothstep(-0.0034, -0.0016, dt) * smoothstep(0.0002, -0.0001, dt)
    lash_lo = smoothstep(0.0011, 0.0004, dt) * smoothstep(-0.0001, 0.0001, dt)
    lash = np.clip(lash_up * along ** 0.3 + 0.7 * lash_lo * along ** 0.5, 0.0, 1.0) * front
    col = _mix(col, (0.10, 0.07, 0.06), lash)

    # scalp hair with a soft, slightly irregular hairline; strands run down the head
    yh = np.interp(phi, [0.0, 0.45, 0.85, 1.2, 1.42, 1.75, 2.3, np.pi],
                   [0.071, 0.075, 0.062, 0.034, 0.014, 0.016, -0.066, -0.074])
    edge = y + 0.004 * (value_noise(P, 0.004, seed + 6) - 0.5)
    hair = smoothstep(yh - 0.001, yh + 0.005, edge)
    strands = value_noise(P, np.array([0.0012, 0.02, 0.0012]), seed + 7)
    hair_col = np.empty(P.shape)
    hair_col[...] = (0.21, 0.135, 0.085)
    hair_col *= (0.7 + 0.55 * strands)[..., None]
    col = _mix(col, hair_col, hair)
    return col


def _paint_eye(local: np.ndarray, seed: int) -> np.ndarray:
    d = local - 0.5
    r = np.hypot(d[..., 0], d[..., 1])
    alpha = 2.0 * np.pi * r                     # angle from the gaze direction
    beta = np.arctan2(-d[..., 1], d[..., 0])
    q = np.stack([np.cos(beta) * 0.03, np.sin(beta) * 0.03, alpha * 0.004], -1)
    col = np.empty(local.shape[:-1] + (3,))
    col[...] = (0.94, 0.92, 0.89)
    veins = smoothstep(0.8, 0.86, value_noise(q * np.array([1, 1, 3]), 0.0008, seed + 10))
    col = _mix(col, (0.85, 0.55, 0.55), 0.4 * veins * smoothstep(0.9, 1.4, alpha))
    col *= (1.0 - 0.12 * smoothstep(0.6, 1.4, alpha))[..., None]
    iris_r, pupil_r = 0.56, 0.21
    streak = value_noise(q, np.array([0.0009, 0.0009, 0.01]), seed + 11)
    iris = np.empty_like(col)
    iris[...] = (0.30, 0.45, 0.56)
    iris = _mix(iris, (0.45, 0.36, 0.20), smoothstep(0.32, 0.2, alpha))   # amber ring round pupil
    iris *= (0.65 + 0.6 * streak)[..., None]
    iris = _mix(iris, (0.10, 0.12, 0.15), smoothstep(iris_r - 0.1, iris_r, alpha))  # limbus
    col = _mix(col, iris, smoothstep(iris_r + 0.02, iris_r - 0.02, alpha))
    col = _mix(col, (0.03, 0.03, 0.035), smoothstep(pupil_r + 0.015, pupil_r - 0.015, alpha))
    return col


def _paint_cavity(local: np.ndarray, seed: int) -> np.ndarray:
    d = local - 0.5
    r = np.hypot(d[..., 0], d[..., 1])
    alpha = 2.0 * np.pi * r
    beta = np.arctan2(-d[..., 1], d[..., 0])
    dy = np.sin(alpha) * np.sin(beta)
    n = value_noise(np.stack([alpha, beta, np.zeros_like(alpha)], -1) * 0.01, 0.002, seed + 20)
    col = np.empty(local.shape[:-1] + (3,))
    col[...] = (0.34, 0.08, 0.09)
    col *= (0.8 + 0.4 * n)[..., None]
    tongue = smoothstep(-0.15, -0.4, dy) * smoothstep(1.5, 1.0, alpha)
    col = _mix(col, (0.66, 0.30, 0.32), tongue)
    col *= (1.0 - 0.6 * smoothstep(0.8, 2.0, alpha))[..., None]
    return col


def _paint_teeth(local: np.ndarray) -> np.ndarray:
    x = local[..., 0] * 0.038 - 0.019
    v = local[..., 1]
    ax = np.abs(x)
    col = np.empty(local.shape[:-1] + (3,))
    col[...] = (0.93, 0.91, 0.84)
    gaps = sum(_bump(((ax - g) / 0.0005) ** 2) for g in (0.0, 0.0085, 0.0150))
    col *= (1.0 - 0.55 * np.clip(gaps, 0, 1))[..., None]
    vv = np.where(v < 0.5, v / 0.5, (1.0 - v) / 0.5)   # 0 at the gum edge, 1 at the biting edge
    col = _mix(col, (0.78, 0.43, 0.46), smoothstep(0.2, 0.12, vv))
    col = _mix(col, (0.70, 0.70, 0.68), 0.5 * smoothstep(0.85, 1.0, vv))
    return col


def build_texture(mesh: HeadMesh, size: int = 1024, seed: int = 0) -> np.ndarray:
    """(size, size, 3) float32 texture atlas in [0, 1] (sRGB values)."""
    tex = np.empty((size, size, 3))
    tex[...] = (0.86, 0.655, 0.555)
    for rect, painter in ((atlas.SKIN, lambda g: _paint_skin(mesh, g, seed)),
                          (atlas.EYE, lambda g: _paint_eye(g, seed)),
                          (atlas.CAVITY, lambda g: _paint_cavity(g, seed)),
                          (atlas.TEETH, _paint_teeth)):
        rows, cols, grid = atlas.texel_grid(rect, size)
        tex[rows, cols] = painter(grid)
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


def sample_bilinear(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``tex`` (H, W, C) at atlas coordinates ``uv`` (N, 2) -> (N, C)."""
    H, W = tex.shape[:2]
    x = np.clip(uv[:, 0] * W - 0.5, 0.0, W - 1.0)
    y = np.clip(uv[:, 1] * H - 0.5, 0.0, H - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2)
    fx = (x - x0)[:, None].astype(np.float32)
    fy = (y - y0)[:, None].astype(np.float32)
    t00, t01 = tex[y0, x0], tex[y0, x0 + 1]
    t10, t11 = tex[y0 + 1, x0], tex[y0 + 1, x0 + 1]
    top = t00 + (t01 - t00) * fx
    bot = t10 + (t11 - t10) * fx
    return top + (bot - top) * fy
