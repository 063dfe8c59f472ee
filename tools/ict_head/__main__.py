"""Write the realistic synthetic head as an STGA dataset.

    python -m tools.ict_head <output folder> [--variant demo|large] [--seed N] [--device cuda]

``train.py -s demo`` / ``-s demo-large`` generate the same data into the cache by themselves;
this command writes it anywhere, with other seeds or sizes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tools.ict_head.writer import VARIANTS, write_head_dataset


SIZE_FIELDS = {
    "width": "image width in pixels", "height": "image height in pixels",
    "n_cameras": "number of cameras on the arc (the held-out val camera included)",
    "n_train": "number of training keyframes", "n_test": "number of held-out test keyframes",
    "stride": "25 fps frames between training keyframes",
    "test_stride": "25 fps frames between test keyframes",
    "supersample": "samples per pixel side of the ground-truth renderer",
    "points": "number of initial Gaussians in points3d.ply (spread by face area)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.ict_head",
        description="Generate the realistic synthetic head (ICT Face Model Light, painted and "
                    "animated) as an STGA dataset: images, region maps, tracked meshes, "
                    "selection and initial points.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", type=Path, help="folder to create (must not exist, see --force)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="demo",
                   help="size: demo (the default: CPU quick start, 110x160, 8 cameras, 25 "
                        "keyframes) or large (550x802, 16 cameras, 76 keyframes; for a GPU)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the performance, the paint's noise and the iris colour "
                        "(default 0)")
    p.add_argument("--teeth", action="store_true",
                   help="write the teeth into the tracked mesh too (as FLAME with "
                        "GaussianAvatars' teeth); by default they appear only in the images")
    p.add_argument("--device", default=None,
                   help="torch device of the renderer (default: cuda when available, else cpu)")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    for field, what in SIZE_FIELDS.items():
        p.add_argument(f"--{field}", type=int, default=None,
                       help=f"override the variant's {what}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {k: getattr(args, k) for k in SIZE_FIELDS if getattr(args, k) is not None}
    if any(v < 1 for v in overrides.values()):
        print("error: size overrides must be positive integers", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        write_head_dataset(args.output, args.variant, seed=args.seed, teeth=args.teeth,
                           device=device, overwrite=args.force, **overrides)
    except FileExistsError:
        print(f"error: {args.output} already exists (use --force to replace it)", file=sys.stderr)
        return 2
    print(f"wrote {args.output} in {time.perf_counter() - start:.1f} s on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
