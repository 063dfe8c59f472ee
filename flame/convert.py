"""Convert a GaussianAvatars-format dataset (NeRSemble, VHAP tracking) into the STGA format.

``python -m flame.convert <ga_dataset> <out_dir> --flame_model generic_model.pkl`` reads
``transforms_{train,val,test}.json``, ``flame_param/TTTTT.npz``, ``images/`` and ``fg_masks/`` and
writes a complete STGA dataset:

- ``meshes/mesh_TTTT.json``: the FLAME mesh of every timestep (triangle soup in face order), from
  the tracked parameters; identity shape and static offset come from the first training timestep
  and are shared by all (GaussianAvatars' convention); offset rows beyond FLAME's own vertices
  (a tracker's teeth) are ignored;
- ``transforms_{train,val,test}.json``: ``keyframe = timestep_index``, the camera-to-world matrix
  as given (OpenGL axes in both formats), and ``K`` in the STGA pixel convention. The tracker
  measures ``cy`` from the bottom of the image, so the principal point becomes ``(cx, h - cy)``;
- ``images/``: RGB PNGs, composited onto the background colour with the foreground masks;
- ``points3d.ply``: ``--points_per_face`` grey Gaussians per face, on the first training mesh;
- ``training_faces/``: the selection (``selection.compute_selection``), the reference frame chosen
  among the training timesteps.

Re-running skips every output that exists and is newer than its inputs, with the same options
(recorded in ``.stga_convert.json``); interrupted runs leave no partial files (atomic writes).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from arguments import non_negative_float, non_negative_int, positive_int
from flame.model import FlameLayer
from flame.model_file import FlameModelError, load_flame_model
from flame.params import FlameParams, read_flame_params
from flame.teeth import LipRingError
from scene.dataset import frame_id, parse_matrix, read_image, read_transforms_json
from scene.errors import DatasetError
from scene.meshes import MESH_DIR, mesh_filename
from utils.atomic import atomic_path

SPLITS = ("train", "val", "test")
MANIFEST = ".stga_convert.json"
FACES_DIR = "training_faces"
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
DEFAULT_POINTS_PER_FACE = 2
BATCH = 64  # frames per FLAME forward call
_MESH_NAME = re.compile(r"^mesh_(\d+)\.json$")
_FACES_NAME = re.compile(r"^(\d+)\.npy$")


@dataclass
class SourceFrame:
    """One image of the GaussianAvatars dataset, validated."""

    split: str
    timestep: int
    camera_index: Optional[int]
    image: Path
    mask: Optional[Path]
    params: Path
    c2w: np.ndarray      # 4x4 OpenGL camera-to-world
    K: np.ndarray        # 3x3, STGA convention (y down, principal point from the top)
    size: Optional[Tuple[int, int]]  # (w, h) from the transforms, if given
    output: str = ""     # image path relative to the output folder


@dataclass
class ConvertReport:
    """What a conversion did (counts of files written and skipped)."""

    timesteps: int = 0
    frames: Dict[str, int] = field(default_factory=dict)
    meshes_written: int = 0
    meshes_skipped: int = 0
    images_written: int = 0
    images_skipped: int = 0
    points_written: bool = False
    selection_written: bool = False
    num_faces: int = 0
    fractions: Optional[np.ndarray] = None


# --------------------------------------------------------------------------------------------
# reading the GaussianAvatars transforms


def _existing(root: Path, rel: str) -> Path:
    """A path from a transforms file: as written, or with ``.png`` added when it has none."""
    path = root / rel
    if not path.exists() and not os.path.splitext(rel)[1] and path.with_name(
            path.name + ".png").exists():
        return path.with_name(path.name + ".png")
    return path


def _number(value, where: str, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: '{name}' is not a number ({value!r})") from None
    if not math.isfinite(out):
        raise DatasetError(f"{where}: '{name}' is NaN or Inf")
    return out


def _intrinsics(frame: dict, top: dict, where: str, image: Path) -> Tuple[np.ndarray, Tuple]:
    """K with the principal point measured from the top of the image, and (w, h)."""
    get = lambda k: frame.get(k, top.get(k))  # noqa: E731 - per frame, else top level
    w, h = get("w"), get("h")
    if w is None or h is None:
        img = read_image(image)
        h, w = img.shape[:2]
    w, h = int(_number(w, where, "w")), int(_number(h, where, "h"))
    fl_x, fl_y = get("fl_x"), get("fl_y")
    if fl_x is None:
        if get("camera_angle_x") is None:
            raise DatasetError(f"{where}: needs 'fl_x' (or 'camera_angle_x'), per frame or at "
                               "top level")
        fl_x = w / (2.0 * math.tan(_number(get("camera_angle_x"), where, "camera_angle_x") / 2))
    if fl_y is None:
        angle = get("camera_angle_y")
        fl_y = fl_x if angle is None else h / (2.0 * math.tan(_number(angle, where,
                                                                      "camera_angle_y") / 2))
    fl_x, fl_y = _number(fl_x, where, "fl_x"), _number(fl_y, where, "fl_y")
    if fl_x <= 0 or fl_y <= 0:
        raise DatasetError(f"{where}: focal lengths must be positive")
    cx = _number(get("cx"), where, "cx") if get("cx") is not None else w / 2.0
    cy = _number(get("cy"), where, "cy") if get("cy") is not None else h / 2.0
    K = np.array([[fl_x, 0.0, cx], [0.0, fl_y, h - cy], [0.0, 0.0, 1.0]])
    return K, (w, h)


def read_source_transforms(root: Path) -> Dict[str, List[SourceFrame]]:
    """Parse every ``transforms_<split>.json`` of a GaussianAvatars dataset (train required)."""
    out: Dict[str, List[SourceFrame]] = {}
    for split in SPLITS:
        path = root / f"transforms_{split}.json"
        if not path.exists():
            if split == "train":
                raise DatasetError(f"{path}: file is missing (a GaussianAvatars dataset has "
                                   "transforms_train.json)")
            continue
        data = read_transforms_json(path)
        frames = []
        for i, fr in enumerate(data["frames"]):
            where = f"{path}: frame {i}"
            if not isinstance(fr, dict):
                raise DatasetError(f"{where}: is not an object")
            t = frame_id(fr, ("timestep_index", "keyframe"), where)
            for key in ("file_path", "flame_param_path", "transform_matrix"):
                if key not in fr:
                    raise DatasetError(f"{where}: needs '{key}'")
            c2w = parse_matrix(fr["transform_matrix"], (4, 4), f"{where} 'transform_matrix'")
            image = _existing(root, str(fr["file_path"]))
            mask = fr.get("fg_mask_path")
            mask = None if not mask else _existing(root, str(mask))
            K, size = _intrinsics(fr, data, where, image)
            cam = fr.get("camera_index")
            frames.append(SourceFrame(split, int(t), None if cam is None else int(cam), image,
                                      mask, (root / str(fr["flame_param_path"])), c2w, K, size))
        out[split] = frames
    if not out["train"]:
        raise DatasetError(f"{root / 'transforms_train.json'}: lists no frames")
    _name_outputs([f for frames in out.values() for f in frames], root)
    return out


def _name_outputs(frames: Sequence[SourceFrame], root: Path) -> None:
    """Output image paths: ``images/<stem>.png``, or the flattened source path if stems clash."""
    sources = sorted({f.image for f in frames})
    stems = [p.stem for p in sources]
    if len(set(stems)) == len(stems):
        names = {p: f"images/{p.stem}.png" for p in sources}
    else:
        names = {}
        for p in sources:
            rel = os.path.relpath(p, root)
            parts = [s for s in Path(rel).with_suffix("").parts if s not in ("..", ".")]
            names[p] = "images/" + "__".join(parts) + ".png"
    for f in frames:
        f.output = names[f.image]


def timestep_params(splits: Dict[str, List[SourceFrame]]) -> Dict[int, Path]:
    """Parameter file of every timestep; two different files for one timestep is an error."""
    table: Dict[int, Path] = {}
    for frames in splits.values():
        for f in frames:
            known = table.setdefault(f.timestep, f.params)
            if os.path.normpath(known) != os.path.normpath(f.params):
                raise DatasetError(f"{f.params}: timestep {f.timestep} also uses {known}; "
                                   "every timestep_index needs one FLAME parameter file")
    return table


def _check_inputs_exist(splits: Dict[str, List[SourceFrame]]) -> None:
    """Every image, mask and parameter file is there, before anything is written."""
    for frames in splits.values():
        for f in frames:
            for path, what in ((f.image, "image"), (f.mask, "mask"), (f.params, "FLAME "
                                                                     "parameter file")):
                if path is not None and not path.is_file():
                    raise DatasetError(f"{path}: {what} is missing (listed in "
                                       f"transforms_{f.split}.json)")


# --------------------------------------------------------------------------------------------
# outputs


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def mesh_json(triangles: np.ndarray) -> str:
    """The STGA mesh file text of a (F, 3, 3) triangle soup (8 significant digits)."""
    corner = "[%.8g,%.8g,%.8g]"
    entry = '{"Vertices":[' + ",".join([corner] * 3) + "]}"
    body = ",".join([entry] * len(triangles)) % tuple(np.asarray(triangles, np.float64).ravel())
    return '{"triangles":[' + body + "]}"


def composite(image_path: Path, mask_path: Optional[Path],
              background: Tuple[int, int, int]) -> np.ndarray:
    """RGB uint8 image composited onto ``background`` with the mask (or the image's alpha)."""
    img = read_image(image_path)
    rgb = img[..., :3].astype(np.float32)
    if mask_path is not None:
        mask = read_image(mask_path)
        if mask.shape[:2] != img.shape[:2]:
            raise DatasetError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its "
                               f"image {image_path} is {img.shape[1]}x{img.shape[0]}")
        alpha = mask[..., 0].astype(np.float32) / 255.0
    elif img.shape[2] == 4:
        alpha = img[..., 3].astype(np.float32) / 255.0
    else:
        return img
    bg = np.asarray(background, np.float32)
    out = rgb * alpha[..., None] + bg * (1.0 - alpha[..., None])
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def _fresh(output: Path, inputs: Sequence[Path]) -> bool:
    """The output exists and is at least as new as every input."""
    if not output.exists():
        return False
    newest = max((_mtime(p) for p in inputs if p is not None), default=0)
    return _mtime(output) >= newest


