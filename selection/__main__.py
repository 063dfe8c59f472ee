"""Command line: ``python -m selection <data_dir>`` (from the repository's root) or
``python <repository>/selection <data_dir>`` (from any folder) writes
``training_faces/XXXX.npy``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

if not __package__:   # run as ``python <repository>/selection``: the repository is the root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from scene.errors import DatasetError  # noqa: E402
from scene.meshes import load_mesh_sequence  # noqa: E402
from selection.core import DEFAULT_DILATE, DEFAULT_KEEP, DEFAULT_TAU, compute_selection  # noqa
from utils.atomic import atomic_path  # noqa: E402

FACES_DIR = "training_faces"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag is documented because --help is the user manual."""
    p = argparse.ArgumentParser(
        prog="python -m selection",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Compute, for every keyframe, the triangles whose Gaussians are trained at that\n"
            "keyframe, and write them to <data_dir>/training_faces/XXXX.npy (sorted int32).\n\n"
            "Every mesh in <data_dir>/meshes/mesh_XXXX.json is rigidly aligned to a reference\n"
            "(neutral) mesh with a trimmed Kabsch fit, so head pose is removed and moving regions\n"
            "(jaw, lips, eyes) do not tilt the fit. A face is selected when the mean displacement\n"
            "of its three corners is at least --tau; the selection then grows by --dilate rings\n"
            "of faces sharing a vertex. Prints the selected fraction per frame (min / median /\n"
            "max) and the reference keyframe."),
    )
    p.add_argument("data_dir", type=Path,
                   help="dataset folder containing meshes/mesh_XXXX.json (one per keyframe)")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU,
                   help="displacement threshold in scene units (metres for NeRSemble/FLAME); "
                        f"default {DEFAULT_TAU} = {DEFAULT_TAU * 1000:g} mm, above tracking "
                        "jitter and below visible expression motion")
    p.add_argument("--dilate", type=int, default=DEFAULT_DILATE,
                   help="rings of vertex-sharing neighbour faces added around the selected faces; "
                        f"0 turns growing off (default {DEFAULT_DILATE})")
    p.add_argument("--reference", type=int, default=None, metavar="KEYFRAME",
                   help="keyframe id (as in mesh_XXXX.json) of the neutral mesh; default: the "
                        "keyframe closest to the per-vertex median of the aligned sequence")
    p.add_argument("--keep", type=float, default=DEFAULT_KEEP,
                   help="fraction of vertices the trimmed rigid fit keeps (0 < keep <= 1; 1 = "
                        f"plain least squares, not robust); default {DEFAULT_KEEP}")
    p.add_argument("--dry_run", action="store_true",
                   help="compute and print the statistics, but write no files")
    return p


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """Write through a temporary file and rename, so a reader never sees a partial file."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command; returns the exit status (2 for bad input, with a one-line message)."""
    args = build_parser().parse_args(argv)
    try:
        keyframes, meshes = load_mesh_sequence(args.data_dir)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ref_index = None
    if args.reference is not None:
        if args.reference not in keyframes:
            print(f"error: --reference {args.reference}: no mesh for that keyframe in "
                  f"{args.data_dir / 'meshes'}", file=sys.stderr)
            return 2
        ref_index = keyframes.index(args.reference)
    start = time.perf_counter()
    try:
        result = compute_selection(meshes, tau=args.tau, dilate=args.dilate,
                                   reference=ref_index, keep=args.keep)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start

    fr = result.fractions
    F = meshes.shape[1]
    print(f"frames: {len(keyframes)}, faces: {F}, tau: {result.tau:g}, dilate: {result.dilate}, "
          f"time: {elapsed:.2f} s")
    ref_kf = keyframes[result.reference]
    how = "given" if ref_index is not None else "closest to the per-vertex median"
    print(f"reference keyframe: {ref_kf} ({how})")
    print(f"selected fraction: min {fr.min():.4f} (keyframe {keyframes[int(np.argmin(fr))]}) / "
          f"median {np.median(fr):.4f} / max {fr.max():.4f} "
          f"(keyframe {keyframes[int(np.argmax(fr))]})")
    if args.dry_run:
        print("dry run: no files written")
        return 0
    out_dir = args.data_dir / FACES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for kf, faces in zip(keyframes, result.faces):
        _atomic_save(out_dir / f"{kf:04d}.npy", np.ascontiguousarray(faces, dtype=np.int32))
    print(f"wrote {len(keyframes)} files to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
