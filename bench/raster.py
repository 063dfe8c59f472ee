"""Benchmark of the CUDA rasterizer against gsplat 1.5.3 on a synthetic head.

Scene: N Gaussians on a head-sized ellipsoid shell (semi-axes 0.08, 0.11, 0.095 m, radial jitter
4%), 90% with scales around 1.2 mm and 10% around 4 mm (log-normal, sigma 0.4 per axis), random
rotations, opacity sigmoid(N(1, 1.5)), SH degree 3 with small random coefficients. Camera 1 m from
the centre looking at it, tan(fovy/2) = 0.2, tanfovx from the aspect, black background.

For each (N, image) case: forward, and forward + backward of mean(image^2); the median of
``--iters`` (>= 30) calls after ``--warmup`` calls, each timed with CUDA events from an idle GPU
(so CPU launch overhead counts), and the peak memory above the inputs
(``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before, over the
warm-up calls). gsplat (``gsplat.rasterization``, same camera, ``sh_degree=3``) is timed in the
same run on the same scene in both of its modes: ``packed=False``, the faster one here, and
``packed=True``, its default (the configuration of the reference timings that the rasterizer's
targets come from). Each implementation's calls run as one block, as in the spec's reference
timings; with ``--interleave`` the timed calls alternate instead (ours, gsplat, gsplat default,
ours, ...), so that all see the same state of a noisy machine, but each call then also starts
with the host's caches holding the other implementation's work (see bench/NOTES_raster.md).
gsplat's absence is reported, not fatal.

    python bench/raster.py [--cases 100000x802x550,300000x1604x1100] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUB = os.path.join(ROOT, "submodules", "diff-gaussian-rasterization")
if SUB not in sys.path:
    sys.path.insert(0, SUB)

from diff_gaussian_rasterization import GaussianRasterizationSettings, rasterize_gaussians  # noqa: E402

DEFAULT_CASES = "100000x802x550,100000x1604x1100,300000x802x550,300000x1604x1100"
TAN_FOVY = 0.2
SH_DEGREE = 3


def head_scene(n: int, seed: int = 0, device: str = "cuda") -> dict:
    """The benchmark Gaussians (float32, on `device`)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    axes = torch.tensor([0.08, 0.11, 0.095])
    radial = 1.0 + 0.04 * torch.randn(n, 1, generator=g)
    means = d * axes * radial
    big = torch.rand(n, generator=g) < 0.1
    base = torch.where(big, torch.tensor(4e-3), torch.tensor(1.2e-3))
    scales = base[:, None] * torch.exp(0.4 * torch.randn(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    quats = quats / quats.norm(dim=1, keepdim=True)
    opacities = torch.sigmoid(1.0 + 1.5 * torch.randn(n, 1, generator=g))
    shs = torch.randn(n, 16, 3, generator=g) * 0.05
    shs[:, 0] = torch.randn(n, 3, generator=g) * 0.5
    out = dict(means=means, scales=scales, quats=quats, opacities=opacities, shs=shs)
    return {k: v.to(device).contiguous() for k, v in out.items()}


def camera(width: int, height: int, device: str = "cuda"):
    """Settings for our rasterizer and (viewmats, Ks) for gsplat: camera at z = -1, looking +z."""
    tany = TAN_FOVY
    tanx = tany * width / height
    w2v = torch.eye(4, dtype=torch.float64)
    w2v[2, 3] = 1.0
    znear, zfar = 0.01, 100.0
    proj = torch.zeros(4, 4, dtype=torch.float64)
    proj[0, 0], proj[1, 1] = 1.0 / tanx, 1.0 / tany
    proj[2, 2], proj[2, 3] = zfar / (zfar - znear), -zfar * znear / (zfar - znear)
    proj[3, 2] = 1.0
    f32 = lambda t: t.to(device=device, dtype=torch.float32).contiguous()
    settings = GaussianRasterizationSettings(
        image_height=height, image_width=width, tanfovx=tanx, tanfovy=tany,
        bg=torch.zeros(3, device=device), scale_modifier=1.0, viewmatrix=f32(w2v.T),
        projmatrix=f32((proj @ w2v).T), sh_degree=SH_DEGREE,
        campos=torch.tensor([0.0, 0.0, -1.0], device=device), prefiltered=False, debug=False)
    fx = width / (2 * tanx)
    fy = height / (2 * tany)
    K = torch.tensor([[fx, 0, width / 2], [0, fy, height / 2], [0, 0, 1]], dtype=torch.float32)
    return settings, f32(w2v)[None], K[None].to(device)


def ours_fn(scene, settings, backward: bool):
    leaves = {k: v.detach().requires_grad_(backward) for k, v in scene.items()}
    means2D = torch.zeros_like(scene["means"], requires_grad=backward)

    def run():
        img, _ = rasterize_gaussians(settings, leaves["means"], means2D, leaves["opacities"],
                                     shs=leaves["shs"], scales=leaves["scales"],
                                     rotations=leaves["quats"], backend="cuda")
        if backward:
            (img * img).mean().backward()
        return img

    def reset():
        for t in list(leaves.values()) + [means2D]:
            t.grad = None
    return run, reset


def gsplat_fn(scene, viewmats, Ks, width, height, backward: bool, packed: bool = False):
    """gsplat's call (run, reset); packed=False, its faster mode, unless asked otherwise."""
    from gsplat import rasterization

    leaves = {k: v.detach().requires_grad_(backward) for k, v in scene.items()}

    def run():
        img, _, _ = rasterization(leaves["means"], leaves["quats"], leaves["scales"],
                                  leaves["opacities"][:, 0], leaves["shs"], viewmats, Ks, width,
                                  height, sh_degree=SH_DEGREE, packed=packed)
        img = img[0].permute(2, 0, 1)
        if backward:
            (img * img).mean().backward()
        return img

    def reset():
        for t in leaves.values():
            t.grad = None
    return run, reset


def timed_call(run, reset) -> float:
    """One call from an idle GPU, timed with CUDA events (ms)."""
    reset()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def warm_up(run, reset, calls: int) -> int:
    """Runs `calls` calls; returns their peak bytes above what was allocated before."""
    reset()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(calls):
        reset()
        run()
    torch.cuda.synchronize()
    reset()
    return torch.cuda.max_memory_allocated() - base


def measure(fns: dict, warmup: int, iters: int, interleave: bool = False) -> dict:
    """{name: (median ms, all ms, peak bytes)} for {name: (run, reset)}: each warmed up (its
    peak memory) and timed in a block of its own, or, with `interleave`, all warmed up first and
    their timed calls alternated."""
    peaks, times = {}, {name: [] for name in fns}
    if interleave:
        peaks = {name: warm_up(run, reset, max(warmup, 1)) for name, (run, reset) in fns.items()}
        for _ in range(iters):
            for name, (run, reset) in fns.items():
                times[name].append(timed_call(run, reset))
    else:
        for name, (run, reset) in fns.items():
            peaks[name] = warm_up(run, reset, max(warmup, 1))
            times[name] = [timed_call(run, reset) for _ in range(iters)]
    return {name: (statistics.median(t), t, peaks[name]) for name, t in times.items()}


def print_gpu_timeline(prof, calls: int) -> None:
    """Each GPU op of one call: median start and end in us from the call's first kernel (the
    preprocessing), over the profiled calls. Times are the profiler's (its host overhead
    lengthens the gaps; the kernels' own durations and overlaps are what to read)."""
    ops = sorted((e for e in prof.events() if e.device_type.name == "CUDA"),
                 key=lambda e: e.time_range.start)
    starts = [k for k, e in enumerate(ops) if "preprocess_fwd" in e.name]
    if len(starts) != calls:
        print(f"(GPU timeline skipped: {len(starts)} preprocessing kernels for {calls} calls)")
        return
    rows: dict = {}
    for c, first in enumerate(starts):
        last = starts[c + 1] if c + 1 < len(starts) else len(ops)
        t0 = ops[first].time_range.start
        seen: dict = {}
        for e in ops[first:last]:
            name = e.name.split("(")[0].replace("void ", "")[:60]
            seen[name] = seen.get(name, 0) + 1
            key = (name, seen[name])
            rows.setdefault(key, []).append((e.time_range.start - t0, e.time_range.end - t0))
    print("GPU timeline of one call (median us from the preprocessing's start: start, end, "
          "duration):")
    for (name, k), v in sorted(rows.items(), key=lambda kv: statistics.median(a for a, _ in kv[1])):
        a = statistics.median(x for x, _ in v)
        b = statistics.median(y for _, y in v)
        d = statistics.median(y - x for x, y in v)
        tag = f" #{k}" if k > 1 else ""
        print(f"  {a:8.1f} {b:8.1f} {d:7.1f}  {name}{tag}  ({len(v)} calls)")


def profile(cases: str, iters: int = 20, trace_dir: str | None = None):
    """Per-kernel GPU times of our forward+backward (torch.profiler), one table per case."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    for case in cases.split(","):
        n, w, h = (int(v) for v in case.lower().split("x"))
        scene = head_scene(n)
        settings = camera(w, h)[0]
        run, reset = ours_fn(scene, settings, True)
        for _ in range(5):
            reset()
            run()
        torch.cuda.synchronize()
        with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                reset()
                run()
            torch.cuda.synchronize()
        print(f"\n### profile {n} Gaussians, {w}x{h}, forward+backward, {iters} calls")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
        print_gpu_timeline(prof, iters)
        if trace_dir:
            os.makedirs(trace_dir, exist_ok=True)
            prof.export_chrome_trace(os.path.join(trace_dir, f"trace_{n}_{w}x{h}.json"))


def ab(cases: str, var: str, warmup: int = 10, iters: int = 60):
    """Our forward+backward with and without the environment setting `var` ("NAME=VALUE", or
    "NAME" for NAME=1), calls alternated (A B A B ...) so that both see the same machine state;
    median ms of each and their ratio."""
    var, _, value = var.partition("=")
    value = value or "1"
    for case in cases.split(","):
        n, w, h = (int(v) for v in case.lower().split("x"))
        scene = head_scene(n)
        settings = camera(w, h)[0]
        run, reset = ours_fn(scene, settings, True)
        times = {False: [], True: []}
        for it in range(warmup + iters):
            for flag in (False, True):
                if flag:
                    os.environ[var] = value
                else:
                    os.environ.pop(var, None)
                ms = timed_call(run, reset)
                if it >= warmup:
                    times[flag].append(ms)
        os.environ.pop(var, None)
        a, b = statistics.median(times[False]), statistics.median(times[True])
        print(f"ab {n} Gaussians {w}x{h} fwd+bwd: default {a:.3f} ms, {var}={value} {b:.3f} ms, "
              f"default/switched {a / b:.2f}", flush=True)


def stepped_call(settings, leaves: dict, means2D, sync_after_forward: bool = False) -> list:
    """One of the benchmark's forward+backward calls from an idle GPU, with `perf_counter_ns`
    readings: [start, image returned, loss issued, backward() returned, GPU done], or, with
    `sync_after_forward`, [start, image returned, forward's kernels done]."""
    for t in list(leaves.values()) + [means2D]:
        t.grad = None
    torch.cuda.synchronize()
    ns = [time.perf_counter_ns()]
    img, _ = rasterize_gaussians(settings, leaves["means"], means2D, leaves["opacities"],
                                 shs=leaves["shs"], scales=leaves["scales"],
                                 rotations=leaves["quats"], backend="cuda")
    ns.append(time.perf_counter_ns())
    if sync_after_forward:
        torch.cuda.synchronize()
        ns.append(time.perf_counter_ns())
        (img * img).mean().backward()
        torch.cuda.synchronize()
        return ns
    loss = (img * img).mean()
    ns.append(time.perf_counter_ns())
    loss.backward()
    ns.append(time.perf_counter_ns())
    torch.cuda.synchronize()
    ns.append(time.perf_counter_ns())
    return ns


def timeline(cases: str, iters: int = 50):
    """Host-side timeline of our forward+backward (median us from the call's start, idle GPU).

    fwd_ret: the forward returned (it syncs once inside); loss: mean(image^2) issued; bwd_ret:
    backward() returned (every kernel issued); end: GPU finished. A second loop syncs after the
    forward to give fwd_gpu, when the forward's kernels are done. When bwd_ret is close to end,
    the host is the critical path; when far, the GPU is.
    """
    for case in cases.split(","):
        n, w, h = (int(v) for v in case.lower().split("x"))
        scene = head_scene(n)
        settings = camera(w, h)[0]
        leaves = {k: v.detach().requires_grad_(True) for k, v in scene.items()}
        means2D = torch.zeros_like(scene["means"], requires_grad=True)
        rows, rows_sync = [], []
        for it in range(iters + 10):
            ns = stepped_call(settings, leaves, means2D)
            ns_sync = stepped_call(settings, leaves, means2D, sync_after_forward=True)
            if it >= 10:
                rows.append([(t - ns[0]) / 1e3 for t in ns[1:]])
                rows_sync.append((ns_sync[2] - ns_sync[0]) / 1e3)
        med = [statistics.median(c) for c in zip(*rows)]
        print(f"timeline {n} Gaussians {w}x{h} (median us): fwd_ret {med[0]:.0f}, loss "
              f"{med[1]:.0f}, bwd_ret {med[2]:.0f}, end {med[3]:.0f}; fwd_gpu "
              f"{statistics.median(rows_sync):.0f}", flush=True)


def results_table(results: list) -> str:
    """The markdown table of RESULTS.md: ours, gsplat packed=False and gsplat's default mode."""
    lines = ["| N | image (WxH) | pass | ours ms | gsplat ms (packed=False) | ours/gsplat | "
             "gsplat ms (default, packed=True) | ours/gsplat default | ours peak MB | "
             "gsplat peak MB (packed=False / default) |", "|" + "---|" * 10]
    for r in results:
        cells = [f"{r['N'] // 1000}k", f"{r['W']}x{r['H']}", r["mode"], f"{r['ours_ms']:.3f}"]
        for key in ("gsplat", "gsplat_default"):
            g = r.get(f"{key}_ms")
            cells += [f"{g:.3f}", f"{r['ours_ms'] / g:.2f}x"] if g else ["-", "-"]
        cells.append(f"{r['ours_peak_mb']:.1f}")
        peaks = [r.get(f"{key}_peak_mb") for key in ("gsplat", "gsplat_default")]
        cells.append(" / ".join(f"{p:.1f}" for p in peaks) if peaks[0] is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated NxWxH")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-gsplat", action="store_true")
    ap.add_argument("--interleave", action="store_true",
                    help="alternate the implementations' timed calls instead of timing each in "
                         "a block of its own")
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--profile", action="store_true",
                    help="only print torch.profiler kernel tables of our forward+backward")
    ap.add_argument("--trace", default=None,
                    help="with --profile: also write a chrome trace per case to this folder")
    ap.add_argument("--timeline", action="store_true",
                    help="only print the host-side timeline of our forward+backward")
    ap.add_argument("--ab", default=None, metavar="VAR[=VALUE]",
                    help="only compare our forward+backward with and without VAR=VALUE (default "
                         "1) in the environment, calls alternated")
    args = ap.parse_args(argv)
    if args.ab:
        return ab(args.cases, args.ab)
    if args.timeline:
        return timeline(args.cases)
    if args.profile:
        return profile(args.cases, trace_dir=args.trace)
    assert args.iters >= 30, "use at least 30 timed calls"
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}; CUDA {torch.version.cuda}", flush=True)

    have_gsplat = not args.no_gsplat
    if have_gsplat:
        try:
            t0 = time.time()
            import gsplat
            from gsplat.cuda._backend import _C  # noqa: F401 - triggers gsplat's CUDA build
            if _C is None:
                raise RuntimeError("gsplat has no CUDA extension")
            print(f"gsplat {gsplat.__version__} ready in {time.time() - t0:.1f} s", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"gsplat unavailable: {type(exc).__name__}: {exc}", flush=True)
            have_gsplat = False

    results = []
    for case in args.cases.split(","):
        n, w, h = (int(v) for v in case.lower().split("x"))
        scene = head_scene(n)
        settings, viewmats, Ks = camera(w, h)
        check = {}
        with torch.no_grad():
            ours_img = ours_fn(scene, settings, False)[0]()
            _, radii = rasterize_gaussians(settings, scene["means"], torch.zeros_like(scene["means"]),
                                           scene["opacities"], shs=scene["shs"],
                                           scales=scene["scales"], rotations=scene["quats"],
                                           backend="cuda")
            check["visible"] = int((radii > 0).sum())
            if have_gsplat:
                gs_img = gsplat_fn(scene, viewmats, Ks, w, h, False)[0]()
                check["image_rel_diff_vs_gsplat"] = float(
                    (ours_img - gs_img).norm() / gs_img.norm().clamp_min(1e-12))
        del ours_img
        for mode in ("fwd", "fwd+bwd"):
            bwd = mode == "fwd+bwd"
            r = {"N": n, "W": w, "H": h, "mode": mode, **check}
            fns = {"ours": ours_fn(scene, settings, bwd)}
            if have_gsplat:
                for packed, key in ((False, "gsplat"), (True, "gsplat_default")):
                    fns[key] = gsplat_fn(scene, viewmats, Ks, w, h, bwd, packed)
            measured = measure(fns, args.warmup, args.iters, args.interleave)
            for key, (med, times, peak) in measured.items():
                r.update({f"{key}_ms": med, f"{key}_peak_mb": peak / 2**20,
                          f"{key}_times": times})
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if not k.endswith("_times")}), flush=True)
        del scene
        torch.cuda.empty_cache()

    print()
    print(results_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
