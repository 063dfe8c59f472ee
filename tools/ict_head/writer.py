"""Write the realistic head as a complete STGA dataset, in named sizes, and cache it for ``-s``.

Variants (``VARIANTS``): ``demo``, the CPU quick start of ``python train.py -s demo``; ``large``,
NeRSemble's image size with all 16 cameras, for GPU benchmarks and the selective-training study.

Layout written (the STGA data format): ``transforms_{train,test,val}.json``, ``images/`` (RGBA
PNG, alpha = coverage: composite onto white with ``-w`` as for NeRSemble), ``regions/`` (uint8
labels 0 background, 1 skin/other, 2 mouth with lips, teeth and tongue, 3 eyes with lids,
one per image, same stem), ``meshes/mesh_XXXX.json`` (the tracked mesh), ``training_faces/``
(``python -m selection``'s strategy), ``points3d.ply`` and ``head_info.json`` (how it was made,
the expression weights of every keyframe). Everything is a pure function of the arguments on a
given device: two runs give the same bytes. The dataset is assembled in a temporary folder
beside the target and renamed into place at the end, so a reader never sees half a dataset.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from tqdm import tqdm

from flame.convert import mesh_json
from scene.demo_head.cameras import image_name, write_transforms
from scene.demo_head.points import write_points_ply
from scene.points import points_on_faces
from selection import compute_selection
from tools.ict_head.scene import HeadSequence, build_sequence
from utils.atomic import atomic_folder

FORMAT_VERSION = 2
CACHE_ENV = "STGA_CACHE"


@dataclass(frozen=True)
class Variant:
    """The size of a generated data set."""

    width: int
    height: int
    n_cameras: int      # on the arc, the held-out val camera included
    n_train: int        # training keyframes
    n_test: int         # held-out keyframes (the performance's continuation)
    stride: int         # performance frames (25 fps) between training keyframes
    test_stride: int    # performance frames between test keyframes (after the training part)
    supersample: int    # samples per pixel side of the ground-truth renderer
    points: int         # initial Gaussians in points3d.ply (spread by face area)


VARIANTS = {
    "demo": Variant(width=110, height=160, n_cameras=8, n_train=20, n_test=5, stride=6,
                    test_stride=18, supersample=2, points=12_000),
    "large": Variant(width=550, height=802, n_cameras=16, n_train=64, n_test=12, stride=3,
                     test_stride=9, supersample=2, points=100_000),
}


def _views(seq: HeadSequence) -> list[tuple[int, list]]:
    """(keyframe, cameras) to render: every camera on training keyframes (the val camera
    included), the training cameras on test keyframes."""
    return [(int(k), seq.cameras) for k in seq.train_keyframes] \
        + [(int(k), seq.train_cameras) for k in seq.test_keyframes]


def _write_png(path: Path, image: np.ndarray) -> None:
    if image.ndim == 3:   # RGBA -> OpenCV's BGRA, here in the writer threads
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def _render_all(seq: HeadSequence, root: Path, supersample: int, progress: bool) -> None:
    """Render keyframe by keyframe (all its views together); PNG encoding runs in threads."""
    (root / "images").mkdir()
    (root / "regions").mkdir()
    views = _views(seq)
    with ThreadPoolExecutor(max_workers=max(1, min(8, (os.cpu_count() or 2)))) as pool, \
            tqdm(total=sum(len(c) for _, c in views), desc="head: rendering", unit="img",
                 disable=not progress) as bar:
        pending = []
        for k, cams in views:
            for cam, out in zip(cams, seq.render_views(k, cams, supersample)):
                stem = image_name(k, cam.index)
                pending.append(pool.submit(_write_png, root / "images" / f"{stem}.png",
                                           out.rgba))
                pending.append(pool.submit(_write_png, root / "regions" / f"{stem}.png",
                                           out.region))
            bar.update(len(cams))
        for p in pending:
            p.result()


def _write_mesh_file(path: Path, triangles: np.ndarray) -> None:
    path.write_text(mesh_json(triangles))


@contextlib.contextmanager
def _meshes_written(seq: HeadSequence, folder: Path) -> Iterator[None]:
    """Write one JSON file per keyframe. Formatting is CPU-bound: with enough cores and
    keyframes, worker processes write them while the body of the ``with`` runs (the rendering),
    and the ``with`` ends when they are done; otherwise they are written first."""
    folder.mkdir()
    meshes = seq.meshes
    paths = [folder / f"mesh_{k:04d}.json" for k in range(seq.n_keyframes)]
    workers = min(6, (os.cpu_count() or 1) // 2)
    if len(paths) < 16 or workers < 2:
        for path, tri in zip(paths, meshes):
            _write_mesh_file(path, tri)
        yield
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = [pool.submit(_write_mesh_file, p, t) for p, t in zip(paths, meshes)]
        yield
        for p in pending:
            p.result()


def spread_points(triangles: np.ndarray, total: int) -> np.ndarray:
    """Face ids of ``total`` points spread over a (F, 3, 3) mesh in proportion to face area
    (largest remainders first; deterministic), sorted: a uniform density over the surface."""
    area = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0],
                                         triangles[:, 2] - triangles[:, 0]), axis=1)
    share = area / area.sum() * total
    count = np.floor(share).astype(np.int64)
    left = total - int(count.sum())
    count[np.argsort(-(share - count), kind="stable")[:left]] += 1
    return np.repeat(np.arange(len(triangles)), count)


def _write_points(seq: HeadSequence, root: Path, total: int) -> None:
    first = int(seq.train_keyframes[0])
    tri = seq.meshes[first]
    rng = np.random.default_rng([seq.seed, 1])
    faces = spread_points(tri, total)
    counts = np.bincount(faces, minlength=len(tri))
    face_all, bary_all, local_all = [], [], []
    for n in range(1, int(counts.max()) + 1):   # pass n: one more point on faces with >= n
        sel = np.nonzero(counts >= n)[0]
        f, b, _, l = points_on_faces(tri[sel], 1, rng)
        face_all.append(sel[f])
        bary_all.append(b)
        local_all.append(l)
    face = np.concatenate(face_all)
    bary = np.concatenate(bary_all)
    local = np.concatenate(local_all)
    order = np.argsort(face, kind="stable")
    face, bary, local = face[order], bary[order], local[order]
    rgb = _point_colours(seq, face, bary)
    write_points_ply(root / "points3d.ply", local.astype(np.float32), face.astype(np.int32), rgb)


def _point_colours(seq: HeadSequence, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Albedo of the points (tracked face ids), lit as seen from the front."""
    a = seq.asset
    full = seq.tracked_faces[face]
    dev = torch.device(seq.device)
    corners = torch.from_numpy(a.faces[full]).to(dev)
    b = torch.from_numpy(bary).to(dev)
    q = torch.einsum("nk,nkc->nc", b, torch.from_numpy(a.vertices).to(dev)[corners])
    mat = torch.from_numpy(a.material[full]).to(dev)
    part = torch.from_numpy(a.face_part[full]).to(dev)
    col = seq.painter.albedo(mat, part, q) * 0.9
    return np.round(col.cpu().numpy() * 255.0).astype(np.uint8)


