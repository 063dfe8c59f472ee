"""Resumable checkpoints: written atomically, read as data only, checked before use.

A checkpoint holds everything a run needs to continue exactly (parameters, optimiser, schedule,
random streams, statistics) and a fingerprint of the dataset it was trained on, so that resuming
on other data is refused unless asked for. Files are untrusted: ``torch.load(weights_only=True)``
only, and every problem is one ``DatasetError`` line naming the file (never PyTorch's advice to
load with ``weights_only=False``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from scene.dataset import StgaDataset
from scene.errors import DatasetError
from utils.atomic import atomic_path

CHECKPOINT_VERSION = 1
LATEST_NAME = "chkpnt_latest.pth"
REQUIRED = {"version": int, "iteration": int, "model": dict, "optimizer": dict, "schedule": dict,
            "generator": torch.Tensor, "density": dict, "torch_rng": torch.Tensor}


def dataset_fingerprint(dataset: StgaDataset) -> str:
    """A hash of what a trained model depends on: the training cameras (names, keyframes, sizes,
    intrinsics, poses) and the meshes (faces and vertex positions)."""
    h = hashlib.sha256()
    for cam in sorted(dataset.splits["train"], key=lambda c: (c.keyframe, c.image_name)):
        h.update(f"{cam.image_name}|{cam.keyframe}|{cam.width}x{cam.height}|".encode())
        h.update(np.round(np.asarray(cam.K, np.float64), 6).tobytes())
        h.update(np.round(np.asarray(cam.world_to_camera, np.float64), 6).tobytes())
    meshes = np.ascontiguousarray(dataset.meshes, dtype=np.float32)
    h.update(str(meshes.shape).encode())
    h.update(memoryview(meshes).cast("B"))      # hashed in place: no copy of the meshes
    return h.hexdigest()[:16]


def write_checkpoint(path: Path, state: Dict[str, Any]) -> Path:
    """Save ``state`` (with the version added) atomically: a crash leaves the old file whole."""
    with atomic_path(path) as tmp:
        torch.save({"version": CHECKPOINT_VERSION, **state}, tmp)
    return Path(path)


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """A checkpoint's state, checked for its version and keys (one-line errors)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: checkpoint file is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure means the same to the user
        raise DatasetError(f"{path}: not an STGA checkpoint (unreadable as saved tensors; it "
                           f"may be truncated or another program's file)") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise DatasetError(f"{path}: not an STGA checkpoint of version {CHECKPOINT_VERSION}")
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind):
            raise DatasetError(f"{path}: incomplete checkpoint ('{key}' is missing or of the "
                               f"wrong type)")
    return state


def check_dataset(path: Path, state: Dict[str, Any], dataset: StgaDataset,
                  allow_other: bool) -> None:
    """Refuse to resume on a dataset other than the checkpoint's, unless ``allow_other``."""
    saved = state.get("dataset")
    if saved is None or allow_other:
        return
    here = dataset_fingerprint(dataset)
    if saved != here:
        raise DatasetError(f"{path}: trained on another dataset (fingerprint {saved}, this one "
                           f"{here}); pass --resume_other_dataset to fine-tune on it anyway")
