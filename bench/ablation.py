"""The STGA ablation: plain training vs frame-grouped order vs frame-grouped with selection.

    python bench/ablation.py [-s demo-large] [--iterations 3000] [--arms plain grouped paper]

Trains each arm with the same seed and iteration count, on a white background (as NeRSemble's
images), then reports train.py's own scores of the test and val splits at the last iteration,
over the whole image and inside the mouth and eye regions (from the dataset's ``regions/`` label
maps: 2 = mouth, 3 = eyes; a view scores a region from 16 pixels on, as in metrics.py), and the
training time per iteration. Prints a Markdown table and
writes ``<out>/ablation.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from utils.regions import REGIONS  # noqa: E402

ARMS = {
    "plain": ["--order", "random", "--selection", "none"],
    "grouped": ["--order", "frames", "--selection", "none"],
    "paper": ["--order", "frames", "--selection", "paper"],
    "paper-reset": ["--order", "frames", "--selection", "paper",
                    "--opacity_reset_in_selective_stage"],
    "paper-crop": ["--order", "frames", "--selection", "paper", "--crop_local_steps"],
}


def score(trainer: train.Trainer) -> dict:
    """Mean PSNR/SSIM per split over the whole image and inside each region at the last
    iteration: the trainer's own evaluation, which ``run`` made and recorded in progress.json
    (region maps read as metrics.py reads them), under this table's column names."""
    names = {"PSNR": "PSNR", "SSIM": "SSIM"}
    for region in REGIONS:
        names[f"PSNR_{region}"] = f"{region} PSNR"
        names[f"SSIM_{region}"] = f"{region} SSIM"
    last = trainer.progress.entries[-1]
    return {split: {names[k]: v for k, v in last[split].items()}
            for split in ("test", "val") if split in last}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--source_path", default="demo-large",
                        help="dataset (default: demo-large, the realistic head at 550x802)")
    parser.add_argument("--iterations", type=int, default=3000, help="iterations per arm")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS),
                        default=["plain", "grouped", "paper"], help="which arms to train")
    parser.add_argument("--eval_every", type=int, default=None,
                        help="also score test/val every this many iterations into each arm's "
                             "progress.json (quality against training time); default: at the end")
    parser.add_argument("--out", default="output/ablation", help="folder for models and json")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="further train.py options after --, applied to every arm")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    results = {}
    for arm in args.arms:
        evals = (list(range(args.eval_every, args.iterations, args.eval_every))
                 if args.eval_every else [-1])
        argv = ["-s", args.source_path, "-m", f"{args.out}/{arm}", "--quiet", "-w",
                "--iterations", str(args.iterations),
                "--test_iterations", *map(str, evals),
                "--save_iterations", str(args.iterations), *ARMS[arm], *extra]
        if args.device:
            argv += ["--device", args.device]
        trainer = train.Trainer(train.resolve_defaults(train.build_parser().parse_args(argv)))
        trainer.run()
        seconds = trainer.train_seconds  # the loop alone, without evaluation and saving
        results[arm] = {"seconds": seconds, "ms_per_iteration": 1000 * seconds / args.iterations,
                        "gaussians": trainer.model.num_gaussians, **score(trainer)}
        print(f"{arm}: {seconds:.1f} s, {results[arm]}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ablation.json").write_text(json.dumps(results, indent=2))
    columns = ["PSNR", "SSIM", "mouth PSNR", "mouth SSIM", "eyes PSNR", "eyes SSIM"]
    print("\n| arm | split | " + " | ".join(columns) + " | ms/it | Gaussians |")
    print("|" + " --- |" * (len(columns) + 4))
    for arm, r in results.items():
        for split in ("test", "val"):
            cells = [f"{r[split][c]:.3f}" if "SSIM" in c else f"{r[split][c]:.2f}"
                     for c in columns if c in r[split]]
            print(f"| {arm} | {split} | " + " | ".join(cells)
                  + f" | {r['ms_per_iteration']:.1f} | {r['gaussians']} |")
    if args.eval_every:
        print("\nTest PSNR against training seconds (progress.json):")
        for arm in results:
            entries = json.loads((Path(args.out) / arm / "progress.json").read_text())
            print(f"- {arm}: " + ", ".join(f"{e['iteration']}: {e['seconds']:.1f} s "
                                            f"{e['test']['PSNR']:.2f} dB" for e in entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
