"""SelectiveAdam: Adam when all rows train; frozen rows and their state bitwise untouched.

The CUDA tests compare the fused kernel (utils/fused/csrc/adam.cu) with the PyTorch reference.
"""
import pytest
import torch

from utils import fused
from training.selective_adam import SelectiveAdam


def make(seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = {"a": torch.randn(10, 3, generator=gen, dtype=torch.float64).requires_grad_(),
              "b": torch.randn(10, 2, 4, generator=gen, dtype=torch.float64).requires_grad_()}
    return params, gen


def loss_of(params, gen):
    targets = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    return sum(((p - targets[k]) ** 2 * torch.arange(1, 11).view(-1, *[1] * (p.dim() - 1))).sum()
               for k, p in params.items())


def test_full_steps_match_torch_adam():
    params, gen = make()
    ref = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    ours = SelectiveAdam(params, {"a": 0.01, "b": 0.02}, eps=1e-15)
    theirs = torch.optim.Adam([{"params": [ref["a"]], "lr": 0.01},
                               {"params": [ref["b"]], "lr": 0.02}], eps=1e-15)
    for step in range(5):
        g1 = torch.Generator().manual_seed(step)
        g2 = torch.Generator().manual_seed(step)
        loss_of(params, g1).backward()
        loss_of(ref, g2).backward()
        ours.step()
        theirs.step()
        ours.zero_grad()
        theirs.zero_grad()
    for k in params:
        torch.testing.assert_close(params[k], ref[k], rtol=1e-12, atol=1e-12)


def test_frozen_rows_and_their_moments_are_bitwise_unchanged():
    params, gen = make(1)
    opt = SelectiveAdam(params, {"a": 0.1, "b": 0.1})
    loss_of(params, gen).backward()
    opt.step()  # give every row non-zero moments first
    opt.zero_grad()
    before = {k: v.detach().clone() for k, v in params.items()}
    state = {k: {s: t.clone() for s, t in st.items()} for k, st in opt.state.items()}
    rows = torch.tensor([1, 4, 7])
    frozen = torch.ones(10, dtype=torch.bool)
    frozen[rows] = False
    for _ in range(3):
        loss_of(params, gen).backward()
        opt.step(rows)
        opt.zero_grad()
    for k in params:
        assert torch.equal(params[k][frozen], before[k][frozen])
        assert not torch.equal(params[k][rows], before[k][rows])
        for s in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[k][s][frozen], state[k][s][frozen])
        assert opt.state[k]["step"][rows].tolist() == [4, 4, 4]


def test_row_steps_equal_full_adam_on_the_rows():
    """A row trained alone follows exactly the trajectory plain Adam gives it."""
    params, gen = make(2)
    ref = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    ours = SelectiveAdam(params, {"a": 0.05, "b": 0.05})
    plain = SelectiveAdam(ref, {"a": 0.05, "b": 0.05})
    rows = torch.tensor([0, 9])
    for step in range(4):
        loss_of(params, torch.Generator().manual_seed(step)).backward()
        loss_of(ref, torch.Generator().manual_seed(step)).backward()
        ours.step(rows)
        plain.step()
        ours.zero_grad()
        plain.zero_grad()
    for k in params:
        torch.testing.assert_close(params[k][rows], ref[k][rows], rtol=0, atol=0)


def test_keep_and_append_rows_and_state_dict_roundtrip():
    params, gen = make(3)
    opt = SelectiveAdam(params, {"a": 0.1, "b": 0.1})
    loss_of(params, gen).backward()
    opt.step()
    keep = torch.arange(10) % 2 == 0
    for k in list(params):
        params[k] = torch.cat([params[k].detach()[keep], params[k].detach()[:2]]).requires_grad_()
    opt.params = params
    opt.keep_rows(keep)
    opt.append_rows(2)
    assert opt.state["a"]["step"].tolist() == [1] * 5 + [0, 0]
    sd = opt.state_dict()
    other = SelectiveAdam(params, {"a": 0.0, "b": 0.0})
    other.load_state_dict(sd)
    assert other.lrs == {"a": 0.1, "b": 0.1}
    assert torch.equal(other.state["b"]["exp_avg"], opt.state["b"]["exp_avg"])


# --- the fused CUDA step against the PyTorch reference ------------------------------------------
N = 1000
SHAPES = {"xyz": (3,), "f_dc": (1, 3), "f_rest": (15, 3), "scaling": (3,), "rotation": (4,),
          "opacity": (1,)}
LRS = {"xyz": 4.8e-4, "f_dc": 2.5e-3, "f_rest": 1.25e-4, "scaling": 5e-3, "rotation": 1e-3,
       "opacity": 0.05}


def fused_and_reference(seed):
    """Two optimisers over equal float32 CUDA parameters shaped like the model's."""
    assert fused.available(), f"the fused kernels did not build: {fused.load_error()}"
    gen = torch.Generator().manual_seed(seed)
    base = {k: torch.randn((N,) + s, generator=gen) for k, s in SHAPES.items()}
    ours = SelectiveAdam({k: v.cuda().requires_grad_() for k, v in base.items()}, LRS)
    ref = SelectiveAdam({k: v.cuda().requires_grad_() for k, v in base.items()}, LRS)
    assert ours._fusable(list(SHAPES))
    return ours, ref, gen