class Manifest:
    """Options each group of outputs was made with; a group is redone when its options change.

    A group's entry is removed before the group is (re)built and written back when it is
    complete, so an interrupted run never passes stale files off as current.
    """

    def __init__(self, out: Path, force: bool) -> None:
        self.path = out / MANIFEST
        self.data: Dict[str, dict] = {}
        if self.path.exists() and not force:
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                self.data = loaded if isinstance(loaded, dict) else {}
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                self.data = {}

    def same(self, group: str, settings: dict) -> bool:
        return self.data.get(group) == settings

    def begin(self, group: str, settings: dict) -> bool:
        """Start a group; True when its recorded options equal ``settings`` (files may be kept)."""
        if self.same(group, settings):
            return True
        if self.data.pop(group, None) is not None:
            self._save()
        return False

    def done(self, group: str, settings: dict) -> None:
        if not self.same(group, settings):
            self.data[group] = settings
            self._save()

    def _save(self) -> None:
        _write_bytes(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())


def _remove_stale(folder: Path, pattern: re.Pattern, keep: set) -> None:
    """Delete files this converter wrote for keyframes that are no longer in the dataset."""
    if folder.is_dir():
        for name in os.listdir(folder):
            m = pattern.match(name)
            if m and int(m.group(1)) not in keep:
                (folder / name).unlink()


