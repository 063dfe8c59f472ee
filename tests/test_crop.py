"""Crop steps: the trainable rows get the full-image step's gradients from a fraction of the
pixels (gaussian_renderer/crop.py), on the CPU and, marked cuda, with the CUDA rasterizer and
the fused loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gaussian_renderer import render
from gaussian_renderer.crop import (TILE, CropPlanner, crop_camera, crop_from_box,
                                    footprint_box, footprint_crop)
from scene.cameras import Camera
from scene.gaussian_model import WorldGaussians
from training.loss import training_loss

W, H = 128, 112


def scene(device: str, seed: int = 0):
    """Random Gaussians in front of a camera with an off-centre principal point; the trainable
    rows form a cluster in one part of the image."""
    g = torch.Generator().manual_seed(seed)
    n = 400
    xy = torch.rand(n, 2, generator=g) * 0.5 - 0.25
    z = 1.0 + 0.2 * torch.rand(n, 1, generator=g)
    xyz = torch.cat([xy * z, z], 1)
    scales = 0.004 + 0.01 * torch.rand(n, 3, generator=g)
    rot = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1)
    opacity = 0.3 + 0.6 * torch.rand(n, 1, generator=g)
    shs = 0.5 * torch.randn(n, 16, 3, generator=g)
    trainable = (xy[:, 0].abs() < 0.06) & (xy[:, 1].abs() < 0.05)   # a central cluster
    leaves = [t.to(device).requires_grad_() for t in (xyz, scales, rot, opacity, shs)]
    K = np.array([[110.0, 0.0, W / 2 + 3.5], [0.0, 110.0, H / 2 - 2.0], [0.0, 0.0, 1.0]])
    cam = Camera(uid=0, split="train", image_name="x", keyframe=0, width=W, height=H, K=K,
                 world_to_camera=np.eye(4))
    gt = torch.randint(0, 256, (H, W, 3), generator=g, dtype=torch.uint8).to(device)
    return leaves, trainable.to(device), cam, gt


def step_gradients(device: str, use_crop: bool, lambda_dssim: float = 0.2):
    leaves, trainable, cam, gt = scene(device)
    world = WorldGaussians(*leaves, sh_degree=3)
    bg = torch.tensor([0.2, 0.4, 0.9], device=device)
    crop = footprint_crop(cam, world, trainable) if use_crop else None
    if crop is None:
        out = render(cam, world, bg)
        loss = training_loss(out["render"], gt, bg, lambda_dssim)
    else:
        out = render(crop_camera(cam, crop), world, bg)
        loss = training_loss(out["render"], gt[crop.slices()].contiguous(), bg,
                             lambda_dssim) * crop.fraction
    loss.backward()
    screen = out["viewspace_points"].grad
    if crop is not None:
        screen = screen * screen.new_tensor([W / crop.width, H / crop.height, 1.0])
    return [t.grad[trainable] for t in leaves], screen[trainable], crop


def assert_same_gradients(device: str):
    full, full_screen, _ = step_gradients(device, use_crop=False)
    cropped, crop_screen, crop = step_gradients(device, use_crop=True)
    assert crop is not None and crop.fraction < 0.7
    assert crop.x0 % TILE == 0 and crop.y0 % TILE == 0
    assert crop.x0 > 0 and crop.y0 > 0 and crop.x0 + crop.width < W   # an inner window
    for a, b in zip(full, cropped):
        scale = a.abs().max().clamp_min(1e-12)
        assert ((a - b).abs().max() / scale) < 2e-4
    assert torch.allclose(full_screen[:, :2], crop_screen[:, :2], rtol=1e-3,
                          atol=1e-4 * float(full_screen.abs().max()))


def test_crop_step_gives_the_trainable_rows_the_full_step_gradients_cpu():
    assert_same_gradients("cpu")


@pytest.mark.cuda
def test_crop_step_gives_the_trainable_rows_the_full_step_gradients_cuda():
    assert_same_gradients("cuda")


def test_crop_covers_the_footprint_on_the_tile_grid_and_none_without_visible_rows():
    leaves, trainable, cam, _ = scene("cpu")
    world = WorldGaussians(*[t.detach() for t in leaves], sh_degree=3)
    crop = footprint_crop(cam, world, trainable)
    ys, xs = crop.slices()
    assert 0 <= crop.x0 and xs.stop <= W and 0 <= crop.y0 and ys.stop <= H
    shifted = crop_camera(cam, crop)
    assert shifted.K[0, 2] == cam.K[0, 2] - crop.x0 and shifted.width == crop.width
    behind = WorldGaussians(world.xyz * torch.tensor([1.0, 1.0, -1.0]), *world[1:])
    assert footprint_crop(cam, behind, trainable) is None


@pytest.mark.parametrize("quantum", [TILE, 4 * TILE])
def test_quantised_crops_hold_the_widened_box_on_the_tile_grid(quantum):
    g = torch.Generator().manual_seed(1)
    full_w, full_h = 802, 550
    for _ in range(200):
        x_lo, y_lo = (torch.rand(2, generator=g) * torch.tensor([full_w, full_h])).tolist()
        w, h = (torch.rand(2, generator=g) * 300).tolist()
        box = (x_lo, y_lo, x_lo + w, y_lo + h)
        crop = crop_from_box(box, full_w, full_h, margin=10, quantum=quantum)
        assert crop.x0 % TILE == 0 and crop.y0 % TILE == 0
        assert crop.x0 + crop.width <= full_w and crop.y0 + crop.height <= full_h
        assert crop.x0 <= max(box[0] - 10, 0) and crop.y0 <= max(box[1] - 10, 0)
        assert crop.x0 + crop.width >= min(box[2] + 10, full_w)
        assert crop.y0 + crop.height >= min(box[3] + 10, full_h)
        assert crop.width % quantum == 0 or crop.x0 + crop.width == full_w
        assert crop.height % quantum == 0 or crop.y0 + crop.height == full_h
    assert crop_from_box((np.inf, np.inf, -np.inf, -np.inf), full_w, full_h) is None
    with pytest.raises(ValueError):
        crop_from_box((0, 0, 10, 10), full_w, full_h, quantum=24)


def test_lagged_planner_uses_the_previous_visit_widened_and_keeps_crop_cameras():
    """On a GPU the planner must not wait for the device: a first visit renders the whole
    image, later visits use the footprint of the visit before, widened for the movement."""
    leaves, trainable, cam, _ = scene("cpu")
    world = WorldGaussians(*[t.detach() for t in leaves], sh_degree=3)
    planner = CropPlanner(torch.device("cpu"), lagged=True, lag_pad=2 * TILE, quantum=TILE)
    assert planner.plan(cam, world, trainable) is None             # first visit: whole image
    moved = WorldGaussians(world.xyz + torch.tensor([0.02, 0.0, 0.0]), *world[1:])
    crop = planner.plan(cam, moved, trainable)
    exact = footprint_crop(cam, world, trainable)
    assert crop.x0 <= max(exact.x0 - 2 * TILE, 0) and crop.y0 <= max(exact.y0 - 2 * TILE, 0)
    assert crop.width >= min(exact.width + 2 * TILE, W - crop.x0)
    again = planner.plan(cam, moved, trainable)                     # the moved footprint now
    box = footprint_box(cam, moved, trainable).tolist()
    assert again.x0 <= max(box[0] - 2 * TILE, 0) and again.x0 + again.width >= min(box[2], W)
    assert planner.camera(cam, crop) is planner.camera(cam, crop)
    assert planner.camera(cam, crop).width == crop.width
    exact_planner = CropPlanner(torch.device("cpu"))                # the CPU: exact, no lag
    assert exact_planner.plan(cam, world, trainable) == exact
