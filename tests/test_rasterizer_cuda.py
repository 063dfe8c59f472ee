"""The CUDA rasterizer against the PyTorch reference backend (run in float64).

Every test needs a GPU (``@pytest.mark.cuda``; conftest skips them elsewhere). Images must agree
to a relative error ||a - b|| / ||b|| below 1e-4 and every gradient below 1e-3; radii exactly.
Scenes are random: a pixel where a float32 alpha lands on the other side of 1/255 than the
float64 one (or similar threshold events) is possible but rare, and the norm-based tolerances
absorb it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diff_gaussian_rasterization import rasterize_gaussians
from raster_scenes import camera_settings

IMG_TOL = 1e-4
GRAD_TOL = 1e-3
NAMES = ("means3D", "means2D", "opacities", "shs", "colors_precomp", "scales", "rotations",
         "cov3D_precomp")

pytestmark = pytest.mark.cuda


# ----------------------------------------------------------------------------- helpers

def make_settings(width, height, tany=0.35, cx_off=0.0, cy_off=0.0, seed=0, dist=2.5,
                  sh_degree=3, scale_modifier=1.0, bg=(0.2, 0.5, 0.9), device="cuda"):
    """A camera `dist` away from the origin looking at it, slightly rolled, OpenCV axes."""
    g = np.random.default_rng(seed)
    d = g.normal(size=3)
    d /= np.linalg.norm(d)
    campos = -d * dist
    fwd = -campos / np.linalg.norm(campos)
    up = np.array([0.0, -1.0, 0.0]) + 0.2 * g.normal(size=3)
    right = np.cross(up, fwd)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rot = np.stack([right, down, fwd])
    w2v = np.eye(4)
    w2v[:3, :3], w2v[:3, 3] = rot, -rot @ campos
    return camera_settings(w2v, campos, width, height, tany * width / height, tany, cx_off=cx_off,
                           cy_off=cy_off, bg=bg, sh_degree=sh_degree,
                           scale_modifier=scale_modifier, device=device)


def random_scene(n, seed=0, spread=0.6, scale=(0.01, 0.06), opacity=(0.05, 0.99), K=16,
                 sh_std=0.3):
    """float32 CPU tensors of n random Gaussians around the origin."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *shape: torch.rand(*shape, generator=g)
    lo, hi = math.log(scale[0]), math.log(scale[1])
    return {
        "means3D": (u(n, 3) * 2 - 1) * spread,
        "opacities": opacity[0] + (opacity[1] - opacity[0]) * u(n, 1),
        "shs": torch.randn(n, K, 3, generator=g) * sh_std,
        "colors_precomp": u(n, 3),
        "scales": torch.exp(lo + (hi - lo) * u(n, 3)),
        "rotations": torch.randn(n, 4, generator=g) * (0.5 + u(n, 1) * 1.5),
    }


def cov_from(scene, modifier=1.0):
    """Upper triangles of R S S R^T (the cov3D_precomp layout)."""
    q = scene["rotations"].double()
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                    1).view(-1, 3, 3)
    L = R * (scene["scales"].double() * modifier)[:, None, :]
    S = L @ L.transpose(1, 2)
    return torch.stack([S[:, 0, 0], S[:, 0, 1], S[:, 0, 2], S[:, 1, 1], S[:, 1, 2], S[:, 2, 2]],
                       1).float()


def pick(scene, colors=False, cov=False, modifier=1.0):
    out = {"means3D": scene["means3D"], "opacities": scene["opacities"]}
    if colors:
        out["colors_precomp"] = scene["colors_precomp"]
    else:
        out["shs"] = scene["shs"]
    if cov:
        out["cov3D_precomp"] = cov_from(scene, modifier)
    else:
        out["scales"], out["rotations"] = scene["scales"], scene["rotations"]
    return out


def settings_as(settings, dtype):
    return settings._replace(**{k: getattr(settings, k).to(dtype)
                                for k in ("bg", "viewmatrix", "projmatrix", "campos")})


