"""CPU threads that share the machine well.

PyTorch's OpenMP threads (libgomp on Linux) spin for a long while before they sleep when they run
out of work. Two trainings on one 2-core machine then fight for the cores. Measured here on the
demo head (`train.py -s demo`, plain training, ms per iteration):

| OpenMP waiting | alone | two runs at once, each |
| --- | --- | --- |
| default (spinning) | 115-159 | 604-616 |
| ``GOMP_SPINCOUNT=1000`` (spin briefly, then sleep) | 123-152 | 213-221 |
| ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) | 150-170 | 177-179 |

The commands import this module before torch and choose the brief spin, as fast as the default
alone and about 3x faster with two runs at once, unless the user chose a policy
(``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in the environment). It must not import torch.
"""
from __future__ import annotations

import os

SPINCOUNT = "1000"

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
