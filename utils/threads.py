"""CPU threads that share the machine well.

PyTorch's OpenMP threads spin while they wait for work. Two trainings on one 2-core machine then
fight for the cores: measured here, two 150-iteration CPU runs at once took 57 s with the default
waiting against 20 s with passive waiting (16 s with one thread each); alone, passive waiting
costs about 10%. The commands import this module before torch, so OpenMP waits passively unless
the user chose a policy (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in the environment; set
``OMP_WAIT_POLICY=ACTIVE`` for a machine that runs one job). It must not import torch.
"""
from __future__ import annotations

import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