def render(settings, inputs, backend, dtype, weights=None):
    """Image, radii and gradients of sum(image * weights) for every input."""
    leaves = {k: v.to("cuda", dtype).detach().requires_grad_(True) for k, v in inputs.items()}
    n = leaves["means3D"].shape[0]
    means2D = torch.zeros(n, 3, dtype=dtype, device="cuda", requires_grad=True)
    image, radii = rasterize_gaussians(settings_as(settings, dtype), leaves["means3D"], means2D,
                                       leaves["opacities"], leaves.get("shs"),
                                       leaves.get("colors_precomp"), leaves.get("scales"),
                                       leaves.get("rotations"), leaves.get("cov3D_precomp"),
                                       backend=backend)
    grads = {}
    if weights is not None:
        (image * weights.to(image)).sum().backward()
        grads = {k: v.grad for k, v in leaves.items()}
        grads["means2D"] = means2D.grad
    return image.detach(), radii, grads


def rel(a, b):
    a, b = a.double(), b.double()
    nb = b.norm().item()
    diff = (a - b).norm().item()
    return diff / nb if nb > 0 else diff


def check(settings, inputs, seed=0, img_tol=IMG_TOL, grad_tol=GRAD_TOL):
    """CUDA float32 against the reference in float64; returns the CUDA results."""
    H, W = settings.image_height, settings.image_width
    weights = torch.randn(3, H, W, generator=torch.Generator().manual_seed(seed + 101))
    weights = weights.to("cuda")
    img, radii, grads = render(settings, inputs, "cuda", torch.float32, weights)
    ref_img, ref_radii, ref_grads = render(settings, inputs, "torch", torch.float64, weights)
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    assert radii.dtype == torch.int32 and radii.shape == (inputs["means3D"].shape[0],)
    assert torch.isfinite(img).all()
    assert torch.equal(radii.cpu(), ref_radii.cpu()), "radii differ"
    err = rel(img, ref_img)
    assert err < img_tol, f"image rel. error {err:.3g}"
    for k, ref in ref_grads.items():
        got = grads[k]
        assert got is not None and got.shape == ref.shape and got.dtype == torch.float32, k
        assert torch.isfinite(got).all(), k
        if ref.abs().max() == 0:
            assert got.abs().max() == 0, k
            continue
        e = rel(got, ref)
        assert e < grad_tol, f"gradient of {k}: rel. error {e:.3g}"
    assert (grads["means2D"][:, 2] == 0).all()
    return img, radii, grads


def assert_switch_changes_nothing(monkeypatch, var, settings, inputs, value="1"):
    """An internal optimisation switched off (or retuned) by `var`=value must leave the image and
    radii bitwise unchanged and the gradients equal up to float-atomic rounding."""
    H, W = settings.image_height, settings.image_width
    w = torch.randn(3, H, W, generator=torch.Generator().manual_seed(H * W)).to("cuda")
    img1, r1, g1 = render(settings, inputs, "cuda", torch.float32, w)
    with monkeypatch.context() as m:
        m.setenv(var, value)
        img2, r2, g2 = render(settings, inputs, "cuda", torch.float32, w)
    assert torch.equal(img1, img2)
    assert torch.equal(r1, r2)
    for k in g1:
        assert rel(g1[k], g2[k]) <= 1e-5, k


# ----------------------------------------------------------------------------- tests

def test_available():
    from diff_gaussian_rasterization import cuda_backend

    assert cuda_backend.available(), cuda_backend.load_error()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_random_scene_sh_degrees(degree):
    s = make_settings(173, 111, cx_off=0.07, cy_off=-0.05, seed=degree, sh_degree=degree)
    check(s, pick(random_scene(600, seed=degree)), seed=degree)


@pytest.mark.parametrize("degree,K", [(1, 4), (3, 16)])
def test_sh_rows_of_exactly_the_used_coefficients(degree, K):
    """SH rows that hold exactly (degree+1)^2 coefficients (whole float4s) are moved through
    shared memory by whole warps in the per-Gaussian backward: 161 Gaussians leave a partly
    filled warp and an empty one in the last block, and some are culled (zero gradients)."""
    s = make_settings(96, 72, seed=20 + degree, dist=2.0, sh_degree=degree)
    scene = random_scene(161, seed=20 + degree, spread=2.5, K=K)
    img, radii, grads = check(s, pick(scene), seed=20 + degree)
    culled = radii == 0
    assert culled.any() and (~culled).any()
    assert (grads["shs"][culled] == 0).all()
    assert (grads["shs"][~culled].abs().amax(dim=(1, 2)) > 0).any()


