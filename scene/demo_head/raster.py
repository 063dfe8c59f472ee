"""Textured triangle-mesh z-buffer renderer (numpy, vectorised): the demo's ground truth.

Independent of the Gaussian rasterizer on purpose. Pixel convention: pixel (u, v) covers
[u, u+1) x [v, v+1), so with ``ss`` x ``ss`` supersampling the sub-sample (i, j) of the fine grid
sits at ((i + 0.5) / ss, (j + 0.5) / ss) in pixel units; with odd ``ss`` the central sub-sample is
the pixel centre. Each triangle's bounding box rows are cut to the exact span the triangle covers
on that row, the spans are expanded into candidate samples in batches, barycentrics are tested in
screen space, depth and attributes are interpolated perspective-correctly, and the nearest
candidate per sample wins (ties go to the lower face id).

Colour = bilinear texture x interpolated shading factor; back faces (seen only through the eye
corners and the open mouth, since the skin is a closed shell) take a dark interior colour. The
result is box-filtered down: RGB is the mean colour of the covered sub-samples, alpha the covered
fraction, and the region label is that of the central sub-sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from scene.demo_head.texture import sample_bilinear

NEAR = 1e-4
INTERIOR_RGB = (0.22, 0.07, 0.07)   # colour of a back face: the inside of the head
_EPS = 1e-9   # barycentric tolerance: neighbouring triangles overlap by a hair, never leave gaps


@dataclass(frozen=True)
class RenderOutput:
    """One rendered view: colour with coverage, and what surface each pixel centre sees."""

    rgba: np.ndarray     # (H, W, 4) float32, straight (not premultiplied) alpha
    region: np.ndarray   # (H, W) uint8 label of the surface at the pixel's central sub-sample
    face: np.ndarray     # (H, W) int64 face at the central sub-sample, -1 for background


def _rasterize(xy: np.ndarray, z: np.ndarray, faces: np.ndarray, W: int, H: int,
               max_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest face and perspective-correct barycentrics per sample of a W x H grid.

    ``xy`` (V, 2): vertex positions in sample units (sample (i, j) centred at (i + .5, j + .5));
    ``z`` (V,): positive camera depth. Returns face (H*W,) int64 (-1 = empty) and bary (H*W, 3).
    The depth test packs (float32 depth bits, face id) into one uint64 key and keeps the minimum
    per sample with ``np.minimum.at``: nearest wins, ties go to the lower face id.
    """
    tri = xy[faces]                                  # (F, 3, 2)
    tz = z[faces]                                    # (F, 3)
    e1 = tri[:, 1] - tri[:, 0]
    e2 = tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    lo = np.ceil(tri.min(1) - 0.5)                   # first sample centre >= the box's min
    hi = np.floor(tri.max(1) - 0.5)                  # last sample centre <= the box's max
    i0 = np.clip(lo[:, 0], 0, W).astype(np.int64)
    i1 = np.clip(hi[:, 0], -1, W - 1).astype(np.int64)
    j0 = np.clip(lo[:, 1], 0, H).astype(np.int64)
    j1 = np.clip(hi[:, 1], -1, H - 1).astype(np.int64)
    bw = np.maximum(i1 - i0 + 1, 0)
    bh = np.maximum(j1 - j0 + 1, 0)
    keep = (bw > 0) & (bh > 0) & (np.abs(det) > 1e-12) & np.all(tz > NEAR, axis=1)
    ids = np.nonzero(keep)[0]
    sdet = np.where(det == 0, 1.0, det)
    iz = 1.0 / np.where(keep[:, None], tz, 1.0)
    # per face: corner 0, the inverse of [e1 e2] (screen offset -> (l1, l2)), inverse depths
    params = np.stack([tri[:, 0, 0], tri[:, 0, 1], e2[:, 1] / sdet, -e2[:, 0] / sdet,
                       -e1[:, 1] / sdet, e1[:, 0] / sdet, iz[:, 0], iz[:, 1], iz[:, 2]], -1)
    empty = np.iinfo(np.uint64).max
    best = np.full(W * H, empty, np.uint64)
    if ids.size == 0:
        return np.full(W * H, -1, np.int64), np.zeros((W * H, 3))
    # 1) one entry per (face, sample row) of its box, with the exact span of the row inside it:
    #    each barycentric is linear in x along a row, l_k = A_k dx + C_k >= -EPS
    nr = bh[ids]
    rface = np.repeat(ids, nr)
    rj = np.take(j0, rface) + (np.arange(rface.size) - np.repeat(np.cumsum(nr) - nr, nr))
    P = np.take(params, rface, axis=0)
    dy = rj + 0.5 - P[:, 1]
    A = np.stack([-(P[:, 2] + P[:, 4]), P[:, 2], P[:, 4]], -1)
    C = np.stack([1.0 - (P[:, 3] + P[:, 5]) * dy, P[:, 3] * dy, P[:, 5] * dy], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (-_EPS - C) / A
    lower = np.max(np.where(A > 0, bound, -np.inf), 1)
    upper = np.min(np.where(A < 0, bound, np.inf), 1)
    dead = np.any((A == 0) & (C < -_EPS), 1)
    lo_i = np.ceil(np.maximum(lower + P[:, 0] - 0.5 - 1e-6, np.take(i0, rface) - 0.5))
    hi_i = np.floor(np.minimum(upper + P[:, 0] - 0.5 + 1e-6, np.take(i1, rface) + 0.5))
    span = np.where(dead, 0, np.maximum(hi_i - lo_i + 1, 0)).astype(np.int64)
    live = span > 0
    rface, rj, lo_i, span = rface[live], rj[live], lo_i[live].astype(np.int64), span[live]
    # 2) expand the spans into candidate samples, in batches; exact test, depth, z-buffer
    bounds = np.concatenate([[0], np.cumsum(span)])
    start = 0
    while start < rface.size:
        stop = int(np.searchsorted(bounds, bounds[start] + max_candidates, side="right")) - 1
        stop = max(stop, start + 1)
        cnt = span[start:stop]
        owner = np.repeat(np.arange(start, stop), cnt)
        si = np.take(lo_i, owner) + (np.arange(owner.size) - np.repeat(bounds[start:stop]
                                                                       - bounds[start], cnt))
        sj = np.take(rj, owner)
        fo = np.take(rface, owner)
        P = np.take(params, fo, axis=0)     # np.take: much faster than fancy indexing here
        dx = si + 0.5 - P[:, 0]
        dy = sj + 0.5 - P[:, 1]
        l1 = P[:, 2] * dx + P[:, 3] * dy
        l2 = P[:, 4] * dx + P[:, 5] * dy
        l0 = 1.0 - l1 - l2
        inside = (l0 >= -_EPS) & (l1 >= -_EPS) & (l2 >= -_EPS)
        inv_depth = (l0 * P[:, 6] + l1 * P[:, 7] + l2 * P[:, 8])[inside]
        depth = (1.0 / inv_depth).astype(np.float32)
        key = (depth.view(np.uint32).astype(np.uint64) << np.uint64(32)) \
            | fo[inside].astype(np.uint64)
        np.minimum.at(best, (sj * W + si)[inside], key)
        start = stop
    covered = best != empty
    face = np.full(W * H, -1, np.int64)
    face[covered] = (best[covered] & np.uint64(0xFFFFFFFF)).astype(np.int64)
    # perspective-correct barycentrics of the winners (clamped: samples on an edge may sit a hair
    # outside it)
    bary = np.zeros((W * H, 3))
    pix = np.nonzero(covered)[0]
    P = np.take(params, face[pix], axis=0)
    dx = pix % W + 0.5 - P[:, 0]
    dy = pix // W + 0.5 - P[:, 1]
    l1 = P[:, 2] * dx + P[:, 3] * dy
    l2 = P[:, 4] * dx + P[:, 5] * dy
    lam = np.clip(np.stack([1.0 - l1 - l2, l1, l2], -1), 0.0, None)
    wgt = lam * P[:, 6:9]
    bary[pix] = wgt / np.maximum(wgt.sum(1, keepdims=True), 1e-30)
    return face, bary


def render_mesh(verts: np.ndarray, faces: np.ndarray, uv: np.ndarray, shade: np.ndarray,
                face_label: np.ndarray, texture: np.ndarray, K: np.ndarray, w2c: np.ndarray,
                width: int, height: int, supersample: int = 3,
                interior_rgb: tuple[float, float, float] = INTERIOR_RGB,
                max_candidates: int = 2_000_000) -> RenderOutput:
    """Render a textured mesh seen by an OpenCV camera (``K`` in pixels, ``w2c`` 4x4).

    ``verts`` (V, 3) world, ``faces`` (F, 3), ``uv`` (F, 3, 2) atlas coordinates per corner,
    ``shade`` (V,) shading factor, ``face_label`` (F,) uint8 region per face.
    """
    ss = int(supersample)
    W, H = width * ss, height * ss
    cam = verts @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    zs = np.where(z > NEAR, z, 1.0)
    proj = cam @ K.T
    xy = np.stack([proj[:, 0] / zs, proj[:, 1] / zs], -1) * ss
    face_of, bary = _rasterize(xy, z, faces, W, H, max_candidates)
    covered = face_of >= 0
    fc = face_of[covered]
    b = bary[covered]
    uvs = np.einsum("nk,nkc->nc", b, uv[fc])
    sh = np.einsum("nk,nk->n", b, shade[faces[fc]])
    tri = cam[faces[fc]]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    front = np.einsum("nc,nc->n", normal, -tri[:, 0]) > 0
    rgb = sample_bilinear(texture, uvs) * sh[:, None].astype(np.float32)
    rgb[~front] = interior_rgb
    col = np.zeros((W * H, 3), np.float32)
    col[covered] = rgb
    acc = np.concatenate([col, covered.astype(np.float32)[:, None]], -1).reshape(H, W, 4)
    if ss > 1:
        acc = cv2.resize(acc, (width, height), interpolation=cv2.INTER_AREA)
    alpha = acc[..., 3]
    rgb = acc[..., :3] / np.maximum(alpha, 1e-12)[..., None]
    rgba = np.concatenate([np.clip(rgb, 0.0, 1.0), alpha[..., None]], -1).astype(np.float32)
    rgba[..., 3] = np.clip(rgba[..., 3], 0.0, 1.0)
    c = ss // 2
    centre = face_of.reshape(height, ss, width, ss)[:, c, :, c]
    region = np.where(centre >= 0, face_label[np.maximum(centre, 0)], 0).astype(np.uint8)
    return RenderOutput(rgba=rgba, region=region, face=centre)
