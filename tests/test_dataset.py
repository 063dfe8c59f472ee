"""The STGA dataset reader: conventions, the mesh cache, and a clear error for every bad input."""
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from scene.cameras import opengl_c2w_to_opencv_w2c, projection_matrix
from scene.dataset import load_dataset, output_size
from scene.errors import DatasetError
from scene.meshes import load_mesh_sequence
from scene.points import read_points3d

W, H = 24, 20


def tetra(offset: float = 0.0) -> np.ndarray:
    v = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]], dtype=np.float64) + offset
    faces = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]
    return v[np.array(faces)]


def write_mesh(path: Path, tris: np.ndarray) -> None:
    path.write_text(json.dumps({"triangles": [{"Vertices": t.tolist()} for t in tris]}))


def c2w_looking_at_origin(distance: float = 1.0) -> list:
    # OpenGL camera on +z looking down -z at the origin.
    m = np.eye(4)
    m[2, 3] = distance
    return m.tolist()


def make_dataset(root: Path, keyframes=(0, 1), test_keyframes=(2,), rgba=False) -> Path:
    (root / "meshes").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "training_faces").mkdir()
    rng = np.random.default_rng(0)
    splits = {"train": keyframes, "test": test_keyframes}
    for k in set(keyframes) | set(test_keyframes):
        write_mesh(root / "meshes" / f"mesh_{k:04d}.json", tetra(0.01 * k))
    for k in keyframes:
        np.save(root / "training_faces" / f"{k:04d}.npy", np.array([0, 2], dtype=np.int32))
    for split, kfs in splits.items():
        frames = []
        for k in kfs:
            name = f"images/{k:05d}_00.png"
            img = rng.integers(0, 255, (H, W, 4 if rgba else 3), dtype=np.uint8)
            cv2.imwrite(str(root / name), img)
            frames.append({"keyframe": k, "file_path": name, "transform_matrix":
                           c2w_looking_at_origin(), "K": [[30, 0, W / 2], [0, 30, H / 2],
                                                          [0, 0, 1]], "w": W, "h": H})
        (root / f"transforms_{split}.json").write_text(json.dumps({"frames": frames}))
    return root


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data")


def edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def expect_error(root: Path, *fragments: str, **kwargs):
    with pytest.raises(DatasetError) as info:
        load_dataset(root, quiet=True, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_loads_valid_dataset(data):
    ds = load_dataset(data, quiet=True, require_training_faces=True)
    assert set(ds.splits) == {"train", "test"}
    assert ds.keyframes == [0, 1, 2]  # test keyframes get meshes too
    assert ds.meshes.shape == (3, 4, 3, 3) and ds.meshes.dtype == np.float32
    np.testing.assert_allclose(ds.meshes[ds.mesh_row(2)], tetra(0.02), atol=1e-7)
    cam = ds.splits["train"][0]
    assert (cam.width, cam.height) == (W, H) and cam.image.shape == (H, W, 3)
    assert cam.image_name == "00000_00"
    assert ds.training_faces[1].tolist() == [0, 2]


def test_without_hold_out_every_split_trains(data):
    """--no-eval: the loader puts the held-out cameras into train (uids stay unique) and reads
    training faces for their keyframes too; a missing one is then an error when required."""
    np.save(data / "training_faces" / "0002.npy", np.array([1], dtype=np.int32))
    ds = load_dataset(data, quiet=True, require_training_faces=True, hold_out=False)
    assert set(ds.splits) == {"train"}
    assert sorted(c.keyframe for c in ds.splits["train"]) == [0, 1, 2]
    assert len({c.uid for c in ds.splits["train"]}) == 3
    assert ds.training_faces[2].tolist() == [1]
    (data / "training_faces" / "0002.npy").unlink()
    expect_error(data, "0002", require_training_faces=True, hold_out=False)


def test_opengl_to_opencv_and_projection_put_origin_at_principal_point():
    K = np.array([[30.0, 0, 13.0], [0, 30.0, 7.5], [0, 0, 1]])
    w2c = opengl_c2w_to_opencv_w2c(np.array(c2w_looking_at_origin(2.0)))
    p = w2c @ np.array([0, 0, 0, 1.0])
    assert p[2] == pytest.approx(2.0)  # OpenCV camera looks along +z
    # a point above the origin (world +y) appears above the centre: smaller row (y down)
    q = w2c @ np.array([0, 0.1, 0, 1.0])
    assert q[1] < 0
    clip = projection_matrix(K, W, H) @ p
    ndc = clip[:2] / clip[3]
    pixel = (ndc + 1) * np.array([W, H]) / 2
    np.testing.assert_allclose(pixel, [13.0, 7.5])


def test_resolution_scales_images_and_intrinsics(data):
    ds = load_dataset(data, resolution=2, quiet=True)
    cam = ds.splits["train"][0]
    assert (cam.width, cam.height) == (W // 2, H // 2)
    np.testing.assert_allclose(cam.K[:2], [[15, 0, W / 4], [0, 15, H / 4]])
    assert output_size(3200, 1000, -1)[:2] == (1600, 500)
    assert output_size(100, 50, 40)[:2] == (40, 20)


def test_fov_intrinsics_and_timestep_alias(data):
    def use_fov(d):
        for f in d["frames"]:
            del f["K"]
            f["timestep_index"] = f.pop("keyframe")
        d["camera_angle_x"] = 2 * math.atan(0.5)
    edit_json(data / "transforms_train.json", use_fov)
    cam = load_dataset(data, quiet=True).splits["train"][0]
    assert cam.K[0, 0] == pytest.approx(W)  # tan(half fov) = 0.5 -> fx = W
    assert cam.K[1, 1] == pytest.approx(W)  # square pixels when camera_angle_y is absent
    assert cam.K[0, 2] == pytest.approx(W / 2)


def test_rgba_composited_onto_background(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d", rgba=True), quiet=True)
    cam = ds.splits["train"][0]
    img = cam.image.float() / 255
    gt = cam.gt_image(torch.tensor([1.0, 0.0, 0.0]))
    a = img[..., 3]
    np.testing.assert_allclose(gt[0].numpy(), (img[..., 0] * a + (1 - a)).numpy(), atol=1e-6)
    np.testing.assert_allclose(gt[1].numpy(), (img[..., 1] * a).numpy(), atol=1e-6)


def test_mesh_cache_is_used_and_invalidated(data):
    _, first = load_mesh_sequence(data, quiet=True)
    cache = data / "meshes" / ".stga_mesh_cache.npy"
    assert cache.exists()
    np.testing.assert_array_equal(np.load(cache), first)
    # The cache is read instead of the JSON: poison it while keeping the key, and see it used.
    np.save(cache, first + 1.0)
    _, cached = load_mesh_sequence(data, quiet=True)
    np.testing.assert_array_equal(cached, first + 1.0)
    # Editing a mesh file invalidates the cache.
    path = data / "meshes" / "mesh_0001.json"
    write_mesh(path, tetra(0.5))
    os.utime(path, ns=(1, 1))
    _, fresh = load_mesh_sequence(data, quiet=True)
    np.testing.assert_allclose(fresh[1], tetra(0.5), atol=1e-7)


# --- every bad input of the format gets a clear error naming the file -------------------------

def test_missing_transforms(data):
    os.remove(data / "transforms_train.json")
    expect_error(data, "transforms_train.json", "missing")


def test_missing_image(data):
    os.remove(data / "images" / "00001_00.png")
    expect_error(data, "00001_00.png", "missing")


def test_corrupt_png(data):
    (data / "images" / "00001_00.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    expect_error(data, "00001_00.png", "corrupt")


def test_image_size_differs_within_split(data):
    cv2.imwrite(str(data / "images" / "00001_00.png"), np.zeros((H + 2, W, 3), np.uint8))
    edit_json(data / "transforms_train.json", lambda d: [f.pop("w") for f in d["frames"]])
    expect_error(data, "00001_00.png", f"{W}x{H + 2}", f"{W}x{H}")


def test_image_size_differs_from_json(data):
    cv2.imwrite(str(data / "images" / "00000_00.png"), np.zeros((H, W + 1, 3), np.uint8))
    expect_error(data, "00000_00.png", f"w={W}")


def test_keyframe_without_mesh(data):
    os.remove(data / "meshes" / "mesh_0002.json")  # referenced by the test split only
    expect_error(data, "mesh_0002.json", "keyframe 2")


def test_nan_in_mesh(data):
    tris = tetra()
    tris[3, 1, 2] = np.nan
    (data / "meshes" / "mesh_0001.json").write_text(
        json.dumps({"triangles": [{"Vertices": t.tolist()} for t in tris]}).replace("NaN", "NaN"))
    expect_error(data, "mesh_0001.json", "NaN or Inf", "face 3")


def test_inf_in_mesh(data):
    tris = tetra()
    tris[0, 0, 0] = np.inf
    write_mesh(data / "meshes" / "mesh_0000.json", tris)
    expect_error(data, "mesh_0000.json", "NaN or Inf")


def test_meshes_with_different_face_counts(data):
    write_mesh(data / "meshes" / "mesh_0001.json", tetra()[:3])
    expect_error(data, "mesh_0001.json", "3 faces", "4")


def test_malformed_mesh_json(data):
    (data / "meshes" / "mesh_0001.json").write_text('{"triangles": [{"Vertices": [[0, 0]]}]}')
    expect_error(data, "mesh_0001.json", "Vertices")
    (data / "meshes" / "mesh_0001.json").write_text("{not json")
    expect_error(data, "mesh_0001.json", "not valid JSON")


def test_face_index_out_of_range_in_training_faces(data):
    np.save(data / "training_faces" / "0001.npy", np.array([1, 4], dtype=np.int32))
    expect_error(data, "0001.npy", "face index 4", "4 faces")


def test_training_faces_wrong_dtype(data):
    np.save(data / "training_faces" / "0001.npy", np.array([0.5, 1.0]))
    expect_error(data, "0001.npy", "integer")


def test_missing_training_faces_when_required(data):
    os.remove(data / "training_faces" / "0000.npy")
    load_dataset(data, quiet=True)  # fine while not required
    expect_error(data, "0000.npy", "python -m selection", require_training_faces=True)


def test_empty_training_faces_are_allowed(data):
    np.save(data / "training_faces" / "0000.npy", np.array([], dtype=np.int32))
    ds = load_dataset(data, quiet=True, require_training_faces=True)
    assert ds.training_faces[0].size == 0


@pytest.mark.parametrize("field,value,fragment", [
    ("keyframe", -1, "keyframe"), ("keyframe", "3", "keyframe"),
    ("transform_matrix", [[1, 0], [0, 1]], "4x4"), ("K", [[1, 0, 0]], "3x3"),
    ("transform_matrix", [[float("nan")] * 4] * 4, "NaN"),
    ("w", "wide", "'w'"), ("h", 0, "'h'"), ("w", 40.5, "'w'"),
    ("camera_angle_x", "wide", "camera_angle_x"), ("camera_angle_y", True, "camera_angle_y"),
])
def test_bad_frame_fields(data, field, value, fragment):
    def edit(d):
        d["frames"][1][field] = value
    edit_json(data / "transforms_train.json", edit)
    expect_error(data, "transforms_train.json", "frame 1", fragment)


def test_missing_intrinsics(data):
    edit_json(data / "transforms_train.json", lambda d: d["frames"][0].pop("K"))
    expect_error(data, "frame 0", "camera_angle_x")


def test_points3d_validation(tmp_path):
    def write(path, names, index):
        dtype = [(n, "f4") for n in names] + [("index", "i4"), ("red", "u1"), ("green", "u1"),
                                              ("blue", "u1")]
        arr = np.zeros(2, dtype=dtype)
        arr["index"] = index
        arr["red"] = 255
        PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))

    good = tmp_path / "good.ply"
    write(good, ["loc_x", "loc_y", "loc_z"], [0, 3])
    pts = read_points3d(good, num_faces=4)
    assert pts.face.tolist() == [0, 3] and pts.rgb[0].tolist() == [1.0, 0.0, 0.0]
    bad = tmp_path / "bad.ply"
    write(bad, ["loc_x", "loc_y", "loc_z"], [0, 4])
    with pytest.raises(DatasetError, match="bad.ply.*face index 4"):
        read_points3d(bad, num_faces=4)
    missing = tmp_path / "missing.ply"
    write(missing, ["loc_x", "loc_y"], [0, 1])
    with pytest.raises(DatasetError, match="missing.ply.*loc_z"):
        read_points3d(missing, num_faces=4)
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(DatasetError, match="junk.ply"):
        read_points3d(tmp_path / "junk.ply", num_faces=4)


def test_the_same_view_listed_twice_with_different_images(data):
    def edit(d):
        for f in d["frames"]:
            f["camera_index"] = 0
        d["frames"].append(dict(d["frames"][0], file_path="images/00001_00.png"))
    edit_json(data / "transforms_train.json", edit)
    expect_error(data, "transforms_train.json", "keyframe 0, camera 0", "listed twice")