def random_grads(gen, noncontiguous=False):
    """Gradients spanning orders of magnitude per row, optionally as non-contiguous views."""
    grads = {}
    for name, shape in SHAPES.items():
        scale = 10.0 ** (7 * torch.rand((N,) + (1,) * len(shape), generator=gen) - 6)
        g = (torch.randn((N,) + shape, generator=gen) * scale).cuda()
        if noncontiguous:  # the same values, every second float of a wider buffer
            wide = torch.zeros(g.shape[:-1] + (2 * g.shape[-1],), device=g.device)
            wide[..., ::2] = g
            g = wide[..., ::2]
        grads[name] = g
    return grads


def set_grads(opt, grads):
    for name, g in grads.items():
        opt.params[name].grad = g


def reference_step(opt, rows, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(fused, "available", lambda: False)
        opt.step(rows)


def snapshot(opt):
    return {k: {"param": opt.params[k].detach().clone(),
                **{s: t.clone() for s, t in opt.state[k].items()}} for k in opt.params}


def assert_agree(ours, ref):
    for k in SHAPES:
        # The kernel's bias corrections 1 - beta^t come from a double-precision power; the
        # reference's float32 pow can be 1 ulp off, which 1 - 0.999^t ~ 1e-3 magnifies to a
        # ~3e-5 relative difference in the step (at most lr): hence a tolerance of 1e-4 lr.
        torch.testing.assert_close(ours.params[k], ref.params[k], rtol=1e-6, atol=1e-4 * LRS[k])
        for s in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours.state[k][s], ref.state[k][s], rtol=1e-6, atol=1e-7)
        assert torch.equal(ours.state[k]["step"], ref.state[k]["step"]), k


@pytest.mark.cuda
def test_fused_step_matches_the_torch_step_and_freezes_the_other_rows(monkeypatch):
    ours, ref, gen = fused_and_reference(10)
    dev = torch.device("cuda")
    subsets = [None,
               torch.randperm(N, generator=gen)[:N // 20].sort().values.to(dev),  # 5%, sorted
               torch.empty(0, dtype=torch.long, device=dev),
               torch.tensor([417], device=dev),
               torch.randperm(N, generator=gen)[:N // 2].to(dev),  # 50%, unsorted
               torch.arange(N, device=dev),  # every row, listed
               torch.randperm(N, generator=gen)[:N // 5],  # 20%, on the CPU
               None,
               torch.tensor([0], device=dev),
               torch.tensor([N - 1], device=dev)]
    for rows in subsets:
        grads = random_grads(gen)
        set_grads(ours, grads)
        set_grads(ref, grads)
        before = snapshot(ours)
        ours.step(rows)
        reference_step(ref, rows, monkeypatch)
        ours.zero_grad()
        ref.zero_grad()
        assert_agree(ours, ref)
        frozen = torch.full((N,), rows is not None, dtype=torch.bool, device=dev)
        if rows is not None:
            frozen[rows.to(dev)] = False
        for k, old in before.items():
            now = {"param": ours.params[k].detach(), **ours.state[k]}
            for key, value in now.items():
                assert torch.equal(value[frozen], old[key][frozen]), (k, key)
            if rows is not None and rows.numel():
                assert torch.equal(now["step"][~frozen], old["step"][~frozen] + 1), k
    # the schedule leaves rows with different step counts: the bias corrections differ per row
    assert len(torch.unique(ours.state["xyz"]["step"])) > 3


@pytest.mark.cuda
def test_fused_step_takes_non_contiguous_gradients(monkeypatch):
    ours, ref, gen = fused_and_reference(11)
    for rows in (None, torch.randperm(N, generator=gen)[:300].cuda(), None):
        grads = random_grads(gen, noncontiguous=True)
        assert not any(g.is_contiguous() for g in grads.values())
        set_grads(ours, grads)
        set_grads(ref, grads)
        ours.step(rows)
        reference_step(ref, rows, monkeypatch)
        assert_agree(ours, ref)


@pytest.mark.cuda
def test_fused_step_refuses_bad_inputs():
    assert fused.available(), f"the fused kernels did not build: {fused.load_error()}"
    step = fused.ext().selective_adam_step
    p = torch.zeros(4, 3, device="cuda")
    state = [[p.clone()], [p.clone()], [p.clone()], [torch.zeros(4, dtype=torch.long,
                                                                  device="cuda")]]
    rows = torch.tensor([1, 2], device="cuda")
    with pytest.raises(RuntimeError, match="same length"):
        step([p], *state, [0.1, 0.2], rows, False, 0.9, 0.999, 1e-15)
    with pytest.raises(RuntimeError, match="int64"):
        step([p], *state, [0.1], rows.int(), False, 0.9, 0.999, 1e-15)
    with pytest.raises(RuntimeError, match="float32"):
        step([p.double()], *state, [0.1], rows, False, 0.9, 0.999, 1e-15)
    with pytest.raises(RuntimeError, match="shape"):
        step([p], [p[:3]], *state[1:], [0.1], rows, False, 0.9, 0.999, 1e-15)
    with pytest.raises(RuntimeError, match="rows is on"):
        step([p], *state, [0.1], rows.cpu(), False, 0.9, 0.999, 1e-15)
