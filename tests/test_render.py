"""render.py on a tiny trained model: splits, skip flags, per-camera videos, the orbit, the export.

One tiny synthetic head of odd size (so video padding is exercised) and one 20-iteration model are
made once for the module; every test renders into its own copy of the model folder.
"""
import json
import shutil
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from plyfile import PlyData

import render
import train
from scene.binding import face_frames
from scene.dataset import load_dataset
from scene.demo_head import write_demo_dataset
from scene.gaussian_model import GaussianModel

WIDTH, HEIGHT = 39, 45  # odd on purpose
ITERATIONS = 20


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """(dataset folder, trained model folder) of a tiny head, trained for a few iterations."""
    root = tmp_path_factory.mktemp("render")
    data = root / "tiny_head"
    write_demo_dataset(data, width=WIDTH, height=HEIGHT, n_train_frames=4, n_test_frames=2,
                       n_cameras=3, supersample=2, texture_size=256, progress=False)
    model = root / "model"
    argv = ["-s", str(data), "-m", str(model), "--quiet", "--device", "cpu", "--iterations",
            str(ITERATIONS), "--sh_degree", "1", "--test_iterations", "1000",
            "--densify_from_iter", "5", "--densification_interval", "5"]
    train.Trainer(train.resolve_defaults(train.build_parser().parse_args(argv))).run()
    return data, model


@pytest.fixture()
def model_copy(tiny_model, tmp_path):
    """A fresh copy of the trained model folder (cfg_args.json and the saved PLY only)."""
    _, model = tiny_model
    out = tmp_path / "model"
    out.mkdir()
    shutil.copy(model / "cfg_args.json", out)
    shutil.copytree(model / "point_cloud", out / "point_cloud")
    return out


def frames_of(data: Path, split: str) -> list:
    return json.loads((data / f"transforms_{split}.json").read_text())["frames"]


def stem(frame: dict) -> str:
    return Path(frame["file_path"]).stem


def read_video(path: Path) -> list:
    """The frames of an mp4, checked to be H.264 in yuv420p (what browsers play)."""
    meta = next(imageio_ffmpeg.read_frames(str(path)))
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p"), meta
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(np.float64))
    cap.release()
    return frames


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float64)


@pytest.fixture(scope="module")
def full_render(tiny_model, tmp_path_factory):
    """One render.py run with every option; returns (data, model folder, exit code)."""
    data, model = tiny_model
    out = tmp_path_factory.mktemp("full") / "model"
    out.mkdir()
    shutil.copy(model / "cfg_args.json", out)
    shutil.copytree(model / "point_cloud", out / "point_cloud")
    test_keyframe = frames_of(data, "test")[0]["keyframe"]
    code = render.main(["-m", str(out), "--quiet", "--device", "cpu", "--video", "--orbit", "5",
                        "--export_ply", str(test_keyframe)])
    return data, out, code


def test_every_split_is_rendered_next_to_its_ground_truth(full_render):
    data, model, code = full_render
    assert code == 0
    for split in ("train", "test", "val"):
        folder = model / split / f"ours_{ITERATIONS}"
        expected = sorted(f"{stem(f)}.png" for f in frames_of(data, split))
        assert sorted(p.name for p in (folder / "renders").iterdir()) == expected
        assert sorted(p.name for p in (folder / "gt").iterdir()) == expected
        gt = read_rgb(folder / "gt" / expected[0])
        assert gt.shape == (HEIGHT, WIDTH, 3)
    assert not list(model.rglob("*.tmp*"))


def test_skip_flags_leave_those_splits_out(model_copy):
    assert render.main(["-m", str(model_copy), "--quiet", "--device", "cpu", "--skip_train",
                        "--skip_val"]) == 0
    assert (model_copy / "test" / f"ours_{ITERATIONS}" / "renders").is_dir()
    assert not (model_copy / "train").exists() and not (model_copy / "val").exists()
    assert render.main(["-m", str(model_copy), "--quiet", "--device", "cpu", "--skip_test",
                        "--skip_train"]) == 0
    assert (model_copy / "val" / f"ours_{ITERATIONS}" / "gt").is_dir()
    assert not (model_copy / "train").exists()