def _write_selection(seq: HeadSequence, root: Path, progress: bool) -> dict:
    result = compute_selection(seq.meshes)
    folder = root / "training_faces"
    folder.mkdir()
    for k in range(seq.n_keyframes):
        np.save(folder / f"{k:04d}.npy", np.asarray(result.faces[k], np.int32))
    f = np.asarray(result.fractions)
    if progress:
        print(f"head: selection (reference keyframe {result.reference}) trains "
              f"{f.min():.1%} / {np.median(f):.1%} / {f.max():.1%} of the faces "
              f"(min / median / max over keyframes)")
    return {"reference": int(result.reference), "fraction_min": round(float(f.min()), 6),
            "fraction_median": round(float(np.median(f)), 6),
            "fraction_max": round(float(f.max()), 6)}


def _write_info(seq: HeadSequence, root: Path, config: dict, selection: dict) -> None:
    names = seq.performance.names
    frames = []
    for k in range(seq.n_keyframes):
        w = seq.weights(k)
        frames.append({"keyframe": k, "frame_25fps": seq.frame_of(k),
                       "weights": {n: round(float(v), 4) for n, v in zip(names, w) if v > 1e-3}})
    info = {
        "format_version": FORMAT_VERSION, "config": config,
        "credit": "Head geometry: ICT Face Model Light, ICT-FaceKit, USC Institute for "
                  "Creative Technologies (MIT licence)",
        "faces": int(len(seq.tracked_faces)),
        "train_keyframes": seq.train_keyframes.tolist(),
        "test_keyframes": seq.test_keyframes.tolist(),
        "val_camera": int(seq.val_camera.index), "selection": selection,
        "regions": {"0": "background", "1": "skin/other", "2": "mouth", "3": "eyes"},
        "keyframes": frames,
    }
    (root / "head_info.json").write_text(json.dumps(info, indent=1))


