"""Time train.py's real training step, phase by phase, on a GPU or the CPU.

    python bench/train_step.py            # -s demo-large: 550x802, 16 cameras, 100k Gaussians
    python bench/train_step.py --device cpu --width 110 --height 160 --cameras 4 \\
        --keyframes 4 --gaussians 10000 --iterations 20 --warmup 5   # a small CPU smoke run

The data set is the realistic head's large variant (``-s demo-large``), or that variant at the
requested size (cached, so later runs reuse it).
Each configuration (``--configs``) trains a fresh ``train.Trainer`` twice, through its own
``run()`` loop and from the same seed, so both passes do exactly the same iterations:

1. phase pass: the calls ``Trainer.train_step`` makes are wrapped from outside and timed as
   data (camera pick; the images are staged on the GPU before training), select (rows of the
   frame's faces), crop (the local step's crop), binding (``model.pose``), render, loss (photometric + regularisers),
   backward, step (optimiser step and zero_grad), densify (gradient statistics, clone/split/prune, opacity
   reset) and other (the rest of ``train_step``). On CUDA every phase boundary synchronises the
   device, which perturbs the total: compare the phase pass's total with pass 2.
2. whole-iteration pass: no wrapper but one at the iteration boundary, no added synchronisation
   (CUDA events per iteration); gives the true time per iteration, iterations per second and the
   peak CUDA memory.

The first ``--warmup`` iterations of every pass are run but not timed; statistics are the median,
10th and 90th percentile and mean over ``--iterations`` iterations.

So that the timed iterations are those of a real run's busy stage, train.py gets
``--global_warmup 0`` (selective frames from the first iteration, still a global frame every
``--global_every``) and ``--densify_from_iter 0`` (clone/split/prune every
``--densification_interval`` iterations inside the window), and the model starts at the highest
SH degree (``--sh``). Everything else is train.py's defaults; more train.py options can follow
``--``.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
import training.trainer as trainer_module  # noqa: E402
from tools.ict_head.writer import (FORMAT_VERSION, default_cache_dir,  # noqa: E402
                                   ensure_head_dataset, write_head_dataset)

PHASES = ("data", "select", "crop", "binding", "render", "loss", "backward", "step", "densify", "other")
# The selective configurations keep the paper code's 1 global frame in 20, so that the timed
# steps are mostly selective ones (train.py's default is now 1 in 2).
CONFIGS = {"paper": ["--selection", "paper", "--global_every", "20", "--no-crop_local_steps"],
           "none": ["--selection", "none", "--no-crop_local_steps"],
           "paper-crop": ["--selection", "paper", "--global_every", "20", "--crop_local_steps"],
           "paper-crop-error": ["--selection", "paper", "--global_every", "20",
                                "--crop_local_steps", "--error_faces", "0.1"]}
# Put the timed window in the selective stage, with densification events inside it.
TRAIN_OVERRIDES = ["--global_warmup", "0", "--densify_from_iter", "0"]


# --- data -----------------------------------------------------------------------------------
SIZE_OPTIONS = {"width": "width", "height": "height", "cameras": "n_cameras",
                "keyframes": "n_train", "gaussians": "points", "supersample": "supersample"}


def prepare_dataset(args: argparse.Namespace) -> Path:
    """The dataset folder: ``--data`` as is when it holds a dataset, else the realistic head's
    large variant (``-s demo-large``, cached) or, with size options, that variant resized and
    written there (or into the cache); generation is atomic, so a cached copy is whole."""
    overrides = {field: getattr(args, opt) for opt, field in SIZE_OPTIONS.items()
                 if getattr(args, opt) is not None}
    if args.data is not None:
        path = Path(args.data)
        if (path / "transforms_train.json").is_file():
            print(f"Using the dataset in {path} (size options ignored)")
            return path
    elif not overrides:
        return ensure_head_dataset("large")
    else:
        tag = "_".join(f"{k}{v}" for k, v in sorted(overrides.items()))
        path = default_cache_dir() / f"bench_train_step_head_v{FORMAT_VERSION}_{tag}"
        if (path / "transforms_train.json").is_file():
            print(f"Reusing the cached dataset {path}")
            return path
    print(f"Writing the realistic head (large variant with {overrides or 'its own sizes'}) "
          f"into {path}")
    start = time.perf_counter()
    try:
        write_head_dataset(path, "large", **overrides)
    except FileExistsError:
        if not (path / "transforms_train.json").is_file():  # a stale, incomplete folder
            raise
    print(f"Dataset ready in {time.perf_counter() - start:.1f} s")
    return path


# --- instrumentation ------------------------------------------------------------------------
def synchroniser(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (a no-op on the CPU, where work is not queued)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class PhaseClock:
    """Exclusive wall time per phase within one iteration.

    Open phases form a stack; the time between two boundaries goes to the innermost open phase,
    so a wrapped call made inside another would not be counted twice. Time inside the iteration
    but in no wrapped call goes to "other". Every boundary synchronises the device.
    """

    def __init__(self, device: torch.device):
        self.sync = synchroniser(device)
        self.stack: List[str] = []
        self.current: Dict[str, float] = {}
        self.last = 0.0

    @property
    def active(self) -> bool:
        return bool(self.stack)

    def _mark(self) -> None:
        self.sync()
        now = time.perf_counter()
        self.current[self.stack[-1]] += now - self.last
        self.last = now

    def begin_iteration(self) -> None:
        self.sync()
        self.current = dict.fromkeys(PHASES, 0.0)
        self.stack = ["other"]
        self.last = time.perf_counter()

    def end_iteration(self) -> Dict[str, float]:
        self._mark()
        self.stack = []
        return self.current

    def enter(self, phase: str) -> None:
        self._mark()
        self.stack.append(phase)

    def leave(self) -> None:
        self._mark()
        self.stack.pop()


class Patches:
    """Attribute replacements undone on exit (instance, class or module attributes alike)."""

    _MISSING = object()

    def __init__(self):
        self.saved: List[tuple] = []

    def set(self, owner: object, name: str, value: object) -> None:
        self.saved.append((owner, name, vars(owner).get(name, self._MISSING)))
        setattr(owner, name, value)

    def __enter__(self) -> "Patches":
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, old in reversed(self.saved):
            if old is self._MISSING:
                delattr(owner, name)   # an instance attribute shadowing its class's method
            else:
                setattr(owner, name, old)
        self.saved.clear()


def timed(clock: PhaseClock, phase: str, fn: Callable,
          after: Optional[Callable[[object], None]] = None) -> Callable:
    """``fn`` counted in ``phase`` while an iteration is being timed, untouched otherwise."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not clock.active:
            return fn(*args, **kwargs)
        clock.enter(phase)
        try:
            result = fn(*args, **kwargs)
        finally:
            clock.leave()
        if after is not None:
            after(result)
        return result

    return wrapper