def test_colors_precomp():
    s = make_settings(128, 96, seed=4)
    check(s, pick(random_scene(500, seed=4), colors=True), seed=4)


def test_cov3d_precomp():
    s = make_settings(101, 157, cx_off=-0.1, cy_off=0.12, seed=5, sh_degree=2)
    check(s, pick(random_scene(500, seed=5), cov=True), seed=5)


def test_scale_modifier():
    s = make_settings(150, 100, seed=6, scale_modifier=0.6)
    check(s, pick(random_scene(500, seed=6)), seed=6)


def test_colors_and_cov3d_together():
    s = make_settings(90, 70, seed=7)
    check(s, pick(random_scene(300, seed=7), colors=True, cov=True), seed=7)


def test_zero_gaussians():
    s = make_settings(40, 24, seed=8)
    inputs = {k: v[:0] for k, v in pick(random_scene(4, seed=8)).items()}
    weights = torch.randn(3, 24, 40, device="cuda")
    img, radii, grads = render(s, inputs, "cuda", torch.float32, weights)
    bg = s.bg.view(3, 1, 1).expand(3, 24, 40)
    assert torch.equal(img, bg)
    assert radii.shape == (0,)
    assert grads["means3D"].shape == (0, 3)


def test_one_gaussian():
    s = make_settings(64, 48, seed=9)
    scene = random_scene(1, seed=9, spread=0.0, scale=(0.1, 0.2), opacity=(0.7, 0.8))
    check(s, pick(scene), seed=9)


def test_culled_and_off_screen():
    s = make_settings(120, 80, seed=10, dist=2.0)
    scene = random_scene(800, seed=10, spread=4.0)   # many behind the camera or off screen
    img, radii, grads = check(s, pick(scene), seed=10)
    culled = radii == 0
    assert culled.any() and (~culled).any()
    for k in NAMES:
        if k in grads:
            assert (grads[k][culled] == 0).all(), k


def test_all_behind_camera():
    s = make_settings(48, 32, seed=11, dist=2.0)
    scene = random_scene(50, seed=11, spread=0.2)
    fwd = s.viewmatrix[:3, 2].cpu()          # view z axis in world coordinates
    scene["means3D"] = s.campos.cpu() - 1.0 * fwd + scene["means3D"]
    weights = torch.randn(3, 32, 48, device="cuda")
    img, radii, grads = render(s, pick(scene), "cuda", torch.float32, weights)
    assert (radii == 0).all()
    assert torch.allclose(img, s.bg.view(3, 1, 1).expand_as(img))
    assert all((g == 0).all() for g in grads.values())


def test_huge_gaussians():
    s = make_settings(96, 64, seed=12)
    check(s, pick(random_scene(40, seed=12, scale=(0.3, 1.5), opacity=(0.2, 0.6))), seed=12)


def test_flat_gaussians():
    s = make_settings(96, 64, seed=13)
    scene = random_scene(400, seed=13)
    scene["scales"][:, 0] = 1e-7
    scene["scales"][::3, 1] = 1e-7       # a third are needles
    check(s, pick(scene), seed=13)


def test_opacity_near_zero():
    s = make_settings(96, 64, seed=14)
    check(s, pick(random_scene(600, seed=14, opacity=(0.001, 0.02))), seed=14)


def test_opacity_near_one():
    s = make_settings(96, 64, seed=15)
    check(s, pick(random_scene(400, seed=15, opacity=(0.97, 0.9999))), seed=15)


def test_thousands_in_one_tile():
    # all Gaussians project into (roughly) one 16x16 tile in the middle of the image
    s = make_settings(64, 64, seed=16, dist=3.0, tany=0.3)
    scene = random_scene(5000, seed=16, spread=0.02, scale=(0.002, 0.01), opacity=(0.01, 0.1))
    check(s, pick(scene), seed=16)


