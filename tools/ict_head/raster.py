"""Triangle z-buffer in PyTorch: which face every sample of a camera's image sees, and where.

The ground-truth renderer of the realistic head, independent of the Gaussian rasterizer on
purpose, and device-agnostic (the large data set is rendered on a GPU in seconds, the demo on a
CPU). Conventions: ``K`` in pixels with x right, y down, the origin at the image's top-left
corner, pixel (u, v) covering [u, u+1) x [v, v+1); with ``ss`` x ``ss`` supersampling, sample
(i, j) of the fine grid sits at ((i + 0.5) / ss, (j + 0.5) / ss) pixels.

Every triangle's bounding box of sample centres is expanded into candidate samples (in batches
that bound memory), barycentrics are tested in screen space, and the nearest candidate per
sample wins: (float32 depth bits, face id) packed into one int64 key, reduced with ``amin``,
so the result does not depend on the order of the work (ties go to the lower face id).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NEAR = 1e-3
EMPTY = torch.iinfo(torch.int64).max
_EPS = 1e-7   # barycentric tolerance: neighbouring triangles overlap by a hair, never leave gaps


@dataclass
class Fragments:
    """What each sample sees: ``face`` (S,) int64, -1 for none; ``bary`` (S, 3) perspective-correct
    barycentrics of that face's corners (zero where empty). S = H * W samples, row-major."""

    face: torch.Tensor
    bary: torch.Tensor
    height: int
    width: int

    @property
    def covered(self) -> torch.Tensor:
        return self.face >= 0


def project(vertices: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, ss: int = 1
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample-grid positions (V, 2) and camera depths (V,) of world ``vertices`` (V, 3)."""
    cam = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    zs = torch.where(z > NEAR, z, torch.ones_like(z))
    proj = cam @ K.T
    xy = torch.stack([proj[:, 0] / zs, proj[:, 1] / zs], -1) * ss
    return xy, z


def rasterize(xy: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, width: int, height: int,
              batch: int = 1 << 22) -> Fragments:
    """Nearest face per sample of a ``width`` x ``height`` grid.

    ``xy`` (V, 2) float64 or float32 vertex positions in sample units, ``z`` (V,) camera depth,
    ``faces`` (F, 3) int64. Triangles with a corner behind ``NEAR`` are skipped (the renders
    never need clipping: the head is far in front of every camera).
    """
    dev = xy.device
    W, H = int(width), int(height)
    tri = xy[faces].double()                        # (F, 3, 2)
    tz = z[faces].double()
    e1 = tri[:, 1] - tri[:, 0]
    e2 = tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    lo = torch.ceil(tri.amin(1) - 0.5)
    hi = torch.floor(tri.amax(1) - 0.5)
    i0 = lo[:, 0].clamp(0, W).long()
    i1 = hi[:, 0].clamp(-1, W - 1).long()
    j0 = lo[:, 1].clamp(0, H).long()
    j1 = hi[:, 1].clamp(-1, H - 1).long()
    bw = (i1 - i0 + 1).clamp_min(0)
    bh = (j1 - j0 + 1).clamp_min(0)
    keep = (bw > 0) & (bh > 0) & (det.abs() > 1e-12) & (tz > NEAR).all(1)
    ids = torch.nonzero(keep).squeeze(1)
    best = torch.full((W * H,), EMPTY, dtype=torch.int64, device=dev)
    sdet = torch.where(det == 0, torch.ones_like(det), det)
    # per face: corner 0, the inverse of [e1 e2] (screen offset -> (l1, l2)), inverse depths
    params = torch.stack([tri[:, 0, 0], tri[:, 0, 1], e2[:, 1] / sdet, -e2[:, 0] / sdet,
                          -e1[:, 1] / sdet, e1[:, 0] / sdet], -1)
    inv_z = 1.0 / torch.where(keep[:, None], tz, torch.ones_like(tz))
    if ids.numel():
        count = (bw * bh)[ids]
        ends = torch.cumsum(count, 0)
        # split the triangles into runs of at most ``batch`` candidate samples
        cuts = torch.searchsorted(ends, torch.arange(batch, int(ends[-1]) + batch, batch,
                                                     device=dev), right=True).tolist()
        start = 0
        for stop in cuts:
            stop = max(stop, start + 1)
            if start >= ids.numel():
                break
            _splat(best, ids[start:stop], count[start:stop], i0, j0, bw, params, inv_z, W, H)
            start = stop
    covered = best != EMPTY
    face = torch.where(covered, best & 0xFFFFFFFF, torch.full_like(best, -1))
    bary = torch.zeros(W * H, 3, dtype=torch.float64, device=dev)
    pix = torch.nonzero(covered).squeeze(1)
    if pix.numel():
        f = face[pix]
        l0, l1, l2 = _barycentrics(params[f], (pix % W).double() + 0.5,
                                   torch.div(pix, W, rounding_mode="floor").double() + 0.5)
        lam = torch.stack([l0, l1, l2], -1).clamp_min(0.0) * inv_z[f]
        bary[pix] = lam / lam.sum(1, keepdim=True).clamp_min(1e-30)
    return Fragments(face=face, bary=bary, height=H, width=W)


def _barycentrics(P: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor):
    dx = sx - P[:, 0]
    dy = sy - P[:, 1]
    l1 = P[:, 2] * dx + P[:, 3] * dy
    l2 = P[:, 4] * dx + P[:, 5] * dy
    return 1.0 - l1 - l2, l1, l2


def _splat(best: torch.Tensor, ids: torch.Tensor, count: torch.Tensor, i0: torch.Tensor,
           j0: torch.Tensor, bw: torch.Tensor, params: torch.Tensor, inv_z: torch.Tensor,
           W: int, H: int) -> None:
    """Depth-test the candidate samples of the triangles ``ids`` into ``best``."""
    owner = torch.repeat_interleave(ids, count)
    first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    local = torch.arange(owner.numel(), device=ids.device) - first
    w = bw[owner]
    si = i0[owner] + local % w
    sj = j0[owner] + torch.div(local, w, rounding_mode="floor")
    l0, l1, l2 = _barycentrics(params[owner], si.double() + 0.5, sj.double() + 0.5)
    inside = (l0 >= -_EPS) & (l1 >= -_EPS) & (l2 >= -_EPS)
    owner, si, sj = owner[inside], si[inside], sj[inside]
    iz = inv_z[owner]
    inv_depth = l0[inside] * iz[:, 0] + l1[inside] * iz[:, 1] + l2[inside] * iz[:, 2]
    depth = (1.0 / inv_depth).float()
    key = (depth.view(torch.int32).long() << 32) | owner
    best.scatter_reduce_(0, sj * W + si, key, reduce="amin")