def instrument(patches: Patches, trainer: train.Trainer, clock: PhaseClock,
               trainable: List[float]) -> None:
    """Wrap every call ``Trainer.train_step`` makes, by phase (see the module docstring).

    ``trainable`` receives each timed step's fraction of trainable Gaussians.
    """
    def count(selection) -> None:
        n = trainer.model.num_gaussians
        trainable.append(1.0 if selection is None else selection.count / max(n, 1))

    wraps = [
        (trainer.schedule, "next", "data"), (trainer.images, "fetch", "data"),
        (trainer, "trainable", "select"),
        (trainer, "triangles", "binding"), (trainer.model, "pose", "binding"),
        (trainer.crops, "plan", "crop"),
        (trainer_module, "render", "render"),
        (trainer_module, "training_loss", "loss"), (trainer, "regularisation", "loss"),
        (torch.Tensor, "backward", "backward"),
        (trainer.optimizer, "step", "step"), (trainer.optimizer, "zero_grad", "step"),
        (trainer.density, "accumulate", "densify"),
        (trainer.density, "densify_and_prune", "densify"),
        (trainer.density, "reset_opacity", "densify"),
    ]
    for owner, name, phase in wraps:
        after = count if name == "trainable" else None
        patches.set(owner, name, timed(clock, phase, getattr(owner, name), after))


