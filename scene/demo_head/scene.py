"""The whole demo sequence in memory: posed meshes, cameras, texture and shading.

This is what the dataset writer serialises, and what tests inspect without reading files. Vertex
positions are rounded to 0.1 micrometre once, here, so that everything derived from them (images,
points3d.ply, the selection) agrees exactly with the mesh JSON files.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from scene.demo_head.cameras import Camera, RigSplits, build_cameras
from scene.demo_head.mesh import HeadMesh, MeshLayout, build_head_mesh
from scene.demo_head.raster import RenderOutput, render_mesh
from scene.demo_head.rig import Expression, expression_schedule, pose, pose_local, split_keyframes
from scene.demo_head.shading import vertex_shade
from scene.demo_head.texture import build_texture, sample_bilinear

ROUND_DECIMALS = 7


@dataclass(frozen=True)
class DemoScene(RigSplits):
    """An animated, textured head seen by a camera rig."""

    mesh: HeadMesh
    expressions: list[Expression]
    vertices: np.ndarray          # (T, V, 3) world positions per keyframe (index = keyframe id)
    train_keyframes: np.ndarray   # (n_train,) keyframe ids
    test_keyframes: np.ndarray    # (n_test,)
    cameras: list[Camera]         # training cameras, then the held-out one
    shade: np.ndarray             # (V,) baked shading factor
    seed: int = 0
    texture_size: int = 1024

    @property
    def keyframes(self) -> np.ndarray:
        """All keyframe ids (train and test), 0..T-1."""
        return np.arange(self.vertices.shape[0])

    @property
    def faces(self) -> np.ndarray:
        """(F, 3) vertex indices; corner order = binding order."""
        return self.mesh.faces

    @property
    def face_regions(self) -> np.ndarray:
        """(F,) uint8 region per face: 1 skin/other, 2 mouth, 3 eyes."""
        return self.mesh.face_region

    @property
    def meshes(self) -> np.ndarray:
        """(T, F, 3, 3) triangle soup per keyframe, exactly as written to the mesh files."""
        return self.vertices[:, self.mesh.faces]

    @cached_property
    def texture(self) -> np.ndarray:
        """The texture atlas, painted on first use (about 2 s at 1024 px)."""
        return build_texture(self.mesh, self.texture_size, self.seed)

    def local_vertices(self, keyframe: int) -> np.ndarray:
        """(V, 3) vertices of ``keyframe`` in head space (rigid head motion removed)."""
        return pose_local(self.mesh, self.expressions[keyframe])

    def surface_colour(self, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """(N, 3) rendered colour in [0, 1] (texture x shading) at barycentric points of faces."""
        uv = np.einsum("nk,nkc->nc", bary, self.mesh.uv[face])
        sh = np.einsum("nk,nk->n", bary, self.shade[self.mesh.faces[face]])
        return np.clip(sample_bilinear(self.texture, uv) * sh[:, None], 0.0, 1.0)

    def render(self, keyframe: int, camera: Camera, supersample: int = 3) -> RenderOutput:
        """Ground-truth image of ``keyframe`` seen by ``camera``."""
        return render_mesh(self.vertices[keyframe], self.mesh.faces, self.mesh.uv, self.shade,
                           self.mesh.face_region, self.texture, camera.K, camera.w2c,
                           camera.width, camera.height, supersample)


def build_demo_scene(seed: int = 0, width: int = 128, height: int = 160, n_train_frames: int = 24,
                     n_test_frames: int = 6, n_cameras: int = 8, texture_size: int = 1024,
                     layout: MeshLayout = MeshLayout()) -> DemoScene:
    """Build the demo sequence in memory (the texture is painted lazily on first use)."""
    mesh = build_head_mesh(layout)
    train, test = split_keyframes(n_train_frames, n_test_frames)
    exprs = expression_schedule(n_train_frames, n_test_frames, seed)
    verts = np.stack([np.round(pose(mesh, ex), ROUND_DECIMALS) for ex in exprs])
    neutral = pose_local(mesh, Expression(jaw=0.0, blink=0.0, smile=0.0, gaze=np.zeros(2),
                                          head_R=np.eye(3), head_t=np.zeros(3)))
    shade = vertex_shade(mesh, neutral)
    cams = build_cameras(n_cameras, width, height)
    return DemoScene(mesh=mesh, expressions=exprs, vertices=verts, train_keyframes=train,
                     test_keyframes=test, cameras=cams, shade=shade, seed=seed,
                     texture_size=texture_size)