# --------------------------------------------------------------------------------------------
# the conversion


def _offset_rows(offset: Optional[np.ndarray], base: int, path: Path, key: str
                 ) -> Optional[np.ndarray]:
    """FLAME's own rows of a tracked offset; rows beyond (the tracker's teeth) are dropped."""
    if offset is None:
        return None
    if offset.shape[0] < base:
        raise DatasetError(f"{path}: '{key}' has {offset.shape[0]} vertices, the FLAME model "
                           f"has {base}")
    return offset[:base]


def compute_vertices(layer: FlameLayer, timesteps: Sequence[int], params: Dict[int, Path],
                     shared: FlameParams, shared_path: Path, progress: bool) -> np.ndarray:
    """FLAME vertices (T, V, 3) of every timestep, computed in float64 in batches, kept float32.

    Rows of tracked offsets beyond FLAME's own vertices (a tracker's own teeth) are ignored:
    our teeth are built from the template, not the tracker's.
    """
    base = layer.base_vertices
    static = _offset_rows(shared.static_offset, base, shared_path, "static_offset")
    if shared.shape.shape[0] > layer.num_shape:
        raise DatasetError(f"{shared_path}: 'shape' has {shared.shape.shape[0]} coefficients, "
                           f"the FLAME model has {layer.num_shape}")
    out = np.empty((len(timesteps), layer.num_vertices, 3), dtype=np.float32)
    bar = tqdm(total=len(timesteps), desc="FLAME meshes", unit="frame", disable=not progress)
    for s in range(0, len(timesteps), BATCH):
        chunk = timesteps[s:s + BATCH]
        ps = [read_flame_params(params[t]) for t in chunk]
        for t, p in zip(chunk, ps):
            if p.expr.shape[0] > layer.num_expression:
                raise DatasetError(f"{params[t]}: 'expr' has {p.expr.shape[0]} coefficients, "
                                   f"the FLAME model has {layer.num_expression}")
        width = max(p.expr.shape[0] for p in ps)
        expr = np.zeros((len(ps), width))
        for i, p in enumerate(ps):
            expr[i, :p.expr.shape[0]] = p.expr
        dyn = None
        if any(p.dynamic_offset is not None for p in ps):
            dyn = np.zeros((len(ps), base, 3))
            for i, (t, p) in enumerate(zip(chunk, ps)):
                rows = _offset_rows(p.dynamic_offset, base, params[t], "dynamic_offset")
                if rows is not None:
                    dyn[i] = rows
        stack = lambda name: np.stack([getattr(p, name) for p in ps])  # noqa: E731
        with torch.no_grad():
            verts = layer(shape=shared.shape, expr=expr, rotation=stack("rotation"),
                          neck_pose=stack("neck_pose"), jaw_pose=stack("jaw_pose"),
                          eyes_pose=stack("eyes_pose"), translation=stack("translation"),
                          static_offset=static, dynamic_offset=dyn, batch_size=len(ps))
        verts = verts.numpy()
        bad = ~np.isfinite(verts).all(axis=(1, 2))
        if bad.any():
            raise DatasetError(f"{params[chunk[int(np.argmax(bad))]]}: parameters give a mesh "
                               "with NaN or Inf")
        out[s:s + len(ps)] = verts
        bar.update(len(ps))
    bar.close()
    return out


