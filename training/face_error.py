"""Selection by rendered error: which faces of a keyframe are rendered worst.

Selection by motion trains a face only in the frames where it moves, so a mouth that is rendered
wrong while it is closed is never corrected in its closed frames (measured on the realistic
head: the mouth and eyes of neutral frames lag). This keeps, per training keyframe and face, a
running estimate of the image error around the face, observed in the steps that render the
whole image: each face's centroid is projected into the step's camera and reads the per-pixel
error (mean absolute difference over the colour channels) there, if the face is in the image and
turned towards the camera. Occlusion is not tested (a hidden face reads the error of the
surface in front of it); that can only add faces to a selection, never drop one.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from scene.cameras import Camera

NEAR = 0.2   # camera-space depth below which a face is behind the camera for this purpose


class FaceErrorMap:
    """Per (keyframe, face) running error; ``top_faces`` is selection by error."""

    def __init__(self, keyframes: Sequence[int], num_faces: int, device: torch.device,
                 decay: float = 0.5):
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.row_of = {k: i for i, k in enumerate(sorted(set(keyframes)))}
        self.num_faces = num_faces
        self.decay = decay
        self.error = torch.zeros(len(self.row_of), num_faces, device=device)
        self._outward: Optional[float] = None   # +1 when the mesh's normals point outwards

    def _orientation(self, triangles: torch.Tensor) -> float:
        """+1 or -1: the sign that turns the winding's normals outwards (decided once, from
        the mesh's first observation: outward normals point away from its centre on average)."""
        if self._outward is None:
            centre = triangles.mean((0, 1))
            n = torch.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0],
                            dim=1)
            self._outward = 1.0 if float((n * (triangles.mean(1) - centre)).sum()) >= 0 else -1.0
        return self._outward

    @torch.no_grad()
    def observe(self, camera: Camera, triangles: torch.Tensor, render: torch.Tensor,
                target: torch.Tensor) -> None:
        """Fold one whole-image render (3, H, W) and its ground truth into ``camera``'s keyframe.

        ``triangles`` is that keyframe's (F, 3, 3) mesh. No device sync after the first call.
        """
        row = self.row_of.get(camera.keyframe)
        if row is None:
            raise KeyError(f"keyframe {camera.keyframe} is not a training keyframe")
        sign = self._orientation(triangles)
        err = (render.detach() - target).abs().mean(0)                     # (H, W)
        centre = triangles.mean(1)
        normal = torch.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0],
                             dim=1)
        W2C = torch.as_tensor(camera.world_to_camera, dtype=centre.dtype, device=centre.device)
        p = centre @ W2C[:3, :3].T + W2C[:3, 3]
        eye = torch.as_tensor(camera.center, dtype=centre.dtype, device=centre.device)
        facing = sign * (normal * (eye - centre)).sum(1) > 0
        z = p[:, 2].clamp_min(NEAR)
        u = camera.K[0, 0] * p[:, 0] / z + camera.K[0, 2]
        v = camera.K[1, 1] * p[:, 1] / z + camera.K[1, 2]
        H, W = err.shape
        seen = facing & (p[:, 2] > NEAR) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        e = err[v.long().clamp(0, H - 1), u.long().clamp(0, W - 1)]
        current = self.error[row]
        current.copy_(torch.where(seen, current + self.decay * (e - current), current))

    def top_faces(self, keyframe: int, share: float) -> torch.Tensor:
        """Indices of the ``share`` of faces with the highest error in ``keyframe`` (on the map's
        device; none while nothing has been observed there)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        row = self.error[self.row_of[keyframe]]
        count = int(round(share * self.num_faces))
        if count == 0:
            return torch.zeros(0, dtype=torch.long, device=row.device)
        values, faces = torch.topk(row, count)
        return faces[values > 0]
