"""The realistic synthetic head (tools/ict_head): asset, rasterizer, performance, dataset."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from scene.dataset import load_dataset
from scene.demo_head.raster import _rasterize as numpy_rasterize
from tools.ict_head import VARIANTS, build_sequence, head_dataset_path, write_head_dataset
from tools.ict_head.__main__ import main as cli_main
from tools.ict_head.animation import MAX_YAW_DEG, perform
from tools.ict_head.asset import (ASSET_PATH, EYELASHES, GUMS_TONGUE, SCLERA, SKIN, TEETH,
                                  load_asset)
from tools.ict_head.raster import rasterize
from tools.ict_head.writer import ensure_head_dataset, spread_points

SMALL = dict(width=110, height=160, n_cameras=3, n_train=2, n_test=1, stride=30, test_stride=40,
             supersample=2, points=400)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_head_dataset(tmp_path_factory.mktemp("head") / "small", "demo", seed=2,
                              progress=False, **SMALL)


# --- the asset -----------------------------------------------------------------------------
def test_asset_ships_with_its_licence_and_credit():
    licence = (ASSET_PATH.parent / "LICENSE").read_text()
    assert "MIT License" in licence and "USC Institute for Creative Technologies" in licence
    assert ASSET_PATH.stat().st_size < 4_000_000
    a = load_asset()
    assert a.vertices.shape == (25959, 3) and a.faces.shape == (50996, 3)
    assert len(a.expression_names) == 57 and "jawOpen" in a.expression_names
    assert a.expression_deltas.shape == (57, 25959, 3)


def test_tracked_mesh_is_skin_and_eyeballs_unless_teeth_are_asked_for():
    a = load_asset()
    tracked = a.tracked_faces()
    assert set(np.unique(a.material[tracked])) == {SKIN, SCLERA}
    with_teeth = a.tracked_faces(teeth=True)
    assert set(np.unique(a.material[with_teeth])) == {SKIN, SCLERA, TEETH}
    assert len(with_teeth) - len(tracked) == int((a.material == TEETH).sum())
    assert not np.isin(a.material[with_teeth], (GUMS_TONGUE, EYELASHES)).any()


def test_eyes_and_mouth_landmarks_are_where_a_face_has_them():
    a = load_asset()
    left, right = a.eyes
    assert left.centre[0] > 0.02 and right.centre[0] < -0.02
    assert np.allclose(left.centre * [-1, 1, 1], right.centre)
    assert left.axis[2] > 0.95                                    # looking forwards
    centre, half = a.mouth
    assert centre[1] < a.nose_tip[1] - 0.015 and 0.015 < half < 0.035


# --- the triangle z-buffer --------------------------------------------------------------------
def test_nearest_triangle_wins_and_ties_go_to_the_lower_face():
    xy = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]] * 3, dtype=torch.float64)
    z = torch.tensor([2.0] * 3 + [1.0] * 3 + [1.0] * 3, dtype=torch.float64)
    faces = torch.arange(9).reshape(3, 3)
    frags = rasterize(xy, z, faces, 8, 8)
    inside = frags.face >= 0
    assert inside.sum() == 49                           # sample centres with x + y <= 10
    assert (frags.face[inside] == 1).all()              # faces 1 and 2 tie in front of 0
    assert torch.allclose(frags.bary[inside].sum(1), torch.ones(49, dtype=torch.float64))


def test_zbuffer_agrees_with_the_numpy_renderer_of_the_procedural_head():
    rng = np.random.default_rng(0)
    n = 300
    centre = rng.uniform(0, 64, (n, 1, 2))
    xy = (centre + rng.normal(0, 6, (n, 3, 2))).reshape(-1, 2)
    z = np.repeat(rng.uniform(1, 3, n), 3) + rng.uniform(0, 0.2, 3 * n)
    faces = np.arange(3 * n).reshape(n, 3)
    ref_face, _ = numpy_rasterize(xy, z, faces, 64, 64, 1 << 20)
    got = rasterize(torch.from_numpy(xy), torch.from_numpy(z), torch.from_numpy(faces), 64, 64)
    agree = (got.face.numpy() == ref_face).mean()
    assert agree > 0.995        # the two differ only by their edge tolerance


# --- the performance -------------------------------------------------------------------------
def test_performance_blinks_talks_smiles_and_sways_like_a_seated_person():
    names = load_asset().expression_names
    p = perform(names, 500, seed=3)                       # 20 s at 25 fps
    blink = p.weight("eyeBlink_L")
    closed = np.nonzero((blink[1:-1] > 0.9) & (blink[1:-1] >= blink[:-2])
                        & (blink[1:-1] > blink[2:]))[0]
    assert len(closed) >= 4
    gaps = np.diff(closed) / 25.0
    assert gaps.min() >= 1.5 and gaps.max() <= 5.5
    assert p.weight("jawOpen").max() > 0.3 and (p.weight("jawOpen") < 0.05).mean() > 0.1
    assert max(p.weight("mouthSmile_L").max(), p.weight("mouthSmile_R").max()) > 0.4
    assert p.weight("browInnerUp_L").max() > 0.3 or p.weight("browDown_L").max() > 0.3
    assert p.weight("eyeLookOut_L").max() + p.weight("eyeLookIn_L").max() > 0.3
    assert p.weights.min() >= 0.0 and p.weights.max() <= 1.0
    yaw = np.degrees(np.arctan2(p.rotations[:, 0, 2], p.rotations[:, 2, 2]))
    assert np.abs(yaw).max() <= MAX_YAW_DEG + 1e-6 and np.abs(yaw).max() > 5.0
    assert np.linalg.norm(p.translations, axis=1).max() < 0.02
    again = perform(names, 500, seed=3)
    assert np.array_equal(again.weights, p.weights)
    assert not np.array_equal(perform(names, 500, seed=4).weights, p.weights)


# --- the data set ------------------------------------------------------------------------------
def test_variants_are_the_promised_sizes():
    large = VARIANTS["large"]
    assert (large.width, large.height, large.n_cameras) == (550, 802, 16)
    assert large.n_train + large.n_test >= 60
    demo = VARIANTS["demo"]
    assert demo.width / demo.height == pytest.approx(550 / 802, rel=0.01)


def test_dataset_loads_with_regions_points_and_selection(small):
    ds = load_dataset(small, quiet=True)
    a = load_asset()
    assert ds.num_faces == len(a.tracked_faces())
    assert len(ds.splits["train"]) == 2 * 2 and len(ds.splits["val"]) == 2
    assert len(ds.splits["test"]) == 1 * 2
    info = json.loads((small / "head_info.json").read_text())
    assert "ICT-FaceKit, USC Institute for Creative Technologies" in info["credit"]
    region = cv2.imread(str(small / "regions" / "00000_01.png"), cv2.IMREAD_UNCHANGED)
    counts = np.bincount(region.ravel(), minlength=4)
    assert counts[2] > 20 and counts[3] > 20 and counts[1] > counts[2] + counts[3]
    faces = np.load(small / "training_faces" / "0001.npy")
    assert faces.dtype == np.int32 and (faces < ds.num_faces).all()


def test_same_seed_gives_the_same_bytes(small, tmp_path):
    again = write_head_dataset(tmp_path / "again", "demo", seed=2, progress=False, **SMALL)
    files = sorted(p.relative_to(small) for p in small.rglob("*") if p.is_file()
                   and not p.name.startswith("."))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file()
                           and not p.name.startswith("."))
    for rel in files:
        assert (small / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_tracked_mesh_silhouette_matches_the_head_mask(small):
    """Project the written tracked mesh with every camera: IoU with the image's alpha mask."""
    ds = load_dataset(small, quiet=True)
    for cam in ds.splits["train"] + ds.splits["val"] + ds.splits["test"]:
        tri = torch.from_numpy(ds.meshes[ds.mesh_row(cam.keyframe)]).double().reshape(-1, 3)
        K = torch.from_numpy(cam.K).double()
        w2c = torch.from_numpy(cam.world_to_camera).double()
        p = tri @ w2c[:3, :3].T + w2c[:3, 3]
        xy = (p @ K.T)[:, :2] / p[:, 2:]
        faces = torch.arange(len(tri)).reshape(-1, 3)
        sil = rasterize(xy, p[:, 2], faces, cam.width, cam.height).covered.numpy()
        mask = np.asarray(cam.image)[..., 3].reshape(-1) > 127
        iou = (sil & mask).sum() / (sil | mask).sum()
        assert iou >= 0.98, (cam.image_name, iou)