@pytest.mark.parametrize("n", [1500, 6000, 20000])
def test_lists_longer_than_a_sort_chunk(n):
    # Tile lists are depth-sorted in shared memory in chunks of 1024 entries; longer lists merge
    # their sorted runs (1500: one merge pass; 6000: three and 20000: five, through the merge
    # buffer). All the Gaussians sit where four tiles meet, at low opacity, so pixels see deep
    # into the lists and a wrong order would change the image.
    s = make_settings(32, 32, seed=24, dist=3.0, tany=0.3)
    scene = random_scene(n, seed=24, spread=0.01, scale=(0.03, 0.1), opacity=(0.002, 0.02))
    check(s, pick(scene), seed=24)


def test_equal_depths_in_index_order():
    # Clones (as densification makes them) share their mean, hence their depth; the definition
    # orders ties by index, and so must the per-tile sort. 600 Gaussians on 40 distinct means.
    s = make_settings(96, 64, seed=25)
    scene = random_scene(600, seed=25, scale=(0.01, 0.05))
    src = torch.randint(0, 40, (600,), generator=torch.Generator().manual_seed(25))
    scene["means3D"] = scene["means3D"][src]
    check(s, pick(scene), seed=25)


@pytest.mark.parametrize("copies", [2, 3, 4])
def test_few_equal_depths_in_index_order(copies):
    # A few ties per tile list (the common case: two depths that round to the same float) are put
    # in index order by a shorter path than many ties (above): means shared by `copies` Gaussians
    # each, the copies scattered over the indices, among 1500 distinct ones. 12 ties in all, so
    # that even a tile holding every one of them stays on that path (at most 64 passes).
    s = make_settings(96, 64, seed=26)
    scene = random_scene(1500, seed=26, scale=(0.02, 0.06), opacity=(0.3, 0.9))
    g = torch.Generator().manual_seed(26 + copies)
    groups = 12 // (copies - 1)
    slots = torch.randperm(1500, generator=g)[:groups * copies].view(groups, copies)
    for row in slots:
        scene["means3D"][row] = scene["means3D"][row[0]].clone()
    check(s, pick(scene), seed=26)


def test_more_tiles_than_the_layout_keeps_in_shared_memory():
    # The list layout keeps each tile's length class in shared memory for up to 8192 tiles; this
    # image has 132 x 69 = 9108, and the tiles' order is built from their ranges instead.
    s = make_settings(2100, 1100, seed=27, dist=2.5)
    check(s, pick(random_scene(3000, seed=27, scale=(0.005, 0.03))), seed=27)


def test_larger_image_many_gaussians():
    s = make_settings(802, 550, cx_off=0.03, cy_off=0.02, seed=17, dist=2.0)
    check(s, pick(random_scene(20000, seed=17, scale=(0.003, 0.02))), seed=17)


def test_float64_inputs_give_float64_outputs():
    s = make_settings(64, 48, seed=18)
    inputs = pick(random_scene(200, seed=18))
    w = torch.randn(3, 48, 64, device="cuda")
    img64, _, g64 = render(s, inputs, "cuda", torch.float64, w)
    img32, _, g32 = render(s, inputs, "cuda", torch.float32, w)
    assert img64.dtype == torch.float64
    assert torch.equal(img64.float(), img32)          # same float32 kernels, deterministic
    for k, g in g64.items():
        assert g.dtype == torch.float64, k
        assert rel(g, g32[k]) <= 1e-5, k              # atomics: summation order varies


def test_deterministic():
    s = make_settings(200, 150, seed=19)
    inputs = pick(random_scene(8000, seed=19, scale=(0.005, 0.03)))
    w = torch.randn(3, 150, 200, device="cuda")
    img1, r1, g1 = render(s, inputs, "cuda", torch.float32, w)
    img2, r2, g2 = render(s, inputs, "cuda", torch.float32, w)
    assert torch.equal(img1, img2)
    assert torch.equal(r1, r2)
    for k in g1:
        assert rel(g2[k], g1[k]) <= 1e-5, k


