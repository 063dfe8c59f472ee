"""3DGS import path: ``from simple_knn._C import distCUDA2`` (pure PyTorch here, any device)."""
from . import distCUDA2

__all__ = ["distCUDA2"]
