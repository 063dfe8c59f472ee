"""The training path's posing and regularisers: ``GaussianModel.pose`` and
``local_regularisation``, on the CPU (the PyTorch reference) and through the fused CUDA kernels."""
import pytest
import torch

from scene.binding import face_frames
from scene.gaussian_model import GaussianModel, RowSelection
from training.regularisation import local_regularisation
from utils import fused


def random_model(n=500, faces=40, face_scale=False, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    model = GaussianModel(sh_degree=1, face_scale=face_scale)
    model.binding = torch.randint(0, faces, (n,), generator=gen).to(device)
    rotation = torch.randn(n, 4, generator=gen)
    rotation[0] = 0.0  # a degenerate quaternion (F.normalize's eps branch)
    model._set_params({k: v.to(device) for k, v in {
        "xyz": torch.randn(n, 3, generator=gen) * 0.02,
        "f_dc": torch.randn(n, 1, 3, generator=gen),
        "f_rest": torch.randn(n, 3, 3, generator=gen),
        "scaling": torch.randn(n, 3, generator=gen) - 4,
        "rotation": rotation,
        "opacity": torch.randn(n, 1, generator=gen),
    }.items()})
    model.active_sh_degree = 1
    # faces of every orientation, so that every branch of matrix_to_quaternion is taken
    tris = torch.randn(faces, 3, 3, generator=gen) * 0.05 + torch.randn(faces, 1, 3, generator=gen)
    return model, tris.to(device)


def selection_of(model, fraction=0.3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(model.num_gaussians, generator=gen) < fraction).to(model.device)
    rows = torch.nonzero(mask).squeeze(1)
    return RowSelection(rows, mask, int(rows.numel()))


def pose_and_grads(model, tris, mask, seed=2):
    """Posed outputs, and the parameter gradients of a fixed random linear function of them."""
    for p in model.params.values():
        p.grad = None
    g = model.pose(tris, mask)
    gen = torch.Generator().manual_seed(seed)
    outs = (g.xyz, g.scales, g.rotations, g.opacity, g.shs)
    weights = [torch.randn(o.shape, generator=gen).to(o.device) for o in outs]
    sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    grads = {n: p.grad.clone() for n, p in model.params.items()}   # all six, colours included
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("face_scale", [False, True])
def test_pose_on_cpu_is_world_of_the_face_frames(face_scale):
    model, tris = random_model(face_scale=face_scale)
    sel = selection_of(model)
    a = model.pose(tris, sel.mask)
    b = model.world(face_frames(tris), sel.mask)
    for x, y in zip(a, b):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def test_frozen_rows_get_no_gradient_on_cpu():
    model, tris = random_model()
    sel = selection_of(model)
    _, grads = pose_and_grads(model, tris, sel.mask)
    for name, g in grads.items():
        assert torch.all(g[~sel.mask] == 0), name
        assert torch.any(g[sel.mask] != 0), name


def reference_regulariser(xyz, scaling, rows, lx, tx, ls, ts):
    """The formula of GaussianAvatars, written out here independently of the code under test."""
    xyz, scaling = xyz[rows], scaling[rows]
    position = torch.clamp(xyz.norm(dim=1) - tx, min=0).mean()
    excess = torch.clamp(scaling.exp() - ts, min=0)
    return lx * position + ls * excess.norm(dim=1).mean()


def test_regulariser_on_cpu_matches_the_formula():
    model, _ = random_model()
    p = model.params
    with torch.no_grad():  # some rows over each threshold
        p["xyz"][:50] *= 10
        p["scaling"][:40] += 3
    sel = selection_of(model, 0.5)
    value = local_regularisation(p["xyz"], p["scaling"], sel, 0.01, 0.03, 1.0, 0.05)
    expected = reference_regulariser(p["xyz"].detach(), p["scaling"].detach(), sel.rows,
                                     0.01, 0.03, 1.0, 0.05)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert value.item() > 0


def cuda_model(**kw):
    assert fused.available(), fused.load_error()
    return random_model(device="cuda", **kw)


@pytest.mark.cuda
@pytest.mark.parametrize("face_scale", [False, True])
@pytest.mark.parametrize("selective", [False, True])
def test_fused_pose_matches_the_reference(face_scale, selective):
    model, tris = cuda_model(face_scale=face_scale)
    mask = selection_of(model).mask if selective else None
    fused_out, fused_grads = pose_and_grads(model, tris, mask)
    with fused.disabled():
        ref_out, ref_grads = pose_and_grads(model, tris, mask)
    names = ("xyz", "scales", "rotations", "opacity", "shs")
    for name, a, b in zip(names, fused_out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    for name in ref_grads:
        g, f = ref_grads[name].flatten(1), fused_grads[name].flatten(1)
        scale = g.abs().amax(dim=1).clamp_min(1e-6)  # per row: row 0's is ~1e12 (|q| = 0)
        assert ((f - g).abs().amax(dim=1) / scale).max() < 1e-4, name
        if mask is not None:
            assert torch.all(fused_grads[name][~mask] == 0), name


@pytest.mark.cuda
def test_fused_regulariser_matches_the_reference():
    model, _ = cuda_model()
    p = model.params
    with torch.no_grad():
        p["xyz"][:50] *= 10
        p["scaling"][:40] += 3
    for sel in (selection_of(model, 0.5), None):
        for q in (p["xyz"], p["scaling"]):
            q.grad = None
        value = local_regularisation(p["xyz"], p["scaling"], sel, 0.01, 0.03, 1.0, 0.05)
        value.backward()
        fused_grads = (p["xyz"].grad.clone(), p["scaling"].grad.clone())
        rows = sel.rows if sel is not None else torch.arange(model.num_gaussians, device="cuda")
        xyz = p["xyz"].detach().double().requires_grad_(True)
        scaling = p["scaling"].detach().double().requires_grad_(True)
        expected = reference_regulariser(xyz, scaling, rows, 0.01, 0.03, 1.0, 0.05)
        expected.backward()
        assert value.item() == pytest.approx(expected.item(), rel=1e-5)
        torch.testing.assert_close(fused_grads[0].double(), xyz.grad, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(fused_grads[1].double(), scaling.grad, rtol=1e-4, atol=1e-9)