def _selection(soup: np.ndarray, keyframes: List[int], train: set, tau: Optional[float],
               dilate: Optional[int]):
    """Training faces per keyframe; the reference frame is chosen among the training ones."""
    from selection import compute_selection

    rows_train = [i for i, k in enumerate(keyframes) if k in train]
    rows_other = [i for i, k in enumerate(keyframes) if k not in train]
    result = compute_selection(soup[rows_train], tau=tau, dilate=dilate)
    faces = {keyframes[r]: f for r, f in zip(rows_train, result.faces)}
    fractions = list(result.fractions)
    if rows_other:
        ref = soup[rows_train[result.reference]][None]
        other = compute_selection(np.concatenate([ref, soup[rows_other]]), tau=tau,
                                  dilate=dilate, reference=0)
        faces.update({keyframes[r]: f for r, f in zip(rows_other, other.faces[1:])})
        fractions += list(other.fractions[1:])
    return faces, keyframes[rows_train[result.reference]], np.asarray(fractions)


@dataclass
class _Job:
    """Everything the stages of one conversion share."""

    out: Path
    splits: Dict[str, List[SourceFrame]]
    params: Dict[int, Path]       # parameter file of every timestep
    keyframes: List[int]          # every timestep, sorted
    train: set                    # the training timesteps
    layer: FlameLayer
    manifest: Manifest
    report: ConvertReport
    progress: bool
    vertices: Optional[np.ndarray] = None   # (T, V, 3), row i = keyframes[i]

    @property
    def first_train(self) -> int:
        return min(self.train)

    @property
    def faces(self) -> np.ndarray:
        return self.layer.faces.numpy()

    def mesh_path(self, keyframe: int) -> Path:
        return self.out / MESH_DIR / mesh_filename(keyframe)

    def say(self, text: str) -> None:
        if self.progress:
            print(text)


