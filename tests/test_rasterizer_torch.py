"""The pure-PyTorch rasterizer against an independent brute force of the README definition.

The brute force below follows the README step by step (per Gaussian in float64 numpy, then per
pixel state updated Gaussian by Gaussian in depth order); it shares no code with the backend.
"""
import math

import numpy as np
import pytest
import torch

from diff_gaussian_rasterization import rasterize_gaussians, torch_backend
from raster_scenes import camera_settings

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = [1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
      0.5462742152960396]
C3 = [-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435]


pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- scene helpers

def make_camera(width, height, tanx, tany, cx_off=0.0, cy_off=0.0, seed=0, bg=(0.2, 0.5, 0.9),
                sh_degree=3, scale_modifier=1.0, dtype=torch.float64):
    """Settings with a rotated, translated camera and an off-centre principal point."""
    g = np.random.default_rng(seed)
    axis = g.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = 0.4
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + math.sin(ang) * k + (1 - math.cos(ang)) * k @ k
    trans = g.normal(size=3) * 0.3
    w2v = np.eye(4)
    w2v[:3, :3], w2v[:3, 3] = rot, trans
    settings = camera_settings(w2v, -rot.T @ trans, width, height, tanx, tany, cx_off=cx_off,
                               cy_off=cy_off, bg=bg, sh_degree=sh_degree,
                               scale_modifier=scale_modifier, dtype=dtype)
    return settings, w2v


def view_to_world(w2v, pts):
    """World points whose view-space coordinates are ``pts``."""
    rot, trans = w2v[:3, :3], w2v[:3, 3]
    return (pts - trans) @ rot


def pixel_to_view(settings, px, py, z):
    """View point at depth z that projects onto pixel position (px, py) (principal point too)."""
    proj = (settings.projmatrix.numpy().T @ np.linalg.inv(settings.viewmatrix.numpy().T))
    ndc_x, ndc_y = 2 * px / settings.image_width - 1, 2 * py / settings.image_height - 1
    x = (ndc_x - proj[0, 2]) * z / proj[0, 0]
    y = (ndc_y - proj[1, 2]) * z / proj[1, 1]
    return np.stack([x, y, z], axis=-1)


def random_quats(g, n):
    q = g.normal(size=(n, 4))
    return q * g.uniform(0.5, 2.0, size=(n, 1))          # any norm


def mixed_scene(settings, w2v, seed=1):
    """Gaussians covering the interesting cases of the definition, as numpy arrays."""
    g = np.random.default_rng(seed)
    w, h = settings.image_width, settings.image_height
    # (positions a little off round numbers: no tile-rectangle edge falls exactly on a border)
    px = [3.1, 16.2, 15.9, 31.7, 16.03, 20.1, 9.2, 27.3, 18.5, 5.4, -9.3, w + 12.2, 12.6, 30.3]
    py = [4.2, 15.8, 16.1, 2.3, 20.4, -3.3, h + 3.2, 25.1, 13.5, 22.2, 8.1, 10.3, 11.4, 7.6]
    z = g.uniform(1.0, 3.0, size=len(px))
    pts = pixel_to_view(settings, np.array(px), np.array(py), z)
    extra = np.array([[0.1, 0.2, -1.5],       # behind the camera
                      [0.0, 0.0, 0.1],         # in front, but before the near plane
                      [0.02, -0.03, 0.25],     # just past the near plane
                      [8.0, 0.5, 2.0],         # far off to the side: clamped J
                      [0.1, -6.0, 2.5]])       # far off below
    pts = np.concatenate([pts, extra])
    n = len(pts)
    scales = np.exp(g.uniform(np.log(0.02), np.log(0.25), size=(n, 3)))
    scales[-2:] = 3.0                          # big enough to reach the image from far away
    opac = g.uniform(0.05, 0.9, size=(n, 1))
    opac[:5, 0] = [0.001, 0.0045, 0.995, 1.0, 0.5]   # below 1/255, just above, clamped alphas
    return dict(means3D=view_to_world(w2v, pts), opacities=opac, scales=scales,
                rotations=random_quats(g, n), shs=g.normal(size=(n, 16, 3)) * 0.4)


