"""python -m flame.convert: a tiny GaussianAvatars-format dataset in, an STGA dataset out.

The source dataset is built here: a synthetic FLAME model (pickled like the official one), a few
timesteps with tracked parameters, three cameras whose principal point is off-centre and whose
``cy`` is measured from the bottom of the image (as the tracker writes it), images and masks.
"""
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import train
from flame import FlameLayer, load_flame_model
from flame.convert import convert, main
from flame.synthetic import make_synthetic_flame
from scene.dataset import load_dataset
from test_flame import write_model_pickle

W, H = 48, 40
TRAIN, TEST = (0, 1, 2), (5, 6)
CAMERAS = (0, 1, 2)          # camera 2 is the held-out (val) camera
FL = (52.0, 50.0)
CX, CY = 21.3, 16.2          # cy from the bottom: the top-down principal point is 23.8


def look_at_c2w(position, target=(0.0, -0.01, 0.05)):
    """OpenGL camera-to-world (x right, y up, z back) looking from position at target."""
    position, target = np.asarray(position, float), np.asarray(target, float)
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, position
    return c2w


def source_projection(points, c2w, fl, cx, cy_bottom, h):
    """Pixel positions (x right, y down from the top) as the tracker's cameras define them."""
    cam = (np.linalg.inv(c2w) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    depth = -cam[:, 2]
    u = fl[0] * cam[:, 0] / depth + cx
    v_up = fl[1] * cam[:, 1] / depth + cy_bottom
    return np.stack([u, h - v_up], 1)


def make_mask():
    mask = np.zeros((H, W), np.uint8)
    mask[:, : W // 2] = 255
    mask[:, W // 2] = 128
    return mask


def write_params(path, rng, t, V, shape, first):
    p = {"translation": rng.normal(0, 0.005, (1, 3)), "rotation": rng.normal(0, 0.05, (1, 3)),
         "neck_pose": rng.normal(0, 0.05, (1, 3)), "jaw_pose": np.array([[0.05 * t, 0, 0]]),
         "eyes_pose": rng.normal(0, 0.1, (1, 6)), "expr": rng.normal(0, 1.0, (1, 100)),
         "shape": shape if first else shape + 0.3,  # later files must not be used for shape
         "static_offset": rng.normal(0, 1e-3, (1, V, 3))}
    if t == 1:
        p["dynamic_offset"] = rng.normal(0, 1e-3, (1, V, 3))
    np.savez(path, **{k: v.astype(np.float32) for k, v in p.items()})


def make_ga_dataset(root: Path, V: int) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images", "fg_masks", "flame_param"):
        (root / sub).mkdir(parents=True)
    shape = rng.normal(0, 0.5, 300)
    for t in TRAIN + TEST:
        write_params(root / "flame_param" / f"{t:05d}.npz", rng, t, V, shape, t == TRAIN[0])
    np.savez(root / "canonical_flame_param.npz", shape=shape, expr=np.zeros((1, 100)))
    cams = {c: look_at_c2w([0.3 * (c - 1), 0.02, 0.6]) for c in CAMERAS}

    def frame(t, c):
        name = f"{t:05d}_{c:02d}"
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"{name}.png"), img)
        cv2.imwrite(str(root / "fg_masks" / f"{name}.png"), make_mask())
        return {"timestep_index": t, "camera_index": c, "file_path": f"images/{name}.png",
                "fg_mask_path": f"fg_masks/{name}.png",
                "flame_param_path": f"flame_param/{t:05d}.npz",
                "transform_matrix": cams[c].tolist(), "fl_x": FL[0], "fl_y": FL[1],
                "cx": CX, "cy": CY, "camera_angle_x": 2 * np.arctan(W / (2 * FL[0]))}

    splits = {"train": [frame(t, c) for t in TRAIN for c in CAMERAS[:2]],
              "val": [frame(t, CAMERAS[2]) for t in TRAIN],
              "test": [frame(t, c) for t in TEST for c in CAMERAS[:2]]}
    for split, frames in splits.items():   # w and h at top level, as the tracker may write them
        (root / f"transforms_{split}.json").write_text(json.dumps({"w": W, "h": H,
                                                                   "frames": frames}))
    return root


@pytest.fixture(scope="module")
def flame_file(tmp_path_factory):
    synthetic = make_synthetic_flame()
    return write_model_pickle(tmp_path_factory.mktemp("model") / "generic_model.pkl",
                              synthetic.arrays)


@pytest.fixture(scope="module")
def ga(tmp_path_factory, flame_file):
    V = load_flame_model(flame_file).num_vertices
    return make_ga_dataset(tmp_path_factory.mktemp("ga") / "subject", V)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, ga, flame_file):
    out = tmp_path_factory.mktemp("stga") / "subject"
    report = convert(ga, out, flame_file, teeth=True, progress=False)
    assert report.meshes_written == len(TRAIN + TEST)
    return out


