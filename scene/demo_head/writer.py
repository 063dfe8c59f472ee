"""Write the procedural head (the unit tests' small data) as a complete STGA dataset.

Layout written (see the STGA data format): ``transforms_{train,test,val}.json``, ``images/`` (RGBA
PNG, alpha = coverage), ``regions/`` (uint8 labels 0 background, 1 skin/other, 2 mouth, 3 eyes, one
per image, same stem), ``meshes/mesh_XXXX.json``, ``training_faces/XXXX.npy`` (from the selection
module, on all keyframes), ``points3d.ply`` (two points per face, or ``points_per_face``, at the
first training keyframe) and ``demo_info.json`` (how it was made). Everything is a pure function
of the arguments: two runs give the same bytes. The dataset is assembled in a temporary folder
beside the target and renamed into place at the end, so a reader never sees half a dataset.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from scene.demo_head.cameras import image_name, write_transforms
from scene.demo_head.points import write_points_ply
from scene.points import points_on_faces
from scene.demo_head.scene import DemoScene, build_demo_scene
from utils.atomic import atomic_folder

FORMAT_VERSION = 1
POINTS_PER_FACE = 2


def _write_meshes(scene: DemoScene, folder: Path) -> None:
    folder.mkdir()
    meshes = scene.meshes
    for k in scene.keyframes:
        tris = [{"Vertices": t} for t in meshes[k].tolist()]
        (folder / f"mesh_{k:04d}.json").write_text(json.dumps({"triangles": tris},
                                                              separators=(",", ":")))


def _render_all(scene: DemoScene, root: Path, supersample: int, progress: bool) -> None:
    train_cams = scene.train_cameras
    jobs = [(int(k), c) for k in scene.train_keyframes for c in scene.cameras]
    jobs += [(int(k), c) for k in scene.test_keyframes for c in train_cams]
    jobs.sort(key=lambda j: (j[0], j[1].index))
    (root / "images").mkdir()
    (root / "regions").mkdir()
    for k, cam in tqdm(jobs, desc="demo head: rendering", unit="img", disable=not progress):
        out = scene.render(k, cam, supersample)
        rgba = np.round(out.rgba * 255.0).astype(np.uint8)
        stem = image_name(k, cam.index)
        if not cv2.imwrite(str(root / "images" / f"{stem}.png"), rgba[..., [2, 1, 0, 3]]):
            raise OSError(f"could not write {root / 'images' / (stem + '.png')}")
        cv2.imwrite(str(root / "regions" / f"{stem}.png"), out.region)


def _write_points(scene: DemoScene, root: Path, per_face: int) -> None:
    first = int(scene.train_keyframes[0])
    rng = np.random.default_rng([scene.seed, 1])
    face, bary, _, local = points_on_faces(scene.meshes[first], per_face, rng)
    rgb = np.round(scene.surface_colour(face, bary) * 255.0).astype(np.uint8)
    write_points_ply(root / "points3d.ply", local, face, rgb)


def _write_selection(scene: DemoScene, root: Path, progress: bool) -> None:
    from selection import compute_selection   # the project's selection strategy (spec section 4)

    result = compute_selection(scene.meshes)
    folder = root / "training_faces"
    folder.mkdir()
    for k in scene.keyframes:
        np.save(folder / f"{k:04d}.npy", np.asarray(result.faces[k], np.int32))
    if progress:
        f = np.asarray(result.fractions)
        print(f"demo head: selection (reference keyframe {result.reference}) trains "
              f"{f.min():.1%} / {np.median(f):.1%} / {f.max():.1%} of the faces "
              f"(min / median / max over keyframes)")


def _write_info(scene: DemoScene, root: Path, config: dict) -> None:
    info = {
        "format_version": FORMAT_VERSION, "config": config,
        "faces": int(scene.mesh.num_faces),
        "train_keyframes": scene.train_keyframes.tolist(),
        "test_keyframes": scene.test_keyframes.tolist(),
        "val_camera": int(scene.val_camera.index),
        "regions": {"0": "background", "1": "skin/other", "2": "mouth", "3": "eyes"},
        "expressions": [{"keyframe": k, "jaw": round(e.jaw, 6), "blink": round(e.blink, 6),
                         "smile": round(e.smile, 6)} for k, e in enumerate(scene.expressions)],
    }
    (root / "demo_info.json").write_text(json.dumps(info, indent=1))


def write_demo_dataset(out_dir: Path, seed: int = 0, width: int = 128, height: int = 160,
                       n_train_frames: int = 24, n_test_frames: int = 6, n_cameras: int = 8,
                       supersample: int = 3, texture_size: int = 1024, progress: bool = True,
                       overwrite: bool = False, points_per_face: int = POINTS_PER_FACE) -> Path:
    """Generate the demo dataset into ``out_dir`` (atomically) and return its path.

    ``points_per_face`` sets how many initial Gaussians ``points3d.ply`` holds per face (larger
    models for benchmarks); it is recorded in ``demo_info.json`` only when it differs from the
    default, so the default dataset keeps the same bytes as before the option existed.
    Raises FileExistsError if ``out_dir`` exists, unless ``overwrite``.
    """
    if points_per_face < 1:
        raise ValueError(f"points_per_face must be at least 1, got {points_per_face}")
    out_dir = Path(out_dir)
    config = {"seed": seed, "width": width, "height": height, "n_train_frames": n_train_frames,
              "n_test_frames": n_test_frames, "n_cameras": n_cameras,
              "supersample": supersample, "texture_size": texture_size}
    if points_per_face != POINTS_PER_FACE:
        config["points_per_face"] = points_per_face
    scene = build_demo_scene(seed=seed, width=width, height=height, n_train_frames=n_train_frames,
                             n_test_frames=n_test_frames, n_cameras=n_cameras,
                             texture_size=texture_size)
    with atomic_folder(out_dir, overwrite) as tmp:
        _write_meshes(scene, tmp / "meshes")
        _render_all(scene, tmp, supersample, progress)
        write_transforms(scene, tmp)
        _write_points(scene, tmp, points_per_face)
        _write_selection(scene, tmp, progress)
        _write_info(scene, tmp, config)
    return out_dir