def to_torch(scene, dtype=torch.float64, requires_grad=False):
    return {k: torch.tensor(v, dtype=dtype, requires_grad=requires_grad)
            for k, v in scene.items()}


def render(settings, scene, dtype=torch.float64, means2D=None):
    t = to_torch(scene, dtype)
    if means2D is None:
        means2D = torch.zeros_like(t["means3D"])
    settings = settings._replace(**{k: getattr(settings, k).to(dtype) for k in
                                    ("bg", "viewmatrix", "projmatrix", "campos")})
    return rasterize_gaussians(settings, means2D=means2D, backend="torch", **t)


# ----------------------------------------------------------------------------- brute force

def brute_force(settings, means3D, opacities, shs=None, colors_precomp=None, scales=None,
                rotations=None, cov3D_precomp=None, ndc_offset=None, stats=None,
                frozen=None):
    """The README definition, literally; returns (image (3,H,W), radii (N,)).

    ``stats``, a dict if given, receives the per-pixel stop mask and final transmittance.
    ``frozen`` {i: (tx, ty)} replaces Gaussian i's clamped tx / ty by these values (for finite
    differences of the backward pass, which treats a clamped coordinate as a constant).
    """
    H, W = settings.image_height, settings.image_width
    view = settings.viewmatrix.double().numpy()
    proj = settings.projmatrix.double().numpy()
    bg = settings.bg.double().numpy()
    campos = settings.campos.double().numpy()
    tanx, tany = settings.tanfovx, settings.tanfovy
    n = len(means3D)
    gx, gy = math.ceil(W / 16), math.ceil(H / 16)
    radii = np.zeros(n, dtype=np.int64)
    kept = []
    for i in range(n):
        hom = np.append(means3D[i], 1.0)
        t = hom @ view
        if t[2] <= 0.2:
            continue
        c = hom @ proj
        ndc = c[:2] / c[3]
        if ndc_offset is not None:
            ndc = ndc + ndc_offset[i]
        px, py = (ndc[0] + 1) * W / 2, (ndc[1] + 1) * H / 2
        if cov3D_precomp is not None:
            xx, xy, xz, yy, yz, zz = cov3D_precomp[i]
            sigma = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        else:
            w_, x, y, z = rotations[i] / np.linalg.norm(rotations[i])
            R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w_ * z), 2 * (x * z + w_ * y)],
                          [2 * (x * y + w_ * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w_ * x)],
                          [2 * (x * z - w_ * y), 2 * (y * z + w_ * x), 1 - 2 * (x * x + y * y)]])
            S = np.diag(settings.scale_modifier * scales[i])
            sigma = R @ S @ S @ R.T
        fx, fy = W / (2 * tanx), H / (2 * tany)
        lx, ly = 1.3 * tanx, 1.3 * tany
        tx = min(max(t[0] / t[2], -lx), lx) * t[2]
        ty = min(max(t[1] / t[2], -ly), ly) * t[2]
        if frozen is not None and i in frozen:
            tx = frozen[i][0] if abs(t[0] / t[2]) > lx else tx
            ty = frozen[i][1] if abs(t[1] / t[2]) > ly else ty
        J = np.array([[fx / t[2], 0, -fx * tx / t[2] ** 2], [0, fy / t[2], -fy * ty / t[2] ** 2]])
        Wr = view[:3, :3].T
        cov = J @ Wr @ sigma @ Wr.T @ J.T + 0.3 * np.eye(2)
        a, b, cc = cov[0, 0], cov[0, 1], cov[1, 1]
        det = a * cc - b * b
        if det <= 0:
            continue
        conic = np.linalg.inv(cov)
        mid = (a + cc) / 2
        lam = mid + math.sqrt(max(0.1, mid * mid - det))
        radius = math.ceil(3 * math.sqrt(lam))
        x0 = min(max(math.floor((px - radius) / 16), 0), gx)
        x1 = min(max(math.ceil((px + radius) / 16), 0), gx)
        y0 = min(max(math.floor((py - radius) / 16), 0), gy)
        y1 = min(max(math.ceil((py + radius) / 16), 0), gy)
        if x1 <= x0 or y1 <= y0:
            continue
        radii[i] = radius
        if colors_precomp is not None:
            rgb = np.array(colors_precomp[i], dtype=np.float64)
        else:
            d = means3D[i] - campos
            x, y, z = d / np.linalg.norm(d)
            sh = shs[i]
            deg = settings.sh_degree
            rgb = C0 * sh[0]
            if deg >= 1:
                rgb = rgb - C1 * y * sh[1] + C1 * z * sh[2] - C1 * x * sh[3]
            if deg >= 2:
                xx, yy, zz = x * x, y * y, z * z
                rgb = (rgb + C2[0] * x * y * sh[4] + C2[1] * y * z * sh[5]
                       + C2[2] * (2 * zz - xx - yy) * sh[6] + C2[3] * x * z * sh[7]
                       + C2[4] * (xx - yy) * sh[8])
            if deg >= 3:
                rgb = (rgb + C3[0] * y * (3 * xx - yy) * sh[9] + C3[1] * x * y * z * sh[10]
                       + C3[2] * y * (4 * zz - xx - yy) * sh[11]
                       + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[12]
                       + C3[4] * x * (4 * zz - xx - yy) * sh[13]
                       + C3[5] * z * (xx - yy) * sh[14] + C3[6] * x * (xx - 3 * yy) * sh[15])
            rgb = np.maximum(rgb + 0.5, 0.0)
        kept.append((t[2], i, px, py, conic, opacities[i][0], rgb, (x0, x1, y0, y1)))
    # per pixel: C, T and "stopped", updated Gaussian by Gaussian in (depth, index) order
    v, u = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    C = np.zeros((H, W, 3))
    T = np.ones((H, W))
    stopped = np.zeros((H, W), dtype=bool)
    for _, i, px, py, conic, op, rgb, (x0, x1, y0, y1) in sorted(kept, key=lambda k: k[:2]):
        in_tile = (u // 16 >= x0) & (u // 16 < x1) & (v // 16 >= y0) & (v // 16 < y1)
        dx, dy = u + 0.5 - px, v + 0.5 - py
        power = -0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) - conic[0, 1] * dx * dy
        alpha = np.minimum(0.99, op * np.exp(power))
        ok = in_tile & ~stopped & (power <= 0) & (alpha >= 1 / 255)
        stop = ok & (T * (1 - alpha) < 1e-4)
        stopped |= stop
        blend = ok & ~stop
        C[blend] += (alpha * T)[blend][:, None] * rgb
        T[blend] *= 1 - alpha[blend]
    img = C + T[..., None] * bg
    if stats is not None:
        stats.update(stopped=stopped, T=T)
    return img.transpose(2, 0, 1), radii


