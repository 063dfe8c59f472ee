"""Pure-PyTorch reference backend of the rasterizer (any device, float32 or float64).

It computes exactly the function defined in the package README. Per-Gaussian work (projection,
covariances, spherical harmonics) is ordinary autograd code on (N, ...) tensors; the blending
is one custom autograd function with a hand-written backward, because letting autograd record
every (pixel, Gaussian) intermediate costs several times the time and memory.

Speed comes from not evaluating (pixel, Gaussian) pairs that cannot matter, without changing
the result:

* Pixels are evaluated in small square blocks (4, 8 or 16 px, dividing the 16 px tiles of the
  definition; chosen per call from the Gaussians' footprints, or fixed by ``BLOCK``). A
  block's list is its tile's list (same depth order) minus the Gaussians whose alpha is below
  1/255 at every pixel of the block, which the definition skips anyway. The test uses the
  bounding box of the ellipse ``opacity * exp(power) >= 1/255``, enlarged by a safety margin.
* Lists are processed in windows of ``WINDOW`` slots, front to back, carrying the
  transmittance; a block whose pixels have all stopped is dropped from later windows. At most
  ``MAX_ENTRIES`` (block, slot, pixel) entries are evaluated at once, however long a list is;
  the forward keeps the weights of up to ``SAVE_ENTRIES`` entries for the backward and has the
  backward recompute the rest.

The power ``-0.5 (a dx^2 + c dy^2) - b dx dy`` is a quadratic polynomial in the pixel
coordinates, so for a block it is one matrix product of a fixed per-pixel basis
``[1, u, v, u^2, v^2, u v]`` (block-centred coordinates, for precision) with six
coefficients per (block, Gaussian); ``log(opacity)`` is folded into the constant. For a
positive-definite conic ``power <= 0`` holds mathematically, so the definition's
``power > 0`` skip never fires; Gaussians whose 2D covariance is not positive definite are
never blended here (by the definition, only at a pixel centre exactly on their mean).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from . import GaussianRasterizationSettings

__all__ = ["rasterize", "compute_sh_colors"]

TILE = 16                 # tile size of the definition (lists, radii)
BLOCK: Optional[int] = None  # evaluation block size (4, 8 or 16); None: chosen per call
WINDOW = 32               # list slots evaluated per pass
MAX_ENTRIES = 1 << 20     # (block, slot, pixel) entries per batch: bounds temporary memory
SAVE_ENTRIES = 1 << 24    # entries whose weights the forward keeps for the backward

NEAR = 0.2
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


# --------------------------------------------------------------------------- per Gaussian

def compute_sh_colors(sh: torch.Tensor, dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """RGB (M,3) from SH coefficients (M,K,3) in unit directions (M,3), before +0.5 and clamp.

    Uses the first ``(degree+1)^2`` coefficients with the real SH basis of 3DGS.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {degree}")
    n_coef = (degree + 1) ** 2
    if sh.shape[1] < n_coef:
        raise ValueError(f"shs has {sh.shape[1]} coefficients, degree {degree} needs {n_coef}")
    x, y, z = dirs.unbind(1)
    cols = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        cols += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        cols += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy),
                 SH_C2[3] * x * z, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z,
                 SH_C3[2] * y * (4 * zz - xx - yy), SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
                 SH_C3[4] * x * (4 * zz - xx - yy), SH_C3[5] * z * (xx - yy),
                 SH_C3[6] * x * (xx - 3 * yy)]
    basis = torch.stack(cols, dim=1)
    # an elementwise product and sum: batched tiny matmuls are slow on CPU
    return (basis[:, :, None] * sh[:, :n_coef]).sum(1)