# --- one configuration ----------------------------------------------------------------------
def make_trainer(argv: Sequence[str], args: argparse.Namespace) -> train.Trainer:
    """A fresh Trainer from train.py's own parser, cut to warm-up + timed iterations.

    The schedule-derived defaults (learning-rate decay, end of densification) are resolved for a
    full-length run first, then only the run's length is shortened.
    """
    trainer = train.Trainer(train.resolve_defaults(train.build_parser().parse_args(argv)))
    trainer.args.iterations = trainer.first_iteration - 1 + args.warmup + args.iterations
    trainer.model.active_sh_degree = min(args.sh, trainer.model.max_sh_degree)
    trainer.evaluate = lambda iteration: {}      # the last iteration would score and save:
    trainer.save_model = lambda iteration: None  # not training work, so not timed or done
    return trainer


def summary(values: Sequence[float]) -> Dict[str, float]:
    """Median, p10, p90 and mean of ``values``."""
    a = np.asarray(values, dtype=np.float64)
    p10, median, p90 = np.percentile(a, [10, 50, 90])
    return {"median": float(median), "p10": float(p10), "p90": float(p90), "mean": float(a.mean())}


def phase_pass(argv: Sequence[str], args: argparse.Namespace) -> Dict:
    """Pass 1: per-phase times of each timed iteration (synchronised phase boundaries)."""
    trainer = make_trainer(argv, args)
    device = trainer.device
    clock = PhaseClock(device)
    first_timed = trainer.first_iteration + args.warmup
    records: List[Dict[str, float]] = []
    trainable: List[float] = []
    inner = trainer.train_step

    def step(iteration: int):
        if iteration < first_timed:
            return inner(iteration)
        clock.begin_iteration()
        try:
            return inner(iteration)
        finally:
            records.append(clock.end_iteration())

    with Patches() as patches:
        instrument(patches, trainer, clock, trainable)
        patches.set(trainer, "train_step", step)
        trainer.run()
    phases = {p: summary([1000.0 * r[p] for r in records]) for p in PHASES}
    total = summary([1000.0 * sum(r.values()) for r in records])
    return {"phases_ms": phases, "total_ms": total,
            "trainable_fraction": float(np.mean(trainable)) if trainable else 1.0}


def iteration_pass(argv: Sequence[str], args: argparse.Namespace) -> Dict:
    """Pass 2: whole iterations of ``Trainer.run`` without added synchronisation.

    On CUDA one event is recorded as each timed iteration starts (and one after the last), read
    once at the end; on the CPU the clock is read instead. Wall time of the window gives it/s.
    """
    trainer = make_trainer(argv, args)
    device = trainer.device
    cuda = device.type == "cuda"
    sync = synchroniser(device)
    first_timed = trainer.first_iteration + args.warmup
    last = trainer.args.iterations
    marks: List = []
    wall: Dict[str, float] = {}
    start_gaussians: Dict[str, int] = {}
    inner = trainer.train_step

    def mark():
        if not cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def step(iteration: int):
        if iteration == first_timed:
            sync()
            start_gaussians["n"] = trainer.model.num_gaussians
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            wall["start"] = time.perf_counter()
        if iteration >= first_timed:
            marks.append(mark())
        result = inner(iteration)
        if iteration == last:
            marks.append(mark())
            sync()
            wall["end"] = time.perf_counter()
        return result

    with Patches() as patches:
        patches.set(trainer, "train_step", step)
        trainer.run()
    if cuda:
        per_iteration = [a.elapsed_time(b) for a, b in zip(marks, marks[1:])]
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        per_iteration = [1000.0 * (b - a) for a, b in zip(marks, marks[1:])]
        peak = None
    seconds = wall["end"] - wall["start"]
    camera = trainer.train_cameras[0]
    return {"image": f"{camera.width}x{camera.height}", "train_images": len(trainer.train_cameras),
            "iteration_ms": summary(per_iteration), "seconds": seconds,
            "iterations_per_second": len(per_iteration) / seconds, "peak_cuda_mib": peak,
            "gaussians_start": start_gaussians["n"], "gaussians_end": trainer.model.num_gaussians}


