"""Selection by rendered error (training/face_error.py): faces read the image error where they
project, only when they face the camera, and the worst ones are selected."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scene.cameras import Camera
from training.face_error import FaceErrorMap

W, H = 64, 48


def grid_mesh(flip: bool = False) -> torch.Tensor:
    """A 2x1 square of 2 * 8 * 6 triangles in the plane z = 2, facing a camera at the origin
    (winding towards the camera unless ``flip``), plus its mirror image behind at z = 3 facing
    away."""
    tris = []
    xs, ys = np.linspace(-1, 1, 9), np.linspace(-0.75, 0.75, 7)
    for i in range(8):
        for j in range(6):
            a, b = [xs[i], ys[j], 2.0], [xs[i + 1], ys[j], 2.0]
            c, d = [xs[i + 1], ys[j + 1], 2.0], [xs[i], ys[j + 1], 2.0]
            tris += [[a, c, b], [a, d, c]]       # normal -z: towards the camera
    front = torch.tensor(tris, dtype=torch.float32)
    back = front.clone()
    back[..., 2] = 3.0
    back = back[:, [0, 2, 1]]                   # reversed winding: normal +z, away
    mesh = torch.cat([front, back])
    return mesh[:, [0, 2, 1]] if flip else mesh


def camera(keyframe: int = 0) -> Camera:
    K = np.array([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]])
    return Camera(uid=0, split="train", image_name="c", keyframe=keyframe, width=W, height=H,
                  K=K, world_to_camera=np.eye(4))


@pytest.mark.parametrize("flip", [False, True])
def test_faces_under_the_error_are_the_worst_and_hidden_sides_are_not_observed(flip):
    mesh = grid_mesh(flip)
    render = torch.zeros(3, H, W)
    target = torch.zeros(3, H, W)
    target[:, :, W // 2:] = 0.8            # the right half of the image is rendered wrong
    errors = FaceErrorMap([0, 5], mesh.shape[0], torch.device("cpu"))
    errors.observe(camera(), mesh, render, target)
    n_front = mesh.shape[0] // 2
    centre_u = 40.0 * mesh[:n_front].mean(1)[:, 0] / 2.0 + W / 2
    right = centre_u >= W / 2
    # with the winding flipped the "front" sheet's normals point away... unless the map's
    # orientation check turns them: both windings must give the same answer for the visible sheet
    front_error = errors.error[0, :n_front]
    assert torch.allclose(front_error[right], torch.full_like(front_error[right], 0.4))
    assert (front_error[~right] == 0).all()
    assert (errors.error[1] == 0).all()                 # another keyframe: untouched
    worst = errors.top_faces(0, right.sum().item() / mesh.shape[0])
    assert set(worst.tolist()) == set(torch.nonzero(right).squeeze(1).tolist())
    assert errors.top_faces(5, 0.5).numel() == 0      # nothing observed there yet


def test_the_error_is_a_running_estimate():
    mesh = grid_mesh()
    errors = FaceErrorMap([0], mesh.shape[0], torch.device("cpu"), decay=0.5)
    render, target = torch.zeros(3, H, W), torch.ones(3, H, W)
    errors.observe(camera(), mesh, render, target)
    errors.observe(camera(), mesh, render, render)
    seen = errors.error[0] > 0
    assert torch.allclose(errors.error[0][seen], torch.full_like(errors.error[0][seen], 0.25))
    with pytest.raises(KeyError):
        errors.observe(camera(keyframe=3), mesh, render, target)
    with pytest.raises(ValueError):
        errors.top_faces(0, 1.5)
