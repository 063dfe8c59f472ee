"""Adaptive density control (3DGS's clone / split / prune) for mesh-bound Gaussians.

Every new Gaussian inherits its parent's face and lives in the same local frame. Split children
are sampled in the parent's local frame from the parent's own local scale and rotation. Pruning
never leaves a face that had Gaussians without one. View-space gradient statistics are gathered
only for Gaussians that were trainable when the gradient was taken. As in 3DGS, once the first
opacity-reset interval has passed, Gaussians that grew too large are pruned as well: a screen
radius above ``max_screen_size`` pixels in any view since the last densification, or a world
size above ``max_world_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from scene.binding import quaternion_to_matrix
from scene.gaussian_model import PARAM_NAMES, GaussianModel, inverse_sigmoid
from training.selective_adam import SelectiveAdam


@dataclass
class DensifyReport:
    cloned: int
    split: int
    pruned: int
    total: int


class DensityController:
    """Accumulates screen-space gradient norms and edits the model's rows."""

    def __init__(self, model: GaussianModel):
        self.reset_stats(model)

    def reset_stats(self, model: GaussianModel) -> None:
        n, dev = model.num_gaussians, model.device
        self.grad_accum = torch.zeros(n, device=dev)
        self.denom = torch.zeros(n, device=dev)
        self.max_radii = torch.zeros(n, device=dev)

    @torch.no_grad()
    def accumulate(self, screen_grad: torch.Tensor, visible: torch.Tensor,
                   trainable: Optional[torch.Tensor],
                   radii: Optional[torch.Tensor] = None) -> None:
        """Add this step's screen-space gradient norms (and screen radii, in pixels) of the
        visible (and trainable) Gaussians.

        ``trainable``: an (N,) bool mask; None means every row.
        """
        mask = visible if trainable is None else visible & trainable
        self.grad_accum += torch.where(mask, screen_grad[:, :2].norm(dim=-1), 0.0)
        self.denom += mask
        if radii is not None:
            self.max_radii = torch.where(mask, torch.maximum(self.max_radii, radii.float()),
                                         self.max_radii)

    @torch.no_grad()
    def densify_and_prune(self, model: GaussianModel, optimizer: SelectiveAdam,
                          grad_threshold: float, min_opacity: float, size_threshold: float,
                          face_size: torch.Tensor, generator: Optional[torch.Generator] = None,
                          max_screen_size: Optional[float] = None,
                          max_world_size: Optional[float] = None) -> DensifyReport:
        """Clone small and split large Gaussians with large mean gradient, then prune faint ones
        (and, when the limits are given, those larger than them).

        ``size_threshold`` and ``max_world_size`` are in world units (3DGS: percent_dense and
        0.1 times the scene extent); ``face_size`` (F,) converts local scales to world ones
        under ``--face_scale``; ``max_screen_size`` is a screen radius in pixels.
        """
        p, b = model.params, model.binding
        grads = self.grad_accum / self.denom.clamp_min(1.0)
        scale_local = torch.exp(p["scaling"])
        world_size = scale_local.max(dim=1).values
        if model.face_scale:
            world_size = world_size * face_size[b]
        high = grads >= grad_threshold
        clone = high & (world_size <= size_threshold)
        split = high & (world_size > size_threshold)

        new: Dict[str, torch.Tensor] = {name: p[name].detach()[clone] for name in PARAM_NAMES}
        new_binding = [b[clone]]
        parents = torch.nonzero(split).squeeze(1)
        if parents.numel():
            children = parents.repeat(2)
            std = scale_local[children]
            noise = torch.randn(std.shape, generator=generator, device="cpu").to(std.device)
            rot = quaternion_to_matrix(p["rotation"].detach()[children])
            offset = torch.einsum("nij,nj->ni", rot, noise * std)
            child = {name: p[name].detach()[children] for name in PARAM_NAMES}
            child["xyz"] = child["xyz"] + offset
            child["scaling"] = torch.log(std / 1.6)
            new = {name: torch.cat([new[name], child[name]]) for name in PARAM_NAMES}
            new_binding.append(b[children])
        added = int(clone.sum()) + 2 * parents.numel()
        keep = ~split
        model.edit_rows(keep, new, torch.cat(new_binding))
        optimizer.keep_rows(keep)
        optimizer.append_rows(added)
        # rows now: the kept ones, then the clones, then the split children (new: no radius yet)
        radii = torch.cat([self.max_radii[keep],
                           self.max_radii.new_zeros(model.num_gaussians - int(keep.sum()))])

        p, b = model.params, model.binding
        remove = torch.sigmoid(p["opacity"].detach()).squeeze(1) < min_opacity
        if max_screen_size is not None:
            remove |= radii > max_screen_size
        if max_world_size is not None:
            size = torch.exp(p["scaling"].detach()).max(dim=1).values
            if model.face_scale:
                size = size * face_size[b]
            remove |= size > max_world_size
        pruned = self._prune(model, optimizer, remove)
        self.reset_stats(model)
        return DensifyReport(int(clone.sum()), parents.numel(), pruned, model.num_gaussians)

    @staticmethod
    def _prune(model: GaussianModel, optimizer: SelectiveAdam, remove: torch.Tensor) -> int:
        """Remove rows, except the most opaque one of any face that would lose all its rows."""
        b = model.binding
        num_faces = int(b.max()) + 1 if b.numel() else 0
        had = torch.bincount(b, minlength=num_faces) > 0
        left = torch.bincount(b[~remove], minlength=num_faces) > 0
        orphan = had & ~left
        if orphan.any():
            opacity = model.params["opacity"].detach().squeeze(1)
            candidate = remove & orphan[b]
            best = torch.full((num_faces,), -torch.inf, device=b.device)
            best.scatter_reduce_(0, b[candidate], opacity[candidate], reduce="amax")
            rescue = candidate & (opacity == best[b])
            # keep a single row per orphaned face even if opacities tie
            first = torch.full((num_faces,), b.numel(), device=b.device, dtype=torch.long)
            rows = torch.arange(b.numel(), device=b.device)
            first.scatter_reduce_(0, b[rescue], rows[rescue], reduce="amin")
            rescue &= rows == first[b]
            remove = remove & ~rescue
        if remove.any():
            keep = ~remove
            model.edit_rows(keep)
            optimizer.keep_rows(keep)
        return int(remove.sum())

    @staticmethod
    @torch.no_grad()
    def reset_opacity(model: GaussianModel, optimizer: SelectiveAdam, ceiling: float = 0.01) -> None:
        """3DGS's opacity reset: clamp opacities to ``ceiling`` and zero their Adam moments.

        The rows' step counts are kept, as in 3DGS (which swaps in zeroed moments and leaves the
        step alone): with the bias correction of a late step, the first updates after the reset
        are larger than the learning rate (about 3x once the count is in the thousands), so
        the clamped opacities recover quickly.
        """
        op = model.params["opacity"]
        op.copy_(torch.minimum(op, inverse_sigmoid(torch.tensor(ceiling, device=op.device))))
        state = optimizer.state["opacity"]
        state["exp_avg"].zero_()
        state["exp_avg_sq"].zero_()
