"""CPU threads that share the machine well.

PyTorch's OpenMP threads (libgomp on Linux) spin for a long while before they sleep when they run
out of work. Two trainings on one 2-core machine then fight for the cores: measured on the demo
head (`python bench/threads.py`, bench/RESULTS.md), two plain trainings at once ran at 580-1783 ms
per iteration each with the default spinning, 213-264 ms with a brief spin
(``GOMP_SPINCOUNT=1000``) and 177-217 ms with passive waiting; alone, the default took 115-134 ms,
the brief spin 123-159 ms (up to about 30% slower; the machine's timings vary from run to run) and
passive waiting 150-190 ms. The commands import this module before torch and choose the brief
spin, unless the user chose a policy (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in the
environment; ``OMP_WAIT_POLICY=ACTIVE`` for a machine that runs one job). It must not import
torch.
"""
from __future__ import annotations

import os

SPINCOUNT = "1000"

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