def test_forward_without_grad():
    s = make_settings(64, 48, seed=20)
    inputs = {k: v.cuda() for k, v in pick(random_scene(300, seed=20)).items()}
    with torch.no_grad():
        img, radii = rasterize_gaussians(s, inputs["means3D"], torch.zeros_like(inputs["means3D"]),
                                         inputs["opacities"], inputs["shs"], None,
                                         inputs["scales"], inputs["rotations"], None,
                                         backend="cuda")
    ref, ref_radii = rasterize_gaussians(s, inputs["means3D"], torch.zeros_like(inputs["means3D"]),
                                         inputs["opacities"], inputs["shs"], None,
                                         inputs["scales"], inputs["rotations"], None,
                                         backend="torch")
    assert rel(img, ref) < IMG_TOL
    assert torch.equal(radii, ref_radii)


def test_tile_list_culling_changes_nothing(monkeypatch):
    # Internally a Gaussian is left out of tiles where its alpha stays below 1/255; with that
    # switched off (STGA_RASTER_NO_CULL=1) the image must be bitwise the same.
    s = make_settings(300, 200, seed=21, dist=2.0)
    scene = random_scene(6000, seed=21, scale=(0.002, 0.05), opacity=(0.003, 0.999))
    scene["scales"][::4, 0] *= 0.02                     # elongated ones, for the ellipse test
    assert_switch_changes_nothing(monkeypatch, "STGA_RASTER_NO_CULL", s, pick(scene))


def test_backward_split_changes_nothing(monkeypatch):
    # The backward blends long tile lists in independent segments, restarting from checkpoints
    # that the forward records; with that switched off (STGA_RASTER_NO_SPLIT=1) every patch is
    # blended in one piece. Low opacities keep every pixel going through thousands of Gaussians,
    # so that most lists span many segments.
    s = make_settings(96, 80, seed=23, dist=3.0, tany=0.3)
    scene = random_scene(8000, seed=23, spread=0.05, scale=(0.002, 0.01), opacity=(0.01, 0.1))
    inputs = pick(scene)
    assert_switch_changes_nothing(monkeypatch, "STGA_RASTER_NO_SPLIT", s, inputs)
    check(s, inputs, seed=23)  # and the default agrees with the float64 reference


def split_scene():
    """12 non-empty tiles of a 96x80 image, with lists of ~70 to ~3200 entries (before culling):
    from one backward segment to a hundred."""
    s = make_settings(96, 80, seed=24, dist=3.0, tany=0.3)
    scene = random_scene(6000, seed=24, spread=0.3, scale=(0.002, 0.01), opacity=(0.01, 0.1))
    return s, pick(scene)


@pytest.mark.parametrize("seg", ["32", "96", "2048"])
def test_segment_length_changes_nothing(monkeypatch, seg):
    # STGA_RASTER_SEG sets the backward's segment length (a measurement knob): 32 puts a
    # checkpoint at every staging round, 2048 leaves most lists in one piece.
    s, inputs = split_scene()
    assert_switch_changes_nothing(monkeypatch, "STGA_RASTER_SEG", s, inputs, value=seg)


def test_backward_uses_the_forwards_segments(monkeypatch):
    # The checkpoints are laid out by the forward's segment length; a change of the knob between
    # the forward and the backward must not reach the backward.
    s, inputs = split_scene()
    w = torch.randn(3, 80, 96, generator=torch.Generator().manual_seed(5)).to("cuda")
    _, _, ref = render(s, inputs, "cuda", torch.float32, w)
    leaves = {k: v.cuda().requires_grad_(True) for k, v in inputs.items()}
    means2D = torch.zeros_like(leaves["means3D"], requires_grad=True)
    with monkeypatch.context() as m:
        m.setenv("STGA_RASTER_SEG", "32")
        img, _ = rasterize_gaussians(s, leaves["means3D"], means2D, leaves["opacities"],
                                     leaves["shs"], None, leaves["scales"], leaves["rotations"],
                                     None, backend="cuda")
        m.setenv("STGA_RASTER_SEG", "1024")
        (img * w).sum().backward()
    for k, v in leaves.items():
        assert rel(v.grad, ref[k]) <= 1e-5, k


