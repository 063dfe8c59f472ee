"""The FLAME layer in PyTorch: shape, expression, pose correctives and skinning, batched.

For a batch of B frames:

    v = v_template + shapedirs @ [shape, expression] + static_offset (+ dynamic_offset)
    joints = J_regressor @ v
    pose = [root, neck, jaw, left eye, right eye] axis-angles (15 values)
    v += posedirs @ concat(R_j - I for the 4 non-root joints, each flattened row-major)
    v = linear blend skinning of v with ``weights`` along ``kintree_table``, + translation

The root rotates about its own joint (it is not re-centred at the origin), as in GaussianAvatars'
tracking. Fewer shape or expression coefficients than the model has are zero-padded. With
``teeth=True`` the model gains GaussianAvatars-style teeth (see ``flame.teeth``): 120 vertices
and 168 faces appended after FLAME's own.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from flame.lbs import axis_angle_to_matrix, pose_features, rigid_transforms, skin
from flame.model_file import NUM_JOINTS, FlameModelData
from flame.teeth import NUM_TEETH_VERTICES, Teeth, build_teeth, find_lip_rings

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float], None]


def add_teeth(model: FlameModelData, lip_loop: Optional[Sequence[int]] = None
              ) -> Tuple[FlameModelData, Teeth]:
    """A copy of ``model`` with the teeth vertices and faces appended, and the teeth themselves.

    Teeth vertices take interpolated identity blendshapes of the lip rings, no expression, no
    pose correctives, no part in the joint regressor, and one skinning weight of 1 (neck for the
    upper teeth, jaw for the lower). ``lip_loop`` overrides the detected mouth boundary loop.
    """
    rings = find_lip_rings(model.v_template, model.faces, loop=lip_loop)
    teeth = build_teeth(model.v_template, model.faces, model.shapedirs[:, :, :model.num_shape],
                        rings)
    n, V = NUM_TEETH_VERTICES, model.num_vertices
    K = model.shapedirs.shape[2]
    shapedirs = np.zeros((n, 3, K))
    shapedirs[:, :, :model.num_shape] = teeth.shapedirs
    weights = np.zeros((n, NUM_JOINTS))
    weights[np.arange(n), teeth.joint] = 1.0
    extended = replace(
        model,
        v_template=np.concatenate([model.v_template, teeth.vertices]),
        shapedirs=np.concatenate([model.shapedirs, shapedirs]),
        posedirs=np.concatenate([model.posedirs, np.zeros((n,) + model.posedirs.shape[1:])]),
        J_regressor=np.concatenate([model.J_regressor, np.zeros((NUM_JOINTS, n))], axis=1),
        weights=np.concatenate([model.weights, weights]),
        faces=np.concatenate([model.faces, teeth.faces + V]))
    return extended, teeth


def _frames(value: ArrayLike, batched_ndim: int) -> int:
    """Frame count of an input: its first dimension when it has ``batched_ndim`` dimensions."""
    if value is None:
        return 1
    shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
    return int(shape[0]) if len(shape) >= batched_ndim else 1


class FlameLayer(torch.nn.Module):
    """FLAME forward pass (see the module docstring); buffers follow ``.to(device)``."""

    def __init__(self, model: FlameModelData, teeth: bool = False,
                 dtype: torch.dtype = torch.float32,
                 lip_loop: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.base_vertices = model.num_vertices
        self.teeth: Optional[Teeth] = None
        if teeth:
            model, self.teeth = add_teeth(model, lip_loop)
        self.num_shape = model.num_shape
        self.num_expression = model.num_expression
        self.parents = model.parents.copy()
        V = model.num_vertices

        def buf(name: str, array: np.ndarray, dt: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=dt))

        buf("v_template", model.v_template)
        buf("shapedirs", model.shapedirs.reshape(V * 3, -1))
        buf("posedirs", model.posedirs.reshape(V * 3, -1))
        buf("J_regressor", model.J_regressor)
        buf("weights", model.weights)
        buf("faces", model.faces, torch.int64)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def _tensor(self, value: ArrayLike, width: int, name: str, batch: int,
                pad: bool = False) -> torch.Tensor:
        """An input as (batch, width): None -> zeros, 1-D -> one row, padded with zeros if asked."""
        ref = self.v_template
        if value is None:
            return ref.new_zeros(batch, width)
        t = torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
        t = t.reshape(1, -1) if t.dim() <= 1 else t.reshape(t.shape[0], -1)
        if t.shape[1] > width or (t.shape[1] != width and not pad):
            raise ValueError(f"FLAME {name}: expected {'at most ' if pad else ''}{width} values "
                             f"per frame, got {t.shape[1]}")
        if t.shape[1] < width:
            t = torch.cat([t, t.new_zeros(t.shape[0], width - t.shape[1])], dim=1)
        if t.shape[0] not in (1, batch):
            raise ValueError(f"FLAME {name}: batch of {t.shape[0]} frames, expected {batch}")
        return t.expand(batch, width)

    def _offset(self, value: ArrayLike, name: str, batch: int) -> Optional[torch.Tensor]:
        """Per-vertex offsets (V, 3) or (B|1, V, 3); FLAME-only rows are zero-padded for teeth."""
        if value is None:
            return None
        ref = self.v_template
        t = torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3 or t.shape[2] != 3 or t.shape[1] not in (self.base_vertices,
                                                                   self.num_vertices):
            raise ValueError(f"FLAME {name}: expected shape (frames, {self.base_vertices} or "
                             f"{self.num_vertices}, 3), got {tuple(t.shape)}")
        if t.shape[0] not in (1, batch):
            raise ValueError(f"FLAME {name}: batch of {t.shape[0]} frames, expected {batch}")
        if t.shape[1] < self.num_vertices:
            t = torch.cat([t, t.new_zeros(t.shape[0], self.num_vertices - t.shape[1], 3)], 1)
        return t

    def forward(self, shape: ArrayLike = None, expr: ArrayLike = None,
                rotation: ArrayLike = None, neck_pose: ArrayLike = None,
                jaw_pose: ArrayLike = None, eyes_pose: ArrayLike = None,
                translation: ArrayLike = None, static_offset: ArrayLike = None,
                dynamic_offset: ArrayLike = None, batch_size: Optional[int] = None,
                return_joints: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Posed vertices (B, V, 3) (and posed joints (B, 5, 3) with ``return_joints``).

        Every argument is optional (zeros) and may be one frame (broadcast) or B frames:
        ``shape`` (<= 300), ``expr`` (<= the model's expression count), ``rotation`` (root),
        ``neck_pose``, ``jaw_pose`` (3 each), ``eyes_pose`` (6: left eye then right eye),
        ``translation`` (3), offsets (V, 3) per vertex in the rest pose.
        """
        vectors = (shape, expr, rotation, neck_pose, jaw_pose, eyes_pose, translation)
        B = max([batch_size or 1] + [_frames(x, 2) for x in vectors]
                + [_frames(x, 3) for x in (static_offset, dynamic_offset)])
        betas = torch.cat([self._tensor(shape, self.num_shape, "shape", B, pad=True),
                           self._tensor(expr, self.num_expression, "expr", B, pad=True)], 1)
        pose = torch.cat([self._tensor(rotation, 3, "rotation", B),
                          self._tensor(neck_pose, 3, "neck_pose", B),
                          self._tensor(jaw_pose, 3, "jaw_pose", B),
                          self._tensor(eyes_pose, 6, "eyes_pose", B)], 1)
        V = self.num_vertices
        v = self.v_template + (betas @ self.shapedirs.T).view(B, V, 3)
        for name, value in (("static_offset", static_offset), ("dynamic_offset", dynamic_offset)):
            off = self._offset(value, name, B)
            if off is not None:
                v = v + off
        joints = torch.einsum("jv,bvc->bjc", self.J_regressor, v)
        rotations = axis_angle_to_matrix(pose.view(B, NUM_JOINTS, 3))
        v = v + (pose_features(rotations) @ self.posedirs.T).view(B, V, 3)
        posed_joints, transforms = rigid_transforms(rotations, joints, self.parents)
        trans = self._tensor(translation, 3, "translation", B)[:, None]
        verts = skin(v, self.weights, transforms) + trans
        return (verts, posed_joints + trans) if return_joints else verts

    def triangles(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) vertices -> (B, F, 3, 3) triangle soup in face order."""
        return vertices[:, self.faces]
