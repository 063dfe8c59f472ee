"""STGA's fused CUDA training kernels: the D-SSIM + L1 loss, the selective Adam step, and the
mesh-to-world posing of the Gaussians.

Each replaces tens of small PyTorch kernels (and their Python launch overhead) per training
iteration by one or two. The PyTorch code they replace stays the reference and the CPU path:
``training/loss.py``, ``training/selective_adam.py`` and ``scene/gaussian_model.py`` call these kernels
only for CUDA tensors when :func:`available` is True.

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (needs ``nvcc``
and ninja, about a minute, cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``). If it cannot be built, :func:`available` warns once with the
reason and returns False, and training uses the PyTorch code. ``train.py --fused off`` (or
:func:`set_enabled`, or :func:`disabled` in tests) turns the kernels off for A/B comparisons;
``STGA_NO_FUSED=1`` does the same, read once when this module is imported.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import Iterator, Optional

import torch

__all__ = ["available", "disabled", "enabled", "ext", "load_error", "set_enabled"]

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_SOURCES = ("bindings.cpp", "checks.cpp", "loss.cu", "adam.cu", "pose.cu")
_NAME = "stga_fused_training_ops"

_lock = threading.Lock()
#: Whether the environment allows the kernels (``STGA_NO_FUSED=1`` does not), read once.
ENVIRONMENT_ALLOWS = os.environ.get("STGA_NO_FUSED", "") != "1"
_enabled = ENVIRONMENT_ALLOWS
_module = None
_error: Optional[str] = None
_tried = False


def _already_built() -> bool:
    """Whether torch's extension cache holds a build (only decides whether to announce one)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        folder = _get_build_directory(_NAME, False)
    except Exception:  # noqa: BLE001 - a private helper; without it, announce the build
        return False
    return any(f.endswith(".so") for f in os.listdir(folder)) if os.path.isdir(folder) else False


def _build():
    from torch.utils.cpp_extension import load

    if not _already_built():
        print("STGA: compiling the fused CUDA training kernels (first use only, about a "
              "minute)...", flush=True)
    return load(name=_NAME, sources=[os.path.join(_CSRC, f) for f in _SOURCES],
                extra_include_paths=[_CSRC], extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "--use_fast_math", "--expt-relaxed-constexpr"],
                verbose=os.environ.get("STGA_VERBOSE_BUILD", "") == "1")


def available() -> bool:
    """True when the fused kernels can be used (a CUDA device, and the extension builds)."""
    global _module, _error, _tried
    if not _enabled:
        return False
    if _tried:
        return _module is not None
    if not torch.cuda.is_available():
        return False
    with _lock:
        if not _tried:
            try:
                _module = _build()
            except Exception as exc:  # noqa: BLE001 - a failed build means "use PyTorch"
                _error = f"{type(exc).__name__}: {str(exc).strip()[-3000:]}"
                warnings.warn("STGA: the fused CUDA training kernels could not be built; "
                              "training falls back to PyTorch operations (slower).\nReason: "
                              + _error, RuntimeWarning, stacklevel=2)
            _tried = True
    return _module is not None


def set_enabled(flag: bool) -> None:
    """Use the fused kernels when they are available (True) or never (False)."""
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    """Whether the kernels are switched on (they may still be unavailable: see available)."""
    return _enabled


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """The PyTorch code paths for the duration of the block (the kernels' test oracle)."""
    before = _enabled
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(before)


def ext():
    """The compiled module (call :func:`available` first)."""
    if not available():
        raise RuntimeError("the fused CUDA training kernels are unavailable: "
                           + (_error or "no CUDA device, or switched off (--fused off, "
                                        "STGA_NO_FUSED=1)"))
    return _module


def load_error() -> Optional[str]:
    """Why the kernels are unavailable (None if they loaded or were never tried)."""
    return _error
