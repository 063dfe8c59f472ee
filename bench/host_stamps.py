"""Where the host time of one forward+backward goes, stamped inside the extension.

Builds the CUDA extension once more with ``-DSTGA_HOST_TRACE`` (its own first-use build, named
``stga_host_trace``; the package's own build has no stamps), then runs the benchmark's call
(``bench/raster.py``: forward, ``mean(image^2)``, ``backward()``, each call from an idle GPU) and
prints, for every stamp, its median time in us from the call's start. ``fwd.*`` and ``bwd.*``
stamps are taken inside the extension (``steady_clock``, Python's ``perf_counter_ns`` clock);
``py.*`` in this script: the image returned, the loss issued, ``backward()`` returned, and the
GPU done (after ``torch.cuda.synchronize()``).

    python bench/host_stamps.py [--cases 100000x802x550,300000x1604x1100] [--iters 100]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import raster as rb  # noqa: E402
from diff_gaussian_rasterization import cuda_backend  # noqa: E402


def load_traced():
    """The extension built with its host stamps compiled in."""
    from torch.utils.cpp_extension import load

    src = cuda_backend._source_dir()
    return load(name="stga_host_trace", sources=[os.path.join(src, f) for f in cuda_backend._SOURCES],
                extra_include_paths=[src], extra_cflags=["-O3", "-DSTGA_HOST_TRACE"],
                extra_cuda_cflags=cuda_backend._nvcc_flags())


def stamps_of_one_call(settings, leaves, means2D, traced) -> dict:
    """{stamp: ns from the call's start} of one forward+backward from an idle GPU."""
    traced._host_stamps()  # forget earlier stamps
    t0, image, loss, backward, done = rb.stepped_call(settings, leaves, means2D)
    out = {name: ns - t0 for name, ns in traced._host_stamps()}
    out.update({"py.image": image - t0, "py.loss": loss - t0, "py.backward": backward - t0,
                "py.gpu_done": done - t0})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default="100000x802x550,300000x1604x1100", help="NxWxH, comma-separated")
    ap.add_argument("--iters", type=int, default=100, help="timed calls per case (after 10 warm-up)")
    args = ap.parse_args(argv)
    if not cuda_backend.available():
        raise SystemExit(f"no CUDA rasterizer: {cuda_backend.load_error()}")
    t = time.time()
    traced = load_traced()
    print(f"traced build ready in {time.time() - t:.1f} s", flush=True)
    cuda_backend._ext = traced
    for case in args.cases.split(","):
        n, w, h = (int(v) for v in case.lower().split("x"))
        scene = rb.head_scene(n)
        settings = rb.camera(w, h)[0]
        leaves = {k: v.detach().requires_grad_(True) for k, v in scene.items()}
        means2D = torch.zeros_like(scene["means"], requires_grad=True)
        rows = [stamps_of_one_call(settings, leaves, means2D, traced)
                for _ in range(10 + args.iters)][10:]
        names = sorted(rows[0], key=lambda k: statistics.median(r[k] for r in rows))
        print(f"\n{n} Gaussians, {w}x{h}, forward+backward: median us from the call's start "
              f"({args.iters} calls)")
        prev = 0.0
        for k in names:
            med = statistics.median(r[k] for r in rows) / 1e3
            print(f"  {k:<18} {med:8.1f}  (+{med - prev:6.1f})")
            prev = med


if __name__ == "__main__":
    main()