def test_output_loads_with_flame_meshes(converted, ga, flame_file):
    data = load_dataset(converted, require_training_faces=True, quiet=True)
    model = load_flame_model(flame_file)
    assert data.num_faces == len(model.faces) + 168
    assert data.keyframes == sorted(TRAIN + TEST)
    assert {s: len(c) for s, c in data.splits.items()} == {"train": 6, "val": 3, "test": 4}
    assert set(data.training_faces) == set(TRAIN)
    assert len(data.training_faces[1]) > 0
    layer = FlameLayer(model, teeth=True, dtype=torch.float64)
    first = np.load(ga / "flame_param" / "00000.npz")
    for t in (1, 5):
        p = np.load(ga / "flame_param" / f"{t:05d}.npz")
        dyn = p["dynamic_offset"] if "dynamic_offset" in p.files else None
        verts = layer(shape=first["shape"], expr=p["expr"], rotation=p["rotation"],
                      neck_pose=p["neck_pose"], jaw_pose=p["jaw_pose"],
                      eyes_pose=p["eyes_pose"], translation=p["translation"],
                      static_offset=first["static_offset"], dynamic_offset=dyn)
        want = layer.triangles(verts)[0].numpy()
        np.testing.assert_allclose(data.meshes[data.mesh_row(t)], want, atol=1e-6)
    assert (converted / "points3d.ply").exists()


def test_written_cameras_project_like_the_source_cameras(converted, ga):
    data = load_dataset(converted, quiet=True, load_pixels=False)
    source = {}
    for split in ("train", "val", "test"):
        for f in json.loads((ga / f"transforms_{split}.json").read_text())["frames"]:
            source[Path(f["file_path"]).stem] = np.asarray(f["transform_matrix"])
    checked = 0
    for cams in data.splits.values():
        for cam in cams:
            assert abs(cam.K[1, 2] - (H - CY)) < 1e-9 and cam.K[1, 2] != H / 2
            points = data.meshes[data.mesh_row(cam.keyframe)].reshape(-1, 3).astype(np.float64)
            q = (cam.world_to_camera @ np.c_[points, np.ones(len(points))].T).T[:, :3]
            mine = (cam.K @ (q / q[:, 2:3]).T).T[:, :2]
            theirs = source_projection(points, source[cam.image_name], FL, CX, CY, H)
            np.testing.assert_allclose(mine, theirs, atol=1e-6)
            assert ((theirs > 0) & (theirs < [W, H])).all()   # the head is in view
            checked += 1
    assert checked == 13