def _quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (M,3,3) from quaternions (M,4), w first, any non-zero norm."""
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=1).view(-1, 3, 3)


def _screen_covariance(row0: torch.Tensor, row1: torch.Tensor, scales: Optional[torch.Tensor],
                       rotations: Optional[torch.Tensor], cov3D: Optional[torch.Tensor],
                       modifier: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries a, b, c of ``T Sigma T^T`` for ``T = J Wr`` with rows ``row0``, ``row1`` (M,3).

    With ``Sigma = R S S R^T`` this is ``U U^T`` for ``U = T R S``.
    """
    if cov3D is not None:
        xx, xy, xz, yy, yz, zz = cov3D.unbind(1)
        sigma = torch.stack([xx, xy, xz, xy, yy, yz, xz, yz, zz], dim=1).view(-1, 3, 3)
        s0 = (sigma * row0[:, None, :]).sum(2)
        s1 = (sigma * row1[:, None, :]).sum(2)
        return (s0 * row0).sum(1), (s0 * row1).sum(1), (s1 * row1).sum(1)
    rot = _quaternion_to_matrix(rotations)
    s = scales * modifier
    u0 = (row0[:, :, None] * rot).sum(1) * s
    u1 = (row1[:, :, None] * rot).sum(1) * s
    return (u0 * u0).sum(1), (u0 * u1).sum(1), (u1 * u1).sum(1)


def _background(bg: torch.Tensor, height: int, width: int,
                *inputs: Optional[torch.Tensor]) -> torch.Tensor:
    """The background image, in the graph of every input that needs a gradient (so that an
    empty render still gives zero gradients, as a non-empty one does). The link is a sum over
    an empty slice: exactly zero even if an input holds inf or NaN."""
    image = bg[:, None, None].expand(3, height, width).clone()
    for t in inputs:
        if t is not None and t.requires_grad:
            image = image + t.reshape(-1)[:0].sum()
    return image


# --------------------------------------------------------------------------- lists

