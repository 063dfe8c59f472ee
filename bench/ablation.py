"""The STGA ablation: plain training against the selective variants, by quality and time.

    python bench/ablation.py [-s demo-large] [--iterations 3000] [--arms plain grouped paper]
                             [--seeds 0 1 2] [--eval_every 1000]

Trains each arm for each seed with the same iteration count, on a white background (as
NeRSemble's images), and reports train.py's own scores of the test and val splits (from its
progress.json), over the whole image and inside the mouth and eye regions (from the dataset's
``regions/`` label maps: 2 = mouth, 3 = eyes; a view scores a region from 16 pixels on, as in
metrics.py):

- at equal iterations: the last evaluation of every run;
- at equal wall-clock: every run's test scores at the same training time T, the shortest run's
  training time, interpolated linearly between the run's evaluations (use ``--eval_every`` so
  that they are close together);

each as the mean over seeds with the spread (min-max), and the difference to the ``plain`` arm
paired by seed. Prints Markdown tables and writes ``<out>/ablation.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402

# Every arm names the selective options explicitly, so that it stays the same arm when
# train.py's defaults change. "paper" is the schedule of the authors' code (a global frame in 20).
PAPER = ["--order", "frames", "--selection", "paper"]
ARMS = {
    "plain": ["--order", "random", "--selection", "none", "--no-crop_local_steps"],
    "grouped": ["--order", "frames", "--selection", "none", "--no-crop_local_steps"],
    "paper": [*PAPER, "--global_every", "20", "--no-crop_local_steps"],
    "paper-reset": [*PAPER, "--global_every", "20", "--no-crop_local_steps",
                    "--opacity_reset_in_selective_stage"],
    "paper-crop": [*PAPER, "--global_every", "20", "--crop_local_steps"],
    # the variants of the study: half the frames global, crops, a static fit, selection by error
    "ge2": [*PAPER, "--global_every", "2", "--no-crop_local_steps"],
    "ge2-crop": [*PAPER, "--global_every", "2", "--crop_local_steps"],
    "ge2-crop-error": [*PAPER, "--global_every", "2", "--crop_local_steps", "--error_faces", "0.1"],
    "ge2-crop-error-static": [*PAPER, "--global_every", "2", "--crop_local_steps",
                              "--error_faces", "0.1", "--static_fit", "1000"],
}
METRICS = ("PSNR", "PSNR_mouth", "PSNR_eyes", "SSIM", "SSIM_mouth", "SSIM_eyes")
LABELS = {"PSNR": "PSNR", "PSNR_mouth": "mouth PSNR", "PSNR_eyes": "eyes PSNR", "SSIM": "SSIM",
          "SSIM_mouth": "mouth SSIM", "SSIM_eyes": "eyes SSIM"}


def at_time(entries: List[dict], seconds: float, split: str = "test") -> Dict[str, float]:
    """A run's ``split`` scores at ``seconds`` of training, linear between its evaluations."""
    times = [e["seconds"] for e in entries]
    if seconds > times[-1] + 1e-6:
        raise ValueError(f"the run ends at {times[-1]:.1f} s, before {seconds:.1f} s")
    i = next(k for k, t in enumerate(times) if t >= seconds - 1e-6)
    if i == 0:
        return dict(entries[0][split])
    t0, t1 = times[i - 1], times[i]
    w = (seconds - t0) / max(t1 - t0, 1e-9)
    a, b = entries[i - 1][split], entries[i][split]
    return {k: (1 - w) * a[k] + w * b[k] for k in a if k in b}


def summary(values: List[float], digits: int = 2) -> str:
    """Mean with the spread over seeds: ``mean [min, max]``, or the value for one seed."""
    f = f"{{:.{digits}f}}".format
    if len(values) == 1:
        return f(values[0])
    return f"{f(statistics.fmean(values))} [{f(min(values))}, {f(max(values))}]"