def profile_pass(argv: Sequence[str], args: argparse.Namespace) -> str:
    """Pass 3 (``--profile``): ``torch.profiler`` tables of the timed iterations, by operator."""
    from torch.profiler import ProfilerActivity, profile

    trainer = make_trainer(argv, args)
    first_timed = trainer.first_iteration + args.warmup
    activities = [ProfilerActivity.CPU]
    if trainer.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    prof = profile(activities=activities)
    inner = trainer.train_step

    def step(iteration: int):
        if iteration == first_timed:
            prof.__enter__()
        return inner(iteration)

    with Patches() as patches:
        patches.set(trainer, "train_step", step)
        trainer.run()
    synchroniser(trainer.device)()
    prof.__exit__(None, None, None)
    table = prof.key_averages()
    sort = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    return (table.table(sort_by="self_cpu_time_total", row_limit=30) + "\n"
            + table.table(sort_by=sort, row_limit=30))


def run_config(name: str, data: Path, args: argparse.Namespace, extra: List[str]) -> Dict:
    """Both passes of one configuration, each from a fresh Trainer, in a throw-away model folder."""
    with tempfile.TemporaryDirectory(prefix="stga_train_step_") as tmp:
        argv = ["-s", str(data), "-m", tmp, "--quiet", "--device", args.device,
                "--test_iterations", "-1", "--save_iterations", "-1", *TRAIN_OVERRIDES,
                *CONFIGS[name], *extra]
        print(f"[{name}] phase pass: train.py {' '.join(argv)}", flush=True)
        phases = phase_pass(argv, args)
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(f"[{name}] whole-iteration pass", flush=True)
        whole = iteration_pass(argv, args)
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if args.profile:
            print(f"[{name}] profiler pass", flush=True)
            print(profile_pass(argv, args), flush=True)
    return {"train_argv": argv[4:], **whole, **phases}


