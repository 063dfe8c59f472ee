"""Tests of the embedded synthetic head (scene/demo_head): geometry, animation, cameras, the
ground-truth renderer and the dataset files, checked against the STGA format's conventions."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from plyfile import PlyData

from scene.demo_head import (REGION_EYES, REGION_MOUTH, REGION_SKIN,
                             build_demo_scene, build_head_mesh, face_regions,
                             write_demo_dataset)
from scene.demo_head.mesh import PART_CAVITY, PART_EYEBALL, PART_SKIN
from scene.binding import face_frames
from scene.demo_head.raster import _rasterize, render_mesh

TINY = dict(width=48, height=60, n_train_frames=3, n_test_frames=1, n_cameras=3,
            texture_size=256, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "tiny", seed=3, **TINY)


@pytest.fixture(scope="module")
def tiny_scene():
    return build_demo_scene(seed=3, width=48, height=60, n_train_frames=3, n_test_frames=1,
                            n_cameras=3, texture_size=256)


@pytest.fixture(scope="module")
def full_scene():
    return build_demo_scene(seed=0, texture_size=256)


def _load_split(root: Path, name: str) -> list[dict]:
    return json.loads((root / f"transforms_{name}.json").read_text())["frames"]


def _read_rgba(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 3 and img.shape[2] == 4, path
    return img[..., [2, 1, 0, 3]]


def _read_mesh(root: Path, keyframe: int) -> np.ndarray:
    data = json.loads((root / "meshes" / f"mesh_{keyframe:04d}.json").read_text())
    return np.array([t["Vertices"] for t in data["triangles"]], dtype=np.float64)


def _opencv_from_written(frame: dict) -> tuple[np.ndarray, np.ndarray]:
    """(K, w2c) exactly as the spec says: negate columns 1 and 2 of the rotation, then invert."""
    c2w = np.array(frame["transform_matrix"], dtype=np.float64)
    c2w[:3, 1:3] *= -1.0
    return np.array(frame["K"], dtype=np.float64), np.linalg.inv(c2w)


def _project(K: np.ndarray, w2c: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def _kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cs, cd = src.mean(0), dst.mean(0)
    U, _, Vt = np.linalg.svd((src - cs).T @ (dst - cd))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ D @ U.T
    return R, cd - R @ cs


# ---------------------------------------------------------------- files and determinism

def test_generation_is_deterministic(tiny, tmp_path):
    again = write_demo_dataset(tmp_path / "again", seed=3, **TINY)
    a = sorted(p.relative_to(tiny) for p in tiny.rglob("*") if p.is_file())
    b = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert a == b and len(a) > 20
    for rel in a:
        assert (tiny / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folder left behind"


def test_existing_target_is_refused(tiny):
    with pytest.raises(FileExistsError):
        write_demo_dataset(tiny, seed=3, **TINY)


def test_splits_reference_existing_files(tiny):
    train, test, val = (_load_split(tiny, s) for s in ("train", "test", "val"))
    assert len(train) == 3 * 3 and len(test) == 1 * 3 and len(val) == 3
    keyframes = set()
    for f in train + test + val:
        img = _read_rgba(tiny / f["file_path"])
        assert img.shape[:2] == (f["h"], f["w"]) == (60, 48)
        stem = Path(f["file_path"]).stem
        assert stem == f"{f['keyframe']:05d}_{f['camera_index']:02d}"
        region = cv2.imread(str(tiny / "regions" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert region.shape == (60, 48) and region.dtype == np.uint8
        assert set(np.unique(region)) <= {0, 1, 2, 3}
        assert np.all(region[img[..., 3] == 0] == 0)
        keyframes.add(f["keyframe"])
    assert {f["keyframe"] for f in test}.isdisjoint({f["keyframe"] for f in train})
    assert {f["camera_index"] for f in val}.isdisjoint({f["camera_index"] for f in train})
    F = None
    for k in sorted(keyframes):
        tris = _read_mesh(tiny, k)
        F = F or tris.shape[0]
        assert tris.shape == (F, 3, 3) and np.isfinite(tris).all()
        sel = np.load(tiny / "training_faces" / f"{k:04d}.npy")
        assert sel.dtype == np.int32 and sel.ndim == 1
        assert np.all(np.diff(sel) > 0) and (sel.size == 0 or (sel.min() >= 0 and sel.max() < F))
    assert 2000 <= F <= 5000


def test_alpha_is_zero_in_corners_and_one_on_the_face(tiny):
    for f in _load_split(tiny, "train") + _load_split(tiny, "val"):
        img = _read_rgba(tiny / f["file_path"])
        a = img[..., 3]
        assert a[0, 0] == a[0, -1] == a[-1, 0] == a[-1, -1] == 0
        K, w2c = _opencv_from_written(f)
        # the head's centre (mean of the mesh's face centres) projects inside the silhouette
        centre = _read_mesh(tiny, f["keyframe"]).mean((0, 1))
        uv, _ = _project(K, w2c, centre[None])
        u, v = uv[0]
        assert a[int(v), int(u)] == 255


def test_silhouette_matches_projected_mesh(tiny):
    for f in _load_split(tiny, "train") + _load_split(tiny, "val"):
        img = _read_rgba(tiny / f["file_path"])
        K, w2c = _opencv_from_written(f)
        tris = _read_mesh(tiny, f["keyframe"])
        uv, z = _project(K, w2c, tris.reshape(-1, 3))
        assert (z > 0).all()
        ys, xs = np.nonzero(img[..., 3] > 0)
        # silhouette extent (pixel indices) vs projected extent (pixel u covers [u, u+1))
        assert abs(xs.min() - uv[:, 0].min()) <= 1.0
        assert abs(xs.max() + 1 - uv[:, 0].max()) <= 1.0
        assert abs(ys.min() - uv[:, 1].min()) <= 1.0
        # the neck leaves the frame at the bottom
        assert ys.max() == f["h"] - 1 and uv[:, 1].max() > f["h"]


def _ray_hits(origin: np.ndarray, dirs: np.ndarray, tris: np.ndarray):
    """Nearest hit (face, barycentrics) of rays against all triangles (Moller-Trumbore)."""
    v0, e1, e2 = tris[:, 0], tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    p = np.cross(dirs[:, None, :], e2[None])
    det = np.einsum("rfc,fc->rf", p, e1)
    ok = np.abs(det) > 1e-18
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - v0
    b1 = np.einsum("fc,rfc->rf", s, p) * inv
    q = np.cross(s, e1)
    b2 = np.einsum("rc,fc->rf", dirs, q) * inv
    t = np.einsum("fc,fc->f", e2, q)[None] * inv
    hit = ok & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (t > 0)
    t = np.where(hit, t, np.inf)
    face = t.argmin(1)
    r = np.arange(len(dirs))
    return face, np.stack([1 - b1[r, face] - b2[r, face], b1[r, face], b2[r, face]], -1), \
        np.isfinite(t[r, face])


def test_written_camera_and_renderer_agree_on_colours(tiny, tiny_scene):
    """Cast the 3x3 sub-sample rays of a few face pixels with the WRITTEN camera against the
    WRITTEN mesh, shade the hits, and compare with the written PNG."""
    checked = 0
    for f in _load_split(tiny, "train"):
        if f["keyframe"] != 0:
            continue
        img = _read_rgba(tiny / f["file_path"]).astype(np.float64) / 255.0
        K, w2c = _opencv_from_written(f)
        tris = _read_mesh(tiny, f["keyframe"])
        c2w = np.linalg.inv(w2c)
        origin = c2w[:3, 3]
        Kinv = np.linalg.inv(K)
        ys, xs = np.nonzero(img[..., 3] == 1.0)
        pick = np.random.default_rng(0).choice(len(xs), 12, replace=False)
        for v, u in zip(ys[pick], xs[pick]):
            sub = (np.arange(3) + 0.5) / 3.0
            px = np.stack(np.meshgrid(u + sub, v + sub, indexing="xy"), -1).reshape(-1, 2)
            d = np.concatenate([px, np.ones((9, 1))], 1) @ Kinv.T @ c2w[:3, :3].T
            face, bary, hit = _ray_hits(origin, d / np.linalg.norm(d, axis=1, keepdims=True), tris)
            assert hit.all()
            tri = tris[face]
            n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            if np.any(np.einsum("fc,fc->f", n, origin - tri[:, 0]) < 0):
                continue  # a back face (inside the mouth): drawn in a flat interior colour
            expect = tiny_scene.surface_colour(face, bary).mean(0)
            assert np.abs(img[v, u, :3] - expect).max() <= 2.5 / 255.0, (f["file_path"], u, v)
            checked += 1
    assert checked >= 20


def test_points3d_lie_on_their_faces(tiny, tiny_scene):
    ply = PlyData.read(str(tiny / "points3d.ply"))["vertex"]
    names = {p.name for p in ply.properties}
    assert {"loc_x", "loc_y", "loc_z", "index", "red", "green", "blue"} <= names
    local = np.stack([ply["loc_x"], ply["loc_y"], ply["loc_z"]], -1).astype(np.float64)
    idx = np.asarray(ply["index"], np.int64)
    first = min(f["keyframe"] for f in _load_split(tiny, "train"))
    tris = _read_mesh(tiny, first)
    assert np.array_equal(np.bincount(idx, minlength=len(tris)), np.full(len(tris), 2))
    assert np.abs(local[:, 2]).max() < 1e-7
    frames = face_frames(torch.from_numpy(tris))
    R, o = frames.rotation.numpy(), frames.origin.numpy()
    world = np.einsum("nij,nj->ni", R[idx], local) + o[idx]
    # barycentric coordinates of the world point in its triangle: all inside
    t = tris[idx]
    e1, e2, d = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], world - t[:, 0]
    g = np.stack([np.einsum("nc,nc->n", e1, e1), np.einsum("nc,nc->n", e1, e2),
                  np.einsum("nc,nc->n", e2, e2)], -1)
    r1, r2 = np.einsum("nc,nc->n", d, e1), np.einsum("nc,nc->n", d, e2)
    den = g[:, 0] * g[:, 2] - g[:, 1] ** 2
    b1 = (g[:, 2] * r1 - g[:, 1] * r2) / den
    b2 = (g[:, 0] * r2 - g[:, 1] * r1) / den
    bary = np.stack([1 - b1 - b2, b1, b2], -1)
    assert bary.min() > -1e-4
    rgb = np.stack([ply["red"], ply["green"], ply["blue"]], -1).astype(np.float64)
    expect = np.round(tiny_scene.surface_colour(idx, np.clip(bary, 0, 1)) * 255.0)
    assert np.abs(rgb - expect).max() <= 2.0


# ---------------------------------------------------------------- geometry and animation

def test_mesh_size_orientation_and_regions():
    mesh = build_head_mesh()
    F = mesh.num_faces
    assert 2000 <= F <= 5000
    v = mesh.rest[mesh.faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    assert np.linalg.norm(n, axis=1).min() > 0
    skin = mesh.face_part == PART_SKIN
    assert np.einsum("fc,fc->f", v[skin, 0], n[skin]).sum() / 6 > 0.003   # litres of head, outward
    head = mesh.rest[np.unique(mesh.faces[skin])]
    head = head[head[:, 1] > -0.09]
    ext = head.max(0) - head.min(0)
    assert 0.15 < ext[0] < 0.19 and 0.17 < ext[2] < 0.23
    for part in (PART_EYEBALL, PART_CAVITY):
        sel = mesh.face_part == part
        for c in (mesh.eye_centres if part == PART_EYEBALL else [None]):
            s = sel if c is None else sel & (np.linalg.norm(v.mean(1) - c, axis=1) < 0.02)
            centre = v[s].reshape(-1, 3).mean(0) if c is None else c
            assert np.all(np.einsum("fc,fc->f", n[s], v[s].mean(1) - centre) > 0)
    regions = face_regions()
    assert regions.shape == (F,) and set(np.unique(regions)) == {REGION_SKIN, REGION_MOUTH,
                                                                 REGION_EYES}
    assert np.all(regions[mesh.face_part == PART_EYEBALL] == REGION_EYES)


def test_jaw_opens_without_moving_the_forehead(full_scene):
    ex = full_scene.expressions
    k_open = int(np.argmax([e.jaw for e in ex]))
    assert ex[k_open].jaw > 0.95 and k_open in full_scene.train_keyframes
    ref = full_scene.vertices[0]
    cur = full_scene.vertices[k_open]
    local0 = full_scene.local_vertices(0)
    skull = (local0[:, 1] > 0.05) & (full_scene.mesh.vertex_part == PART_SKIN)
    R, t = _kabsch(cur[skull], ref[skull])            # remove the rigid head motion
    aligned = cur @ R.T + t
    disp = np.linalg.norm(aligned - ref, axis=1)
    faces = full_scene.faces
    fdisp = disp[faces].mean(1)
    fc = local0[faces].mean(1)
    forehead = (fc[:, 1] > 0.03) & (fc[:, 2] > 0.05) & (full_scene.mesh.face_part == PART_SKIN)
    lower_lip = ((full_scene.face_regions == REGION_MOUTH) & (fc[:, 1] < -0.063)
                 & (full_scene.mesh.face_part == PART_SKIN))
    chin = (fc[:, 1] < -0.085) & (fc[:, 1] > -0.1) & (fc[:, 2] > 0.05)
    assert forehead.sum() > 50 and lower_lip.sum() > 5
    assert fdisp[forehead].max() < 1e-4
    assert fdisp[lower_lip].min() > 0.012
    assert np.median(fdisp[chin]) > 0.012
    # the mouth opens: lower lip goes down relative to the upper lip
    assert aligned[faces[lower_lip]][..., 1].mean() < ref[faces[lower_lip]][..., 1].mean() - 0.01


def test_blinks_hide_the_eyeballs(full_scene):
    ex = full_scene.expressions
    blink = np.array([e.blink for e in ex])
    k_blink = int(np.argmax(blink))
    k_open = int(np.argmin(blink + np.array([e.jaw for e in ex])))
    assert blink[k_blink] > 0.95 and blink[k_open] < 0.05
    assert (blink > 0.9).sum() >= 2 and k_blink in full_scene.train_keyframes
    cam = full_scene.val_camera
    eye_pixels = []
    for k in (k_open, k_blink):
        out = render_mesh(full_scene.vertices[k], full_scene.faces, full_scene.mesh.uv,
                          full_scene.shade, full_scene.face_regions, full_scene.texture, cam.K,
                          cam.w2c, 128, 160, supersample=1)
        eye_pixels.append(int(np.isin(out.face, np.nonzero(
            full_scene.mesh.face_part == PART_EYEBALL)[0]).sum()))
    assert eye_pixels[0] >= 10 and eye_pixels[1] == 0


def test_smile_raises_the_mouth_corners(full_scene):
    ex = full_scene.expressions
    k = int(np.argmax([e.smile for e in ex]))
    assert ex[k].smile > 0.95 and ex[k].jaw < 0.1
    mesh = full_scene.mesh
    corners = np.abs(mesh.rest[:, 1] - (-0.060)) < 0.002
    corners &= np.abs(np.abs(mesh.rest[:, 0]) - mesh.mouth_half_width) < 0.002
    assert corners.sum() >= 2
    d = full_scene.local_vertices(k)[corners] - full_scene.local_vertices(0)[corners]
    assert np.all(d[:, 1] > 0.004) and np.all(np.abs(full_scene.local_vertices(k)[corners, 0])
                                              > np.abs(full_scene.local_vertices(0)[corners, 0]))


def test_keyframe_split_and_expression_ranges(full_scene):
    train, test = full_scene.train_keyframes, full_scene.test_keyframes
    assert len(train) >= 20 and len(test) >= 4
    assert test.min() > train.min() and test.max() < train.max()
    for name in ("jaw", "blink", "smile"):
        vals = np.array([getattr(e, name) for e in full_scene.expressions])
        assert vals[test].max() <= vals[train].max() + 1e-12
    meshes = full_scene.meshes
    assert meshes.shape[1:] == (full_scene.mesh.num_faces, 3, 3)
    # rigid head motion: a few degrees, a few millimetres
    for e in full_scene.expressions:
        ang = np.degrees(np.arccos(np.clip((np.trace(e.head_R) - 1) / 2, -1, 1)))
        assert ang < 8.0 and np.linalg.norm(e.head_t) < 0.01


# ---------------------------------------------------------------- cameras

def test_camera_rig(full_scene):
    cams = full_scene.cameras
    train = full_scene.train_cameras
    val = full_scene.val_camera
    assert len(train) >= 8 and val.held_out
    yaws = []
    for c in cams:
        R = c.c2w_gl[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(R), 1.0)
        pos = c.c2w_gl[:3, 3]
        assert 0.6 <= np.linalg.norm(pos) <= 1.0
        yaws.append(np.degrees(np.arctan2(pos[0], pos[2])))
        # the head centre is in front of the camera and inside the image
        uv, z = _project(c.K, c.w2c, np.zeros((1, 3)))
        u, v = uv[0]
        assert z[0] > 0 and 0 < u < c.width and 0 < v < c.height
    yaws = np.array(yaws)
    assert yaws[:-1].min() < -55 and yaws[:-1].max() > 55
    assert yaws[:-1].min() < yaws[-1] < yaws[:-1].max()
    assert np.abs(yaws[:-1] - yaws[-1]).min() > 3.0
    off = [abs(c.K[0, 2] - c.width / 2) + abs(c.K[1, 2] - c.height / 2) > 1.0 for c in train]
    assert any(off) and not all(off)


# ---------------------------------------------------------------- the renderer itself

def test_renderer_pixel_convention_on_an_axis_aligned_square():
    """A square covering pixels [2, 6) x [3, 7) exactly: full alpha inside, zero outside."""
    K = np.array([[10.0, 0.0, 5.0], [0.0, 10.0, 5.0], [0.0, 0.0, 1.0]])
    z = 1.0
    corners_px = np.array([[2.0, 3.0], [6.0, 3.0], [6.0, 7.0], [2.0, 7.0]])
    verts = np.concatenate([(corners_px - K[:2, 2]) / 10.0 * z, np.full((4, 1), z)], 1)
    faces = np.array([[0, 2, 1], [0, 3, 2]])
    uv = np.full((2, 3, 2), 0.5)
    tex = np.full((4, 4, 3), 0.25, np.float32)
    for ss in (1, 3):
        out = render_mesh(verts, faces, uv, np.ones(4, np.float32), np.array([1, 1], np.uint8),
                          tex, K, np.eye(4), 10, 10, supersample=ss)
        expect = np.zeros((10, 10))
        expect[3:7, 2:6] = 1.0
        assert np.array_equal(out.rgba[..., 3], expect)
        assert np.allclose(out.rgba[3:7, 2:6, :3], 0.25)


def test_rasterizer_matches_brute_force(tiny_scene):
    cam = tiny_scene.train_cameras[1]
    W, H = 40, 50
    k = 1
    c = tiny_scene.vertices[k] @ cam.w2c[:3, :3].T + cam.w2c[:3, 3]
    pr = c @ cam.K.T
    xy = pr[:, :2] / c[:, 2:] * (W / cam.width)
    face, _ = _rasterize(xy, c[:, 2], tiny_scene.faces, W, H, 50_000)
    tri, tz = xy[tiny_scene.faces], c[tiny_scene.faces][..., 2]
    jj, ii = np.mgrid[0:H, 0:W]
    p = np.stack([ii.ravel() + 0.5, jj.ravel() + 0.5], -1)
    a, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    d = p[:, None] - a[None]
    l1 = (d[..., 0] * e2[:, 1] - d[..., 1] * e2[:, 0]) / det
    l2 = (e1[:, 0] * d[..., 1] - e1[:, 1] * d[..., 0]) / det
    l0 = 1 - l1 - l2
    inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
    depth = np.where(inside, 1.0 / (l0 / tz[:, 0] + l1 / tz[:, 1] + l2 / tz[:, 2]), np.inf)
    expect = np.where(np.isinf(depth.min(1)), -1, depth.argmin(1))
    assert (face >= 0).sum() > 300
    assert np.array_equal(face, expect)


# ---------------------------------------------------------------- cache

def test_points_per_face_sets_the_initial_gaussian_count(tmp_path):
    out = write_demo_dataset(tmp_path / "dense", seed=3, points_per_face=5, **TINY)
    index = np.asarray(PlyData.read(str(out / "points3d.ply"))["vertex"]["index"], np.int64)
    faces = len(_read_mesh(out, 0))
    assert np.array_equal(np.bincount(index, minlength=faces), np.full(faces, 5))
    with pytest.raises(ValueError, match="points_per_face"):
        write_demo_dataset(tmp_path / "bad", seed=3, points_per_face=0, **TINY)
