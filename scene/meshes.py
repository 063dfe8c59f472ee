"""Per-keyframe triangle meshes of an STGA dataset, with a binary cache.

Each keyframe has ``meshes/mesh_XXXX.json`` (a triangle soup in face order). Parsing thousands of
those JSON files takes minutes, so the stacked array (T, F, 3, 3) is cached beside them in
``meshes/.stga_mesh_cache.npy`` and reused while the JSON files are unchanged (same names, sizes
and modification times).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from scene.errors import DatasetError, read_json_file
from utils.atomic import atomic_path

MESH_DIR = "meshes"
_MESH_NAME = re.compile(r"^mesh_(\d+)\.json$")
_CACHE_NAME = ".stga_mesh_cache.npy"
_CACHE_KEY_NAME = ".stga_mesh_cache.key"


def mesh_filename(keyframe: int) -> str:
    """File name of a keyframe's mesh: the id zero-padded to at least 4 digits."""
    return f"mesh_{keyframe:04d}.json"


def list_mesh_keyframes(data_dir: Path) -> List[int]:
    """Sorted keyframe ids of every ``meshes/mesh_XXXX.json`` in the dataset."""
    folder = Path(data_dir) / MESH_DIR
    if not folder.is_dir():
        raise DatasetError(f"{folder}: mesh folder is missing (expected meshes/mesh_XXXX.json)")
    ids = []
    for name in os.listdir(folder):
        match = _MESH_NAME.match(name)
        if match:
            ids.append(int(match.group(1)))
    if len(ids) != len(set(ids)):
        raise DatasetError(f"{folder}: two mesh files name the same keyframe (e.g. mesh_7.json "
                           "and mesh_0007.json)")
    return sorted(ids)


def _mesh_file(folder: Path, keyframe: int) -> Path:
    path = folder / mesh_filename(keyframe)
    if path.exists():
        return path
    # ids wider than 4 digits, or files written without padding
    alt = folder / f"mesh_{keyframe}.json"
    return alt if alt.exists() else path


def parse_mesh_json(path: Path) -> np.ndarray:
    """Read one mesh file into a (F, 3, 3) float32 array, validating its structure and values."""
    data = read_json_file(path, "mesh file")
    triangles = data.get("triangles") if isinstance(data, dict) else None
    if not isinstance(triangles, list) or not triangles:
        raise DatasetError(f"{path}: expected an object with a non-empty list 'triangles'")
    try:
        verts = np.asarray([t["Vertices"] for t in triangles], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{path}: every triangle needs 'Vertices' as three [x, y, z] "
                           "number triples") from None
    if verts.shape != (len(triangles), 3, 3):
        raise DatasetError(f"{path}: every triangle needs 'Vertices' as three [x, y, z] "
                           f"triples (got array shape {verts.shape})")
    bad = ~np.isfinite(verts).all(axis=(1, 2))
    if bad.any():
        raise DatasetError(f"{path}: NaN or Inf in {int(bad.sum())} triangle(s), first at face "
                           f"{int(np.argmax(bad))}")
    return verts.astype(np.float32)


def _cache_key(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _load_all(folder: Path, keyframes: List[int], quiet: bool) -> np.ndarray:
    files = [_mesh_file(folder, k) for k in keyframes]
    key = _cache_key(files)
    cache, key_file = folder / _CACHE_NAME, folder / _CACHE_KEY_NAME
    if cache.exists() and key_file.exists() and key_file.read_text().strip() == key:
        try:
            cached = np.load(cache, allow_pickle=False)
            if cached.ndim == 4 and cached.shape[0] == len(files) and cached.shape[2:] == (3, 3):
                return cached
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it below
    meshes = []
    for path in tqdm(files, desc="Reading meshes", disable=quiet or len(files) < 50, unit="mesh"):
        mesh = parse_mesh_json(path)
        if meshes and mesh.shape[0] != meshes[0].shape[0]:
            raise DatasetError(f"{path}: has {mesh.shape[0]} faces but {files[0]} has "
                               f"{meshes[0].shape[0]}; every frame needs the same face count")
        meshes.append(mesh)
    stacked = np.stack(meshes)
    try:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, stacked)
        with atomic_path(key_file) as tmp:
            tmp.write_text(key + "\n")
    except OSError:
        pass  # read-only dataset: work without the cache
    return stacked


def load_mesh_sequence(data_dir: Path, keyframes: Optional[Iterable[int]] = None,
                       quiet: bool = False) -> Tuple[List[int], np.ndarray]:
    """Load the meshes of ``keyframes`` (default: every mesh file) as sorted ids and (T,F,3,3).

    Raises DatasetError naming the file for a missing mesh, bad JSON, NaN/Inf or a face count
    that differs between frames.
    """
    folder = Path(data_dir) / MESH_DIR
    available = list_mesh_keyframes(data_dir)
    if not available:
        raise DatasetError(f"{folder}: contains no mesh_XXXX.json files")
    wanted = available if keyframes is None else sorted(set(int(k) for k in keyframes))
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise DatasetError(f"{folder / mesh_filename(missing[0])}: keyframe {missing[0]} has no "
                           f"mesh ({len(missing)} keyframe(s) without a mesh file)")
    all_meshes = _load_all(folder, available, quiet)
    index = {k: i for i, k in enumerate(available)}
    rows = np.asarray([index[k] for k in wanted], dtype=np.int64)
    return wanted, (all_meshes if len(rows) == len(available) else all_meshes[rows])
