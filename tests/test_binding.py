"""Binding convention: face frames, quaternion algebra and local <-> world transforms."""
import math

import numpy as np
import pytest
import torch

from scene.binding import (face_frames, local_to_world_positions, matrix_to_quaternion,
                           quaternion_multiply, quaternion_to_matrix, world_to_local_positions)


def random_rotations(n, gen):
    q = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return quaternion_to_matrix(q), torch.nn.functional.normalize(q, dim=-1)


def test_face_frame_follows_the_spec_convention():
    tri = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [-1.0, -1.0, 0]]], dtype=torch.float64)
    fr = face_frames(tri)
    o = tri[0].mean(0)
    np.testing.assert_allclose(fr.origin[0], o)
    x = (tri[0, 0] - o) / (tri[0, 0] - o).norm()
    np.testing.assert_allclose(fr.rotation[0][:, 0], x)                 # x towards v1
    np.testing.assert_allclose(fr.rotation[0][:, 2], [0, 0, 1.0])       # n = (v2-v1) x (v3-v1)
    np.testing.assert_allclose(fr.rotation[0][:, 1], torch.cross(fr.rotation[0][:, 2], x, dim=0))
    assert torch.det(fr.rotation[0]) == pytest.approx(1.0)
    edge = math.sqrt(2.0)
    height = 2 * 1.5 / edge  # area of this triangle is 1.5
    assert fr.size[0].item() == pytest.approx(0.5 * (edge + height))


def test_frames_are_rotations_and_move_rigidly_with_the_mesh():
    gen = torch.Generator().manual_seed(0)
    tris = torch.randn(50, 3, 3, generator=gen, dtype=torch.float64)
    fr = face_frames(tris)
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    np.testing.assert_allclose(fr.rotation.transpose(1, 2) @ fr.rotation, eye, atol=1e-12)
    R, _ = random_rotations(1, gen)
    t = torch.randn(3, generator=gen, dtype=torch.float64)
    moved = face_frames(tris @ R[0].T + t)
    np.testing.assert_allclose(moved.rotation, R[0] @ fr.rotation, atol=1e-12)
    # a Gaussian's world position moves with the mesh
    local = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    b = torch.arange(50)
    for face_scale in (False, True):
        w0 = local_to_world_positions(local, b, fr, face_scale)
        w1 = local_to_world_positions(local, b, moved, face_scale)
        np.testing.assert_allclose(w1, w0 @ R[0].T + t, atol=1e-12)
        np.testing.assert_allclose(world_to_local_positions(w0, b, fr, face_scale), local,
                                   atol=1e-12)


def test_matrix_to_quaternion_roundtrip_including_near_180_degrees():
    gen = torch.Generator().manual_seed(1)
    R, q = random_rotations(1000, gen)
    # rotations by ~180 degrees about each axis stress the pivot selection
    special = torch.tensor([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0], [1e-9, 1, 1, 0]],
                           dtype=torch.float64)
    R = torch.cat([R, quaternion_to_matrix(special)])
    q2 = matrix_to_quaternion(R)
    np.testing.assert_allclose(quaternion_to_matrix(q2), R, atol=1e-10)
    assert (q2[:, 0] >= 0).all()


def test_quaternion_product_composes_rotations_face_first():
    gen = torch.Generator().manual_seed(2)
    Ra, qa = random_rotations(20, gen)
    Rb, qb = random_rotations(20, gen)
    np.testing.assert_allclose(quaternion_to_matrix(quaternion_multiply(qa, qb)), Ra @ Rb,
                               atol=1e-12)