def test_video_per_camera_in_keyframe_order(full_render):
    data, model, _ = full_render
    for split in ("train", "test", "val"):
        folder = model / split / f"ours_{ITERATIONS}"
        per_camera = {}
        for frame in frames_of(data, split):
            per_camera.setdefault(frame["camera_index"], []).append(frame)
        videos = sorted(p.name for p in (folder / "videos").iterdir())
        assert videos == [f"camera_{c:02d}.mp4" for c in sorted(per_camera)]
        for camera, frames in per_camera.items():
            frames = sorted(frames, key=lambda f: f["keyframe"])
            video = read_video(folder / "videos" / f"camera_{camera:02d}.mp4")
            assert len(video) == len(frames)
            # render left, ground truth right, each frame padded to even sizes
            assert video[0].shape == (HEIGHT + 1, 2 * WIDTH, 3)
            for image, frame in zip(video, frames):
                rendered = read_rgb(folder / "renders" / f"{stem(frame)}.png")
                gt = read_rgb(folder / "gt" / f"{stem(frame)}.png")
                assert np.abs(image[:HEIGHT, :WIDTH] - rendered).mean() < 8.0  # lossy codec
                assert np.abs(image[:HEIGHT, WIDTH:] - gt).mean() < 8.0
            # the ground truth animates: each frame is closest to its own keyframe's image
            gts = [read_rgb(folder / "gt" / f"{stem(f)}.png") for f in frames]
            for i, image in enumerate(video):
                errors = [np.abs(image[:HEIGHT, WIDTH:] - g).mean() for g in gts]
                assert int(np.argmin(errors)) == i


def test_orbit_writes_n_views_around_the_centroid(full_render):
    data, model, _ = full_render
    folder = model / f"orbit_{ITERATIONS}"
    assert sorted(p.name for p in (folder / "frames").iterdir()) == [
        f"{i:04d}.png" for i in range(5)]
    video = read_video(folder / "orbit.mp4")
    assert len(video) == 5 and video[0].shape == (HEIGHT + 1, WIDTH + 1, 3)
    first = read_rgb(folder / "frames" / "0000.png")
    assert first.shape == (HEIGHT, WIDTH, 3) and first.max() > 50  # the head is in view

    # the circle: centred on the mesh centroid, at the training cameras' mean distance and
    # height, looking at the centroid, with the first training camera's intrinsics
    dataset = load_dataset(data, load_pixels=False, quiet=True)
    train_cams = dataset.splits["train"]
    keyframe = train_cams[0].keyframe
    cameras = render.orbit_cameras(dataset, keyframe, 8)
    centre = dataset.meshes[dataset.mesh_row(keyframe)].reshape(-1, 3).astype(np.float64).mean(0)
    up = np.mean([-c.world_to_camera[1, :3] for c in train_cams], 0)
    up /= np.linalg.norm(up)
    offsets = np.stack([c.center for c in train_cams]) - centre
    for cam in cameras:
        np.testing.assert_allclose(np.linalg.norm(cam.center - centre),
                                   np.linalg.norm(offsets, axis=1).mean(), rtol=1e-6)
        np.testing.assert_allclose((cam.center - centre) @ up, (offsets @ up).mean(), atol=1e-6)
        p = cam.K @ (cam.world_to_camera[:3, :3] @ centre + cam.world_to_camera[:3, 3])
        np.testing.assert_allclose(p[:2] / p[2], cam.K[:2, 2], atol=1e-6)
        assert np.allclose(cam.K, train_cams[0].K) and cam.width == WIDTH
        np.testing.assert_allclose(np.linalg.det(cam.world_to_camera[:3, :3]), 1.0, atol=1e-9)
    azimuths = [np.arctan2(*(c.center - centre)[[0, 2]]) for c in cameras]
    steps = np.mod(np.diff(azimuths), 2 * np.pi)
    np.testing.assert_allclose(np.minimum(steps, 2 * np.pi - steps), np.pi / 4, atol=0.2)


