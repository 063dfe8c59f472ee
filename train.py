"""Train an STGA head avatar: Gaussians bound to a tracked mesh, fitted to multi-view video.

    python train.py -s <dataset or 'demo'> -m <model folder>

Writes ``<model>/point_cloud/iteration_N/point_cloud.ply`` at --save_iterations and at the end,
``<model>/chkpnt<N>.pth`` at --checkpoint_iterations (and on Ctrl-C), and prints test/val PSNR
and SSIM at --test_iterations. The training itself is ``training.trainer.Trainer``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import utils.threads  # noqa: F401 - before torch, which reads OpenMP's waiting settings once
from arguments import (DEFAULT_ITERATIONS, DEMO_ITERATIONS, add_model_args,
                       add_optimization_args, add_pipeline_args, check_output_folder,
                       model_path_for, torch_device)
from scene import DEMO_SOURCE, builtin_variant
from scene.errors import DatasetError
from training.lock import FolderLock, FolderLockedError
from training.trainer import OutputSpaceError, Trainer

__all__ = ["Trainer", "DatasetError", "build_parser", "resolve_defaults", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train an STGA head avatar (3D Gaussians bound to a tracked mesh).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(parser)
    add_optimization_args(parser)
    add_pipeline_args(parser)
    g = parser.add_argument_group("run")
    g.add_argument("--test_iterations", nargs="+", type=int, default=[7_000, 30_000],
                   help="iterations at which the test and val splits are rendered and scored "
                        "(the last iteration is always scored)")
    g.add_argument("--save_iterations", nargs="+", type=int, default=[7_000, 30_000],
                   help="iterations at which the model PLY is saved (the last is always saved)")
    g.add_argument("--checkpoint_iterations", nargs="+", type=int, default=[],
                   help="iterations at which a resumable checkpoint chkpnt<N>.pth is written")
    g.add_argument("--start_checkpoint", default=None,
                   help="resume from this checkpoint (parameters, optimiser, schedule, RNG)")
    g.add_argument("--checkpoint_minutes", type=float, default=10.0,
                   help="every this many minutes of training, write <model>/chkpnt_latest.pth "
                        "(replacing the previous one), so a crash loses at most that much work; "
                        "removed when the run completes; 0 turns it off (default 10)")
    g.add_argument("--resume_other_dataset", action="store_true",
                   help="allow --start_checkpoint from a run on another dataset (deliberate "
                        "fine-tuning); refused by default, since a checkpoint keeps a "
                        "fingerprint of its training cameras and meshes")
    return parser


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    if args.iterations is None:
        args.iterations = DEMO_ITERATIONS if args.source_path == DEMO_SOURCE else DEFAULT_ITERATIONS
    if args.position_lr_max_steps is None:
        args.position_lr_max_steps = args.iterations
    if args.global_warmup is None:
        args.global_warmup = args.iterations // 10
    if args.densify_until_iter is None:
        args.densify_until_iter = args.iterations // 2
    if args.checkpoint_minutes < 0:
        raise ValueError(f"--checkpoint_minutes must be 0 or more, got {args.checkpoint_minutes}")
    device = torch_device(args.device)
    args.device = str(device)
    if args.crop_local_steps is None:   # on where crops were measured to pay: the CPU
        args.crop_local_steps = device.type == "cpu"
    if builtin_variant(args.source_path) is None:   # kept in cfg_args.json: any folder works
        args.source_path = str(Path(args.source_path).resolve())
    return args


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = resolve_defaults(parser.parse_args(argv))
    except ValueError as exc:   # a usage error found after parsing (e.g. no CUDA for --device)
        parser.error(str(exc))
    try:
        check_output_folder(model_path_for(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with FolderLock(model_path_for(args)):   # one training per model folder
            Trainer(args).run()
    except (DatasetError, FolderLockedError, OutputSpaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
