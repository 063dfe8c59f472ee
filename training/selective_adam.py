"""Adam whose update can be restricted to a subset of rows (Gaussians).

STGA freezes the Gaussians outside a frame's selected faces. Frozen must mean frozen: no update
from momentum, and their moments and step counts untouched, so each row keeps its own step count
(for bias correction). ``step(rows)`` reads and writes only those rows; ``step()`` updates all.
The parameters are owned by the caller (a name -> tensor dict), so densification can replace them.

On CUDA the step is one fused kernel launch for all the tensors (``utils/fused/csrc/adam.cu``)
instead of about 20 small PyTorch kernels per tensor; the PyTorch code below stays the reference
and the CPU path.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from utils import fused


class SelectiveAdam:
    """Adam (Kingma & Ba) over named row-major tensors with per-row step counts."""

    def __init__(self, params: Dict[str, torch.Tensor], lrs: Dict[str, float],
                 betas=(0.9, 0.999), eps: float = 1e-15):
        self.params = params
        self.lrs = dict(lrs)
        self.betas = betas
        self.eps = eps
        self.state: Dict[str, Dict[str, torch.Tensor]] = {}
        for name, p in params.items():
            self.state[name] = self._fresh_state(p, p.shape[0])

    @staticmethod
    def _fresh_state(p: torch.Tensor, rows: int) -> Dict[str, torch.Tensor]:
        shape = (rows,) + tuple(p.shape[1:])
        return {"exp_avg": torch.zeros(shape, dtype=p.dtype, device=p.device),
                "exp_avg_sq": torch.zeros(shape, dtype=p.dtype, device=p.device),
                "step": torch.zeros(rows, dtype=torch.int64, device=p.device)}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self, rows: Optional[torch.Tensor] = None) -> None:
        """Update every row, or only ``rows`` (1-D long indices); frozen rows stay bitwise."""
        if rows is not None and rows.numel() == 0:
            return
        live = [name for name, p in self.params.items() if p.grad is not None]
        if not live:
            return
        if rows is not None:
            rows = rows.to(self.params[live[0]].device)
        if self._fusable(live):
            self._step_fused(live, rows)
        else:
            self._step_torch(live, rows)

    def _fusable(self, names) -> bool:
        """The fused kernel takes float32 CUDA tensors updated in place (so contiguous)."""
        for name in names:
            p = self.params[name]
            if not (p.is_cuda and p.dtype == torch.float32 and p.is_contiguous()):
                return False
        return fused.available()

    def _step_fused(self, names, rows: Optional[torch.Tensor]) -> None:
        """One extension call for all the tensors (it checks shapes, dtypes and devices)."""
        b1, b2 = self.betas
        params = [self.params[name] for name in names]
        states = [self.state[name] for name in names]
        device = params[0].device
        if rows is None:
            index = torch.empty(0, dtype=torch.long, device=device)  # ignored: all rows
        else:
            index = rows
        fused.ext().selective_adam_step(
            params, [p.grad for p in params], [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states], [st["step"] for st in states],
            [float(self.lrs[name]) for name in names], index, rows is None, float(b1), float(b2),
            float(self.eps))

    def _step_torch(self, names, rows: Optional[torch.Tensor]) -> None:
        """The reference: gather the rows, update them, scatter them back."""
        b1, b2 = self.betas
        for name in names:
            p = self.params[name]
            st = self.state[name]
            lr = self.lrs[name]
            if rows is None:
                self._update(p, p.grad, st["exp_avg"], st["exp_avg_sq"], st["step"], lr, b1, b2)
                continue
            m, v, s = st["exp_avg"][rows], st["exp_avg_sq"][rows], st["step"][rows]
            value = p[rows]
            self._update(value, p.grad[rows], m, v, s, lr, b1, b2)
            p.index_copy_(0, rows, value)
            st["exp_avg"].index_copy_(0, rows, m)
            st["exp_avg_sq"].index_copy_(0, rows, v)
            st["step"].index_copy_(0, rows, s)

    def _update(self, p, g, m, v, s, lr, b1, b2) -> None:
        s += 1
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        view = (-1,) + (1,) * (p.dim() - 1)
        t = s.to(p.dtype).view(view)
        bc1 = 1.0 - torch.pow(torch.as_tensor(b1, dtype=p.dtype, device=p.device), t)
        bc2 = 1.0 - torch.pow(torch.as_tensor(b2, dtype=p.dtype, device=p.device), t)
        denom = (v / bc2).sqrt_().add_(self.eps)
        p.addcdiv_(m / bc1, denom, value=-lr)

    # --- row bookkeeping for densification -------------------------------------------------
    def keep_rows(self, mask: torch.Tensor) -> None:
        """Drop the state of rows where ``mask`` is False (after pruning the parameters)."""
        for st in self.state.values():
            for key in st:
                st[key] = st[key][mask]

    def append_rows(self, count: int) -> None:
        """Add fresh state for ``count`` new rows (after appending to the parameters)."""
        for name, st in self.state.items():
            fresh = self._fresh_state(self.params[name], count)
            for key in st:
                st[key] = torch.cat([st[key], fresh[key]], dim=0)

    def state_dict(self) -> Dict:
        return {"lrs": dict(self.lrs), "betas": list(self.betas), "eps": self.eps,
                "state": {n: {k: t.clone() for k, t in st.items()} for n, st in self.state.items()}}

    def load_state_dict(self, sd: Dict) -> None:
        self.lrs = dict(sd["lrs"])
        self.betas = tuple(sd["betas"])
        self.eps = float(sd["eps"])
        for name, st in sd["state"].items():
            p = self.params[name]
            self.state[name] = {k: t.to(device=p.device) for k, t in st.items()}