def check_against_brute(settings, scene, atol=1e-10, dtype=torch.float64, stats=None):
    img, radii = render(settings, scene, dtype)
    ref_img, ref_radii = brute_force(settings, **scene, stats=stats)
    assert radii.dtype == torch.int32
    np.testing.assert_array_equal(radii.numpy(), ref_radii)
    np.testing.assert_allclose(img.detach().double().numpy(), ref_img, atol=atol, rtol=0)
    return img, radii


# ----------------------------------------------------------------------------- forward tests

@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_mixed_scene_matches_brute_force(degree):
    settings, w2v = make_camera(37, 29, 0.6, 0.45, cx_off=0.12, cy_off=-0.08, sh_degree=degree,
                                scale_modifier=0.8, seed=degree)
    scene = mixed_scene(settings, w2v, seed=10 + degree)
    img, radii = check_against_brute(settings, scene)
    r = radii.numpy()
    assert r[-5] == 0 and r[-4] == 0 and r[-3] > 0     # behind, before near plane, past it
    assert (r > 0).sum() >= 10
    # the image is not just background
    bg = settings.bg.numpy()[:, None, None]
    assert np.abs(img.detach().numpy() - bg).max() > 0.1


def test_float32_matches_brute_force():
    settings, w2v = make_camera(37, 29, 0.6, 0.45, cx_off=-0.1, cy_off=0.15, seed=5)
    scene = mixed_scene(settings, w2v, seed=7)
    img, _ = check_against_brute(settings, scene, atol=2e-4, dtype=torch.float32)
    assert img.dtype == torch.float32