def test_open_mouth_shows_teeth_and_closed_eyes_hide_the_iris():
    seq = build_sequence(seed=0, width=110, height=160, n_train=60, n_test=0, stride=2,
                         n_cameras=3)
    jaw = np.array([seq.weights(k)[seq.asset.expression_index("jawOpen")] for k in range(60)])
    frontal = seq.cameras[1]
    out = seq.render(int(np.argmax(jaw)), frontal, supersample=1)
    teeth = out.material == TEETH
    assert jaw.max() > 0.3 and teeth.sum() >= 10
    assert (out.region[teeth] == 2).all()
    blink = np.array([seq.weights(k)[seq.asset.expression_index("eyeBlink_L")]
                      for k in range(60)])
    shut = seq.render(int(np.argmax(blink)), frontal, supersample=1)
    open_ = seq.render(int(np.argmin(blink + jaw)), frontal, supersample=1)
    assert blink.max() > 0.8
    eyeball = lambda o: int(np.isin(o.material, (SCLERA,)).sum())  # noqa: E731
    assert eyeball(shut) < 0.3 * eyeball(open_)


def test_spread_points_follows_face_area():
    tri = np.zeros((3, 3, 3))
    tri[:, 1, 0] = [1.0, 2.0, 1.0]
    tri[:, 2, 1] = [1.0, 2.0, 0.0]        # areas 0.5, 2, 0 (degenerate)
    faces = spread_points(tri, 10)
    assert np.bincount(faces, minlength=3).tolist() == [2, 8, 0]


