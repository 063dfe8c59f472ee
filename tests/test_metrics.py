"""Tests for utils/image_metrics.py, utils/lpips.py and metrics.py (CPU, a few seconds)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import metrics
from utils import lpips as lp
from utils.image_metrics import (
    PSNR_CAP_DB,
    masked_psnr,
    masked_ssim,
    psnr,
    ssim,
    ssim_map,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# Independent references


def ref_ssim_conv2d(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Reference SSIM: full 2-D Gaussian kernel, one conv per statistic, float64. x,y: (B,C,H,W)."""
    x = x.double()
    y = y.double()
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    w2 = torch.outer(g, g)
    c = x.shape[1]
    kernel = w2.expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=size // 2, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx ** 2
    syy = blur(y * y) - my ** 2
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return smap.flatten(1).mean(1)


def ref_ssim_loops(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """Reference SSIM with explicit loops over pixels and window taps (zero outside the image)."""
    c, h, w = x.shape
    r = size // 2
    g1 = np.array([math.exp(-((i - r) ** 2) / (2 * sigma ** 2)) for i in range(size)])
    g1 /= g1.sum()
    total = 0.0
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                s = np.zeros(5)
                for a in range(-r, r + 1):
                    for b in range(-r, r + 1):
                        ii, jj = i + a, j + b
                        if 0 <= ii < h and 0 <= jj < w:
                            wt = g1[a + r] * g1[b + r]
                            p, q = x[ch, ii, jj], y[ch, ii, jj]
                            s += wt * np.array([p, q, p * p, q * q, p * q])
                mx, my, exx, eyy, exy = s
                vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
                c1, c2 = 1e-4, 9e-4
                total += ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return total / (c * h * w)


def smooth_image(seed: int, c: int = 3, h: int = 40, w: int = 48) -> torch.Tensor:
    """Natural-ish test image: upsampled low-resolution noise plus a gradient, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, c, h // 4, w // 4, generator=gen)
    img = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    ramp = torch.linspace(0, 0.3, w).view(1, 1, w)
    return (0.7 * img + ramp).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# PSNR


def test_psnr_known_mse_exact() -> None:
    gt = torch.zeros(3, 8, 8, dtype=torch.float64)
    img = torch.full((3, 8, 8), 0.1, dtype=torch.float64)  # MSE 0.01 -> 20 dB
    assert psnr(img, gt).item() == pytest.approx(20.0, abs=1e-12)
    assert psnr(img, gt).dim() == 0
    batch_img = torch.stack([img, torch.full((3, 8, 8), 0.01, dtype=torch.float64)])
    out = psnr(batch_img, torch.zeros_like(batch_img))
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([20.0, 40.0], abs=1e-10)


def test_psnr_clamps_to_unit_range() -> None:
    gt = torch.ones(3, 4, 4)
    img = torch.full((3, 4, 4), 5.0)  # clamped to 1 -> identical
    assert math.isinf(psnr(img, gt).item())
    half = torch.zeros(3, 4, 4)
    half[0] = -3.0  # clamped to 0; MSE over (C,H,W) = (1/3) * 1
    assert psnr(half, torch.cat([torch.ones(1, 4, 4), torch.zeros(2, 4, 4)])).item() == pytest.approx(
        10 * math.log10(3.0), rel=1e-6
    )


def test_identical_images_psnr_inf_or_cap_and_ssim_one() -> None:
    img = smooth_image(0)
    assert math.isinf(psnr(img, img).item()) and psnr(img, img).item() > 0
    assert psnr(img, img, cap_db=PSNR_CAP_DB).item() == PSNR_CAP_DB
    assert PSNR_CAP_DB == 100.0
    # the cap does not touch real values
    noisy = (img + 0.05).clamp(0, 1)
    assert psnr(noisy, img, cap_db=PSNR_CAP_DB).item() == pytest.approx(psnr(noisy, img).item())
    assert ssim(img, img).item() == pytest.approx(1.0, abs=1e-6)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))
    with pytest.raises(ValueError):
        ssim(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="odd"):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), window_size=10)


# ---------------------------------------------------------------------------------------------
# SSIM


def _distortions(gt: torch.Tensor) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    box = torch.ones(3, 1, 5, 5) / 25
    return {
        "noise": (gt + 0.08 * torch.randn(gt.shape, generator=gen)).clamp(0, 1),
        "blur": F.conv2d(gt[None], box, padding=2, groups=3)[0],
        "shift": torch.roll(gt, shifts=(2, -3), dims=(1, 2)),
        "brightness": (gt + 0.1).clamp(0, 1),
    }


@pytest.mark.parametrize("kind", ["noise", "blur", "shift", "brightness"])
def test_ssim_matches_2d_reference(kind: str) -> None:
    gt = smooth_image(1)
    img = _distortions(gt)[kind]
    got = ssim(img, gt).item()
    want = ref_ssim_conv2d(img[None], gt[None]).item()
    assert abs(got - want) < 1e-4
    assert got < 0.999  # the distortion is visible to SSIM
    # float64 input is as precise as the reference
    assert ssim(img.double(), gt.double()).item() == pytest.approx(want, abs=1e-10)


def test_ssim_matches_loop_reference_small_image() -> None:
    gt = smooth_image(2, c=2, h=9, w=7)
    img = _distortions(torch.cat([gt, gt[:1]]))["noise"][:2]
    want = ref_ssim_loops(img.double().numpy(), gt.double().numpy())
    assert ssim(img.double(), gt.double()).item() == pytest.approx(want, abs=1e-10)
    # other window parameters are honoured
    want5 = ref_ssim_conv2d(img[None], gt[None], size=5, sigma=0.8).item()
    assert ssim(img, gt, window_size=5, sigma=0.8).item() == pytest.approx(want5, abs=1e-5)


def test_ssim_batched_equals_per_image() -> None:
    gts = torch.stack([smooth_image(3), smooth_image(4)])
    imgs = torch.stack([_distortions(gts[0])["noise"], _distortions(gts[1])["blur"]])
    out = ssim(imgs, gts)
    assert out.shape == (2,)
    for i in range(2):
        assert out[i].item() == pytest.approx(ssim(imgs[i], gts[i]).item(), abs=1e-6)


def test_ssim_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(1, 2, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    gt = torch.rand(1, 2, 5, 4, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda a: ssim(a, gt, window_size=5), (img,), fast_mode=True)
    loss = 1.0 - ssim(img, gt).mean()
    loss.backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0


def test_masked_metrics() -> None:
    gt = smooth_image(5, h=16, w=16)
    img = gt.clone()
    img[:, :8, :] += 0.1  # only the top half differs
    img = img.clamp(0, 1)
    full = torch.ones(16, 16, dtype=torch.bool)
    assert masked_psnr(img, gt, full).item() == pytest.approx(psnr(img, gt).item(), rel=1e-6)
    assert masked_ssim(img, gt, full).item() == pytest.approx(ssim(img, gt).item(), abs=1e-6)

    top = torch.zeros(16, 16, dtype=torch.bool)
    top[:8] = True
    mse_top = ((img[:, :8] - gt[:, :8]) ** 2).mean().item()
    assert masked_psnr(img, gt, top).item() == pytest.approx(-10 * math.log10(mse_top), rel=1e-5)
    assert math.isinf(masked_psnr(img, gt, ~top).item())
    assert masked_psnr(img, gt, ~top, cap_db=PSNR_CAP_DB).item() == PSNR_CAP_DB
    smap = ssim_map(img, gt)[0]
    assert masked_ssim(img, gt, top).item() == pytest.approx(smap[:, :8].mean().item(), abs=1e-6)

    empty = torch.zeros(16, 16, dtype=torch.bool)
    assert math.isnan(masked_psnr(img, gt, empty).item())
    assert math.isnan(masked_ssim(img, gt, empty).item())
    # batched, with one mask per image
    out = masked_psnr(torch.stack([img, img]), torch.stack([gt, gt]), torch.stack([top, full]))
    assert out.shape == (2,)
    with pytest.raises(ValueError, match="mask shape"):
        masked_psnr(img, gt, torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(TypeError):
        masked_ssim(img, gt, torch.ones(16, 16))


# ---------------------------------------------------------------------------------------------
# LPIPS with fake weight files

# torchvision's `features` parameter shapes, written out independently of utils/lpips.py.
ALEX_FEATURES = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
VGG16_FEATURES = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
    14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
    26: (512, 512), 28: (512, 512),
}
HEAD_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def _fake_backbone(net: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = ALEX_FEATURES if net == "alex" else {k: (o, i, 3, 3) for k, (o, i) in VGG16_FEATURES.items()}
    sd: dict[str, torch.Tensor] = {}
    for idx, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        sd[f"features.{idx}.weight"] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
        sd[f"features.{idx}.bias"] = 0.01 * torch.randn(shape[0], generator=gen)
    sd["classifier.1.weight"] = torch.randn(4, 4, generator=gen)  # extra keys must be ignored
    return sd


def _fake_heads(net: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) / c
        for i, c in enumerate(HEAD_CHANNELS[net])
    }


@pytest.fixture(scope="module")
def fake_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A torch hub folder with fake backbones and a fake lpips weights/v0.1 folder."""
    root = tmp_path_factory.mktemp("lpips_weights")
    hub = root / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    heads = root / "weights" / "v0.1"
    heads.mkdir(parents=True)
    gen = torch.Generator().manual_seed(123)
    for net in ("alex", "vgg"):
        torch.save(_fake_backbone(net, gen), hub / "checkpoints" / BACKBONE_FILES[net])
        torch.save(_fake_heads(net, gen), heads / f"{net}.pth")
    return {"hub": str(hub), "heads": str(heads)}


@pytest.fixture()
def hub_dir(fake_weights: dict[str, str]):
    old = torch.hub.get_dir()
    torch.hub.set_dir(fake_weights["hub"])
    try:
        yield fake_weights["hub"]
    finally:
        torch.hub.set_dir(old)


def _fake_model(net: str, fake_weights: dict[str, str]) -> lp.LPIPS:
    return lp.get_lpips(net, "cpu", head_path=lp.head_weights_path(net, fake_weights["heads"]))


@pytest.mark.parametrize("net,size", [("alex", 64), ("vgg", 32)])
def test_lpips_properties(net: str, size: int, hub_dir: str, fake_weights: dict[str, str]) -> None:
    model = _fake_model(net, fake_weights)
    assert lp.backbone_checkpoint_path(net) == os.path.join(hub_dir, "checkpoints", BACKBONE_FILES[net])
    a = torch.stack([smooth_image(10, h=size, w=size), smooth_image(11, h=size, w=size)])
    b = torch.stack([_distortions(a[0])["noise"], _distortions(a[1])["shift"]])
    with torch.no_grad():
        same = model(a, a)
        d_ab = model(a, b)
        d_ba = model(b, a)
        single = [model(a[i], b[i]) for i in range(2)]
    assert same.shape == (2,) and torch.all(same == 0)
    assert torch.all(d_ab > 0)
    assert torch.allclose(d_ab, d_ba, rtol=1e-5, atol=1e-7)
    assert single[0].dim() == 0
    assert torch.allclose(torch.stack(single), d_ab, rtol=1e-5, atol=1e-7)
    # the loaded weights are the file's
    sd = torch.load(os.path.join(hub_dir, "checkpoints", BACKBONE_FILES[net]), weights_only=True)
    assert torch.equal(model.backbone.features[0].weight, sd["features.0.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    # cached per (net, device, files)
    assert _fake_model(net, fake_weights) is model


def ref_lpips(net: str, backbone: dict, heads: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent functional LPIPS v0.1 straight from the state dicts (B,3,H,W) in [0,1] -> (B,)."""
    if net == "alex":
        # (conv index, stride, padding, max-pool before it); a tap after every conv
        plan = [(0, 4, 2, False), (3, 1, 2, True), (6, 1, 1, True), (8, 1, 1, False), (10, 1, 1, False)]
        taps_after = {0, 3, 6, 8, 10}
    else:
        idx = sorted(VGG16_FEATURES)
        plan = [(i, 1, 1, i in (5, 10, 17, 24)) for i in idx]
        taps_after = {2, 7, 14, 21, 28}
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(img: torch.Tensor) -> list[torch.Tensor]:
        h = ((img * 2 - 1) - shift) / scale
        out = []
        for i, stride, pad, pool_first in plan:
            if pool_first:
                h = F.max_pool2d(h, 3, 2) if net == "alex" else F.max_pool2d(h, 2, 2)
            h = F.relu(F.conv2d(h, backbone[f"features.{i}.weight"], backbone[f"features.{i}.bias"],
                                stride=stride, padding=pad))
            if i in taps_after:
                out.append(h)
        return out

    total = torch.zeros(x.shape[0])
    for k, (fx, fy) in enumerate(zip(feats(x), feats(y))):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total = total + ((nx - ny) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


@pytest.mark.parametrize("net,size", [("alex", 72), ("vgg", 40)])
def test_lpips_matches_functional_reference(net, size, hub_dir, fake_weights) -> None:
    model = _fake_model(net, fake_weights)
    backbone = torch.load(os.path.join(hub_dir, "checkpoints", BACKBONE_FILES[net]), weights_only=True)
    heads = torch.load(os.path.join(fake_weights["heads"], f"{net}.pth"), weights_only=True)
    a = torch.stack([smooth_image(20, h=size, w=size + 8), smooth_image(21, h=size, w=size + 8)])
    b = torch.stack([_distortions(a[0])["blur"], _distortions(a[1])["brightness"]])
    with torch.no_grad():
        got = model(a, b)
        want = ref_lpips(net, backbone, heads, a, b)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), (got, want)


def test_lpips_missing_backbone_names_file(tmp_path, fake_weights: dict[str, str],
                                           monkeypatch) -> None:
    """Offline: the download fails in one line naming the file and its folder; with downloads
    off, the message says how to get the file by hand."""
    monkeypatch.setattr(lp, "BACKBONE_URL", (tmp_path / "no_server" / "{file}").as_uri())
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "empty_hub"))
    try:
        with pytest.raises(lp.LpipsUnavailable) as info:
            _fake_model("alex", fake_weights)
        with pytest.raises(lp.LpipsUnavailable) as offline:
            lp.get_lpips("alex", "cpu", download=False,
                         head_path=lp.head_weights_path("alex", fake_weights["heads"]))
    finally:
        torch.hub.set_dir(old)
    checkpoints = os.path.join(str(tmp_path / "empty_hub"), "checkpoints")
    msg = str(info.value)
    assert "could not download" in msg and "alexnet-owt-7be5be79.pth" in msg
    assert checkpoints in msg and "\n" not in msg
    assert not os.listdir(checkpoints)                   # nothing half-written left behind
    msg = str(offline.value)
    assert "alexnet-owt-7be5be79.pth" in msg and checkpoints in msg
    assert "torchvision.models.alexnet(weights='DEFAULT')" in msg


def test_lpips_backbone_is_downloaded_on_first_use_and_hash_checked(tmp_path, fake_weights,
                                                                   monkeypatch) -> None:
    """The backbone comes from the model server (here a local file URL) into the hub cache,
    its SHA-256 checked against the prefix in its name, as torchvision names its files."""
    import hashlib
    server = tmp_path / "server"
    server.mkdir()
    gen = torch.Generator().manual_seed(5)
    torch.save(_fake_backbone("alex", gen), server / "payload.pth")
    digest = hashlib.sha256((server / "payload.pth").read_bytes()).hexdigest()
    good, bad = f"alexnet-test-{digest[:8]}.pth", "alexnet-test-deadbeef.pth"
    (server / "payload.pth").rename(server / good)
    (server / bad).write_bytes((server / good).read_bytes())
    monkeypatch.setattr(lp, "BACKBONE_URL", server.as_uri() + "/{file}")
    heads = lp.head_weights_path("alex", fake_weights["heads"])
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        monkeypatch.setitem(lp.NETS["alex"], "backbone_file", bad)
        with pytest.raises(lp.LpipsUnavailable, match="corrupt"):
            lp.get_lpips("alex", "cpu", head_path=heads)
        assert not (tmp_path / "hub" / "checkpoints" / bad).exists()
        monkeypatch.setitem(lp.NETS["alex"], "backbone_file", good)
        model = lp.get_lpips("alex", "cpu", head_path=heads)
        assert (tmp_path / "hub" / "checkpoints" / good).is_file()
        x = smooth_image(3, h=32, w=32)
        assert float(model(x, x)) == 0.0 and float(model(x, x.flip(2))) > 0
    finally:
        torch.hub.set_dir(old)


def test_lpips_missing_or_bad_head_file(tmp_path, hub_dir: str, monkeypatch) -> None:
    with pytest.raises(lp.LpipsUnavailable, match=r"vgg\.pth"):
        lp.get_lpips("vgg", "cpu", head_path=str(tmp_path / "vgg.pth"))
    bad = tmp_path / "alex.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, bad)
    with pytest.raises(lp.LpipsUnavailable, match="not an LPIPS"):
        lp.get_lpips("alex", "cpu", head_path=str(bad))
    # lpips package not installed: the message says how to install it
    monkeypatch.setattr(lp.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(lp.LpipsUnavailable, match="pip install lpips"):
        lp.get_lpips("alex", "cpu")
    with pytest.raises(ValueError):
        lp.get_lpips("squeeze", "cpu")


def test_lpips_real_head_files_load_without_importing_lpips() -> None:
    try:
        folder = lp.lpips_weights_dir()
    except lp.LpipsUnavailable:
        pytest.skip("lpips package not installed")
    assert "lpips" not in sys.modules  # found on disk, never imported (it would import torchvision)
    for net in ("alex", "vgg"):
        model = lp.LPIPS(net)
        model.load_heads(lp.head_weights_path(net, folder))
        assert all((h.weight >= 0).all() for h in model.heads)  # LPIPS heads are non-negative


# ---------------------------------------------------------------------------------------------
# metrics.py


def _write_png(path, rgb01: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.round(np.clip(rgb01, 0, 1) * 255).astype(np.uint8)
    assert cv2.imwrite(str(path), arr[:, :, ::-1])


def _image(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    return smooth_image(seed, h=h, w=w).permute(1, 2, 0).numpy()


def _make_model(root, views: dict[str, dict[str, int]]) -> str:
    """views: {"split/ours_N": {name: n_images}} -> renders (distorted) and gt images."""
    model = root / "model"
    for folder, count in views.items():
        for i in range(count):
            gt = _image(100 + i)
            if i == 0:
                render = gt  # identical pair -> PSNR cap
            else:
                rng = np.random.default_rng(i)
                render = gt + 0.05 * i * rng.standard_normal(gt.shape)
            _write_png(model / folder / "renders" / f"{i:05d}.png", render)
            _write_png(model / folder / "gt" / f"{i:05d}.png", gt)
    return str(model)


def _expected(model: str, folder: str, name: str, lpips_model=None) -> dict[str, float]:
    def load(kind: str) -> np.ndarray:
        bgr = cv2.imread(os.path.join(model, folder, kind, name), cv2.IMREAD_COLOR)
        return bgr[:, :, ::-1].astype(np.float64) / 255.0

    r, g = load("renders"), load("gt")
    mse = np.mean((r - g) ** 2)
    out = {
        "PSNR": 100.0 if mse == 0 else float(-10 * np.log10(mse)),
        "SSIM": ref_ssim_conv2d(
            torch.from_numpy(r).permute(2, 0, 1)[None], torch.from_numpy(g).permute(2, 0, 1)[None]
        ).item(),
    }
    if lpips_model is not None:
        rt = torch.from_numpy(r).permute(2, 0, 1).float()
        gt = torch.from_numpy(g).permute(2, 0, 1).float()
        out["LPIPS"] = lpips_model(rt, gt).item()
    return out


def test_read_image_is_rgb(tmp_path) -> None:
    img = np.zeros((4, 5, 3))
    img[..., 0] = 1.0  # pure red
    _write_png(tmp_path / "red.png", img)
    got = metrics.read_image(str(tmp_path / "red.png"))
    assert got.shape == (4, 5, 3) and got.dtype == np.float32
    assert np.all(got[..., 0] == 1) and np.all(got[..., 1:] == 0)
    with pytest.raises(metrics.MetricsError, match="cannot read"):
        metrics.read_image(str(tmp_path / "nope.png"))


def test_evaluate_model_end_to_end(tmp_path, fake_weights, hub_dir, capsys) -> None:
    model = _make_model(tmp_path, {"test/ours_100": 3, "test/ours_50": 2, "train/ours_100": 2})
    os.makedirs(os.path.join(model, "val", "ours_100", "renders"))  # empty split
    os.makedirs(os.path.join(model, "point_cloud", "iteration_100"))  # not a split
    lpips_model = _fake_model("alex", fake_weights)
    out = metrics.evaluate_model(model, lpips_model=lpips_model, device="cpu", progress=False)
    printed = capsys.readouterr().out
    assert "val" in printed and "no images" in printed

    with open(os.path.join(model, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(model, "per_view.json")) as f:
        per_view = json.load(f)
    assert results == out["results"] and per_view == out["per_view"]
    assert list(results) == ["train", "test"]
    assert list(results["test"]) == ["ours_50", "ours_100"]
    assert not [n for n in os.listdir(model) if n.endswith(".tmp")]

    for split, method, count in [("test", "ours_100", 3), ("test", "ours_50", 2), ("train", "ours_100", 2)]:
        pv = per_view[split][method]
        assert set(pv) == {"PSNR", "SSIM", "LPIPS"}
        names = [f"{i:05d}.png" for i in range(count)]
        assert sorted(pv["PSNR"]) == names
        for name in names:
            want = _expected(model, f"{split}/{method}", name, lpips_model)
            assert pv["PSNR"][name] == pytest.approx(want["PSNR"], abs=1e-4)
            assert pv["SSIM"][name] == pytest.approx(want["SSIM"], abs=1e-5)
            assert pv["LPIPS"][name] == pytest.approx(want["LPIPS"], rel=1e-5, abs=1e-7)
        assert pv["PSNR"]["00000.png"] == PSNR_CAP_DB
        assert pv["LPIPS"]["00000.png"] == 0.0
        for key in ("PSNR", "SSIM", "LPIPS"):
            assert results[split][method][key] == pytest.approx(np.mean(list(pv[key].values())), rel=1e-12)


def test_evaluate_model_lpips_unavailable_reported_once(tmp_path, monkeypatch, capsys) -> None:
    model = _make_model(tmp_path, {"test/ours_7": 2})

    def unavailable(net, device):
        raise lp.LpipsUnavailable(f"fake: {net} weights missing at /somewhere")

    monkeypatch.setattr(metrics, "get_lpips", unavailable)
    monkeypatch.setattr(metrics, "_reported", set())
    for _ in range(2):
        out = metrics.evaluate_model(model, device="cpu", progress=False)
        assert out["results"]["test"]["ours_7"]["LPIPS"] is None
        assert out["per_view"]["test"]["ours_7"]["LPIPS"] is None
    err = capsys.readouterr().err
    assert err.count("fake: alex weights missing") == 1
    # --no_lpips path: null without trying
    out = metrics.evaluate_model(model, use_lpips=False, device="cpu", progress=False, write=False)
    assert out["results"]["test"]["ours_7"]["LPIPS"] is None
    with open(os.path.join(model, "results.json")) as f:
        assert json.load(f)["test"]["ours_7"]["LPIPS"] is None


def test_missing_render_is_clear_error(tmp_path) -> None:
    model = _make_model(tmp_path, {"test/ours_1": 3})
    os.remove(os.path.join(model, "test", "ours_1", "renders", "00001.png"))
    with pytest.raises(metrics.MetricsError) as info:
        metrics.evaluate_model(model, use_lpips=False, device="cpu", progress=False)
    msg = str(info.value)
    assert "without render" in msg and os.path.join("gt", "00001.png") in msg


def test_size_mismatch_is_clear_error(tmp_path) -> None:
    model = _make_model(tmp_path, {"test/ours_1": 2})
    _write_png(os.path.join(model, "test", "ours_1", "renders", "00001.png"), _image(5, h=20, w=24))
    with pytest.raises(metrics.MetricsError) as info:
        metrics.evaluate_model(model, use_lpips=False, device="cpu", progress=False)
    msg = str(info.value)
    assert "size mismatch" in msg and "24x20" in msg and "48x40" in msg
    assert os.path.join("renders", "00001.png") in msg and os.path.join("gt", "00001.png") in msg


def test_model_without_renders_says_run_render(tmp_path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(metrics.MetricsError, match="render.py"):
        metrics.evaluate_model(str(tmp_path / "m"), use_lpips=False, device="cpu", progress=False)
    (tmp_path / "m" / "test" / "ours_1" / "gt").mkdir(parents=True)  # only empty splits
    with pytest.raises(metrics.MetricsError, match="render.py"):
        metrics.evaluate_model(str(tmp_path / "m"), use_lpips=False, device="cpu", progress=False)


def test_help_documents_every_flag() -> None:
    text = metrics.build_parser().format_help()
    for flag in ("--model_paths", "--lpips_net", "--no_lpips", "--device", "--quiet"):
        assert flag in text


def test_cli_no_lpips_prints_table(tmp_path) -> None:
    good = _make_model(tmp_path, {"test/ours_30": 2})
    bad = tmp_path / "not_rendered"
    bad.mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "metrics.py"), "-m", good, str(bad), "--no_lpips", "--quiet",
         "--device", "cpu"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # one of the two models failed
    assert "PSNR" in proc.stdout and "SSIM" in proc.stdout and "ours_30" in proc.stdout
    assert "n/a" in proc.stdout
    assert "render.py" in proc.stderr and str(bad) in proc.stderr
    with open(os.path.join(good, "results.json")) as f:
        res = json.load(f)
    assert res["test"]["ours_30"]["LPIPS"] is None
    assert res["test"]["ours_30"]["PSNR"] == pytest.approx(
        np.mean([_expected(good, "test/ours_30", f"{i:05d}.png")["PSNR"] for i in range(2)]), abs=1e-4
    )


@pytest.mark.cuda
def test_cuda_matches_cpu(tmp_path, fake_weights, hub_dir) -> None:
    gt = torch.stack([smooth_image(30, h=64, w=64), smooth_image(31, h=64, w=64)])
    img = torch.stack([_distortions(gt[0])["noise"], _distortions(gt[1])["blur"]])
    cuda = torch.device("cuda")
    assert torch.allclose(psnr(img.to(cuda), gt.to(cuda)).cpu(), psnr(img, gt), rtol=1e-5)
    assert torch.allclose(ssim(img.to(cuda), gt.to(cuda)).cpu(), ssim(img, gt), atol=1e-5)
    for dtype in (torch.float16, torch.bfloat16):
        low = ssim(img.to(cuda, dtype), gt.to(cuda, dtype))
        assert low.dtype == dtype and torch.allclose(low.float().cpu(), ssim(img, gt), atol=2e-2)
    model = _fake_model("alex", fake_weights)
    with torch.no_grad():
        want = model(img, gt)
        got = lp.get_lpips("alex", cuda, head_path=lp.head_weights_path("alex", fake_weights["heads"]))(
            img.to(cuda), gt.to(cuda)
        )
    assert torch.allclose(got.cpu(), want, rtol=1e-3, atol=1e-6)
    model_dir = _make_model(tmp_path, {"test/ours_1": 2})
    on_gpu = metrics.evaluate_model(model_dir, lpips_model=model, device="cuda", progress=False, write=False)
    on_cpu = metrics.evaluate_model(model_dir, lpips_model=model, device="cpu", progress=False, write=False)
    for key in ("PSNR", "SSIM", "LPIPS"):
        assert on_gpu["results"]["test"]["ours_1"][key] == pytest.approx(
            on_cpu["results"]["test"]["ours_1"][key], rel=1e-3, abs=1e-5
        )


# ---------------------------------------------------------------------------------------------
# metrics.py --masks: PSNR and SSIM inside face regions


def ref_ssim_map_2d(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Reference SSIM map (C,H,W) in float64 with OpenCV's 2-D filter (zero border)."""
    g = cv2.getGaussianKernel(size, sigma, cv2.CV_64F)
    kernel = g @ g.T

    def blur(t: np.ndarray) -> np.ndarray:
        return np.stack([cv2.filter2D(c, -1, kernel, borderType=cv2.BORDER_CONSTANT) for c in t])

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def _region_dataset(root, model: str) -> str:
    """Dataset folder with regions/ for the 3 views of _make_model's test/ours_10, named in cfg_args.json.

    00000: mouth 6x5 and eyes 4x4 pixels; 00001: mouth 10x8 (+1 stray), eyes 3x5 (< 16 pixels,
    skipped); 00002: map stored at twice the render's size; 00003 (no such render) is ignored.
    """
    data = root / "dataset"
    (data / "regions").mkdir(parents=True)
    maps = {}
    m = np.ones((40, 48), np.uint8)
    m[5:10, 10:16], m[20:24, 30:34] = 2, 3
    maps["00000.png"] = m
    m = np.ones((40, 48), np.uint8)
    m[30:38, 2:12], m[0, 47], m[12:15, 40:45] = 2, 2, 3
    maps["00001.png"] = m
    m = np.zeros((40, 48), np.uint8)
    m[10:30, 5:20], m[2:6, 40:46] = 2, 3
    maps["00002.png"] = np.repeat(np.repeat(m, 2, 0), 2, 1)
    maps["00003.png"] = m
    for name, labels in maps.items():
        assert cv2.imwrite(str(data / "regions" / name), labels)
    with open(os.path.join(model, "cfg_args.json"), "w") as f:
        json.dump({"source_path": str(data)}, f)
    return str(data)


def _load01(path: str) -> np.ndarray:
    return cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float64).transpose(2, 0, 1) / 255.0


def test_masks_region_metrics_match_independent_computation(tmp_path, capsys) -> None:
    model = _make_model(tmp_path, {"test/ours_10": 3})
    data = _region_dataset(tmp_path, model)
    out = metrics.evaluate_model(model, use_lpips=False, device="cpu", progress=False, masks=True)
    printed = capsys.readouterr().out
    assert os.path.join(data, "regions") in printed
    assert "eyes in 2/3 views (1 with < 16 eyes pixels skipped)" in printed

    pv = out["per_view"]["test"]["ours_10"]
    res = out["results"]["test"]["ours_10"]
    assert sorted(pv["PSNR_mouth"]) == ["00000.png", "00001.png", "00002.png"]
    assert sorted(pv["PSNR_eyes"]) == ["00000.png", "00002.png"]
    folder = os.path.join(model, "test", "ours_10")
    for name in ("00001.png", "00002.png"):
        labels = cv2.imread(os.path.join(data, "regions", name), cv2.IMREAD_UNCHANGED)
        labels = labels[::2, ::2] if labels.shape[0] == 80 else labels
        r = _load01(os.path.join(folder, "renders", name))
        g = _load01(os.path.join(folder, "gt", name))
        smap = ref_ssim_map_2d(r, g)
        for region, value in (("mouth", 2), ("eyes", 3)):
            mask = labels == value
            if mask.sum() < 16:
                continue
            mse = ((r - g) ** 2)[:, mask].mean()
            assert pv[f"PSNR_{region}"][name] == pytest.approx(-10 * np.log10(mse), abs=1e-4)
            assert pv[f"SSIM_{region}"][name] == pytest.approx(smap[:, mask].mean(), abs=1e-5)
    assert pv["PSNR_mouth"]["00000.png"] == PSNR_CAP_DB  # the identical pair
    for region in ("mouth", "eyes"):
        assert res[f"views_{region}"] == len(pv[f"PSNR_{region}"])
        for key in ("PSNR", "SSIM"):
            assert res[f"{key}_{region}"] == pytest.approx(np.mean(list(pv[f"{key}_{region}"].values())))
    with open(os.path.join(model, "results.json")) as f:
        assert json.load(f) == out["results"]
    with open(os.path.join(model, "per_view.json")) as f:
        assert json.load(f)["test"]["ours_10"]["SSIM_eyes"] == pv["SSIM_eyes"]
    table = metrics.format_table(model, out["results"], out["per_view"])
    assert "Regions" in table and "mouth" in table and "eyes" in table

    # a render without region map is counted, not fatal
    os.remove(os.path.join(data, "regions", "00002.png"))
    metrics.evaluate_model(model, use_lpips=False, device="cpu", progress=False, masks=True)
    assert "1 views have no region map" in capsys.readouterr().out


def test_masks_without_region_maps_says_the_dataset_has_none(tmp_path, capsys) -> None:
    model = _make_model(tmp_path, {"test/ours_10": 2})
    (tmp_path / "plain_dataset").mkdir()
    with open(os.path.join(model, "cfg_args.json"), "w") as f:
        json.dump({"source_path": str(tmp_path / "plain_dataset")}, f)
    out = metrics.evaluate_model(model, use_lpips=False, device="cpu", progress=False, masks=True)
    err = capsys.readouterr().err
    assert "has no region maps" in err and "plain_dataset" in err
    assert set(out["results"]["test"]["ours_10"]) == {"PSNR", "SSIM", "LPIPS"}
    # a renders-only folder (no cfg_args.json) scores without --masks, and --masks says why not
    os.remove(os.path.join(model, "cfg_args.json"))
    assert metrics.evaluate_model(model, use_lpips=False, device="cpu", progress=False)["results"]
    metrics.evaluate_model(model, use_lpips=False, device="cpu", progress=False, masks=True)
    assert "cfg_args.json is missing" in capsys.readouterr().err
    with pytest.raises(metrics.MetricsError, match="--regions .*nowhere"):
        metrics.evaluate_model(model, use_lpips=False, device="cpu", progress=False, masks=True,
                               regions_dir=str(tmp_path / "nowhere"))


def test_cli_regions_flag_prints_region_table(tmp_path) -> None:
    model = _make_model(tmp_path, {"val/ours_3": 3})
    data = _region_dataset(tmp_path, model)
    os.remove(os.path.join(model, "cfg_args.json"))  # --regions needs no dataset
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "metrics.py"), "-m", model, "--no_lpips", "--quiet",
         "--device", "cpu", "--regions", os.path.join(data, "regions")],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Regions" in proc.stdout and "mouth" in proc.stdout
    with open(os.path.join(model, "results.json")) as f:
        assert json.load(f)["val"]["ours_3"]["views_mouth"] == 3
