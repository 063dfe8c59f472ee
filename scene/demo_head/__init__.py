"""A small procedural, animated, textured head written as an STGA dataset: the unit tests' data.

(``-s demo`` is the realistic head of ``tools/ict_head``.) Modules: ``profile`` (parametric skin surface and facial relief),
``mesh`` (triangles, UVs, region labels, rig weights), ``rig`` (expressions and posing),
``texture`` (procedural atlas, bilinear sampling), ``shading`` (baked Lambert factor),
``cameras`` (the rig of cameras), ``raster`` (the z-buffer ground-truth renderer), ``points``
(points3d.ply), ``scene`` (the sequence in memory), ``writer`` (files).
"""
import numpy as np

from scene.demo_head.cameras import Camera, build_cameras
from scene.demo_head.mesh import (REGION_BACKGROUND, REGION_EYES, REGION_MOUTH, REGION_SKIN,
                                  HeadMesh, MeshLayout, build_head_mesh)
from scene.demo_head.scene import DemoScene, build_demo_scene
from scene.demo_head.writer import FORMAT_VERSION, write_demo_dataset


def face_regions() -> np.ndarray:
    """(F,) uint8 region label per face of the demo mesh: 1 skin/other, 2 mouth, 3 eyes."""
    return build_head_mesh().face_region


__all__ = ["Camera", "DemoScene", "FORMAT_VERSION", "HeadMesh", "MeshLayout", "REGION_BACKGROUND",
           "REGION_EYES", "REGION_MOUTH", "REGION_SKIN", "build_cameras", "build_demo_scene",
           "build_head_mesh", "face_regions",
           "write_demo_dataset"]