def test_export_is_a_plain_3dgs_ply_of_the_posed_model(full_render):
    data, model, _ = full_render
    keyframe = frames_of(data, "test")[0]["keyframe"]
    path = model / "export" / f"keyframe_{keyframe}.ply"
    ply = PlyData.read(str(path))
    v = ply["vertex"]
    loaded = GaussianModel()
    dataset = load_dataset(data, load_pixels=False, quiet=True)
    loaded.load_ply(model / "point_cloud" / f"iteration_{ITERATIONS}" / "point_cloud.ply",
                    dataset.num_faces, torch.device("cpu"))
    n_rest = 3 * ((loaded.max_sh_degree + 1) ** 2 - 1)
    assert n_rest < 45                     # the tiny model is trained below SH degree 3
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert [p.name for p in v.properties] == expected
    assert all(p.val_dtype in ("f4", "float32") for p in v.properties)
    assert [e.name for e in ply.elements] == ["vertex"] and ply.byte_order == "<"
    assert not ply.comments

    with torch.no_grad():
        world = loaded.world(
            face_frames(torch.from_numpy(dataset.meshes[dataset.mesh_row(keyframe)])))
    column = lambda *names: np.stack([np.asarray(v[n]) for n in names], 1)
    np.testing.assert_allclose(column("x", "y", "z"), world.xyz.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(column("scale_0", "scale_1", "scale_2"),
                               np.log(world.scales.numpy()), rtol=0, atol=1e-5)
    rot = column("rot_0", "rot_1", "rot_2", "rot_3")
    np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.abs((rot * world.rotations.numpy()).sum(1)), 1.0, atol=1e-5)
    opacity = 1 / (1 + np.exp(-np.asarray(v["opacity"], np.float64)))
    np.testing.assert_allclose(opacity, world.opacity.numpy()[:, 0], atol=1e-6)
    assert not np.any(column("nx", "ny", "nz"))
    np.testing.assert_allclose(column("f_dc_0", "f_dc_1", "f_dc_2"),
                               loaded.params["f_dc"].detach().numpy()[:, 0], atol=0)
    # 3DGS's channel-major f_rest: all 15 red coefficients, then green, then blue; the trained
    # ones first in each block, zeros for the degrees the model does not have
    rest = loaded.params["f_rest"].detach().numpy()
    per = n_rest // 3
    for c in range(3):
        for k in range(15):
            got = np.asarray(v[f"f_rest_{15 * c + k}"])
            if k < per:
                np.testing.assert_array_equal(got, rest[:, k, c])
            else:
                assert not got.any()
    # a keyframe other than the saved reference really is posed differently
    reference = PlyData.read(str(model / "point_cloud" / f"iteration_{ITERATIONS}" /
                                 "point_cloud.ply"))["vertex"]
    assert not np.allclose(np.asarray(reference["x"]), np.asarray(v["x"]))


def test_export_of_a_whole_sequence_writes_every_keyframe_and_an_index(model_copy, tiny_model):
    data, _ = tiny_model
    assert render.main(["-m", str(model_copy), "--quiet", "--device", "cpu", "--skip_train",
                        "--skip_val", "--skip_test", "--export_ply", "all"]) == 0
    keyframes = load_dataset(data, load_pixels=False, quiet=True).keyframes
    index = json.loads((model_copy / "export" / "index.json").read_text())
    assert [e["keyframe"] for e in index["frames"]] == sorted(keyframes)
    for entry in index["frames"]:
        assert (model_copy / "export" / entry["file"]).is_file()
    first, last = (PlyData.read(str(model_copy / "export" / index["frames"][i]["file"]))
                   ["vertex"] for i in (0, -1))
    assert not np.allclose(np.asarray(first["x"]), np.asarray(last["x"]))   # posed per keyframe
    with pytest.raises(SystemExit) as info:
        render.main(["-m", str(model_copy), "--export_ply", "everything"])
    assert info.value.code == 2