def test_precomputed_colours_and_covariances():
    settings, w2v = make_camera(37, 29, 0.6, 0.45, cx_off=0.05, seed=3, scale_modifier=1.7)
    scene = mixed_scene(settings, w2v, seed=4)
    g = np.random.default_rng(0)
    n = len(scene["means3D"])
    a = g.normal(size=(n, 3, 3)) * 0.1
    cov = a @ a.transpose(0, 2, 1) + 0.001 * np.eye(3)
    iu = np.triu_indices(3)
    scene = dict(means3D=scene["means3D"], opacities=scene["opacities"],
                 colors_precomp=g.uniform(-0.1, 1.2, size=(n, 3)),
                 cov3D_precomp=cov[:, iu[0], iu[1]])
    check_against_brute(settings, scene)


def test_early_stop_with_opaque_gaussians():
    settings, w2v = make_camera(37, 29, 0.6, 0.45, seed=2)
    g = np.random.default_rng(3)
    n = 60
    pts = pixel_to_view(settings, g.uniform(0, 37, n), g.uniform(0, 29, n), g.uniform(1, 4, n))
    scene = dict(means3D=view_to_world(w2v, pts), opacities=g.uniform(0.85, 1.0, (n, 1)),
                 scales=np.exp(g.uniform(np.log(0.3), np.log(0.8), (n, 3))),
                 rotations=random_quats(g, n), colors_precomp=g.uniform(0, 1, (n, 3)))
    stats = {}
    check_against_brute(settings, scene, stats=stats)
    assert stats["stopped"].mean() > 0.5          # the stop rule really decides most pixels


def test_one_tile_with_thousands_of_gaussians():
    settings, w2v = make_camera(24, 19, 0.5, 0.5, seed=8)
    g = np.random.default_rng(9)
    n = 3000
    pts = pixel_to_view(settings, g.uniform(2, 14, n), g.uniform(2, 14, n), g.uniform(1, 3, n))
    scene = dict(means3D=view_to_world(w2v, pts), opacities=g.uniform(0.004, 0.03, (n, 1)),
                 scales=np.exp(g.uniform(np.log(0.01), np.log(0.2), (n, 3))),
                 rotations=random_quats(g, n), colors_precomp=g.uniform(0, 1, (n, 3)))
    stats = {}
    check_against_brute(settings, scene, stats=stats)
    assert 1e-3 < stats["T"].min() < 0.5          # many blended, none stopped early


def test_no_gaussians_and_all_culled():
    settings, w2v = make_camera(20, 13, 0.5, 0.4, seed=0)
    f64 = dict(dtype=torch.float64)
    m = torch.zeros(0, 3, **f64, requires_grad=True)
    img, radii = rasterize_gaussians(settings, m, torch.zeros(0, 3, **f64),
                                     torch.zeros(0, 1, **f64),
                                     colors_precomp=torch.zeros(0, 3, **f64),
                                     cov3D_precomp=torch.zeros(0, 6, **f64), backend="torch")
    assert img.shape == (3, 13, 20) and radii.shape == (0,) and radii.dtype == torch.int32
    assert torch.equal(img, settings.bg[:, None, None].expand(3, 13, 20))
    img.sum().backward()
    assert m.grad.shape == (0, 3)
    # every Gaussian behind the camera or before the near plane
    pts = np.array([[0.0, 0.0, -1.0], [0.3, -0.2, -0.01], [0.0, 0.1, 0.19]])
    means = torch.tensor(view_to_world(w2v, pts), requires_grad=True)
    op = torch.full((3, 1), 0.5, **f64, requires_grad=True)
    img, radii = rasterize_gaussians(settings, means, torch.zeros_like(means), op,
                                     colors_precomp=torch.ones(3, 3, **f64),
                                     scales=torch.ones(3, 3, **f64),
                                     rotations=torch.tensor([[1.0, 0, 0, 0]] * 3, **f64),
                                     backend="torch")
    assert torch.equal(radii, torch.zeros(3, dtype=torch.int32))
    assert torch.allclose(img, settings.bg[:, None, None].expand(3, 13, 20))
    img.sum().backward()
    assert torch.equal(means.grad, torch.zeros_like(means))
    assert torch.equal(op.grad, torch.zeros_like(op))


