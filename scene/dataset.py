"""Reader of the STGA dataset format, validating everything before training starts.

A dataset folder holds ``transforms_{train,test,val}.json`` (cameras and images per keyframe),
``meshes/mesh_XXXX.json`` (the tracked mesh of every keyframe), ``training_faces/XXXX.npy`` (the
faces optimised at each keyframe) and optionally ``points3d.ply`` (initial Gaussians). Every
problem is reported as a ``DatasetError`` that names the file.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from scene.cameras import Camera, intrinsics_from_fov, opengl_c2w_to_opencv_w2c
from scene.errors import DatasetError, read_json_file
from scene.meshes import load_mesh_sequence

SPLITS = ("train", "test", "val")
TRAINING_FACES_DIR = "training_faces"


@dataclass
class FrameRecord:
    """One entry of a transforms file, validated, before its image is read."""

    split: str
    keyframe: int
    image_path: Path
    c2w: np.ndarray
    K: Optional[np.ndarray]
    fov: Optional[Tuple[float, float]]
    size: Optional[Tuple[int, int]]  # (w, h) as written in the file
    camera_index: Optional[int]


@dataclass
class StgaDataset:
    """A loaded dataset: cameras per split, meshes per keyframe, and the training selection."""

    root: Path
    splits: Dict[str, List[Camera]]
    keyframes: List[int]
    meshes: np.ndarray  # (T, F, 3, 3) float32, row i is keyframe keyframes[i]
    training_faces: Dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def num_faces(self) -> int:
        return int(self.meshes.shape[1])

    def mesh_row(self, keyframe: int) -> int:
        """Row of ``meshes`` that holds ``keyframe``."""
        return self._rows[keyframe]

    def __post_init__(self) -> None:
        self._rows = {k: i for i, k in enumerate(self.keyframes)}

    @property
    def points_path(self) -> Optional[Path]:
        path = self.root / "points3d.ply"
        return path if path.exists() else None


def read_transforms_json(path: Path) -> dict:
    """Read a transforms file and check it is an object with a list 'frames'."""
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise DatasetError(f"{path}: expected an object with a list 'frames'")
    return data


def parse_matrix(value, shape: Tuple[int, int], where: str) -> np.ndarray:
    """A finite numeric matrix of ``shape`` from JSON, or a DatasetError naming ``where``."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: is not a numeric matrix") from None
    if m.shape != shape:
        raise DatasetError(f"{where}: expected a {shape[0]}x{shape[1]} matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise DatasetError(f"{where}: contains NaN or Inf")
    return m


def frame_id(frame: dict, keys: Sequence[str], where: str) -> int:
    """The frame's integer id under the first of ``keys`` present (e.g. keyframe, timestep_index)."""
    value = next((frame[k] for k in keys if k in frame), None)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        names = f"'{keys[0]}'" + "".join(f" (or '{k}')" for k in keys[1:])
        raise DatasetError(f"{where}: needs a non-negative integer {names}, got {value!r}")
    return int(value)


def real_number(value, name: str, where: str) -> float:
    """A finite JSON number (not a string or a bool), else a DatasetError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{where}: '{name}' must be a number, got {value!r}")
    return float(value)


def image_side(value, name: str, where: str) -> int:
    """A positive integer image side ('w' or 'h'), else a DatasetError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or value < 1:
        raise DatasetError(f"{where}: '{name}' must be a positive whole number of pixels, "
                           f"got {value!r}")
    return int(value)


def parse_transforms(path: Path, split: str, root: Path) -> List[FrameRecord]:
    """Parse and validate one ``transforms_<split>.json`` (images are not read here)."""
    data = read_transforms_json(path)
    top_fov = (data.get("camera_angle_x"), data.get("camera_angle_y"))
    records = []
    views: Dict[tuple, str] = {}     # (keyframe, camera_index) -> file, to catch duplicates
    for i, frame in enumerate(data["frames"]):
        where = f"{path}: frame {i}"
        if not isinstance(frame, dict):
            raise DatasetError(f"{where}: is not an object")
        keyframe = frame_id(frame, ("keyframe", "timestep_index"), where)
        file_path = frame.get("file_path")
        if not isinstance(file_path, str) or not file_path:
            raise DatasetError(f"{where}: needs 'file_path'")
        if not os.path.splitext(file_path)[1]:
            file_path += ".png"
        if "transform_matrix" not in frame:
            raise DatasetError(f"{where}: needs 'transform_matrix'")
        c2w = parse_matrix(frame["transform_matrix"], (4, 4), f"{where} 'transform_matrix'")
        if abs(np.linalg.det(c2w[:3, :3])) < 1e-8:
            raise DatasetError(f"{where}: 'transform_matrix' has a singular rotation")
        K = frame.get("K", data.get("K"))
        K = None if K is None else parse_matrix(K, (3, 3), f"{where} 'K'")
        if K is not None and (K[0, 0] <= 0 or K[1, 1] <= 0):
            raise DatasetError(f"{where}: 'K' needs positive focal lengths")
        fov_x = frame.get("camera_angle_x", top_fov[0])
        fov_y = frame.get("camera_angle_y", top_fov[1])
        fov_x = None if fov_x is None else real_number(fov_x, "camera_angle_x", where)
        fov_y = None if fov_y is None else real_number(fov_y, "camera_angle_y", where)
        fov = None
        if K is None:
            if fov_x is None:
                raise DatasetError(f"{where}: needs 'K' or 'camera_angle_x' (and "
                                   "'camera_angle_y'), per frame or at top level")
            fov = (fov_x, fov_y)
            if not (0 < fov[0] < math.pi) or (fov[1] is not None and not 0 < fov[1] < math.pi):
                raise DatasetError(f"{where}: camera angles must lie in (0, pi) radians")
        w, h = frame.get("w", data.get("w")), frame.get("h", data.get("h"))
        w = None if w is None else image_side(w, "w", where)
        h = None if h is None else image_side(h, "h", where)
        size = None if w is None or h is None else (w, h)
        camera_index = frame.get("camera_index")
        if camera_index is not None:
            view = (keyframe, camera_index)
            if views.setdefault(view, file_path) != file_path:
                raise DatasetError(f"{where}: keyframe {keyframe}, camera {camera_index} is "
                                   f"listed twice with different images ({views[view]} and "
                                   f"{file_path})")
        records.append(FrameRecord(split, keyframe, root / file_path, c2w, K, fov, size,
                                   camera_index))
    return records


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to uint8 RGB or RGBA (H, W, 3|4); DatasetError if missing/corrupt."""
    if not path.exists():
        raise DatasetError(f"{path}: image file is missing")
    raw = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if img is None:
        raise DatasetError(f"{path}: corrupt or unreadable image")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DatasetError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None].repeat(3, axis=2)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    raise DatasetError(f"{path}: expected 1, 3 or 4 channels, got {img.shape[2]}")


def output_size(width: int, height: int, resolution: float) -> Tuple[int, int, float]:
    """Image size after ``--resolution`` (3DGS's rule) and the scale factor applied.

    1, 2, 4, 8: divide by that factor; any other positive value: target width in pixels;
    -1: full size, but at most 1600 pixels wide.
    """
    if resolution in (1, 2, 4, 8):
        scale = 1.0 / resolution
    elif resolution == -1:
        scale = min(1.0, 1600.0 / width)
    elif resolution > 0:
        scale = resolution / width
    else:
        raise ValueError(f"--resolution must be -1, 1, 2, 4, 8 or a width in pixels, "
                         f"got {resolution}")
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return new_w, new_h, scale


def _load_split_images(records: Sequence[FrameRecord], resolution: float, quiet: bool,
                       load_pixels: bool) -> List[Tuple[Optional[np.ndarray], int, int, int, int]]:
    """Read every image (in parallel threads; cv2 releases the GIL) and check sizes agree."""

    def load(rec: FrameRecord):
        if load_pixels:
            img = read_image(rec.image_path)
            h, w = img.shape[:2]
        else:
            if not rec.image_path.exists():
                raise DatasetError(f"{rec.image_path}: image file is missing")
            if rec.size is None:
                img = read_image(rec.image_path)
                h, w = img.shape[:2]
            else:
                w, h = rec.size
            img = None
        if rec.size is not None and rec.size != (w, h):
            raise DatasetError(f"{rec.image_path}: image is {w}x{h} but its transforms entry "
                               f"says w={rec.size[0]}, h={rec.size[1]}")
        new_w, new_h, _ = output_size(w, h, resolution)
        if img is not None and (new_w, new_h) != (w, h):
            img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)
        return img, w, h, new_w, new_h

    workers = min(8, os.cpu_count() or 1)
    split = records[0].split if records else ""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(load, records), total=len(records), disable=quiet,
                            desc=f"Loading {split} images", unit="img"))
    sizes = {(r[1], r[2]) for r in results}
    if len(sizes) > 1:
        first = results[0][1:3]
        for rec, r in zip(records, results):
            if r[1:3] != first:
                raise DatasetError(f"{rec.image_path}: image is {r[1]}x{r[2]} but other images of "
                                   f"the {split} split are {first[0]}x{first[1]}")
    return results


def _intrinsics(rec: FrameRecord, w: int, h: int) -> np.ndarray:
    if rec.K is not None:
        return rec.K.copy()
    fov_x, fov_y = rec.fov
    if fov_y is None:  # square pixels
        fov_y = 2.0 * math.atan(math.tan(fov_x / 2.0) * h / w)
    return intrinsics_from_fov(fov_x, fov_y, w, h)


def load_training_faces(root: Path, keyframes: Sequence[int], num_faces: int,
                        required: bool) -> Dict[int, np.ndarray]:
    """Read ``training_faces/XXXX.npy`` for ``keyframes``; validate dtype, shape and range."""
    folder = root / TRAINING_FACES_DIR
    faces = {}
    for k in keyframes:
        path = folder / f"{k:04d}.npy"
        if not path.exists() and (folder / f"{k}.npy").exists():
            path = folder / f"{k}.npy"
        if not path.exists():
            if required:
                raise DatasetError(f"{path}: training-face file of keyframe {k} is missing "
                                   f"(compute them with: python -m selection {root})")
            continue
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{path}: unreadable .npy file ({exc})") from None
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise DatasetError(f"{path}: expected a 1-D array of integer face indices, got "
                               f"dtype {arr.dtype} and shape {arr.shape}")
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= num_faces):
            bad = arr[(arr < 0) | (arr >= num_faces)][0]
            raise DatasetError(f"{path}: face index {bad} is out of range (the meshes have "
                               f"{num_faces} faces)")
        faces[k] = np.unique(arr)
    return faces


def load_split_pixels(dataset: StgaDataset, split: str, resolution: float = -1,
                      quiet: bool = False) -> None:
    """Read the images of one split into its cameras, for a dataset loaded without pixels.

    Lets a tool hold one split's images at a time, and never read a split it skips.
    """
    root = dataset.root
    records = parse_transforms(root / f"transforms_{split}.json", split, root)
    loaded = _load_split_images(records, resolution, quiet, load_pixels=True) if records else []
    for cam, rec, (image, *_sizes) in zip(dataset.splits[split], records, loaded):
        if image.shape[:2] != (cam.height, cam.width):
            raise DatasetError(f"{rec.image_path}: image size changed since the dataset was read")
        cam.image = torch.from_numpy(image)


def load_dataset(source: Path, resolution: float = -1, splits: Sequence[str] = SPLITS,
                 load_pixels: bool = True, require_training_faces: bool = False,
                 quiet: bool = False, hold_out: bool = True) -> StgaDataset:
    """Load and validate a dataset folder: transforms, images, meshes and training faces.

    ``splits`` lists the splits to read (``train`` is required to exist; others are skipped when
    their file is absent). With ``load_pixels=False`` images are checked for existence and size
    only (fast, for tools that need cameras but not pixels). With ``hold_out=False`` (training
    with ``--no-eval``) the other splits' cameras join ``train`` and no other split is kept;
    training faces are then read for all their keyframes.
    """
    root = Path(source)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    records: Dict[str, List[FrameRecord]] = {}
    for split in splits:
        path = root / f"transforms_{split}.json"
        if not path.exists():
            if split == "train":
                raise DatasetError(f"{path}: file is missing (every dataset needs a train split)")
            continue
        records[split] = parse_transforms(path, split, root)
    if not records.get("train"):
        raise DatasetError(f"{root / 'transforms_train.json'}: lists no frames")

    keyframes = sorted({r.keyframe for recs in records.values() for r in recs})
    _, meshes = load_mesh_sequence(root, keyframes, quiet=quiet)

    cameras: Dict[str, List[Camera]] = {}
    uid = 0
    for split, recs in records.items():
        loaded = _load_split_images(recs, resolution, quiet, load_pixels) if recs else []
        names = [r.image_path.stem for r in recs]
        if len(set(names)) != len(names):  # same file name in different folders
            names = [os.path.relpath(r.image_path, root).replace(os.sep, "_") for r in recs]
        cams = []
        for rec, name, (img, w, h, new_w, new_h) in zip(recs, names, loaded):
            K = _intrinsics(rec, w, h)
            K[0] *= new_w / w
            K[1] *= new_h / h
            cams.append(Camera(uid=uid, split=split, image_name=name, keyframe=rec.keyframe,
                               width=new_w, height=new_h, K=K,
                               world_to_camera=opengl_c2w_to_opencv_w2c(rec.c2w),
                               image=None if img is None else torch.from_numpy(img),
                               camera_index=rec.camera_index))
            uid += 1
        cameras[split] = cams
    if not hold_out:
        cameras = {"train": [c for split in cameras for c in cameras[split]]}

    train_keyframes = sorted({c.keyframe for c in cameras["train"]})
    faces = load_training_faces(root, train_keyframes, meshes.shape[1], require_training_faces)
    return StgaDataset(root=root, splits=cameras, keyframes=keyframes, meshes=meshes,
                       training_faces=faces)
