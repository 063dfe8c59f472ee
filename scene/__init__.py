"""Datasets, cameras, meshes and the mesh-bound Gaussian model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

#: ``-s`` names of the built-in realistic head, and the size each one generates.
DEMO_SOURCES = {"demo": "demo", "demo-large": "large"}
DEMO_SOURCE = "demo"


def builtin_variant(source: str) -> Optional[str]:
    """The built-in head's size that ``-s source`` names ('demo', 'large'), or None for a path
    (a folder of that name in the working directory is a path)."""
    if source in DEMO_SOURCES and not Path(source).is_dir():
        return DEMO_SOURCES[source]
    return None


def resolve_source(source: str, quiet: bool = False) -> Path:
    """Dataset folder for ``-s``: a path, or 'demo' / 'demo-large' for the built-in head.

    The built-in head is generated on first use into a cache folder (on the GPU when there is
    one) and reused afterwards; a folder of that name in the working directory wins.
    """
    variant = builtin_variant(source)
    if variant is not None:
        from tools.ict_head import ensure_head_dataset   # heavy: only when asked for

        return ensure_head_dataset(variant)
    return Path(source)
