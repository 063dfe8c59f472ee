"""Benchmark of ``selection.compute_selection`` on a synthetic FLAME-sized sequence.

The spec asks for a 3000-frame, 10k-face sequence "in seconds"; this measures it on a UV-sphere
head (10000 faces, 5002 welded vertices, like FLAME's 9976 / 5023) with a random jaw opening and
a random head pose per frame, using the default options (reference chosen by the median rule,
which costs a second alignment pass).

    python bench/selection.py [--frames 3000] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from selection import compute_selection  # noqa: E402
from selection.synthetic import jaw_sequence  # noqa: E402


def machine() -> str:
    """One line describing the machine, so numbers in RESULTS.md can be compared."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"numpy {np.__version__}")


def main() -> None:
    """Time compute_selection and print the median of ``--runs`` runs."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=3000, help="number of frames T (default 3000)")
    p.add_argument("--runs", type=int, default=3, help="timed runs; the median is reported")
    p.add_argument("--reference", type=int, default=None,
                   help="fixed reference frame index (default: the median rule)")
    args = p.parse_args()

    t0 = time.perf_counter()
    meshes, faces, verts, _ = jaw_sequence(T=args.frames, seed=0)
    print(f"sequence: {meshes.shape} {meshes.dtype} ({meshes.nbytes / 2**30:.2f} GiB), "
          f"generated in {time.perf_counter() - t0:.1f} s")
    times = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        res = compute_selection(meshes, reference=args.reference)
        times.append(time.perf_counter() - t0)
        print(f"run {i + 1}: {times[-1]:.2f} s")
    fr = res.fractions
    print(f"reference frame {res.reference}; selected fraction min {fr.min():.3f} / "
          f"median {np.median(fr):.3f} / max {fr.max():.3f}")
    print(f"median of {args.runs} runs: {statistics.median(times):.2f} s "
          f"({args.frames} frames x {meshes.shape[1]} faces) on {machine()}")


if __name__ == "__main__":
    main()