def test_segment_length_follows_the_backwards_report(monkeypatch):
    # Without STGA_RASTER_SEG the forward picks the segment length from the last backward at the
    # same image size: a first call at an image size no other test uses gets 384; each backward
    # reports few items for the GPU's persistent warps, so each next call takes one step shorter
    # (256, 192, then 128, where it stays), with a guessed plan sized for it (the layout counts
    # the checkpoints of every choice). The image is bitwise the same throughout, the gradients
    # agree, also with the length fixed, and with the float64 reference.
    monkeypatch.delenv("STGA_RASTER_SEG", raising=False)
    from diff_gaussian_rasterization import cuda_backend

    s = make_settings(112, 72, seed=26, dist=3.0, tany=0.3)
    inputs = split_scene()[1]
    w = torch.randn(3, 72, 112, generator=torch.Generator().manual_seed(26)).to("cuda")
    img0, _, g0 = render(s, inputs, "cuda", torch.float32, w)
    assert cuda_backend._ext._last_segment_length() == 384
    for want in (256, 192, 128, 128):
        img, _, g = render(s, inputs, "cuda", torch.float32, w)
        assert cuda_backend._ext._last_segment_length() == want
        assert plan_outcome() == 1
        assert torch.equal(img, img0)
        for k in g0:
            assert rel(g[k], g0[k]) <= 1e-5, k
    monkeypatch.setenv("STGA_RASTER_SEG", "128")
    img, _, g = render(s, inputs, "cuda", torch.float32, w)
    assert torch.equal(img, img0)
    for k in g0:
        assert rel(g[k], g0[k]) <= 1e-5, k
    monkeypatch.delenv("STGA_RASTER_SEG")
    check(s, inputs, seed=26)
    assert cuda_backend._ext._last_segment_length() == 128


def test_segment_length_is_checked(monkeypatch):
    s, inputs = split_scene()
    monkeypatch.setenv("STGA_RASTER_SEG", "100")
    with pytest.raises(RuntimeError, match="multiple of 32"):
        render(s, inputs, "cuda", torch.float32)


def test_overlapped_backward_changes_nothing(monkeypatch):
    # On sm_90 the per-Gaussian backward starts while the backward blending finishes
    # (programmatic dependent launch) and waits for its sums; STGA_RASTER_NO_OVERLAP=1 runs the
    # two one after the other. A scene with long lists, so that the blending has a long tail.
    s, inputs = split_scene()
    assert_switch_changes_nothing(monkeypatch, "STGA_RASTER_NO_OVERLAP", s, inputs)
    check(s, inputs, seed=26)


def test_blending_order_changes_nothing(monkeypatch):
    # Tiles are blended longest list first; in plain index order (STGA_RASTER_NO_ORDER=1) the
    # image must be bitwise the same. A wide image with lists from empty to thousands long.
    s = make_settings(333, 120, seed=25, dist=2.5)
    scene = random_scene(12000, seed=25, spread=0.5, scale=(0.002, 0.03), opacity=(0.01, 0.9))
    scene["means3D"][:4000] *= 0.05                      # a dense cluster: long lists
    assert_switch_changes_nothing(monkeypatch, "STGA_RASTER_NO_ORDER", s, pick(scene))


def corner_scene():
    """6000 Gaussians where the four tiles of a 32x32 image meet: at most 24000 list entries
    (about 90% of them are opaque enough to be listed, in all four tiles), in lists long enough
    that the sort's merge passes need a buffer of as many entries again."""
    s = make_settings(32, 32, seed=24, dist=3.0, tany=0.3)
    scene = random_scene(6000, seed=24, spread=0.01, scale=(0.03, 0.1), opacity=(0.002, 0.02))
    return s, pick(scene)


def plan_outcome():
    """How the last forward (this thread) launched its list phase: 0 after the host sync, 1 before
    it with a plan guessed from the previous call, 2 the guess did not fit and it ran again."""
    from diff_gaussian_rasterization import cuda_backend

    return cuda_backend._ext._last_plan_outcome()