class _StageClock:
    """Wall time of consecutive stages, for the generator's one-line report."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.stages: list[tuple[str, float]] = []

    def stop(self, name: str) -> None:
        now = time.perf_counter()
        self.stages.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{n} {t:.1f} s" for n, t in self.stages)


def write_head_dataset(out_dir: Path, variant: str | Variant = "demo", seed: int = 0,
                       teeth: bool = False, device: str = "cpu", progress: bool = True,
                       overwrite: bool = False, **overrides) -> Path:
    """Generate a head dataset into ``out_dir`` (atomically) and return its path.

    ``variant`` names a size in ``VARIANTS`` (or is a ``Variant``); ``overrides`` replace its
    fields (``width=64, n_train=3``...). ``teeth`` writes the teeth into the tracked mesh.
    Raises FileExistsError if ``out_dir`` exists, unless ``overwrite``.
    """
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    v = replace(v, **overrides)
    if v.points < 1:
        raise ValueError(f"points must be at least 1, got {v.points}")
    config = {"variant": variant if isinstance(variant, str) else "custom", **asdict(v),
              "seed": seed, "teeth_in_mesh": teeth}
    with atomic_folder(Path(out_dir), overwrite) as tmp:   # refuses an existing folder first
        seq = build_sequence(seed=seed, width=v.width, height=v.height, n_train=v.n_train,
                             n_test=v.n_test, stride=v.stride, test_stride=v.test_stride,
                             n_cameras=v.n_cameras, teeth_in_mesh=teeth, device=device)
        clock = _StageClock()
        with _meshes_written(seq, tmp / "meshes"):
            _render_all(seq, tmp, v.supersample, progress)
        clock.stop("meshes and images")
        write_transforms(seq, tmp)
        _write_points(seq, tmp, v.points)
        clock.stop("points")
        selection = _write_selection(seq, tmp, progress)
        _write_info(seq, tmp, config, selection)
        clock.stop("selection")
        if progress:
            print(f"head: {clock}")
    return Path(out_dir)


def default_cache_dir() -> Path:
    """``$STGA_CACHE`` if set, else ``~/.cache/stga``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stga"


def head_dataset_path(variant: str = "demo", cache_dir: Path | None = None,
                      seed: int = 0) -> Path:
    """Where a cached variant lives (the name carries the format version, so a format change
    never reuses an old cache)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"head_{variant}_v{FORMAT_VERSION}_seed{seed}"


def ensure_head_dataset(variant: str = "demo", cache_dir: Path | None = None, seed: int = 0,
                        device: str | None = None) -> Path:
    """Path of a cached variant, generated on first use (on the GPU when there is one)."""
    path = head_dataset_path(variant, cache_dir, seed)
    if (path / "transforms_train.json").is_file():
        return path
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"head: generating the '{variant}' dataset into {path} (first use, on {device})")
    try:
        return write_head_dataset(path, variant, seed=seed, device=device)
    except (FileExistsError, OSError):
        # another process finished first (its rename won), or a stale incomplete folder is there
        if (path / "transforms_train.json").is_file():
            return path
        if path.exists():
            return write_head_dataset(path, variant, seed=seed, device=device, overwrite=True)
        raise
