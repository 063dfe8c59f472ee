"""Datasets, cameras, meshes and the mesh-bound Gaussian model."""
from __future__ import annotations

from pathlib import Path

DEMO_SOURCE = "demo"


def resolve_source(source: str, quiet: bool = False) -> Path:
    """Dataset folder for ``-s``: a path, or 'demo' for the built-in synthetic head.

    The demo is generated on first use into a cache folder and reused afterwards.
    """
    if source == DEMO_SOURCE and not Path(source).is_dir():
        from scene.demo_head import ensure_demo_dataset

        return ensure_demo_dataset()
    return Path(source)
