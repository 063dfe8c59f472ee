"""Shared pytest set-up: the project root on sys.path, and CUDA tests skipped without a GPU."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# the submodule packages, importable from the working tree whether installed or not
for _sub in ("diff-gaussian-rasterization", "simple-knn"):
    _path = os.path.join(ROOT, "submodules", _sub)
    if _path not in sys.path:
        sys.path.insert(0, _path)


@pytest.fixture
def single_thread():
    """Small tensors: one thread is faster, and unaffected by other work on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
