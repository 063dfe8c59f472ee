"""Cameras for the rasterizer tests (test_rasterizer_torch.py, test_rasterizer_cuda.py)."""
import numpy as np
import torch

from diff_gaussian_rasterization import GaussianRasterizationSettings


def camera_settings(w2v, campos, width, height, tanx, tany, cx_off=0.0, cy_off=0.0,
                    bg=(0.2, 0.5, 0.9), sh_degree=3, scale_modifier=1.0, dtype=torch.float32,
                    device=None):
    """Settings of the camera with the 4x4 world-to-view matrix ``w2v`` (OpenCV axes) at ``campos``:
    field of view tan(fov/2) = ``tanx``, ``tany``, principal point off the centre by ``cx_off``,
    ``cy_off`` (NDC units), near 0.01 and far 100."""
    znear, zfar = 0.01, 100.0
    proj = np.zeros((4, 4))
    proj[0, 0], proj[0, 2] = 1.0 / tanx, cx_off
    proj[1, 1], proj[1, 2] = 1.0 / tany, cy_off
    proj[2, 2], proj[2, 3] = zfar / (zfar - znear), -zfar * znear / (zfar - znear)
    proj[3, 2] = 1.0
    t = lambda a: torch.tensor(np.asarray(a), dtype=dtype, device=device)
    return GaussianRasterizationSettings(
        image_height=height, image_width=width, tanfovx=tanx, tanfovy=tany, bg=t(bg),
        scale_modifier=scale_modifier, viewmatrix=t(w2v.T), projmatrix=t((proj @ w2v).T),
        sh_degree=sh_degree, campos=t(campos), prefiltered=False, debug=False)
