"""SelectiveAdam: Adam when all rows train; frozen rows and their state bitwise untouched."""
import torch

from utils.selective_adam import SelectiveAdam


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