def test_export_only_and_bad_keyframes(model_copy, tiny_model, capsys):
    data, _ = tiny_model
    assert render.main(["-m", str(model_copy), "--quiet", "--device", "cpu", "--skip_train",
                        "--skip_val", "--skip_test", "--export_ply", "0"]) == 0
    assert (model_copy / "export" / "keyframe_0.ply").is_file()
    assert not any((model_copy / s).exists() for s in ("train", "val", "test"))
    for flag in (["--export_ply", "999"], ["--orbit", "3", "--orbit_frame", "999"]):
        assert render.main(["-m", str(model_copy), "--quiet", "--device", "cpu", "--skip_train",
                            "--skip_val", "--skip_test", *flag]) == 2
        err = capsys.readouterr().err
        assert f"{flag[-2]} 999" in err and "no mesh" in err and str(data) in err


def test_video_writer_that_cannot_start_fails_clearly(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no encoder here")

    monkeypatch.setattr(render.imageio_ffmpeg, "write_frames", broken)
    with pytest.raises(render.RenderError, match=r"v\.mp4.*H\.264 encoder.*no encoder here"):
        with render.VideoFile(tmp_path / "v.mp4", 25.0) as video:
            video.write(np.zeros((4, 4, 3), np.uint8))
    assert not list(tmp_path.iterdir())              # no temporary file left behind


def test_videos_are_h264_that_browsers_play_with_odd_sizes_padded(tmp_path):
    frames = [np.full((31, 45, 3), 40 * i, np.uint8) for i in range(5)]
    with render.VideoFile(tmp_path / "v.mp4", 10.0, fill=(255, 255, 255)) as video:
        for f in frames:
            video.write(f)
    got = read_video(tmp_path / "v.mp4")
    assert len(got) == 5 and got[0].shape == (32, 46, 3)
    for f, g in zip(frames, got):
        assert np.abs(g[:31, :45] - f).mean() < 3.0
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_pad_even_and_camera_groups_without_index(tiny_model):
    frame = np.full((3, 5, 3), 7, np.uint8)
    padded = render.pad_even(frame, (1, 2, 3))
    assert padded.shape == (4, 6, 3)
    assert (padded[:3, :5] == 7).all() and (padded[3, :] == (1, 2, 3)).all()
    assert render.pad_even(padded) is padded

    data, _ = tiny_model
    cameras = load_dataset(data, load_pixels=False, quiet=True).splits["train"]
    by_index = render.camera_groups(cameras)
    for cam in cameras:
        cam.camera_index = None
    by_pose = render.camera_groups(cameras)
    assert [[c.uid for c in g] for _, g in by_pose] == [[c.uid for c in g] for _, g in by_index]
    for _, group in by_pose:
        assert [c.keyframe for c in group] == sorted(c.keyframe for c in group)


def test_a_failed_render_leaves_the_previous_split_folder_whole(model_copy, monkeypatch, capsys):
    """Each split's ours_<iteration> folder is written beside and swapped in whole: a render
    that dies half-way (here: a full disk at the third image) leaves the previous one as it was
    and no temporary folder."""
    import errno
    argv = ["-m", str(model_copy), "--quiet", "--device", "cpu", "--skip_train", "--skip_val"]
    assert render.main(argv) == 0
    split = next((model_copy / "test").iterdir())
    before = sorted(p.relative_to(split) for p in split.rglob("*"))
    real = render.write_png
    calls = []

    def dies(path, rgb):
        calls.append(path)
        if len(calls) == 3:
            raise render.DiskFullError(errno.ENOSPC, f"{path}: the disk is full")
        real(path, rgb)

    monkeypatch.setattr(render, "write_png", dies)
    assert render.main(argv) == 2                 # one line, no traceback
    assert "the disk is full" in capsys.readouterr().err
    assert sorted(p.relative_to(split) for p in split.rglob("*")) == before
    assert [p.name for p in (model_copy / "test").iterdir()] == [split.name]