def _stage_meshes(job: _Job, model_path: Path) -> None:
    """FLAME forward of every timestep; mesh files written where missing or out of date."""
    shared_path = job.params[job.first_train]
    shared = read_flame_params(shared_path)
    job.vertices = compute_vertices(job.layer, job.keyframes, job.params, shared, shared_path,
                                    job.progress)
    st = model_path.stat()
    settings = {"flame_model": str(model_path.resolve()), "model_size": st.st_size,
                "model_mtime_ns": st.st_mtime_ns, "teeth": job.layer.teeth is not None,
                "shape_from": job.first_train}
    same = job.manifest.begin("meshes", settings)
    (job.out / MESH_DIR).mkdir(exist_ok=True)
    faces = job.faces
    for i, k in enumerate(tqdm(job.keyframes, desc="Writing meshes", unit="mesh",
                               disable=not job.progress)):
        path = job.mesh_path(k)
        if same and _fresh(path, [job.params[k], shared_path, model_path]):
            job.report.meshes_skipped += 1
            continue
        _write_bytes(path, mesh_json(job.vertices[i][faces]).encode())
        job.report.meshes_written += 1
    _remove_stale(job.out / MESH_DIR, _MESH_NAME, set(job.keyframes))
    job.manifest.done("meshes", settings)


