"""Tests for utils/images.py and training/loss.py::training_loss, including the fused CUDA kernel
(utils/fused/csrc/loss.cu) against the PyTorch definition evaluated in float64."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from scene.cameras import Camera
from utils import fused
from utils.images import composite_rgba
from training.loss import photometric_loss, training_loss

LAMBDAS = (0.0, 0.2, 1.0)


def random_case(height: int, width: int, channels: int, seed: int, dtype=torch.float32):
    """A render with values a little outside [0, 1], a uint8 target and a background (CPU).

    The render is kept at least 1e-3 away from the float32 target so that sign(x - y) of the L1
    term is the same whether the target is rounded to float32 or not.
    """
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 256, (height, width, channels), generator=g, dtype=torch.uint8)
    if channels == 4:  # fully transparent and fully opaque pixels too
        target[..., 3][torch.rand(height, width, generator=g) < 0.2] = 0
        target[..., 3][torch.rand(height, width, generator=g) < 0.2] = 255
    background = torch.rand(3, generator=g)
    image = torch.rand(3, height, width, generator=g) * 1.4 - 0.2
    y = composite_rgba(target, background)
    image[(image - y).abs() < 1e-3] += 2e-3
    return image.to(dtype), target, background


def reference_loss_and_grad(image: torch.Tensor, target: torch.Tensor, background: torch.Tensor,
                            lambda_dssim: float):
    """photometric_loss in float64 on the CPU (the float32 target, as the kernel computes it)."""
    y = composite_rgba(target.cpu(), background.cpu()).double()
    x = image.detach().cpu().double().requires_grad_(True)
    loss = photometric_loss(x, y, lambda_dssim)
    loss.backward()
    return loss.detach(), x.grad


# ---------------------------------------------------------------------------------------------
# composite_rgba


def test_composite_rgb_by_hand():
    image = torch.tensor([[[0, 51, 255], [255, 102, 0]]], dtype=torch.uint8)  # (1, 2, 3)
    out = composite_rgba(image, torch.tensor([0.3, 0.3, 0.3]))
    expected = torch.tensor([[[0.0, 1.0]], [[0.2, 0.4]], [[1.0, 0.0]]])
    assert out.dtype == torch.float32 and out.shape == (3, 1, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_composite_rgba_by_hand():
    # alpha 51/255 = 0.2, 0 and 1: the colour weighted by alpha, the background by 1 - alpha
    image = torch.tensor([[[255, 0, 102, 51], [10, 20, 30, 0], [10, 20, 30, 255]]],
                         dtype=torch.uint8)
    background = torch.tensor([0.5, 0.25, 1.0])
    out = composite_rgba(image, background)
    expected = torch.tensor([[[1.0 * 0.2 + 0.5 * 0.8, 0.5, 10 / 255]],
                             [[0.0 * 0.2 + 0.25 * 0.8, 0.25, 20 / 255]],
                             [[0.4 * 0.2 + 1.0 * 0.8, 1.0, 30 / 255]]])
    assert out.dtype == torch.float32 and out.shape == (3, 1, 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [3, 4])
def test_camera_gt_image_is_composite_rgba(channels):
    _, target, background = random_case(4, 6, channels, seed=1)
    cam = Camera(uid=0, split="train", image_name="x", keyframe=0, width=6, height=4,
                 K=np.eye(3), world_to_camera=np.eye(4), image=target)
    assert torch.equal(cam.gt_image(background), composite_rgba(target, background))


def test_composite_rgba_rejects_bad_input():
    with pytest.raises(TypeError):
        composite_rgba(torch.zeros(2, 2, 3), torch.zeros(3))
    with pytest.raises(ValueError):
        composite_rgba(torch.zeros(2, 2, 2, dtype=torch.uint8), torch.zeros(3))
    with pytest.raises(ValueError):
        composite_rgba(torch.zeros(2, 2, 3, dtype=torch.uint8), torch.zeros(4))


# ---------------------------------------------------------------------------------------------
# training_loss, PyTorch path


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("lambda_dssim", LAMBDAS)
def test_torch_path_is_photometric_loss(channels, lambda_dssim):
    image, target, background = random_case(13, 17, channels, seed=2)
    x1 = image.clone().requires_grad_(True)
    x2 = image.clone().requires_grad_(True)
    loss = training_loss(x1, target, background, lambda_dssim)
    ref = photometric_loss(x2, composite_rgba(target, background), lambda_dssim)
    loss.backward()
    ref.backward()
    assert loss.dim() == 0
    assert torch.equal(loss, ref)
    assert torch.equal(x1.grad, x2.grad)


@pytest.mark.parametrize("lambda_dssim", [0.0, 0.2])
def test_torch_path_gradcheck(lambda_dssim):
    image, target, background = random_case(6, 5, 4, seed=3, dtype=torch.float64)
    x = image.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: training_loss(t, target, background.double(), lambda_dssim), (x,),
        eps=1e-6, atol=1e-7, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# training_loss, fused CUDA kernel


@pytest.fixture(scope="module")
def cuda_kernel():
    """The compiled extension. Skips only without a GPU or with STGA_NO_FUSED=1: with a GPU, a
    broken build fails the tests instead of hiding them."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not fused.enabled():
        pytest.skip("the fused CUDA kernels are switched off (STGA_NO_FUSED=1)")
    assert fused.available(), f"the fused CUDA extension did not build: {fused.load_error()}"
    return fused.ext()


