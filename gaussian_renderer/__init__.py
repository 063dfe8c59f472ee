"""Render posed Gaussians from a dataset camera through the rasterizer package."""
from __future__ import annotations

from typing import Dict

import torch
from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

from scene.cameras import Camera
from scene.gaussian_model import WorldGaussians


def render(camera: Camera, gaussians: WorldGaussians, background: torch.Tensor,
           scaling_modifier: float = 1.0, backend: str = "auto") -> Dict[str, torch.Tensor]:
    """Image (3,H,W) of ``gaussians`` seen by ``camera`` over ``background``.

    Also returns the screen-space points (their ``.grad`` drives densification), the radii and
    the visibility mask, as 3DGS's ``render`` does.
    """
    xyz = gaussians.xyz
    view, proj, campos = camera.matrices(xyz.device, xyz.dtype)
    settings = GaussianRasterizationSettings(
        image_height=camera.height, image_width=camera.width, tanfovx=camera.tanfovx,
        tanfovy=camera.tanfovy, bg=background, scale_modifier=scaling_modifier,
        viewmatrix=view, projmatrix=proj, sh_degree=gaussians.sh_degree, campos=campos,
        prefiltered=False, debug=False)
    screen = torch.zeros_like(xyz, requires_grad=xyz.requires_grad)
    if screen.requires_grad:
        screen.retain_grad()
    image, radii = GaussianRasterizer(settings, backend=backend)(
        means3D=xyz, means2D=screen, opacities=gaussians.opacity, shs=gaussians.shs,
        scales=gaussians.scales, rotations=gaussians.rotations)
    return {"render": image, "viewspace_points": screen, "radii": radii,
            "visibility_filter": radii > 0}
