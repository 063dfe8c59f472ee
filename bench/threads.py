"""CPU training speed under OpenMP's waiting policies, alone and with two runs at once.

    python bench/threads.py [-s demo] [--iterations 100] [--warmup 20]

Each case starts fresh processes that train the built-in demo head on the CPU (plain training,
no densification, SH degree 3 from the start) and time ``--iterations`` steps after
``--warmup``; "two at once" starts two such processes together and reports each one's time.
The policies: PyTorch's default (libgomp spins a long while before sleeping), a brief spin
(``GOMP_SPINCOUNT=1000``, what the commands set, utils/threads.py) and passive waiting
(``OMP_WAIT_POLICY=PASSIVE``). Prints a Markdown table of ms per iteration.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {"default (spinning)": {"OMP_WAIT_POLICY": "ACTIVE"},
            "GOMP_SPINCOUNT=1000 (the commands' setting)": {"GOMP_SPINCOUNT": "1000"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import train
argv = ["-s", {source!r}, "-m", {model!r}, "--quiet", "-w", "--device", "cpu",
        "--selection", "none", "--order", "random", "--no-densify"]
t = train.Trainer(train.resolve_defaults(train.build_parser().parse_args(argv)))
t.model.active_sh_degree = t.model.max_sh_degree
for it in range(1, {warmup} + 1):
    t.train_step(it)
start = time.perf_counter()
for it in range({warmup} + 1, {warmup} + {iterations} + 1):
    t.train_step(it)
print(1000.0 * (time.perf_counter() - start) / {iterations})
"""


def timed_runs(env: Dict[str, str], count: int, args: argparse.Namespace) -> List[float]:
    """ms/it of ``count`` training processes started together under ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    procs = []
    for i in range(count):
        code = CHILD.format(root=str(ROOT), source=args.source_path,
                            model=f"/tmp/stga_bench_threads_{os.getpid()}_{i}",
                            warmup=args.warmup, iterations=args.iterations)
        procs.append(subprocess.Popen([sys.executable, "-c", code], env={**base, **env},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a timing process failed:\n{stderr[-2000:]}")
        out.append(float(stdout.strip().splitlines()[-1]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--source_path", default="demo", help="dataset (default: demo)")
    parser.add_argument("--iterations", type=int, default=100, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    args = parser.parse_args()
    timed_runs({}, 1, argparse.Namespace(**{**vars(args), "iterations": 1, "warmup": 0}))
    print("| OpenMP waiting | alone, ms/it | two at once, ms/it each |")
    print("| --- | --- | --- |")
    for name, env in POLICIES.items():
        alone = timed_runs(env, 1, args)[0]
        pair = timed_runs(env, 2, args)
        print(f"| {name} | {alone:.1f} | {pair[0]:.1f}, {pair[1]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
