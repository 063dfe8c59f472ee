"""The mesh-bound Gaussian model: posing and the PLY file (3DGS fields + the binding)."""
import numpy as np
import pytest
import torch
from plyfile import PlyData

from scene.binding import face_frames, quaternion_to_matrix
from scene.errors import DatasetError
from scene.gaussian_model import GaussianModel


def random_model(n=30, faces=8, face_scale=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = GaussianModel(sh_degree=3, face_scale=face_scale)
    model.binding = torch.randint(0, faces, (n,), generator=gen)
    model._set_params({
        "xyz": torch.randn(n, 3, generator=gen) * 0.01,
        "f_dc": torch.randn(n, 1, 3, generator=gen),
        "f_rest": torch.randn(n, 15, 3, generator=gen),
        "scaling": torch.randn(n, 3, generator=gen) - 5,
        "rotation": torch.randn(n, 4, generator=gen),
        "opacity": torch.randn(n, 1, generator=gen),
    })
    model.active_sh_degree = 3
    tris = torch.randn(faces, 3, 3, generator=gen) * 0.1
    return model, face_frames(tris)


@pytest.mark.parametrize("face_scale", [False, True])
def test_world_pose_follows_the_binding(face_scale):
    model, frames = random_model(face_scale=face_scale)
    g = model.world(frames)
    b = model.binding
    k = frames.size[b, None] if face_scale else 1.0
    expected_xyz = torch.einsum("nij,nj->ni", frames.rotation[b], model.params["xyz"] * k)
    torch.testing.assert_close(g.xyz, expected_xyz + frames.origin[b])
    torch.testing.assert_close(g.scales, torch.exp(model.params["scaling"]) * k)
    expected_R = frames.rotation[b] @ quaternion_to_matrix(model.params["rotation"])
    torch.testing.assert_close(quaternion_to_matrix(g.rotations), expected_R, atol=1e-5, rtol=0)
    torch.testing.assert_close(g.rotations.norm(dim=-1), torch.ones(len(b)))
    assert g.shs.shape == (len(b), 16, 3)


def test_ply_roundtrip_and_3dgs_layout(tmp_path):
    model, frames = random_model(face_scale=True)
    path = tmp_path / "point_cloud.ply"
    model.save_ply(path, frames, reference_keyframe=7)
    ply = PlyData.read(str(path))
    v = ply["vertex"]
    g = model.world(frames)
    np.testing.assert_allclose(np.stack([v["x"], v["y"], v["z"]], 1), g.xyz.detach(), rtol=1e-6)
    np.testing.assert_allclose(np.stack([v[f"scale_{i}"] for i in range(3)], 1),
                               torch.log(g.scales).detach(), rtol=1e-5, atol=1e-6)
    # 3DGS's f_rest layout: all coefficients of red, then green, then blue
    rest = model.params["f_rest"].detach()
    assert v["f_rest_0"][3] == pytest.approx(rest[3, 0, 0].item())
    assert v["f_rest_1"][3] == pytest.approx(rest[3, 1, 0].item())
    assert v["f_rest_15"][3] == pytest.approx(rest[3, 0, 1].item())
    assert v["index"].tolist() == model.binding.tolist()
    assert any("reference_keyframe 7" in c for c in ply.comments)
    loaded = GaussianModel()
    loaded.load_ply(path, num_faces=8, device=torch.device("cpu"))
    assert loaded.face_scale and loaded.max_sh_degree == 3
    assert torch.equal(loaded.binding, model.binding)
    for name, value in model.params.items():
        torch.testing.assert_close(loaded.params[name], value.detach(), rtol=0, atol=0)


def test_load_ply_rejects_foreign_and_out_of_range_files(tmp_path):
    model, frames = random_model(faces=8)
    path = tmp_path / "m.ply"
    model.save_ply(path, frames, reference_keyframe=0)
    with pytest.raises(DatasetError, match="m.ply.*out of range"):
        GaussianModel().load_ply(path, num_faces=int(model.binding.max()), device="cpu")
    (tmp_path / "x.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\n"
                                     b"property float x\nend_header\n0\n")
    with pytest.raises(DatasetError, match="x.ply.*not an STGA model"):
        GaussianModel().load_ply(tmp_path / "x.ply", num_faces=8, device="cpu")