def _ellipse_boxes(px: torch.Tensor, py: torch.Tensor, cov_a: torch.Tensor, cov_c: torch.Tensor,
                   opacity: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel columns and rows (M,4: x0, x1, y0, y1, inclusive, clipped to the image) whose
    centres lie in the bounding box of the ellipse ``opacity exp(power) >= 1/255``.

    The ellipse ``d^T conic d <= q`` has half-widths ``sqrt(q Sigma'_xx)``, ``sqrt(q Sigma'_yy)``;
    it is enlarged by a margin so that rounding can never drop a pixel the definition blends.
    """
    q = 2.0 * torch.log(opacity * 255.0) * (1.0 + 1e-3) + 1e-6
    hx = torch.sqrt(q * cov_a) * (1.0 + 1e-4) + 1e-3
    hy = torch.sqrt(q * cov_c) * (1.0 + 1e-4) + 1e-3
    # pixel u is in iff its centre u + 0.5 is in [p - h, p + h]
    return torch.stack([torch.ceil(px - hx - 0.5).clamp_(min=0),
                        torch.floor(px + hx - 0.5).clamp_(max=width - 1),
                        torch.ceil(py - hy - 0.5).clamp_(min=0),
                        torch.floor(py + hy - 0.5).clamp_(max=height - 1)], dim=1).long()


def _choose_block(box: torch.Tensor) -> int:
    """Evaluation block size (4, 8 or 16 px) with the least estimated work for these boxes.

    Per (block, Gaussian) pair: a fixed cost (sorting, coefficients), about what ~10 pixel
    evaluations cost, plus one per pixel of the block. Only speed depends on the choice.
    """
    if BLOCK is not None:
        return BLOCK
    w = (box[:, 1] - box[:, 0] + 1).clamp(min=0).to(torch.float32)
    h = (box[:, 3] - box[:, 2] + 1).clamp(min=0).to(torch.float32)
    costs = [float(((w / b + 1) * (h / b + 1) * (b * b + 10)).sum()) for b in (4, 8, 16)]
    return (4, 8, 16)[costs.index(min(costs))]


def _block_pairs(box: torch.Tensor, depth: torch.Tensor, rect: torch.Tensor, block: int,
                 nby: int, nbx: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(block, Gaussian) pairs sorted by block then depth: (Gaussian of each, count per block).

    Blocks (``block`` px square, row-major) are listed for a Gaussian iff its tile rectangle
    ``rect`` (M,4: tile columns x0, x1, rows y0, y1, half-open) covers them and they hold a
    pixel of its ellipse box ``box`` (from ``_ellipse_boxes``). Inputs are detached.
    """
    device = box.device
    m = box.shape[0]
    per = TILE // block
    bx0 = torch.maximum(torch.div(box[:, 0], block, rounding_mode="floor"), rect[:, 0] * per)
    bx1 = torch.minimum(torch.div(box[:, 1], block, rounding_mode="floor") + 1, rect[:, 1] * per)
    by0 = torch.maximum(torch.div(box[:, 2], block, rounding_mode="floor"), rect[:, 2] * per)
    by1 = torch.minimum(torch.div(box[:, 3], block, rounding_mode="floor") + 1, rect[:, 3] * per)
    wx = (bx1 - bx0).clamp_(min=0)
    n = wx * (by1 - by0).clamp_(min=0)
    total = int(n.sum())
    gid = torch.repeat_interleave(torch.arange(m, device=device), n, output_size=total)
    local = torch.arange(total, device=device) - torch.repeat_interleave(
        torch.cumsum(n, 0) - n, n, output_size=total)
    wg = wx[gid]
    row = torch.div(local, wg, rounding_mode="floor")
    blk = (by0[gid] + row) * nbx + bx0[gid] + (local - row * wg)
    # depth rank; ties keep the lower index (subset indices increase with the original ones)
    by_depth = torch.argsort(depth, stable=True)
    rank = torch.empty_like(by_depth)
    rank[by_depth] = torch.arange(m, device=device)
    key, _ = torch.sort(blk * m + rank[gid])
    blk = torch.div(key, m, rounding_mode="floor")
    counts = torch.bincount(blk, minlength=nby * nbx)
    return by_depth[key - blk * m], counts


def _pixel_basis(block: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-pixel polynomial basis (block^2, 6) in block-centred pixel-centre coordinates."""
    r = torch.arange(block, dtype=dtype, device=device) + 0.5 - block / 2
    v, u = torch.meshgrid(r, r, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([torch.ones_like(u), u, v, u * u, v * v, u * v], dim=1)


def _below(value: float, dtype: torch.dtype) -> float:
    """Largest number of ``dtype`` below ``value``: ``x > _below(v)`` means ``x >= v``."""
    v = torch.tensor(value, dtype=dtype)
    return torch.nextafter(v, torch.tensor(-math.inf, dtype=dtype)).item()


class _Plan:
    """Image block grid and the layout of the list slots, window by window.

    Blocks with a non-empty list are ordered longest list first (``order``), so the blocks that
    still have slots in window ``j`` are the first ``sizes[j]`` of them. Rows
    ``offsets[j] : offsets[j] + sizes[j]`` of the slot table (``WINDOW`` slots each) belong to
    window ``j``: slot ``k`` of block ``order[a]`` holds entry ``j * WINDOW + k`` of its list,
    or the padding index ``dummy``. ``slot_centre`` gives each row's block centre in pixels.
    """

    def __init__(self, height: int, width: int, block: int, counts: torch.Tensor,
                 pair_gauss: torch.Tensor, dummy: int, dtype: torch.dtype):
        device = counts.device
        self.height, self.width, self.block = height, width, block
        self.nby, self.nbx = -(-height // block), -(-width // block)
        self.basis = _pixel_basis(block, dtype, device)
        self.thresholds = (_below(ALPHA_MIN, dtype), _below(T_MIN, dtype))
        # initial transmittance: 0 on padding pixels outside the image, so they never blend
        ys = torch.arange(self.nby * block, device=device) < height
        xs = torch.arange(self.nbx * block, device=device) < width
        self.t_init = self.to_blocks((ys[:, None] & xs[None, :]).to(dtype)[None])[..., 0]
        order = torch.argsort(counts, descending=True, stable=True)
        self.order = order[:int((counts > 0).sum())]
        cnt = counts[self.order]
        n_win = -(-int(cnt[0]) // WINDOW) if cnt.numel() else 0
        limits = torch.arange(n_win, device=device) * WINDOW
        sizes = torch.searchsorted(-cnt, -limits)          # blocks with more than j*WINDOW
        self.sizes: List[int] = sizes.tolist()
        self.offsets: List[int] = (torch.cumsum(sizes, 0) - sizes).tolist()
        total = int(sizes.sum())
        win = torch.repeat_interleave(torch.arange(n_win, device=device), sizes,
                                      output_size=total)
        pos = torch.arange(total, device=device) - torch.repeat_interleave(
            torch.cumsum(sizes, 0) - sizes, sizes, output_size=total)
        k = win[:, None] * WINDOW + torch.arange(WINDOW, device=device)
        valid = k < cnt[pos, None]
        starts = torch.cumsum(counts, 0) - counts
        rows = torch.where(valid, starts[self.order[pos], None] + k, 0)
        self.slot_gauss = torch.where(valid, pair_gauss[rows], dummy)   # (total, WINDOW)
        blk = self.order[pos]
        by = torch.div(blk, self.nbx, rounding_mode="floor")
        self.slot_centre = (torch.stack([blk - by * self.nbx, by], dim=1).to(dtype) * block
                            + block / 2)

    def to_blocks(self, img: torch.Tensor) -> torch.Tensor:
        """(C, nby*b, nbx*b) image -> (n_blocks, b*b, C)."""
        c, b = img.shape[0], self.block
        x = img.reshape(c, self.nby, b, self.nbx, b)
        return x.permute(1, 3, 2, 4, 0).reshape(self.nby * self.nbx, b * b, c)

    def from_blocks(self, blk: torch.Tensor) -> torch.Tensor:
        """(n_blocks, b*b, C) -> (C, H, W) cropped to the image."""
        c, b = blk.shape[-1], self.block
        x = blk.reshape(self.nby, self.nbx, b, b, c).permute(4, 0, 2, 1, 3)
        x = x.reshape(c, self.nby * b, self.nbx * b)
        return x[:, :self.height, :self.width].contiguous()


# --------------------------------------------------------------------------- blending

def _slot_coefficients(attrs: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Coefficients (B,K,6) of log(alpha) in the basis of ``_pixel_basis``.

    ``attrs`` (B,K,6) holds px, py, conic a, b, c, log(opacity); ``centre`` (B,2) the blocks'
    centres. With m = mean - centre and d = pixel - mean = u - m:
    log(alpha) = log(opacity) - 0.5 (a d_x^2 + 2 b d_x d_y + c d_y^2).
    """
    mx = attrs[..., 0] - centre[:, 0:1]
    my = attrs[..., 1] - centre[:, 1:2]
    ca, cb, cc = attrs[..., 2], attrs[..., 3], attrs[..., 4]
    lx = ca * mx + cb * my
    ly = cc * my + cb * mx
    const = attrs[..., 5] - 0.5 * (mx * lx + my * ly)
    return torch.stack([const, lx, ly, -0.5 * ca, -0.5 * cc, -cb], dim=2)


def _slot_coefficients_backward(attrs: torch.Tensor, centre: torch.Tensor,
                                d: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ``attrs`` (B,K,6) of ``_slot_coefficients`` given its gradient ``d``."""
    mx = attrs[..., 0] - centre[:, 0:1]
    my = attrs[..., 1] - centre[:, 1:2]
    ca, cb, cc = attrs[..., 2], attrs[..., 3], attrs[..., 4]
    d_const, d_lx, d_ly, d_qxx, d_qyy, d_qxy = d.unbind(2)
    lx_t = d_lx - 0.5 * mx * d_const          # total derivative w.r.t. lx, ly
    ly_t = d_ly - 0.5 * my * d_const
    half = -0.5 * d_const
    d_px = half * (ca * mx + cb * my) + ca * lx_t + cb * ly_t
    d_py = half * (cc * my + cb * mx) + cb * lx_t + cc * ly_t
    d_ca = mx * lx_t - 0.5 * d_qxx
    d_cb = my * lx_t + mx * ly_t - d_qxy
    d_cc = my * ly_t - 0.5 * d_qyy
    return torch.stack([d_px, d_py, d_ca, d_cb, d_cc, d_const], dim=2)


def _blend_batch(plan: _Plan, coef: torch.Tensor, t_in: torch.Tensor, need_q: bool
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Blending weights of one batch of blocks over one window.

    ``coef`` (B, K, 6) per slot; ``t_in`` (B, P) is the running product of (1 - alpha) over
    every earlier slot whose alpha passed the thresholds, stopped or not: it only decreases, so
    a slot is blended iff that product including it is >= 1e-4 (the stop rule is monotone).
    Returns ``w`` (B, K, P) = alpha T (0 unless blended), ``q`` = alpha / (1 - alpha) where
    blended and alpha is not clamped (else 0; only if ``need_q``), and the new ``t_in``.
    """
    alpha = torch.matmul(coef, plan.basis.t()).exp_()            # opacity * exp(power)
    alpha.clamp_(max=ALPHA_MAX)
    F.threshold_(alpha, plan.thresholds[0], 0.0)                 # alpha < 1/255: skipped
    unclamped = alpha < ALPHA_MAX if need_q else None
    one_minus = torch.rsub(alpha, 1.0)
    t_incl = torch.cumprod(one_minus, dim=1).mul_(t_in[:, None, :])
    t_kept = F.threshold(t_incl, plan.thresholds[1], 0.0)        # 0 from the stop on
    ratio = alpha.div_(one_minus)
    w = ratio * t_kept
    q = ratio.mul_(unclamped & (t_kept > 0)) if need_q else None
    return w, q, t_incl[:, -1]


class _Blend(torch.autograd.Function):
    """Front-to-back alpha blending of the slot table; differentiable in attrs and colours.

    ``attrs`` (M,6): px, py, conic a, b, c, log(opacity) per listed Gaussian; ``rgb`` (M,3).
    The backward uses dL/dalpha_k = T_k c_k.g - (sum_{j>k} w_j c_j.g + T_fin bg.g)/(1-alpha_k),
    the bracket being C.g minus the running sum of w_j c_j.g. The forward keeps ``w`` and ``q``
    for the backward while they fit in ``SAVE_ENTRIES``; the other batches are recomputed.
    """

    @staticmethod
    def _batches(plan: _Plan, j: int, act: Optional[torch.Tensor], n_act: int
                 ) -> Iterator[Tuple[slice, torch.Tensor, torch.Tensor]]:
        """Window j's batches: (slice of the active blocks, their slots' Gaussians (B,K),
        their centres (B,2)); ``act`` are the active blocks' positions in ``plan.order``."""
        off, size = plan.offsets[j], plan.sizes[j]
        batch = max(1, MAX_ENTRIES // (plan.block ** 2 * WINDOW))
        gauss, centre = plan.slot_gauss[off:off + size], plan.slot_centre[off:off + size]
        for s0 in range(0, n_act, batch):
            sl = slice(s0, s0 + batch)
            if act is None:
                yield sl, gauss[sl], centre[sl]
            else:
                yield sl, gauss[act[sl]], centre[act[sl]]

    @staticmethod
    def forward(ctx, attrs: torch.Tensor, rgb: torch.Tensor, plan: _Plan,
                bg: torch.Tensor) -> torch.Tensor:
        attrs = torch.cat([attrs, attrs.new_tensor([[0, 0, 0, 0, 0, -1e4]])])  # padding: alpha 0
        rgb = torch.cat([rgb, rgb.new_zeros(1, 3)])
        npix = plan.block ** 2
        out = attrs.new_zeros(plan.nby * plan.nbx, npix, 3)
        t_out = plan.t_init.clone()
        blocks = plan.order
        t_raw = plan.t_init[blocks]
        t_blend = t_raw.clone()
        color = attrs.new_zeros(blocks.numel(), npix, 3)
        act: Optional[torch.Tensor] = None           # positions in ``order``; None: 0..n-1
        budget = SAVE_ENTRIES
        records, acts, keeps = [], [], []
        for j, size in enumerate(plan.sizes):
            acts.append(act)
            for sl, gauss, centre in _Blend._batches(plan, j, act, t_raw.shape[0]):
                flat = gauss.reshape(-1)
                cf = _slot_coefficients(attrs.index_select(0, flat).view(*gauss.shape, 6),
                                        centre)
                rg = rgb.index_select(0, flat).view(*gauss.shape, 3)
                n_entries = gauss.numel() * npix
                save = budget >= n_entries
                t_in = t_raw[sl].clone()
                w, q, t_last = _blend_batch(plan, cf, t_in, save)
                color[sl].baddbmm_(w.transpose(1, 2), rg)
                t_blend[sl] -= w.sum(1)
                t_raw[sl] = t_last
                if save:
                    budget -= n_entries
                    records.append((w, q))
                else:
                    records.append(t_in)
            # blocks whose pixels have all stopped, or whose list ends, are finished
            nxt = plan.sizes[j + 1] if j + 1 < len(plan.sizes) else 0
            pos = torch.arange(size, device=attrs.device) if act is None else act
            keep = (t_raw >= T_MIN).any(1) & (pos < nxt)
            if bool(keep.all()):
                keeps.append(None)
                continue
            keeps.append(keep)
            done = ~keep
            out[blocks[done]] = color[done]
            t_out[blocks[done]] = t_blend[done]
            blocks, t_raw, t_blend, color = blocks[keep], t_raw[keep], t_blend[keep], color[keep]
            act = pos[keep]
            if act.numel() == nxt:
                act = None
        out += t_out[..., None] * bg
        ctx.plan, ctx.records, ctx.acts, ctx.keeps, ctx.out = plan, records, acts, keeps, out
        ctx.save_for_backward(attrs, rgb)
        return plan.from_blocks(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_img: torch.Tensor):
        plan: _Plan = ctx.plan
        attrs, rgb = ctx.saved_tensors
        pad = grad_img.new_zeros(3, plan.nby * plan.block, plan.nbx * plan.block)
        pad[:, :plan.height, :plan.width] = grad_img
        g = plan.to_blocks(pad)[plan.order]                           # (n, P, 3)
        cg = (ctx.out[plan.order] * g).sum(2)                         # C.g per pixel
        acc = torch.zeros_like(cg)                                    # running sum of w c.g
        grad_attrs = torch.zeros_like(attrs)
        grad_rgb = torch.zeros_like(rgb)
        basis = plan.basis
        records = iter(ctx.records)
        for j in range(len(plan.sizes)):
            for sl, gauss, centre in _Blend._batches(plan, j, ctx.acts[j], g.shape[0]):
                flat = gauss.reshape(-1)
                at = attrs.index_select(0, flat).view(*gauss.shape, 6)
                rg = rgb.index_select(0, flat).view(*gauss.shape, 3)
                rec = next(records)
                if isinstance(rec, tuple):
                    w, q = rec
                else:
                    w, q, _ = _blend_batch(plan, _slot_coefficients(at, centre), rec, True)
                gb = g[sl]
                wgc = torch.bmm(rg, gb.transpose(1, 2)).mul_(w)         # w_k c_k.g
                csum = torch.cumsum(wgc, dim=1).add_(acc[sl][:, None, :])
                acc[sl] = csum[:, -1]
                rest = torch.sub(cg[sl][:, None, :], csum)
                # d loss / d log(alpha) = alpha dL/dalpha, zero where stopped or clamped
                d_e = wgc.mul_(q > 0).addcmul_(q, rest, value=-1.0)
                d_at = _slot_coefficients_backward(at, centre, torch.matmul(d_e, basis))
                grad_attrs.index_add_(0, flat, d_at.view(-1, 6))
                grad_rgb.index_add_(0, flat, torch.bmm(w, gb).view(-1, 3))
            keep = ctx.keeps[j]
            if keep is not None:
                g, cg, acc = g[keep], cg[keep], acc[keep]
        return grad_attrs[:-1], grad_rgb[:-1], None, None


# --------------------------------------------------------------------------- entry point

def rasterize(settings: "GaussianRasterizationSettings", means3D: torch.Tensor,
              means2D: torch.Tensor, opacities: torch.Tensor,
              shs: Optional[torch.Tensor] = None, colors_precomp: Optional[torch.Tensor] = None,
              scales: Optional[torch.Tensor] = None, rotations: Optional[torch.Tensor] = None,
              cov3D_precomp: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Render ``(color (3,H,W), radii (N,) int32)`` as defined in the package README."""
    device, dtype = means3D.device, means3D.dtype
    height, width = int(settings.image_height), int(settings.image_width)
    view = settings.viewmatrix.detach().to(device, dtype)
    proj = settings.projmatrix.detach().to(device, dtype)
    bg = settings.bg.detach().to(device, dtype)
    campos = settings.campos.detach().to(device, dtype)
    n = means3D.shape[0]
    radii = torch.zeros(n, dtype=torch.int32, device=device)

    def empty() -> Tuple[torch.Tensor, torch.Tensor]:
        return _background(bg, height, width, means3D, means2D, opacities, shs, colors_precomp,
                           scales, rotations, cov3D_precomp), radii

    def take(x: Optional[torch.Tensor], idx: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return x if x is None or idx is None else x[idx]

    # 1. near-plane culling (``idx`` None while every Gaussian is still in)
    hom = torch.cat([means3D, means3D.new_ones(n, 1)], dim=1)
    t_view = hom @ view
    front = t_view[:, 2].detach() > NEAR
    idx = None if bool(front.all()) else torch.nonzero(front).squeeze(1)
    if idx is not None and idx.numel() == 0:
        return empty()
    t_view = take(t_view, idx)
    # 2. projection; means2D enters in NDC so that its gradient is dL/d ndc.xy
    clip = take(hom, idx) @ proj
    ndc = clip[:, :2] / clip[:, 3:4] + take(means2D, idx)[:, :2]
    px = (ndc[:, 0] + 1.0) * (width / 2.0)
    py = (ndc[:, 1] + 1.0) * (height / 2.0)
    # 3.-4. covariances
    tanx, tany = float(settings.tanfovx), float(settings.tanfovy)
    fx, fy = width / (2.0 * tanx), height / (2.0 * tany)
    tx, ty, tz = t_view[:, 0], t_view[:, 1], t_view[:, 2]

    def clamped(coord: torch.Tensor, lim: float) -> torch.Tensor:
        ratio = coord / tz
        inside = ratio.detach().abs() <= lim
        value = ratio.clamp(-lim, lim) * tz
        return torch.where(inside, value, value.detach())

    txc, tyc = clamped(tx, 1.3 * tanx), clamped(ty, 1.3 * tany)
    wr = view[:3, :3].t()
    row0 = (fx / tz)[:, None] * wr[0] - (fx * txc / (tz * tz))[:, None] * wr[2]
    row1 = (fy / tz)[:, None] * wr[1] - (fy * tyc / (tz * tz))[:, None] * wr[2]
    a, b, c = _screen_covariance(row0, row1, take(scales, idx), take(rotations, idx),
                                 take(cov3D_precomp, idx), float(settings.scale_modifier))
    a = a + 0.3
    c = c + 0.3
    det = a * c - b * b
    # 5. radius and 6. tiles (integer bookkeeping, no gradient)
    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
        radius = torch.ceil(3.0 * torch.sqrt(lam))
        gx, gy = -(-width // TILE), -(-height // TILE)
        pxd, pyd = px.detach(), py.detach()
        rect = torch.stack([
            torch.clamp(torch.floor((pxd - radius) / TILE), 0, gx),
            torch.clamp(torch.ceil((pxd + radius) / TILE), 0, gx),
            torch.clamp(torch.floor((pyd - radius) / TILE), 0, gy),
            torch.clamp(torch.ceil((pyd + radius) / TILE), 0, gy)], dim=1).long()
        shown = (det > 0) & (rect[:, 1] > rect[:, 0]) & (rect[:, 3] > rect[:, 2])
        if idx is None:
            radii[shown] = radius[shown].to(torch.int32)
        else:
            radii[idx[shown]] = radius[shown].to(torch.int32)
        listed = shown & (a > 0) & (take(opacities, idx)[:, 0] >= ALPHA_MIN)
        sel = None if bool(listed.all()) else torch.nonzero(listed).squeeze(1)
    if sel is not None and sel.numel() == 0:
        return empty()
    gidx = sel if idx is None else (idx if sel is None else idx[sel])
    # 7. colours
    if colors_precomp is not None:
        rgb = take(colors_precomp, gidx)
    else:
        dirs = take(means3D, gidx) - campos
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
        rgb = torch.clamp_min(
            compute_sh_colors(take(shs, gidx), dirs, int(settings.sh_degree)) + 0.5, 0.0)
    op = opacities[:, 0] if gidx is None else opacities[gidx, 0]
    px, py, a, b, c, det, tz, rect = (take(x, sel) for x in (px, py, a, b, c, det, tz, rect))
    with torch.no_grad():
        box = _ellipse_boxes(px.detach(), py.detach(), a.detach(), c.detach(), op.detach(),
                             height, width)
        block = _choose_block(box)
        nby, nbx = -(-height // block), -(-width // block)
        pair_g, counts = _block_pairs(box, tz.detach(), rect, block, nby, nbx)
    if pair_g.numel() == 0:
        return empty()
    plan = _Plan(height, width, block, counts, pair_g, px.shape[0], dtype)
    attrs = torch.stack([px, py, c / det, -b / det, a / det, torch.log(op)], dim=1)
    return _Blend.apply(attrs, rgb, plan, bg), radii