def test_cache_reuses_a_generated_dataset(tmp_path):
    path = head_dataset_path("demo", tmp_path, seed=5)
    path.mkdir(parents=True)
    (path / "transforms_train.json").write_text('{"frames": []}')
    assert ensure_head_dataset("demo", tmp_path, seed=5) == path
    assert head_dataset_path("large", tmp_path) != head_dataset_path("demo", tmp_path)


def test_command_writes_a_dataset_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [str(out), "--width", "40", "--height", "58", "--n_cameras", "3", "--n_train", "1",
            "--n_test", "1", "--supersample", "1", "--points", "100", "--device", "cpu"]
    assert cli_main(args) == 0
    assert (out / "images" / "00000_00.png").is_file() and (out / "meshes" / "mesh_0001.json").is_file()
    assert cli_main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_figure_puts_render_and_truth_side_by_side_with_closeups():
    from tools.figure import compose
    render = np.zeros((40, 30, 3), np.uint8)
    gt = np.full((40, 30, 3), 200, np.uint8)
    regions = np.zeros((40, 30), np.uint8)
    regions[28:32, 10:20] = 2
    regions[12:15, 5:25] = 3
    pic = compose(render, gt, regions, scale=2)
    assert pic.shape[1] == 2 * (30 + 4 + 30)
    assert pic.shape[0] > 2 * 40 + 2 * 6                 # the top row and two close-ups
    assert (pic[:80, :60] == 0).all() and (pic[:80, 68:128] == 200).all()
    assert compose(render, gt, None).shape[0] == 3 * 40 + 6


def test_figure_command_reads_renders_and_region_maps(tmp_path, capsys):
    from tools.figure import main as figure_main
    data, model = tmp_path / "data", tmp_path / "model"
    (data / "regions").mkdir(parents=True)
    run = model / "test" / "ours_5"
    for sub in ("renders", "gt"):
        (run / sub).mkdir(parents=True)
    (model / "cfg_args.json").write_text(json.dumps({"source_path": str(data)}))
    for stem, mouth_rows in (("a", 2), ("b", 6)):
        cv2.imwrite(str(run / "renders" / f"{stem}.png"), np.zeros((40, 30, 3), np.uint8))
        cv2.imwrite(str(run / "gt" / f"{stem}.png"), np.full((40, 30, 3), 200, np.uint8))
        labels = np.ones((80, 60), np.uint8)              # full size: resized to the render
        labels[50:50 + 2 * mouth_rows, 20:40] = 2
        labels[20:26, 10:50] = 3
        cv2.imwrite(str(data / "regions" / f"{stem}.png"), labels)
    assert figure_main(["-m", str(model)]) == 0
    assert "test view b" in capsys.readouterr().out      # the largest mouth
    assert cv2.imread(str(model / "figure.png")).shape[0] > 3 * 40
    (data / "regions" / "b.png").write_bytes(b"broken")
    assert figure_main(["-m", str(model), "--image", "b"]) == 2
    assert "b.png" in capsys.readouterr().err