# --- report ---------------------------------------------------------------------------------
def markdown(setup: Dict, results: Dict[str, Dict]) -> str:
    """The report: set-up, one summary row per configuration, then per-phase rows."""
    lines = [f"Training step on {setup['device_name']} ({setup['device']}), torch "
             f"{setup['torch']}: images {setup['image']}, {setup['train_images']} training "
             f"images, dataset {setup['data']}.",
             f"Warm-up {setup['warmup']} iterations (not timed), then {setup['iterations']} timed; "
             f"train.py options besides the defaults: {' '.join(setup['train_overrides'])}; "
             f"active SH degree {setup['sh']}.", "",
             "Whole iterations (no added synchronisation; the true cost):", "",
             "| config | Gaussians (start -> end) | trainable per step | ms/it median | p10 | p90 "
             "| mean | it/s | peak CUDA MiB | phase-pass ms/it (mean) |",
             "|" + " --- |" * 10]
    for name, r in results.items():
        it = r["iteration_ms"]
        peak = "-" if r["peak_cuda_mib"] is None else f"{r['peak_cuda_mib']:.0f}"
        lines.append(
            f"| {name} | {r['gaussians_start']} -> {r['gaussians_end']} | "
            f"{100 * r['trainable_fraction']:.1f}% | {it['median']:.2f} | {it['p10']:.2f} | "
            f"{it['p90']:.2f} | {it['mean']:.2f} | {r['iterations_per_second']:.1f} | {peak} | "
            f"{r['total_ms']['mean']:.2f} |")
    sync_note = ("every phase boundary synchronises the device, which perturbs the total "
                 "(compare the last column above with the mean)" if setup["device"] != "cpu"
                 else "on the CPU nothing is queued, so timing each phase costs next to nothing")
    lines += ["", f"Phases (ms per iteration; {sync_note}):", "",
              "| config | phase | median | p10 | p90 | mean | share of mean |",
              "|" + " --- |" * 7]
    for name, r in results.items():
        total = r["total_ms"]["mean"]
        for phase in PHASES:
            s = r["phases_ms"][phase]
            lines.append(f"| {name} | {phase} | {s['median']:.3f} | {s['p10']:.3f} | "
                         f"{s['p90']:.3f} | {s['mean']:.3f} | {100 * s['mean'] / total:.1f}% |")
        t = r["total_ms"]
        lines.append(f"| {name} | **total** | {t['median']:.3f} | {t['p10']:.3f} | "
                     f"{t['p90']:.3f} | {t['mean']:.3f} | 100% |")
    return "\n".join(lines)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and shows every default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    d = parser.add_argument_group(
        "data (the realistic head's large variant, -s demo-large: 550x802, 16 cameras, "
        "64 training keyframes, 100k initial Gaussians; generated once and cached)")
    d.add_argument("--width", type=int, default=None, help="image width in pixels")
    d.add_argument("--height", type=int, default=None, help="image height in pixels")
    d.add_argument("--cameras", type=int, default=None,
                   help="cameras on the arc, the held-out val camera included")
    d.add_argument("--gaussians", type=int, default=None,
                   help="initial Gaussians (points3d.ply, spread over the faces by area)")
    d.add_argument("--keyframes", type=int, default=None,
                   help="training keyframes (each seen by every training camera)")
    d.add_argument("--supersample", type=int, default=None,
                   help="anti-aliasing of the generated ground truth (samples per pixel side)")
    d.add_argument("--data", default=None,
                   help="dataset folder: used as is when it holds a dataset (any STGA dataset; "
                        "the size options are then ignored), else the head is written there; "
                        "default: the cached large variant, or with size options a folder named "
                        "after them under $STGA_CACHE (or ~/.cache/stga)")
    r = parser.add_argument_group("timing")
    r.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                   help="paper: train.py's default selective training; none: --selection none "
                        "(every Gaussian trains at every step); paper-crop: selective steps "
                        "rendered and scored on the trainable rows' crop (--crop_local_steps)")
    r.add_argument("--iterations", type=int, default=500,
                   help="timed iterations per pass (statistics are over these)")
    r.add_argument("--warmup", type=int, default=50,
                   help="iterations run before timing starts in every pass (allocator, kernel "
                        "and cache warm-up), excluded from the statistics")
    r.add_argument("--sh", type=int, default=3, choices=range(4),
                   help="active SH degree during the window (a real run reaches train.py's "
                        "maximum, 3, after 3 x --sh_up_every iterations and stays there)")
    r.add_argument("--device", default=None,
                   help="torch device (default: cuda when available, else cpu)")
    r.add_argument("--profile", action="store_true",
                   help="also run a third pass under torch.profiler and print its operator "
                        "tables (by self CPU time and by self device time)")
    r.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="train.py options after --, applied to every configuration after "
                             "the bench's own (so they win; --selection is set by --configs)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.iterations < 2 or args.warmup < 0:
        raise SystemExit("error: --iterations must be at least 2 and --warmup at least 0")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    extra = [a for a in args.extra if a != "--"]
    data = prepare_dataset(args)
    results = {name: run_config(name, data, args, extra) for name in args.configs}
    device = torch.device(args.device)
    first = next(iter(results.values()))
    setup = {"device": args.device, "torch": torch.__version__,
             "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                             else f"CPU, {torch.get_num_threads()} threads"),
             "image": first["image"], "train_images": first["train_images"], "data": str(data),
             "warmup": args.warmup, "iterations": args.iterations, "sh": args.sh,
             "train_overrides": TRAIN_OVERRIDES + extra}
    print()
    print(markdown(setup, results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"setup": setup, "configs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
