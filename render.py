"""Render a trained STGA model over every split of its dataset, next to the ground truth.

    python render.py -m <model folder> [--iteration N] [--skip_train] [--skip_val] [--skip_test]

Writes ``<model>/<split>/ours_<iteration>/renders/<image name>.png`` and ``.../gt/...``, which
metrics.py then scores.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import torch
from tqdm import tqdm

from arguments import load_config
from gaussian_renderer import render
from scene import resolve_source
from scene.binding import face_frames
from scene.dataset import SPLITS, load_dataset
from scene.errors import DatasetError
from scene.gaussian_model import GaussianModel


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Render a trained STGA model (and the ground truth) for every split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-m", "--model_path", required=True, help="model folder from train.py")
    parser.add_argument("-s", "--source_path", default=None,
                        help="dataset folder (default: the one the model was trained on)")
    parser.add_argument("--iteration", type=int, default=-1,
                        help="saved iteration to render (-1: the latest)")
    for split in SPLITS:
        parser.add_argument(f"--skip_{split}", action="store_true", help=f"skip the {split} split")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--backend", choices=("auto", "torch", "cuda"), default="auto",
                        help="rasterizer backend")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def saved_iterations(model_dir: Path) -> List[int]:
    folder = model_dir / "point_cloud"
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            match = re.fullmatch(r"iteration_(\d+)", child.name)
            if match and (child / "point_cloud.ply").exists():
                found.append(int(match.group(1)))
    return sorted(found)


def write_png(path: Path, image: torch.Tensor) -> None:
    """Save a (3,H,W) float image in [0,1] as 8-bit RGB PNG."""
    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    if not cv2.imwrite(str(path), cv2.cvtColor(array, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not be written")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir = Path(args.model_path)
    try:
        cfg = load_config(model_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    iterations = saved_iterations(model_dir)
    if not iterations:
        print(f"error: {model_dir / 'point_cloud'} holds no saved model; train first",
              file=sys.stderr)
        return 2
    iteration = iterations[-1] if args.iteration == -1 else args.iteration
    if iteration not in iterations:
        print(f"error: no model saved at iteration {iteration} (saved: {iterations})",
              file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    splits = [s for s in SPLITS if not getattr(args, f"skip_{s}")]
    try:
        source = resolve_source(args.source_path or cfg["source_path"])
        dataset = load_dataset(source, resolution=cfg.get("resolution", -1), splits=splits,
                               quiet=args.quiet)
        model = GaussianModel()
        ply = model_dir / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply"
        model.load_ply(ply, dataset.num_faces, device)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meshes = torch.from_numpy(dataset.meshes).to(device)
    background = torch.tensor([1.0] * 3 if cfg.get("white_background") else [0.0] * 3,
                              device=device)
    with torch.no_grad():
        for split in splits:
            cameras = dataset.splits.get(split)
            if cameras is None:
                continue
            out = model_dir / split / f"ours_{iteration}"
            (out / "renders").mkdir(parents=True, exist_ok=True)
            (out / "gt").mkdir(parents=True, exist_ok=True)
            for cam in tqdm(cameras, desc=f"Rendering {split}", disable=args.quiet, unit="img"):
                world = model.world(face_frames(meshes[dataset.mesh_row(cam.keyframe)]))
                image = render(cam, world, background, backend=args.backend)["render"]
                write_png(out / "renders" / f"{cam.image_name}.png", image)
                write_png(out / "gt" / f"{cam.image_name}.png", cam.gt_image(background))
            if not args.quiet:
                print(f"{split}: {len(cameras)} images -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
