"""CUDA backend of the rasterizer: the compiled extension, which is its own (C++) autograd function.

The extension (sources in ``csrc/``) is used prebuilt when ``pip install --no-build-isolation``
compiled it on a CUDA machine (module ``diff_gaussian_rasterization._C``); otherwise
:func:`available` compiles it on first use with ``torch.utils.cpp_extension.load`` (needs
``nvcc`` and ninja; the build is cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``). If neither works, :func:`available` warns once with the reason and
returns False, and the package falls back to the PyTorch reference backend.

Environment: ``STGA_RASTER_FORCE_JIT=1`` ignores a prebuilt ``_C``; ``STGA_RASTER_VERBOSE_BUILD=1``
prints the compiler's output during a first-use build.

The kernels run in float32: inputs of other dtypes are converted, and the image and every
gradient are returned in the dtype of the corresponding input (the image in ``means3D``'s).
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Optional, Tuple

import torch

__all__ = ["available", "load_error", "rasterize"]

_SOURCES = ("rasterizer.cpp", "kernels.cu")
_HEADERS = ("kernels.h", "raster_math.cuh")
_JIT_NAME = "stga_diff_gaussian_rasterization"

_lock = threading.Lock()
_ext = None
_state: Optional[bool] = None
_error: Optional[str] = None


def _source_dir() -> str:
    """The folder holding the CUDA sources: packaged (``_csrc``) or the source tree's ``csrc``."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = (os.path.join(here, "_csrc"), os.path.join(os.path.dirname(here), "csrc"))
    for cand in candidates:
        if all(os.path.isfile(os.path.join(cand, f)) for f in _SOURCES + _HEADERS):
            return cand
    raise FileNotFoundError("CUDA sources not found in " + " or ".join(candidates))


def _nvcc_flags():
    return ["-O3", "--expt-relaxed-constexpr", "-Xptxas=-O3"]


def _load():
    if os.environ.get("STGA_RASTER_FORCE_JIT", "") != "1":
        try:
            from . import _C  # prebuilt by setup.py

            return _C
        except ImportError:
            pass
    from torch.utils.cpp_extension import load

    src = _source_dir()
    return load(name=_JIT_NAME, sources=[os.path.join(src, f) for f in _SOURCES],
                extra_include_paths=[src], extra_cflags=["-O3"],
                extra_cuda_cflags=_nvcc_flags(),
                verbose=os.environ.get("STGA_RASTER_VERBOSE_BUILD", "") == "1")


def available() -> bool:
    """True when the CUDA extension can be used; compiles it on first use if needed.

    Returns False at once, without trying to build anything, when PyTorch sees no CUDA device.
    """
    global _ext, _state, _error
    if _state is not None:
        return _state
    if not torch.cuda.is_available():
        return False
    with _lock:
        if _state is None:
            try:
                _ext = _load()
                _state = True
            except Exception as exc:  # noqa: BLE001 - any build or import failure means "no"
                text = str(exc).strip()
                if len(text) > 4000:
                    text = "...\n" + text[-4000:]
                _error = f"{type(exc).__name__}: {text}"
                _state = False
                warnings.warn(
                    "\n" + "=" * 78 + "\nSTGA: the CUDA rasterizer could not be built or loaded; "
                    "rendering falls back to the (much slower) PyTorch backend.\nReason: "
                    + _error + "\n" + "=" * 78, RuntimeWarning, stacklevel=2)
    return bool(_state)


def load_error() -> Optional[str]:
    """Why the extension is unavailable (None if it loaded or was never tried)."""
    return _error


def _plain(t: torch.Tensor) -> torch.Tensor:
    """The camera tensor without autograd history (``detach`` only where there is one)."""
    return t.detach() if t.requires_grad else t


def _camera_args(settings) -> tuple:
    return (_plain(settings.viewmatrix), _plain(settings.projmatrix), _plain(settings.campos),
            _plain(settings.bg), int(settings.image_width), int(settings.image_height),
            float(settings.tanfovx), float(settings.tanfovy), float(settings.scale_modifier),
            int(settings.sh_degree))


def rasterize(settings, means3D: torch.Tensor, means2D: torch.Tensor, opacities: torch.Tensor,
              shs: Optional[torch.Tensor] = None, colors_precomp: Optional[torch.Tensor] = None,
              scales: Optional[torch.Tensor] = None, rotations: Optional[torch.Tensor] = None,
              cov3D_precomp: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Render ``(color (3,H,W), radii (N,) int32)`` as defined in the package README."""
    if not available():
        raise RuntimeError("the CUDA rasterizer is unavailable: "
                           + (_error or "PyTorch sees no CUDA device"))
    if not means3D.is_cuda:
        raise ValueError("the CUDA backend needs CUDA tensors")
    # The extension's own (C++) autograd function: neither pass goes through Python.
    color, radii = _ext.rasterize(means3D, means2D, opacities, shs, colors_precomp, scales,
                                  rotations, cov3D_precomp, *_camera_args(settings))
    return color, radii
