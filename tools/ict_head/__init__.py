"""The realistic synthetic head: ICT Face Model Light geometry, painted, animated and filmed.

``python train.py -s demo`` (and ``-s demo-large``) use :func:`ensure_head_dataset`, which
generates the data set into a cache folder on first use; ``python -m tools.ict_head <folder>``
writes one anywhere. Modules: ``asset`` (the packed head model: parts, expression shapes,
landmarks), ``trim`` (how the packed file was made from ICT-FaceKit's), ``appearance``
(painted albedo and a fixed light), ``animation`` (a seeded 25 fps performance), ``cameras``
(a NeRSemble-like rig), ``raster`` (the triangle z-buffer), ``scene`` (the sequence and its
ground-truth renders), ``writer`` (the STGA data set, its sizes and the cache).

Head geometry: ICT Face Model Light, ICT-FaceKit, USC Institute for Creative Technologies
(MIT licence, ``data/LICENSE``).
"""
from tools.ict_head.scene import HeadSequence, RenderOutput, build_sequence
from tools.ict_head.writer import (FORMAT_VERSION, VARIANTS, Variant, ensure_head_dataset,
                                   head_dataset_path, write_head_dataset)

__all__ = ["FORMAT_VERSION", "HeadSequence", "RenderOutput", "VARIANTS", "Variant",
           "build_sequence", "ensure_head_dataset", "head_dataset_path", "write_head_dataset"]
