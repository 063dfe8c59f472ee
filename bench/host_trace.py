"""Where the host time of one forward+backward goes, and gsplat in both of its modes.

1. For our rasterizer and for gsplat (``packed=False``, as in ``bench/raster.py``): the CPU-side
   ops of one profiled forward+backward of mean(image^2) (start and duration in us from the first
   op, the thread, the nesting depth up to 3), then the GPU kernels on the same clock. The
   profiler inflates every op, so read the order and the gaps, not the absolute times.
2. Ours, gsplat ``packed=False`` and gsplat ``packed=True`` (its default) timed in alternated
   calls (median of 60 after 10 warm-up rounds), each call from an idle GPU as in
   ``bench/raster.py``.

    python bench/host_trace.py [--case 100000x802x550] [--no-trace]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import raster as rb  # noqa: E402


def print_trace(run, reset, label: str) -> None:
    """The CPU ops and GPU kernels of one profiled call, after warm-up."""
    for _ in range(10):
        reset()
        run()
    torch.cuda.synchronize()
    for _ in range(2):  # the first profiled call carries the profiler's own start-up
        reset()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
    events = list(prof.events())
    cpu = sorted((e for e in events if e.device_type.name == "CPU"),
                 key=lambda e: e.time_range.start)
    gpu = sorted((e for e in events if e.device_type.name == "CUDA"),
                 key=lambda e: e.time_range.start)
    t0 = cpu[0].time_range.start if cpu else 0.0

    def depth(e) -> int:
        d, p = 0, e.cpu_parent
        while p is not None:
            d, p = d + 1, p.cpu_parent
        return d

    print(f"\n##### {label}: CPU ops (start us, duration us, thread, name by depth)")
    for e in cpu:
        d = depth(e)
        if d <= 3:
            print(f"{e.time_range.start - t0:8.1f} {e.time_range.elapsed_us():7.1f} "
                  f"t{e.thread % 1000:03d} {'  ' * d}{e.name}")
    print(f"##### {label}: GPU kernels (start us, duration us)")
    for e in gpu:
        print(f"{e.time_range.start - t0:8.1f} {e.time_range.elapsed_us():7.1f} {e.name[:90]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", default="100000x802x550", help="NxWxH")
    ap.add_argument("--no-trace", action="store_true", help="only the alternated timings")
    args = ap.parse_args(argv)
    n, w, h = (int(v) for v in args.case.lower().split("x"))
    scene = rb.head_scene(n)
    settings, viewmats, Ks = rb.camera(w, h)
    fns = {"ours": rb.ours_fn(scene, settings, True)}
    try:
        for packed in (False, True):
            fns[f"gsplat packed={packed}"] = rb.gsplat_fn(scene, viewmats, Ks, w, h, True,
                                                          packed=packed)
    except ImportError as exc:
        print(f"gsplat unavailable: {exc}")
    if not args.no_trace:
        for label in ("ours", "gsplat packed=False"):
            if label in fns:
                print_trace(*fns[label], label)
    times = {k: [] for k in fns}
    for it in range(70):
        for k, (run, reset) in fns.items():
            ms = rb.timed_call(run, reset)
            if it >= 10:
                times[k].append(ms)
    print(f"\n{n} Gaussians, {w}x{h}, forward+backward, alternated calls:")
    for k, v in times.items():
        print(f"  {k}: median {statistics.median(v):.3f} ms")


if __name__ == "__main__":
    main()