def test_list_phase_after_the_sync_changes_nothing(monkeypatch):
    # STGA_RASTER_NO_PLAN=1 launches emission, sort, merges and blending only once the lists are
    # known (no guessed plan): the image is bitwise the same.
    s, inputs = corner_scene()
    render(s, inputs, "cuda", torch.float32)
    assert_switch_changes_nothing(monkeypatch, "STGA_RASTER_NO_PLAN", s, inputs)
    render(s, inputs, "cuda", torch.float32)
    assert plan_outcome() == 1
    monkeypatch.setenv("STGA_RASTER_NO_PLAN", "1")
    render(s, inputs, "cuda", torch.float32)
    assert plan_outcome() == 0


def test_list_phase_with_guessed_plans_that_do_not_fit():
    # The list phase is launched before the host sync with sizes guessed from the previous call
    # of the same image size (counts plus 1/16). Each scene below outgrows the previous one's
    # guess (then the phase runs again, sized exactly), except the fifth: 50 small Gaussians (at
    # most 200 entries); 1500 at the centre, where four tiles meet (at least 1350 entries,
    # against room for at most 1244; lists longer than a sort chunk: a merge pass); 6000 there
    # (lists about four times as long: three passes and a merge buffer); 6000 spread over the
    # image (more non-empty tiles); the 50 again (fits); the 50 at another image size (no
    # guess). Each result is the reference's, and a repeat, whose guess fits, is bitwise the
    # same.
    s = make_settings(160, 128, seed=24, dist=3.0, tany=0.3)
    tiny = pick(random_scene(50, seed=28, scale=(0.005, 0.01)))
    corner = dict(spread=0.01, scale=(0.03, 0.1), opacity=(0.002, 0.02))
    scenes = [
        (s, tiny, None),
        (s, pick(random_scene(1500, seed=24, **corner)), 2),
        (s, pick(random_scene(6000, seed=24, **corner)), 2),
        (s, pick(random_scene(6000, seed=29, scale=(0.01, 0.05))), 2),
        (s, tiny, 1),
        (make_settings(96, 64, seed=24, dist=3.0, tany=0.3), tiny, 0),
    ]
    for settings, inputs, want in scenes:
        img1, _, _ = check(settings, inputs, seed=31)
        if want is not None:
            assert plan_outcome() == want
        img2, _, _ = render(settings, inputs, "cuda", torch.float32)
        assert plan_outcome() == 1
        assert torch.equal(img1, img2)


def test_guessed_plans_across_forward_only_and_training_calls():
    # A guessed plan carries the backward's split (checkpoint room) only when this call needs a
    # backward: a forward without gradients between training calls (as in evaluation during
    # training) and the training calls after it all take the guessed path and stay correct.
    s, inputs = split_scene()
    check(s, inputs, seed=32)
    cuda_in = {k: v.cuda() for k, v in inputs.items()}
    with torch.no_grad():
        img, _ = rasterize_gaussians(s, cuda_in["means3D"], torch.zeros_like(cuda_in["means3D"]),
                                     cuda_in["opacities"], cuda_in["shs"], None,
                                     cuda_in["scales"], cuda_in["rotations"], None,
                                     backend="cuda")
    assert plan_outcome() == 1
    img_train, _, _ = check(s, inputs, seed=32)
    assert plan_outcome() == 1
    assert torch.equal(img, img_train)


def test_gradients_are_separate_and_aligned():
    # The gradients are views of one allocation: each must be its own contiguous tensor, none
    # overlapping another, each starting on a 16-byte boundary (vector stores), for odd N.
    s = make_settings(64, 48, seed=30)
    for colors, cov in ((False, False), (True, True)):
        inputs = pick(random_scene(301, seed=30), colors=colors, cov=cov)
        w = torch.randn(3, 48, 64, device="cuda")
        _, _, grads = render(s, inputs, "cuda", torch.float32, w)
        spans = []
        for k, g in grads.items():
            assert g.is_contiguous(), k
            assert g.data_ptr() % 16 == 0, k
            spans.append((g.data_ptr(), g.data_ptr() + g.numel() * g.element_size(), k))
        spans.sort()
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            assert end <= start, (a, b)
        check(s, inputs, seed=30)