def _stage_images(job: _Job, background: str, workers: Optional[int]) -> Dict[str, Tuple]:
    """Composite every image onto the background (in threads); returns (w, h) per output."""
    bg = BACKGROUNDS[background]
    settings = {"background": background}
    same = job.manifest.begin("images", settings)
    jobs: Dict[str, SourceFrame] = {}
    for frames in job.splits.values():
        for f in frames:
            jobs.setdefault(f.output, f)

    def one(item: Tuple[str, SourceFrame]) -> Tuple[bool, Tuple[int, int]]:
        rel, f = item
        target = job.out / rel
        if same and _fresh(target, [f.image, f.mask]):
            h, w = read_image(target).shape[:2] if f.size is None else f.size[::-1]
            return False, (w, h)
        img = composite(f.image, f.mask, bg)
        h, w = img.shape[:2]
        if f.size is not None and f.size != (w, h):
            raise DatasetError(f"{f.image}: image is {w}x{h} but its transforms entry says "
                               f"w={f.size[0]}, h={f.size[1]}")
        ok, data = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:
            raise DatasetError(f"{target}: could not encode the PNG")
        _write_bytes(target, data.tobytes())
        return True, (w, h)

    for folder in {(job.out / r).parent for r in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    sizes: Dict[str, Tuple[int, int]] = {}
    items = sorted(jobs.items())
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = tqdm(pool.map(one, items), total=len(items), desc="Compositing images",
                       unit="img", disable=not job.progress)
        for (rel, _), (written, size) in zip(items, results):
            sizes[rel] = size
            if written:
                job.report.images_written += 1
            else:
                job.report.images_skipped += 1
    job.manifest.done("images", settings)
    return sizes


def _stage_transforms(job: _Job, sizes: Dict[str, Tuple[int, int]]) -> None:
    """STGA transforms per split (test always, val when the source has it); rewritten if changed."""
    for split in SPLITS:
        if split not in job.splits and split != "test":
            continue
        entries = []
        for f in job.splits.get(split, []):
            w, h = sizes[f.output]
            entry = {"keyframe": f.timestep, "timestep_index": f.timestep,
                     "file_path": f.output, "transform_matrix": f.c2w.tolist(),
                     "K": f.K.tolist(), "w": w, "h": h}
            if f.camera_index is not None:
                entry["camera_index"] = f.camera_index
            entries.append(json.dumps(entry))
        text = ('{"frames": [\n  ' + ",\n  ".join(entries) + "\n]}\n") if entries \
            else '{"frames": []}\n'
        target = job.out / f"transforms_{split}.json"
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            _write_bytes(target, text.encode())


def _stage_points(job: _Job, points_per_face: int, seed: int) -> None:
    """``points3d.ply``: grey points at random on every face of the first training mesh."""
    from scene.demo_head.points import write_points_ply
    from scene.points import points_on_faces

    first = job.first_train
    settings = {"points_per_face": points_per_face, "seed": seed, "keyframe": first,
                "faces": job.layer.num_faces}
    ply = job.out / "points3d.ply"
    if job.manifest.begin("points", settings) and _fresh(ply, [job.mesh_path(first)]):
        return
    tris = job.vertices[job.keyframes.index(first)][job.faces]
    face_ids, _, _, local = points_on_faces(tris, points_per_face, np.random.default_rng(seed))
    rgb = np.full((len(face_ids), 3), 128, np.uint8)
    with atomic_path(ply) as tmp:
        write_points_ply(tmp, local.astype(np.float32), face_ids, rgb)
    job.manifest.done("points", settings)
    job.report.points_written = True


def _stage_selection(job: _Job, tau: Optional[float], dilate: Optional[int]) -> None:
    """``training_faces/`` for every timestep, redone when a mesh is newer than them."""
    from selection import DEFAULT_DILATE, DEFAULT_TAU

    tau = DEFAULT_TAU if tau is None else float(tau)
    dilate = DEFAULT_DILATE if dilate is None else int(dilate)
    settings = {"tau": tau, "dilate": dilate, "train": sorted(job.train)}
    folder = job.out / FACES_DIR
    files = [folder / f"{k:04d}.npy" for k in job.keyframes]
    newest_mesh = max(_mtime(job.mesh_path(k)) for k in job.keyframes)
    if job.manifest.begin("selection", settings) and all(
            p.exists() and _mtime(p) >= newest_mesh for p in files):
        return
    soup = job.vertices[:, job.faces]
    chosen, reference, fractions = _selection(soup, job.keyframes, job.train, tau, dilate)
    del soup
    folder.mkdir(exist_ok=True)
    for k, path in zip(job.keyframes, files):
        _write_bytes(path, _npy_bytes(np.ascontiguousarray(chosen[k], dtype=np.int32)))
    _remove_stale(folder, _FACES_NAME, set(job.keyframes))
    job.manifest.done("selection", settings)
    job.report.selection_written = True
    job.report.fractions = fractions
    job.say(f"selection: reference timestep {reference}; trains {fractions.min():.1%} / "
            f"{np.median(fractions):.1%} / {fractions.max():.1%} of the faces (min / median / "
            "max over timesteps)")


def convert(source: Path, out: Path, flame_model: Path, teeth: bool = False,
            background: str = "white", points_per_face: int = DEFAULT_POINTS_PER_FACE,
            tau: Optional[float] = None, dilate: Optional[int] = None, seed: int = 0,
            workers: Optional[int] = None, force: bool = False,
            progress: bool = True) -> ConvertReport:
    """Convert ``source`` (GaussianAvatars format) into an STGA dataset in ``out``.

    Raises DatasetError (bad input, naming the file), FlameModelError (model file) or
    LipRingError (no mouth opening found for ``teeth``).
    """
    source, out = Path(source), Path(out)
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {sorted(BACKGROUNDS)}, got {background!r}")
    if points_per_face < 1:
        raise ValueError("points_per_face must be at least 1")
    if not source.is_dir():
        raise DatasetError(f"{source}: dataset folder does not exist")
    if out.resolve() == source.resolve():
        raise DatasetError(f"{out}: the output folder must differ from the input folder")
    splits = read_source_transforms(source)
    params = timestep_params(splits)
    _check_inputs_exist(splits)
    model_path = Path(flame_model)
    layer = FlameLayer(load_flame_model(model_path), teeth=teeth, dtype=torch.float64)
    out.mkdir(parents=True, exist_ok=True)
    report = ConvertReport(timesteps=len(params), num_faces=layer.num_faces,
                           frames={s: len(f) for s, f in splits.items()})
    job = _Job(out=out, splits=splits, params=params, keyframes=sorted(params),
               train={f.timestep for f in splits["train"]}, layer=layer,
               manifest=Manifest(out, force), report=report, progress=progress)
    _stage_meshes(job, model_path)
    sizes = _stage_images(job, background, workers)
    _stage_transforms(job, sizes)
    _stage_points(job, points_per_face, seed)
    _stage_selection(job, tau, dilate)
    job.say(f"{out}: {len(job.keyframes)} timesteps, {layer.num_faces} faces; meshes written "
            f"{report.meshes_written}, up to date {report.meshes_skipped}; images written "
            f"{report.images_written}, up to date {report.images_skipped}")
    return report


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag is explained because --help is the user manual."""
    from selection import DEFAULT_DILATE, DEFAULT_TAU

    p = argparse.ArgumentParser(
        prog="python -m flame.convert",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Convert a GaussianAvatars-format dataset (NeRSemble as tracked by VHAP:\n"
            "transforms_{train,val,test}.json, flame_param/, images/, fg_masks/) into an STGA\n"
            "dataset for train.py: FLAME meshes per timestep, cameras with K (the tracker's\n"
            "bottom-up cy is turned into the top-down principal point), images composited onto\n"
            "the background with their masks, initial points and the per-timestep training\n"
            "faces. Needs the FLAME model, which you download yourself from\n"
            "https://flame.is.tue.mpg.de under the FLAME licence (it is never downloaded here).\n"
            "Re-running skips outputs that are up to date; bad input stops with a one-line\n"
            "error naming the file (exit status 2)."),
    )
    p.add_argument("ga_dataset", type=Path,
                   help="GaussianAvatars-format folder (with transforms_train.json)")
    p.add_argument("out_dir", type=Path,
                   help="output folder for the STGA dataset (created; must differ from the input)")
    p.add_argument("--flame_model", type=Path, required=True, metavar="PKL",
                   help="the official FLAME model file: generic_model.pkl (FLAME 2020) or "
                        "flame2023.pkl (FLAME 2023); read safely, chumpy is not needed")
    p.add_argument("--teeth", action="store_true",
                   help="add GaussianAvatars-style teeth (120 vertices, 168 faces: 10144 faces "
                        "in all) so Gaussians can be bound inside the mouth; off by default")
    p.add_argument("--background", choices=sorted(BACKGROUNDS), default="white",
                   help="colour the images are composited onto with their foreground masks "
                        "(default white, GaussianAvatars' protocol; train with -w to match)")
    p.add_argument("--points_per_face", type=positive_int, default=DEFAULT_POINTS_PER_FACE,
                   metavar="N",
                   help="initial Gaussians per face written to points3d.ply, at random points "
                        f"of the first training mesh, grey (default {DEFAULT_POINTS_PER_FACE})")
    p.add_argument("--tau", type=non_negative_float, default=None,
                   help="selection threshold: a face trains at a timestep when it moves at least "
                        f"this far from the neutral frame after head pose is removed, in metres "
                        f"(default {DEFAULT_TAU}, the selection module's)")
    p.add_argument("--dilate", type=non_negative_int, default=None,
                   help="selection: rings of neighbouring faces added around the selected ones "
                        f"(default {DEFAULT_DILATE}; 0 turns growing off)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the initial point positions (default 0)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="threads compositing images (default: CPU count, at most 8)")
    p.add_argument("--force", action="store_true",
                   help="rewrite every output even when it is up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command; returns the exit status (2 for bad input, with a one-line message)."""
    args = build_parser().parse_args(argv)
    try:
        convert(args.ga_dataset, args.out_dir, args.flame_model, teeth=args.teeth,
                background=args.background, points_per_face=args.points_per_face,
                tau=args.tau, dilate=args.dilate, seed=args.seed, workers=args.workers,
                force=args.force, progress=not args.quiet)
    except (DatasetError, FlameModelError, LipRingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished files are kept, re-run to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