@pytest.mark.parametrize("block,window,max_entries,save",
                         [(4, 3, 400, 0), (8, 5, 1 << 20, 3000), (16, 64, 1 << 20, 1 << 30)])
def test_internal_layouts_agree(monkeypatch, block, window, max_entries, save):
    """Evaluation block size, window length, batch size and saved-vs-recomputed weights only
    change how the work is split: images match the brute force, gradients the defaults."""
    settings, w2v = make_camera(37, 29, 0.6, 0.45, cx_off=0.1, seed=2)
    scene = mixed_scene(settings, w2v, seed=3)
    g = np.random.default_rng(5)
    n = 40                                         # opaque layer: blocks stop at different times
    pts = pixel_to_view(settings, g.uniform(0, 37, n), g.uniform(0, 29, n), g.uniform(3, 4, n))
    scene = {k: np.concatenate([v, extra]) for (k, v), extra in zip(scene.items(), [
        view_to_world(w2v, pts), g.uniform(0.9, 1.0, (n, 1)),
        np.exp(g.uniform(np.log(0.3), np.log(0.8), (n, 3))), random_quats(g, n),
        g.normal(size=(n, 16, 3)) * 0.4])}
    wts = _weights(settings, k=1, seed=4)[0]

    def grads():
        t = to_torch(scene, requires_grad=True)
        img, _ = rasterize_gaussians(settings, means2D=torch.zeros_like(t["means3D"]),
                                     backend="torch", **t)
        (img * wts).sum().backward()
        return {k: v.grad for k, v in t.items()}

    expected = grads()
    for name, value in [("BLOCK", block), ("WINDOW", window), ("MAX_ENTRIES", max_entries),
                        ("SAVE_ENTRIES", save)]:
        monkeypatch.setattr(torch_backend, name, value)
    stats = {}
    check_against_brute(settings, scene, stats=stats)
    assert 0.1 < stats["stopped"].mean() < 0.9
    for k, v in grads().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-9, atol=1e-12, msg=k)


# ----------------------------------------------------------------------------- gradients

def smooth_scene(settings, w2v, n=4, seed=0):
    """Wide, half-transparent Gaussians inside the frustum: no threshold is near, so the
    rendered image is a smooth function of every input."""
    g = np.random.default_rng(seed)
    w, h = settings.image_width, settings.image_height
    pts = pixel_to_view(settings, g.uniform(2, w - 2, n), g.uniform(2, h - 2, n),
                        g.uniform(1.5, 2.5, n))
    sh = g.normal(size=(n, 16, 3)) * 0.05
    sh[:, 0] = 1.0
    return dict(means3D=view_to_world(w2v, pts), opacities=g.uniform(0.3, 0.6, (n, 1)),
                shs=sh, scales=g.uniform(0.4, 0.7, (n, 3)), rotations=random_quats(g, n))


def _weights(settings, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, 3, settings.image_height, settings.image_width, generator=g,
                       dtype=torch.float64)


