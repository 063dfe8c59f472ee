"""The head model: ICT Face Model Light geometry (ICT-FaceKit, USC Institute for Creative
Technologies, MIT licence; ``data/LICENSE``), its parts, expression shapes and landmarks.

``data/ict_head.npz`` is made from the original by :mod:`tools.ict_head.trim`. Units are metres,
y up, the face looking towards +z. The *tracked mesh* is what a face tracker would give: the skin
of the head and neck (without the mouth socket, the inside of the cheeks) plus the outer shell
of each eyeball; teeth, gums and tongue appear only in the images, unless asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

ASSET_PATH = Path(__file__).resolve().parent / "data" / "ict_head.npz"

# materials (triangle_material) and parts (vertex_part), as written by tools.ict_head.trim
SKIN, GUMS_TONGUE, TEETH, SCLERA, IRIS, EYELASHES = range(6)
(PART_FACE, PART_HEAD_NECK, PART_MOUTH_SOCKET, PART_EYE_SOCKET, PART_GUMS_TONGUE, PART_TEETH,
 PART_EYEBALL, PART_EYELASHES) = range(8)


@dataclass(frozen=True)
class Eye:
    """One eyeball in the neutral pose: sphere centre, radius, and gaze axis (unit)."""

    centre: np.ndarray
    radius: float
    axis: np.ndarray


@dataclass(frozen=True)
class HeadAsset:
    """Neutral geometry, per-triangle materials, per-vertex parts and expression shapes."""

    vertices: np.ndarray            # (V, 3) float64, neutral
    faces: np.ndarray               # (F, 3) int64
    material: np.ndarray            # (F,) int64
    vertex_part: np.ndarray         # (V,) int64
    expression_names: tuple
    expression_deltas: np.ndarray   # (E, V, 3) float32

    @cached_property
    def face_part(self) -> np.ndarray:
        """(F,) part of each triangle: the part of its first corner, except that a triangle
        touching the mouth socket belongs to it only when all three corners do."""
        part = self.vertex_part[self.faces]
        socket = part == PART_MOUTH_SOCKET
        first_other = np.argmax(~socket, axis=1)        # first corner outside the socket
        mixed = socket[:, 0] & ~socket.all(1)
        out = part[:, 0].copy()
        out[mixed] = part[mixed, first_other[mixed]]
        return out

    def tracked_faces(self, teeth: bool = False) -> np.ndarray:
        """Indices of the triangles of the tracked mesh, in the asset's order: skin without the
        mouth socket, the eyeballs' outer shells, and with ``teeth`` the teeth."""
        keep = ((self.material == SKIN) & (self.face_part != PART_MOUTH_SOCKET)) \
            | (self.material == SCLERA)
        if teeth:
            keep |= self.material == TEETH
        return np.nonzero(keep)[0]

    def expression_index(self, name: str) -> int:
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"the head has no expression shape {name!r}") from None

    def pose_local(self, weights: np.ndarray) -> np.ndarray:
        """(V, 3) vertices with expression ``weights`` (E,) applied, before head motion."""
        return self.vertices + np.einsum("e,evc->vc", np.asarray(weights, np.float64),
                                         self.expression_deltas, optimize=True)

    @cached_property
    def eyes(self) -> tuple[Eye, Eye]:
        """The two eyeballs (subject's left, at +x, first), from the sclera shells."""
        out = []
        sclera = np.unique(self.faces[self.material == SCLERA])
        for side in (1.0, -1.0):
            p = self.vertices[sclera[np.sign(self.vertices[sclera, 0]) == side]]
            lo, hi = p.min(0), p.max(0)
            centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2])
            radius = float((hi[0] - lo[0]) / 2)
            front = p[np.argmax(p[:, 2])]
            axis = (front - centre) / np.linalg.norm(front - centre)
            out.append(Eye(centre=centre, radius=radius, axis=axis))
        return out[0], out[1]

    @cached_property
    def nose_tip(self) -> np.ndarray:
        face = self.vertices[self.vertex_part == PART_FACE]
        return face[np.argmax(face[:, 2])]

    @cached_property
    def mouth(self) -> tuple[np.ndarray, float]:
        """Centre of the lips' meeting line and the half-width of the mouth (corner to centre),
        from the front rim of the mouth socket."""
        socket = self.vertices[self.vertex_part == PART_MOUTH_SOCKET]
        rim = socket[socket[:, 2] > socket[:, 2].max() - 0.012]
        centre = np.array([0.0, float(np.median(rim[np.abs(rim[:, 0]) < 0.004, 1])),
                           float(rim[:, 2].max())])
        return centre, float(np.abs(rim[:, 0]).max())


@lru_cache(maxsize=1)
def load_asset(path: str | None = None) -> HeadAsset:
    """Read the packed head (numpy only, no pickles)."""
    with np.load(path or ASSET_PATH, allow_pickle=False) as z:
        return HeadAsset(
            vertices=z["vertices"].astype(np.float64),
            faces=z["triangles"].astype(np.int64),
            material=z["triangle_material"].astype(np.int64),
            vertex_part=z["vertex_part"].astype(np.int64),
            expression_names=tuple(str(n) for n in z["expression_names"]),
            expression_deltas=z["expression_deltas"].astype(np.float32))
