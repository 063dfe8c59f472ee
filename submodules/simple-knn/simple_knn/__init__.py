"""Exact nearest-neighbour distances for initialising Gaussian scales (the 3DGS ``distCUDA2``).

``distCUDA2(points)`` returns, for every point, the mean of the squared distances to its 3
nearest *other* points, written in plain PyTorch so that it runs on any device.

Method (exact, memory-bounded, no per-point Python loop):

1. Points are sorted along a Morton (Z-order) curve; the distances to the ``WINDOW`` points on
   either side in that order give each point an upper bound ``ub`` on its 3rd-nearest squared
   distance (they are real points, so the true 3 nearest are at most that far).
2. Every point is then compared with all points inside the cube of half-side ``sqrt(ub)``
   around it, found through a uniform grid whose cell side is at least twice that half-side
   (so the cube meets at most 2 x 2 x 2 cells). Points are grouped by cell size on a ladder of
   sizes; each group uses one grid. Candidates are processed in chunks of ``MAX_PAIRS``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["distCUDA2"]

K = 3                 # neighbours averaged
WINDOW = 8            # Morton-order neighbours on each side used for the upper bound
MAX_PAIRS = 1 << 22   # candidate pairs evaluated at once (bounds memory)
LADDER = math.sqrt(2.0)   # ratio between consecutive grid cell sizes
BITS = 20             # grid and Morton resolution per axis


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits between the low 21 bits of ``v`` (int64), for Morton codes."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def _upper_bounds(pts: torch.Tensor, lo: torch.Tensor, span: float, k: int) -> torch.Tensor:
    """k-th smallest squared distance to the Morton-order neighbours of each point (N,)."""
    n = pts.shape[0]
    cells = ((pts - lo) * ((2 ** BITS - 1) / span)).long()
    code = _spread_bits(cells[:, 0]) | (_spread_bits(cells[:, 1]) << 1) \
        | (_spread_bits(cells[:, 2]) << 2)
    order = torch.argsort(code)
    srt = pts[order]
    w = min(WINDOW, n - 1)
    dists = []
    for off in range(1, w + 1):
        d = (srt[off:] - srt[:-off]).square().sum(1)
        inf = d.new_full((off,), math.inf)
        dists += [torch.cat([d, inf]), torch.cat([inf, d])]   # neighbour after, before
    best = torch.stack(dists, dim=1).topk(k, dim=1, largest=False).values[:, -1]
    ub = torch.empty_like(best)
    ub[order] = best
    return ub


def _k_smallest(d: torch.Tensor, seg: torch.Tensor, n_seg: int, k: int) -> torch.Tensor:
    """The k smallest values (n_seg, k) of ``d`` within each segment ``seg`` (inf if fewer).

    ``d`` is modified: each round takes every segment's minimum and removes one occurrence of it
    (the first), so duplicate distances are counted as often as they occur.
    """
    out = d.new_full((n_seg, k), math.inf)
    pos = torch.arange(d.shape[0], device=d.device)
    none = d.shape[0]
    for r in range(k):
        m = d.new_full((n_seg,), math.inf).scatter_reduce_(0, seg, d, "amin")
        out[:, r] = m
        at_min = torch.where(d == m[seg], pos, none)
        first = torch.full((n_seg,), none, device=d.device).scatter_reduce_(0, seg, at_min,
                                                                             "amin")
        first = first[first < none]
        d[first] = math.inf
    return out


def _search(pts: torch.Tensor, lo: torch.Tensor, query: torch.Tensor, radius: torch.Tensor,
            cell: float, k: int) -> torch.Tensor:
    """Exact k smallest squared distances (Q, k) from points ``query`` to the other points.

    Every other point within ``radius`` (Q,) of its query point (per axis) is a candidate;
    ``cell >= 2 * radius`` is the grid cell side.
    """
    device = pts.device
    # integer cell coordinates, shifted by 1 so that query cubes (which may reach one cell
    # beyond the points on either side) stay in [0, side) and keys never alias
    coords = torch.floor((pts - lo) / cell).long() + 1
    side = int(coords.max()) + 2
    keys = (coords[:, 0] * side + coords[:, 1]) * side + coords[:, 2]
    sorted_keys, perm = torch.sort(keys)
    srt = pts[perm]
    qp = pts[query]
    low = torch.floor((qp - radius[:, None] - lo) / cell).long() + 1
    high = torch.floor((qp + radius[:, None] - lo) / cell).long() + 1
    corners = torch.tensor([[i, j, l] for i in (0, 1) for j in (0, 1) for l in (0, 1)],
                           device=device)
    c = low[:, None, :] + corners                                       # (Q, 8, 3)
    inside = (c <= high[:, None, :]).all(2)
    ckeys = (c[..., 0] * side + c[..., 1]) * side + c[..., 2]
    start = torch.searchsorted(sorted_keys, ckeys)
    count = (torch.searchsorted(sorted_keys, ckeys, right=True) - start) * inside
    per_query = count.sum(1)
    out = pts.new_empty((query.shape[0], k))
    # chunks of queries with at most MAX_PAIRS candidates (a single query may exceed it)
    bounds = torch.cumsum(per_query, 0)
    q0 = 0
    n_q = query.shape[0]
    while q0 < n_q:
        base = int(bounds[q0 - 1]) if q0 else 0
        q1 = int(torch.searchsorted(bounds, base + MAX_PAIRS, right=True))
        q1 = max(q1, q0 + 1)
        cnt = count[q0:q1].reshape(-1)
        total = int(cnt.sum())
        cell_of = torch.repeat_interleave(torch.arange(cnt.shape[0], device=device), cnt,
                                          output_size=total)
        offset = torch.arange(total, device=device) - torch.repeat_interleave(
            torch.cumsum(cnt, 0) - cnt, cnt, output_size=total)
        slot = start[q0:q1].reshape(-1)[cell_of] + offset        # position in sorted order
        seg = torch.div(cell_of, 8, rounding_mode="floor")
        d = (srt.index_select(0, slot) - qp[q0:q1].index_select(0, seg)).square().sum(1)
        d[perm.index_select(0, slot) == query[q0:q1].index_select(0, seg)] = math.inf
        out[q0:q1] = _k_smallest(d, seg, q1 - q0, k)
        q0 = q1
    return out


@torch.no_grad()
def distCUDA2(points: torch.Tensor) -> torch.Tensor:
    """Mean squared distance (N,) float32 from each point (N,3) to its 3 nearest other points.

    Exact (computed in float64), on the device of ``points``. Duplicate points count as
    neighbours at distance 0. With fewer than 4 points the mean is over the N - 1 others, and a
    single point gets 0 (no neighbour; 3DGS clamps the result from below before use).
    """
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {tuple(points.shape)}")
    n = points.shape[0]
    if n <= 1:
        return torch.zeros(n, dtype=torch.float32, device=points.device)
    pts = points.detach().to(torch.float64)
    k = min(K, n - 1)
    lo = pts.min(0).values
    span = float((pts.max(0).values - lo).max())
    if span == 0.0:                                  # all points coincide
        return torch.zeros(n, dtype=torch.float32, device=points.device)
    ub = _upper_bounds(pts, lo, span, k)
    result = ub.new_zeros(n)                          # ub == 0: k duplicates, exactly 0
    todo = torch.nonzero(ub > 0).squeeze(1)
    if todo.numel():
        radius = ub[todo].sqrt() * (1.0 + 1e-6) + span * 1e-12
        # cell side: the smallest ladder step >= 2 radius, and not finer than the grid limit
        finest = span / 2 ** BITS
        need = 2.0 * radius * (1.0 + 1e-9)         # margin: the cube spans <= 2 cells per axis
        level = torch.ceil(torch.log(need / finest) / math.log(LADDER)).clamp_(min=0)
        for lv in torch.unique(level).tolist():
            sel = torch.nonzero(level == lv).squeeze(1)
            best = _search(pts, lo, todo[sel], radius[sel], finest * LADDER ** lv, k)
            result[todo[sel]] = best.mean(1)
    return result.to(torch.float32)
