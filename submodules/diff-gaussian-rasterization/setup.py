"""Install the STGA rasterizer; builds the CUDA extension ahead of time where it can.

* Plain ``pip install .`` (build isolation hides torch) or a machine without CUDA: the pure-Python
  package only. The CUDA extension is then compiled on first use (see ``cuda_backend.py``).
* ``pip install --no-build-isolation .`` on a machine whose torch has CUDA and whose CUDA toolkit
  (nvcc) is found: the extension ``diff_gaussian_rasterization._C`` is built now. Target
  architectures come from ``TORCH_CUDA_ARCH_LIST``; when unset, sm_90 plus those of the visible
  GPUs.
* ``STGA_RASTER_NO_BUILD=1`` skips the ahead-of-time build.

Nothing here imports torch at module level: a failing or missing torch only means no prebuilt
extension.
"""
import os

from setuptools import setup

PKG = "diff_gaussian_rasterization"
SOURCES = ["csrc/rasterizer.cpp", "csrc/kernels.cu"]


def _cuda_extension():
    """(ext_modules, cmdclass) for the ahead-of-time build, or ([], {}) when it cannot be done."""
    if os.environ.get("STGA_RASTER_NO_BUILD", "") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception as exc:  # noqa: BLE001 - no torch (build isolation) or a broken one
        print(f"[{PKG}] no ahead-of-time CUDA build (torch not importable: {exc})")
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        print(f"[{PKG}] no ahead-of-time CUDA build (torch without CUDA, or no CUDA toolkit)")
        return [], {}
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        archs = {"9.0"}
        try:
            for i in range(torch.cuda.device_count()):
                major, minor = torch.cuda.get_device_capability(i)
                archs.add(f"{major}.{minor}")
        except Exception:  # noqa: BLE001 - no driver at build time is fine
            pass
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(sorted(archs, key=float))
    print(f"[{PKG}] building the CUDA extension for TORCH_CUDA_ARCH_LIST="
          f"{os.environ['TORCH_CUDA_ARCH_LIST']}")
    ext = CUDAExtension(
        name=f"{PKG}._C",
        sources=SOURCES,
        include_dirs=[os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")],
        extra_compile_args={"cxx": ["-O3"],
                            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-Xptxas=-O3"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extension()

setup(
    name="diff_gaussian_rasterization",
    version="0.1.0",
    description="Differentiable 3D Gaussian splatting rasterizer (STGA, written from scratch)",
    packages=[PKG, f"{PKG}._csrc"],
    package_dir={f"{PKG}._csrc": "csrc"},
    package_data={f"{PKG}._csrc": ["*.cu", "*.cuh", "*.cpp", "*.h"]},
    python_requires=">=3.8",
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