def test_images_are_composited_with_their_masks(converted, ga):
    src = cv2.imread(str(ga / "images" / "00001_00.png"))[..., ::-1].astype(float)
    out = cv2.imread(str(converted / "images" / "00001_00.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (H, W, 3)
    out = out[..., ::-1].astype(float)
    np.testing.assert_array_equal(out[:, : W // 2], src[:, : W // 2])          # mask 255
    np.testing.assert_array_equal(out[:, W // 2 + 1:], 255.0)                   # mask 0: white
    half = 128 / 255.0
    np.testing.assert_allclose(out[:, W // 2], src[:, W // 2] * half + 255 * (1 - half),
                               atol=0.51)


def test_rerun_skips_work_and_redoes_what_changed(tmp_path, ga, flame_file):
    out = tmp_path / "out"
    first = convert(ga, out, flame_file, progress=False)
    assert first.images_written == 13 and first.points_written and first.selection_written
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".stga_mesh")]
    before = {p: p.stat().st_mtime_ns for p in files}
    again = convert(ga, out, flame_file, progress=False)
    assert (again.meshes_written, again.images_written) == (0, 0)
    assert (again.meshes_skipped, again.images_skipped) == (len(TRAIN + TEST), 13)
    assert not again.points_written and not again.selection_written
    assert {p: p.stat().st_mtime_ns for p in files} == before
    # a changed parameter file redoes its mesh and the selection, nothing else
    path = ga / "flame_param" / "00002.npz"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9 * 3600))
    try:
        third = convert(ga, out, flame_file, progress=False)
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert third.meshes_written == 1 and third.images_written == 0
    assert third.selection_written and not third.points_written
    # another option (the background) redoes the images
    fourth = convert(ga, out, flame_file, background="black", progress=False)
    assert fourth.images_written == 13 and fourth.meshes_written == 0
    img = cv2.imread(str(out / "images" / "00000_00.png"))
    assert (img[:, W // 2 + 1:] == 0).all()
    # the faces change with --teeth: meshes, points and selection are all redone
    fifth = convert(ga, out, flame_file, teeth=True, background="black", progress=False)
    assert fifth.meshes_written == len(TRAIN + TEST) and fifth.points_written
    load_dataset(out, require_training_faces=True, quiet=True, load_pixels=False)


def test_bad_input_is_reported_by_name_with_exit_status_2(tmp_path, ga, flame_file, capsys):
    src = tmp_path / "ga"
    shutil.copytree(ga, src)
    bad = src / "flame_param" / "00001.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert main([str(src), str(tmp_path / "out"), "--flame_model", str(flame_file),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err and err.startswith("error:")
    bad.unlink()
    assert main([str(src), str(tmp_path / "out"), "--flame_model", str(flame_file),
                 "--quiet"]) == 2
    assert str(bad) in capsys.readouterr().err
    shutil.copy(ga / "flame_param" / "00001.npz", bad)
    image = src / "fg_masks" / "00002_01.png"
    image.unlink()
    assert main([str(src), str(tmp_path / "out"), "--flame_model", str(flame_file),
                 "--quiet"]) == 2
    assert f"{image}: mask is missing" in capsys.readouterr().err
    missing = tmp_path / "generic_model.pkl"
    assert main([str(ga), str(tmp_path / "out2"), "--flame_model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "flame.is.tue.mpg.de" in err


@pytest.mark.parametrize("flag, value", [("--points_per_face", "0"), ("--tau", "-1"),
                                         ("--dilate", "-2"), ("--workers", "0")])
def test_bad_options_are_refused_before_any_work(tmp_path, ga, flame_file, capsys, flag, value):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main([str(ga), str(out), "--flame_model", str(flame_file), "--quiet", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert not out.exists()                 # nothing written: meshes and images come later


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--flame_model", "--teeth", "--background", "--points_per_face", "--tau",
                 "--dilate", "--seed", "--workers", "--force", "--quiet"):
        assert flag in text


def test_the_converted_dataset_trains(converted, tmp_path):
    argv = ["-s", str(converted), "-m", str(tmp_path / "model"), "--quiet", "--device", "cpu",
            "-w", "--iterations", "6", "--sh_degree", "0", "--global_warmup", "2",
            "--no-densify", "--test_iterations", "100", "--save_iterations", "100"]
    t = train.Trainer(train.resolve_defaults(train.build_parser().parse_args(argv)))
    losses = [t.train_step(i) for i in range(1, 7)]
    finite = [float(l) for l in losses if l is not None]
    assert len(finite) >= 2 and all(np.isfinite(finite))