@pytest.mark.cuda
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (16, 16), (37, 53), (550, 802)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("lambda_dssim", LAMBDAS)
@pytest.mark.parametrize("channels", [3, 4])
def test_fused_matches_float64_reference(cuda_kernel, size, lambda_dssim, channels):
    image, target, background = random_case(*size, channels, seed=size[0] * 1000 + size[1])
    ref_loss, ref_grad = reference_loss_and_grad(image, target, background, lambda_dssim)
    loss, grad = cuda_kernel.photometric_loss_with_grad(
        image.cuda(), target.cuda(), background.cuda(), lambda_dssim)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert grad.shape == image.shape and grad.dtype == torch.float32
    rel = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
    assert rel < 1e-5, (loss.item(), ref_loss.item())
    err = (grad.cpu().double() - ref_grad).abs().max().item()
    assert err < 1e-4 * ref_grad.abs().max().item(), (err, ref_grad.abs().max().item())

    loss2, grad2 = cuda_kernel.photometric_loss_with_grad(
        image.cuda(), target.cuda(), background.cuda(), lambda_dssim)
    assert torch.equal(loss, loss2), "the loss is not bitwise reproducible"
    assert torch.equal(grad, grad2), "the gradient is not bitwise reproducible"


@pytest.mark.cuda
def test_fused_l1_gradient_is_zero_where_equal(cuda_kernel):
    # targets 0 and 255 (opaque) are exactly 0.0 and 1.0 however they are computed
    g = torch.Generator().manual_seed(4)
    target = (torch.randint(0, 2, (9, 11, 4), generator=g) * 255).to(torch.uint8)
    target[..., 3] = 255
    y = composite_rgba(target, torch.zeros(3))
    equal = torch.rand(3, 9, 11, generator=g) < 0.5
    image = torch.where(equal, y, y + 0.3)
    _, grad = cuda_kernel.photometric_loss_with_grad(image.cuda(), target.cuda(),
                                                     torch.zeros(3).cuda(), 0.0)
    grad = grad.cpu()
    assert torch.all(grad[equal] == 0)
    assert torch.allclose(grad[~equal], torch.tensor(1.0 / image.numel()))


@pytest.mark.cuda
@pytest.mark.parametrize("lambda_dssim", [0.0, 0.2])
def test_fused_autograd_function(cuda_kernel, lambda_dssim):
    image, target, background = random_case(20, 30, 4, seed=5)
    x = image.cuda().requires_grad_(True)
    loss = training_loss(x, target, background.cuda(), lambda_dssim)  # target moved to the GPU
    (2.0 * loss).backward()
    ref_loss, ref_grad = cuda_kernel.photometric_loss_with_grad(
        image.cuda(), target.cuda(), background.cuda(), lambda_dssim)
    assert loss.grad_fn is not None and torch.equal(loss.detach(), ref_loss)
    assert torch.equal(x.grad, 2.0 * ref_grad)


@pytest.mark.cuda
def test_fused_rejects_bad_input(cuda_kernel):
    image, target, background = random_case(4, 5, 3, seed=6)
    image, target, background = image.cuda(), target.cuda(), background.cuda()
    with pytest.raises(RuntimeError, match="uint8"):
        cuda_kernel.photometric_loss_with_grad(image, target.float(), background, 0.2)
    with pytest.raises(RuntimeError, match="target must be"):
        cuda_kernel.photometric_loss_with_grad(image, target[:3], background, 0.2)
    with pytest.raises(RuntimeError, match="image must be"):
        cuda_kernel.photometric_loss_with_grad(image[:2], target, background, 0.2)
    with pytest.raises(RuntimeError, match="CUDA"):
        cuda_kernel.photometric_loss_with_grad(image.cpu(), target, background, 0.2)


@pytest.mark.cuda
def test_fused_non_contiguous_image(cuda_kernel):
    image, target, background = random_case(12, 10, 3, seed=7)
    transposed = image.cuda().transpose(1, 2).contiguous().transpose(1, 2)  # same values
    assert not transposed.is_contiguous()
    a = cuda_kernel.photometric_loss_with_grad(transposed, target.cuda(), background.cuda(), 0.2)
    b = cuda_kernel.photometric_loss_with_grad(image.cuda(), target.cuda(), background.cuda(), 0.2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
