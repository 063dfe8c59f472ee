"""Tests of the selection strategy on synthetic heads (a UV sphere with a hinged jaw)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selection import compute_selection, dilate_masks, weld_corners
from selection.__main__ import main
from selection.synthetic import (forehead_vertices, jaw_vertices, open_jaw, random_rigid, soup,
                                 uv_sphere)

TAU = 0.002


def naive_dilate(faces: np.ndarray, selected: set, rings: int) -> set:
    """Reference dilation on the indexed mesh, written the slow obvious way."""
    current = set(selected)
    for _ in range(rings):
        verts = {int(v) for f in current for v in faces[f]}
        current |= {f for f in range(len(faces)) if any(int(v) in verts for v in faces[f])}
    return current


def jaw_open_sequence(T: int = 6, angle_deg: float = 15.0, seed: int = 3, noise: float = 0.0):
    """Frame 0 neutral, frames 1.. jaw opened by ~angle_deg; every frame a random head pose.

    ``noise``: standard deviation (metres) of per-vertex jitter, like tracking noise.
    """
    rng = np.random.default_rng(seed)
    verts, faces = uv_sphere()
    jaw = jaw_vertices(verts)
    meshes = []
    for t in range(T):
        angle = 0.0 if t == 0 else np.radians(angle_deg + rng.uniform(-2, 2))
        R, sh = random_rigid(rng)
        v = open_jaw(verts, jaw, angle) + rng.normal(scale=noise, size=verts.shape)
        meshes.append(soup(v @ R.T + sh, faces))
    return np.stack(meshes).astype(np.float32), verts, faces, jaw


# (a) robust alignment: an opening jaw does not tilt the head --------------------------------

def test_jaw_opening_selects_jaw_and_ring_only():
    meshes, verts, faces, jaw = jaw_open_sequence()
    jaw_faces = set(np.flatnonzero(jaw[faces].any(axis=1)).tolist())
    expected = naive_dilate(faces, jaw_faces, 1)
    forehead = forehead_vertices(verts)[faces].all(axis=1)
    assert 0.1 < len(jaw_faces) / len(faces) < 0.3 and forehead.sum() > 300

    res = compute_selection(meshes, tau=TAU, dilate=1, reference=0)
    assert res.reference == 0
    assert len(res.faces[0]) == 0                      # the reference selects nothing
    for t in range(1, len(meshes)):
        assert set(res.faces[t].tolist()) == expected  # jaw + one ring, nothing else
        assert res.displacement[t][forehead].max() < 5e-4
    # a face far from the jaw is never selected
    far = np.flatnonzero(forehead)
    assert not np.isin(far, np.concatenate(res.faces)).any()


def test_plain_kabsch_would_fail_the_jaw_test():
    """keep=1 is the plain least-squares fit: the jaw tilts the head, the test discriminates."""
    meshes, verts, faces, jaw = jaw_open_sequence()
    jaw_faces = set(np.flatnonzero(jaw[faces].any(axis=1)).tolist())
    expected = naive_dilate(faces, jaw_faces, 1)
    forehead = forehead_vertices(verts)[faces].all(axis=1)
    plain = compute_selection(meshes, tau=TAU, dilate=1, reference=0, keep=1.0)
    assert max(plain.displacement[t][forehead].max() for t in range(1, len(meshes))) > 2e-3
    assert any(set(plain.faces[t].tolist()) != expected for t in range(1, len(meshes)))


def test_jaw_opening_with_tracking_noise():
    """0.1 mm jitter on every vertex: the fit and the selection are unaffected."""
    meshes, verts, faces, jaw = jaw_open_sequence(noise=1e-4)
    expected = naive_dilate(faces, set(np.flatnonzero(jaw[faces].any(axis=1)).tolist()), 1)
    forehead = forehead_vertices(verts)[faces].all(axis=1)
    res = compute_selection(meshes, tau=TAU, dilate=1, reference=0)
    for t in range(1, len(meshes)):
        assert set(res.faces[t].tolist()) == expected
        assert res.displacement[t][forehead].mean() < 5e-4


def test_single_frame():
    meshes, *_ = jaw_open_sequence(T=1)
    res = compute_selection(meshes)
    assert res.reference == 0 and len(res.faces) == 1 and len(res.faces[0]) == 0
    assert res.fractions.shape == (1,)


def test_alignment_recovers_the_head_pose():
    meshes, verts, faces, jaw = jaw_open_sequence(T=3)
    res = compute_selection(meshes, reference=0)
    for t in range(3):
        aligned = meshes[t].astype(np.float64) @ res.rotations[t].T + res.translations[t]
        keep = ~jaw[faces].any(axis=1)
        ref = meshes[0].astype(np.float64)
        assert np.abs(aligned[keep] - ref[keep]).max() < 1e-5
        assert np.allclose(res.rotations[t] @ res.rotations[t].T, np.eye(3), atol=1e-9)
        assert np.linalg.det(res.rotations[t]) > 0


# (b) dilation by vertex-sharing rings on the soup ---------------------------------------------

def test_weld_finds_the_shared_vertices():
    verts, faces = uv_sphere(8, 12)
    meshes = soup(verts, faces)[None]
    fv, first = weld_corners(meshes)
    assert len(first) == len(verts)
    # same partition of corners as the indexed mesh
    pairs = {(int(a), int(b)) for a, b in zip(fv.ravel(), faces.ravel())}
    assert len(pairs) == len(verts)


def test_weld_does_not_merge_vertices_that_touch_in_one_frame():
    verts, faces = uv_sphere(8, 12)
    moved = verts.copy()
    moved[5] = verts[6]               # vertices 5 and 6 coincide in frame 0 only
    seq = np.stack([soup(moved, faces), soup(verts, faces), soup(verts * 1.1, faces)])
    _, first = weld_corners(seq)
    assert len(first) == len(verts)


@pytest.mark.parametrize("rings", [0, 1, 2, 3])
def test_dilation_grows_by_exact_rings(rings):
    verts, faces = uv_sphere(10, 16)
    fv, _ = weld_corners(soup(verts, faces)[None])
    seed = {17, 90}
    mask = np.zeros((1, len(faces)), dtype=bool)
    mask[0, sorted(seed)] = True
    got = set(np.flatnonzero(dilate_masks(mask, fv, rings)[0]).tolist())
    assert got == naive_dilate(faces, seed, rings)


def test_selection_dilate_0_1_2_end_to_end():
    """One vertex pushed out: dilate 0 = its fan, then exactly one more vertex ring each step."""
    verts, faces = uv_sphere(12, 20)
    bumped = verts.copy()
    v0 = 100
    bumped[v0] *= 1.1                                  # 1 cm outward on a 10 cm sphere
    R, sh = random_rigid(np.random.default_rng(0))
    meshes = np.stack([soup(verts, faces), soup(bumped @ R.T + sh, faces)])
    fan = set(np.flatnonzero((faces == v0).any(axis=1)).tolist())
    sizes = []
    for k in (0, 1, 2):
        got = set(compute_selection(meshes, tau=TAU, dilate=k, reference=0).faces[1].tolist())
        assert got == naive_dilate(faces, fan, k)
        sizes.append(len(got))
    assert sizes[0] < sizes[1] < sizes[2]


# (c) determinism ------------------------------------------------------------------------------

def test_deterministic_and_chunk_independent():
    meshes, *_ = jaw_open_sequence(T=5)
    a = compute_selection(meshes)
    b = compute_selection(meshes.copy())
    c = compute_selection(meshes, chunk=2)
    d = compute_selection(meshes.astype(np.float64))
    for other in (b, c, d):
        assert other.reference == a.reference
        assert np.array_equal(other.fractions, a.fractions)
        assert all(np.array_equal(x, y) for x, y in zip(a.faces, other.faces))
    assert np.array_equal(a.displacement, b.displacement)
    for f in a.faces:
        assert f.dtype == np.int32 and f.ndim == 1 and np.all(np.diff(f) > 0)


def test_bad_arguments_are_rejected():
    meshes, *_ = jaw_open_sequence(T=2)
    with pytest.raises(ValueError):
        compute_selection(meshes[0])
    with pytest.raises(ValueError):
        compute_selection(meshes, reference=2)
    with pytest.raises(ValueError):
        compute_selection(meshes, tau=-1.0)
    with pytest.raises(ValueError):
        compute_selection(meshes, dilate=-1)


# (d) the reference rule picks the neutral frame ----------------------------------------------

def test_reference_rule_picks_the_neutral_frame():
    rng = np.random.default_rng(7)
    verts, faces = uv_sphere(21, 40)
    jaw = jaw_vertices(verts)
    forehead = forehead_vertices(verts)
    back = verts[:, 2] < -0.05
    left = verts[:, 0] > 0.06

    def bump(region, amount):
        out = verts.copy()
        out[region] *= 1.0 + amount
        return out

    shapes = [bump(left, 0.08),                        # 0: cheek puffed (not neutral)
              open_jaw(verts, jaw, np.radians(15)),    # 1
              bump(forehead, 0.05),                    # 2: brows raised
              open_jaw(verts, jaw, np.radians(8)),     # 3
              verts,                                   # 4: neutral
              open_jaw(verts, jaw, np.radians(20)),    # 5
              bump(back, 0.04)]                        # 6
    meshes = []
    for v in shapes:
        R, sh = random_rigid(rng)
        meshes.append(soup(v @ R.T + sh, faces))
    meshes = np.stack(meshes).astype(np.float32)
    res = compute_selection(meshes)
    assert res.reference == 4
    assert int(np.argmin(res.reference_distance)) == 4
    assert len(res.faces[4]) == 0 and all(len(res.faces[t]) > 0 for t in range(7) if t != 4)
    # an explicit reference overrides the rule
    assert compute_selection(meshes, reference=2).reference == 2


# (e) the command ------------------------------------------------------------------------------

def write_dataset(root: Path, keyframes, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    verts, faces = uv_sphere(9, 14)
    jaw = jaw_vertices(verts)
    (root / "meshes").mkdir(parents=True)
    meshes = []
    for i, kf in enumerate(keyframes):
        R, sh = random_rigid(rng)
        v = open_jaw(verts, jaw, np.radians(12.0 * (i % 2))) @ R.T + sh
        tris = soup(v, faces)
        meshes.append(tris)
        data = {"triangles": [{"Vertices": tri.tolist()} for tri in tris]}
        (root / "meshes" / f"mesh_{kf:04d}.json").write_text(json.dumps(data))
    return np.stack(meshes).astype(np.float32)


def test_cli_writes_sorted_int32_files(tmp_path, capsys):
    keyframes = [7, 12, 105, 3000, 12345]
    meshes = write_dataset(tmp_path, keyframes)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "min" in out and "median" in out and "max" in out and "reference keyframe" in out
    expected = compute_selection(meshes)
    assert f"reference keyframe: {keyframes[expected.reference]}" in out
    names = sorted(p.name for p in (tmp_path / "training_faces").iterdir())
    assert names == sorted(["0007.npy", "0012.npy", "0105.npy", "3000.npy", "12345.npy"])
    for kf, want in zip(keyframes, expected.faces):
        got = np.load(tmp_path / "training_faces" / f"{kf:04d}.npy")
        assert got.dtype == np.int32 and got.ndim == 1
        assert np.array_equal(got, want)
    assert any(len(f) > 0 for f in expected.faces)
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {(p.stat().st_mode & 0o777) for p in (tmp_path / "training_faces").iterdir()}
    assert modes == {0o666 & ~umask}     # readable as any other file, not owner-only


def test_cli_reference_dry_run_and_errors(tmp_path, capsys):
    keyframes = [0, 1, 2, 3]
    write_dataset(tmp_path, keyframes)
    assert main([str(tmp_path), "--reference", "1", "--dilate", "0", "--tau", "0.001",
                 "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "reference keyframe: 1" in out and "dry run" in out
    assert not (tmp_path / "training_faces").exists()
    assert main([str(tmp_path), "--reference", "99"]) == 2
    assert "99" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2


def test_cli_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "selection", "--help"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    for flag in ("--tau", "--dilate", "--reference", "--dry_run", "--keep", "data_dir"):
        assert flag in out


def test_the_command_runs_from_any_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data, [0, 1, 2])
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "selection"), str(data)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (data / "training_faces").iterdir()) == \
        ["0000.npy", "0001.npy", "0002.npy"]