def table(results: Dict[str, Dict[int, dict]], key: str, split: str) -> List[str]:
    """Markdown rows of ``key`` ("last" or "at_T") scores, with differences to plain by seed."""
    columns = [m for m in METRICS if m.startswith("PSNR")] + ["SSIM"]
    rows = ["| arm | " + " | ".join(LABELS[c] for c in columns)
            + " | d PSNR | d mouth | d eyes | ms/it |", "|" + " --- |" * (len(columns) + 5)]
    for arm, runs in results.items():
        cells = []
        for c in columns:
            vals = [r[key][split][c] for r in runs.values() if c in r[key][split]]
            cells.append(summary(vals, 3 if "SSIM" in c else 2) if vals else "-")
        for c in ("PSNR", "PSNR_mouth", "PSNR_eyes"):
            d = [r[key][split][c] - results["plain"][s][key][split][c]
                 for s, r in runs.items() if "plain" in results and s in results["plain"]
                 and c in r[key][split] and c in results["plain"][s][key][split]]
            cells.append(summary(d) if d and arm != "plain" else "-")
        ms = statistics.fmean(r["ms_per_iteration"] for r in runs.values())
        rows.append(f"| {arm} | " + " | ".join(cells) + f" | {ms:.2f} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--source_path", default="demo-large",
                        help="dataset (default: demo-large, the realistic head at 550x802)")
    parser.add_argument("--iterations", type=int, default=3000, help="iterations per run")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS),
                        default=["plain", "grouped", "paper"], help="which arms to train")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds; every arm trains once per seed (default: 0)")
    parser.add_argument("--eval_every", type=int, default=None,
                        help="also score test/val every this many iterations into each run's "
                             "progress.json (quality against training time, and the equal "
                             "wall-clock comparison); default: at the end only")
    parser.add_argument("--out", default="output/ablation", help="folder for models and json")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="further train.py options after --, applied to every arm")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    results: Dict[str, Dict[int, dict]] = {arm: {} for arm in args.arms}
    evals = (list(range(args.eval_every, args.iterations, args.eval_every))
             if args.eval_every else [-1])
    for seed in args.seeds:
        for arm in args.arms:
            model = out / f"{arm}_seed{seed}"
            argv = ["-s", args.source_path, "-m", str(model), "--quiet", "-w",
                    "--iterations", str(args.iterations), "--seed", str(seed),
                    "--test_iterations", *map(str, evals),
                    "--save_iterations", str(args.iterations), *ARMS[arm], *extra]
            if args.device:
                argv += ["--device", args.device]
            trainer = train.Trainer(train.resolve_defaults(train.build_parser().parse_args(argv)))
            trainer.run()
            entries = trainer.progress.entries
            seconds = trainer.train_seconds  # the loop alone, without evaluation and saving
            results[arm][seed] = {
                "seconds": seconds, "ms_per_iteration": 1000 * seconds / args.iterations,
                "gaussians": trainer.model.num_gaussians, "progress": entries,
                "last": {split: entries[-1][split] for split in ("test", "val")
                         if split in entries[-1]}}
            print(f"{arm} seed {seed}: {seconds:.1f} s, test {entries[-1]['test']}", flush=True)
            del trainer
    budget = min(r["progress"][-1]["seconds"] for runs in results.values() for r in runs.values())
    for runs in results.values():
        for r in runs.values():
            r["at_T"] = {"test": at_time(r["progress"], budget)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps({"budget_seconds": budget, "runs": results},
                                                  indent=2))
    print(f"\nAt equal iterations ({args.iterations}), test; mean [min, max] over seeds "
          f"{args.seeds}; d = arm - plain, paired by seed:\n")
    print("\n".join(table(results, "last", "test")))
    print("\nThe same, val split:\n")
    print("\n".join(table(results, "last", "val")))
    print(f"\nAt equal wall-clock (T = {budget:.1f} s of training, the shortest run), test:\n")
    print("\n".join(table(results, "at_T", "test")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