def test_gradcheck_sh_scales_rotations():
    settings, w2v = make_camera(14, 11, 0.5, 0.4, cx_off=0.1, seed=1, scale_modifier=0.9)
    t = to_torch(smooth_scene(settings, w2v), requires_grad=True)
    wts = _weights(settings)
    m2 = torch.zeros_like(t["means3D"], requires_grad=True)

    def f(means3D, means2D, opacities, shs, scales, rotations):
        img, _ = rasterize_gaussians(settings, means3D, means2D, opacities, shs=shs,
                                     scales=scales, rotations=rotations, backend="torch")
        return (img * wts).sum(dim=(1, 2, 3))

    assert torch.autograd.gradcheck(f, (t["means3D"], m2, t["opacities"], t["shs"], t["scales"],
                                        t["rotations"]), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_precomputed():
    settings, w2v = make_camera(14, 11, 0.5, 0.4, cy_off=-0.1, seed=2)
    scene = smooth_scene(settings, w2v, seed=3)
    g = np.random.default_rng(1)
    n = len(scene["means3D"])
    a = g.normal(size=(n, 3, 3)) * 0.2
    cov = a @ a.transpose(0, 2, 1) + 0.15 * np.eye(3)
    iu = np.triu_indices(3)
    means = torch.tensor(scene["means3D"], requires_grad=True)
    op = torch.tensor(scene["opacities"], requires_grad=True)
    colors = torch.tensor(g.uniform(0.1, 0.9, (n, 3)), requires_grad=True)
    cov3 = torch.tensor(cov[:, iu[0], iu[1]], requires_grad=True)
    wts = _weights(settings, seed=1)

    def f(means3D, opacities, colors_precomp, cov3D_precomp):
        img, _ = rasterize_gaussians(settings, means3D, torch.zeros_like(means3D), opacities,
                                     colors_precomp=colors_precomp,
                                     cov3D_precomp=cov3D_precomp, backend="torch")
        return (img * wts).sum(dim=(1, 2, 3))

    assert torch.autograd.gradcheck(f, (means, op, colors, cov3), eps=1e-6, atol=1e-6,
                                    rtol=1e-5)


def test_gradients_with_stop_and_clamps():
    """Gradients match finite differences of the brute force with alpha clamped at 0.99,
    stopped pixels and Gaussians listed in only part of the image (no threshold is crossed by
    a perturbation this small at these seeds)."""
    settings, w2v = make_camera(21, 17, 0.5, 0.4, seed=4)
    g = np.random.default_rng(6)
    n = 16
    pts = pixel_to_view(settings, g.uniform(0, 21, n), g.uniform(0, 17, n), g.uniform(1, 3, n))
    opac = g.uniform(0.8, 1.0, (n, 1))
    opac[:4] = 1.0
    scene = dict(means3D=view_to_world(w2v, pts), opacities=opac,
                 colors_precomp=g.uniform(0, 1, (n, 3)),
                 scales=np.exp(g.uniform(np.log(0.3), np.log(0.8), (n, 3))),
                 rotations=random_quats(g, n))
    stats = {}
    brute_force(settings, **scene, stats=stats)
    assert 0.2 < stats["stopped"].mean() < 0.9
    t = to_torch(scene, requires_grad=True)
    wts = _weights(settings, k=1, seed=2)[0]
    img, _ = rasterize_gaussians(settings, means2D=torch.zeros_like(t["means3D"]),
                                 backend="torch", **t)
    (img * wts).sum().backward()
    eps = 1e-7
    for name in ("opacities", "colors_precomp", "scales"):
        base = scene[name]
        fd = np.zeros_like(base)
        for i in range(n):
            for j in range(base.shape[1]):
                vals = []
                for s in (1, -1):
                    pert = dict(scene)
                    pert[name] = base.copy()
                    pert[name][i, j] += s * eps
                    vals.append((brute_force(settings, **pert)[0] * wts.numpy()).sum())
                fd[i, j] = (vals[0] - vals[1]) / (2 * eps)
        np.testing.assert_allclose(t[name].grad.numpy(), fd, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        assert np.abs(fd).max() > 1e-2
    # fully clamped Gaussians (opacity 1 and alpha 0.99 at every pixel reached) would have
    # a zero opacity gradient; here each is clamped only near its centre
    assert np.all(np.abs(t["opacities"].grad.numpy()[:4]) > 0)


def test_means2d_gradient_is_ndc_derivative():
    settings, w2v = make_camera(17, 13, 0.5, 0.4, cx_off=0.1, cy_off=0.05, seed=6)
    scene = smooth_scene(settings, w2v, n=5, seed=8)
    means2D = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    wts = _weights(settings, k=1, seed=3)[0]
    img, _ = render(settings, scene, means2D=means2D)
    (img * wts).sum().backward()
    eps = 1e-6
    fd = np.zeros((5, 2))
    for i in range(5):
        for j in range(2):
            vals = []
            for s in (1, -1):
                off = np.zeros((5, 2))
                off[i, j] = s * eps
                vals.append((brute_force(settings, **scene, ndc_offset=off)[0]
                             * wts.numpy()).sum())
            fd[i, j] = (vals[0] - vals[1]) / (2 * eps)
    np.testing.assert_allclose(means2D.grad[:, :2].numpy(), fd, rtol=1e-5, atol=1e-7)
    assert torch.equal(means2D.grad[:, 2], torch.zeros(5, dtype=torch.float64))
    assert np.abs(fd).max() > 1e-2


def test_clamped_coordinate_is_a_constant_for_the_gradient():
    """A Gaussian far to the side (t.x / t.z clamped): the means3D gradient is the derivative
    with the clamped tx held at its value."""
    settings, w2v = make_camera(15, 12, 0.5, 0.4, seed=7)
    g = np.random.default_rng(2)
    pts = np.array([[2.2, 0.1, 2.0], [0.1, -0.05, 1.5]])
    assert abs(pts[0, 0] / pts[0, 2]) > 1.3 * 0.5
    scene = dict(means3D=view_to_world(w2v, pts), opacities=np.array([[0.8], [0.4]]),
                 scales=np.array([[1.6, 1.0, 1.2], [0.5, 0.6, 0.4]]),
                 rotations=random_quats(g, 2), colors_precomp=np.array([[0.9, 0.2, 0.4],
                                                                        [0.1, 0.7, 0.3]]))
    t = to_torch(scene, requires_grad=True)
    wts = _weights(settings, k=1, seed=5)[0]
    img, radii = rasterize_gaussians(settings, means2D=torch.zeros_like(t["means3D"]),
                                     backend="torch", **t)
    assert radii[0] > 0
    (img * wts).sum().backward()
    t0 = np.append(scene["means3D"][0], 1.0) @ settings.viewmatrix.numpy()
    frozen = {0: (1.3 * 0.5 * t0[2], None)}                    # tx = lx t.z at the base point
    eps = 1e-6
    fd = np.zeros(3)
    for j in range(3):
        vals = []
        for s in (1, -1):
            pert = dict(scene)
            pert["means3D"] = scene["means3D"].copy()
            pert["means3D"][0, j] += s * eps
            vals.append((brute_force(settings, **pert, frozen=frozen)[0] * wts.numpy()).sum())
        fd[j] = (vals[0] - vals[1]) / (2 * eps)
    np.testing.assert_allclose(t["means3D"].grad[0].numpy(), fd, rtol=1e-5, atol=1e-7)
    assert np.abs(fd).max() > 1e-3


def test_culled_gaussians_get_zero_gradient():
    settings, w2v = make_camera(37, 29, 0.6, 0.45, seed=0)
    scene = mixed_scene(settings, w2v, seed=2)
    t = to_torch(scene, requires_grad=True)
    m2 = torch.zeros_like(t["means3D"], requires_grad=True)
    img, radii = rasterize_gaussians(settings, means2D=m2, backend="torch", **t)
    img.square().sum().backward()
    culled = radii == 0
    assert culled.sum() >= 2
    for name in ("means3D", "opacities", "shs", "scales", "rotations"):
        assert torch.all(t[name].grad[culled] == 0), name
    assert torch.all(m2.grad[culled] == 0)
    assert m2.grad[~culled].abs().sum() > 0


@pytest.mark.cuda
def test_cuda_tensors_match_cpu():
    settings, w2v = make_camera(37, 29, 0.6, 0.45, cx_off=0.12, seed=0)
    scene = mixed_scene(settings, w2v, seed=10)
    img_cpu, radii_cpu = render(settings, scene, torch.float64)
    t = {k: v.cuda() for k, v in to_torch(scene).items()}
    s = settings._replace(bg=settings.bg.cuda(), viewmatrix=settings.viewmatrix.cuda(),
                          projmatrix=settings.projmatrix.cuda(), campos=settings.campos.cuda())
    img, radii = rasterize_gaussians(s, means2D=torch.zeros_like(t["means3D"]),
                                     backend="torch", **t)
    assert torch.equal(radii.cpu(), radii_cpu)
    assert torch.allclose(img.cpu(), img_cpu, atol=1e-10)
