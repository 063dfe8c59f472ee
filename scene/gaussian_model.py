"""The avatar: 3D Gaussians stored in the local frames of the mesh faces they are bound to.

Parameters are local (position offset, log-scale, rotation) plus the 3DGS appearance fields
(SH coefficients, opacity logit). ``world(frames)`` poses them with one frame's mesh. Rows keep a
fixed order; the face binding of each row is ``binding``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from plyfile import PlyData, PlyElement

from scene.binding import (FaceFrames, face_frames, local_to_world_positions,
                           matrix_to_quaternion, quaternion_multiply)
from scene.errors import DatasetError
from scene.points import InitialPoints
from utils import fused
from utils.atomic import atomic_path

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("xyz", "f_dc", "f_rest", "scaling", "rotation", "opacity")


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


class RowSelection(NamedTuple):
    """The Gaussians trainable at one step: row indices, the same as an (N,) mask, their count."""

    rows: torch.Tensor
    mask: torch.Tensor
    count: int


class WorldGaussians(NamedTuple):
    """Gaussians posed at one frame, ready for the rasterizer."""

    xyz: torch.Tensor        # (N,3)
    scales: torch.Tensor     # (N,3), activated
    rotations: torch.Tensor  # (N,4), unit, w first
    opacity: torch.Tensor    # (N,1), activated
    shs: torch.Tensor        # (N,K,3)
    sh_degree: int


class _FusedPose(torch.autograd.Function):
    """``GaussianModel.world`` through the fused CUDA kernels (utils/fused/csrc/pose.cu)."""

    @staticmethod
    def forward(ctx, triangles, binding, trainable, face_scale, xyz, scaling, rotation, opacity):
        ctx.face_scale = face_scale
        ctx.set_materialize_grads(False)  # backward takes None for an unused output
        ctx.save_for_backward(triangles, binding, trainable, xyz, scaling, rotation, opacity)
        return tuple(fused.ext().pose_forward(triangles, binding, xyz.detach(), scaling.detach(),
                                              rotation.detach(), opacity.detach(), face_scale))

    @staticmethod
    def backward(ctx, g_xyz, g_scales, g_rotations, g_opacity):
        triangles, binding, trainable, xyz, scaling, rotation, opacity = ctx.saved_tensors
        empty = xyz.new_empty(0)
        grads = fused.ext().pose_backward(
            triangles, binding, xyz.detach(), scaling.detach(), rotation.detach(),
            opacity.detach(), ctx.face_scale,
            trainable if trainable is not None else empty.bool(),
            *(g.contiguous() if g is not None else empty
              for g in (g_xyz, g_scales, g_rotations, g_opacity)))
        return (None, None, None, None, *grads)


class GaussianModel:
    """Mesh-bound Gaussians: named parameter tensors plus the face binding of every row."""

    def __init__(self, sh_degree: int = 3, face_scale: bool = False):
        self.max_sh_degree = sh_degree
        self.active_sh_degree = 0
        self.face_scale = face_scale
        self.params: Dict[str, torch.Tensor] = {}
        self.binding = torch.empty(0, dtype=torch.long)
        self.version = 0  # bumped whenever the rows change, so row selections can be cached

    # --- construction -----------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return int(self.binding.numel())

    @property
    def device(self) -> torch.device:
        return self.binding.device

    def _set_params(self, values: Dict[str, torch.Tensor]) -> None:
        # Updated in place: the optimiser holds this same dict.
        self.version += 1
        self.params.clear()
        self.params.update({n: values[n].detach().clone().requires_grad_(True)
                            for n in PARAM_NAMES})

    @torch.no_grad()
    def edit_rows(self, keep: torch.Tensor, new: Optional[Dict[str, torch.Tensor]] = None,
                  new_binding: Optional[torch.Tensor] = None) -> None:
        """Keep the rows where ``keep`` is True, then append ``new`` rows (densification)."""
        values = {n: self.params[n].detach()[keep] for n in PARAM_NAMES}
        binding = self.binding[keep]
        if new is not None:
            values = {n: torch.cat([values[n], new[n]]) for n in PARAM_NAMES}
            binding = torch.cat([binding, new_binding])
        self.binding = binding
        self._set_params(values)

    def select_rows(self, faces: torch.Tensor, num_faces: int) -> RowSelection:
        """The Gaussians bound to ``faces``: mask, row indices and count (one device sync)."""
        face_mask = torch.zeros(num_faces, dtype=torch.bool, device=self.device)
        face_mask[faces.to(self.device)] = True
        mask = face_mask[self.binding]
        rows = torch.nonzero(mask).squeeze(1)
        return RowSelection(rows, mask, int(rows.numel()))

    def create_from_points(self, points: InitialPoints, frames: FaceFrames,
                           device: torch.device) -> None:
        """Initialise from points in face-local coordinates and the mesh they were placed on.

        Scales start at the distance to the 3 nearest neighbours (as in 3DGS), opacity at 0.1.
        """
        from simple_knn import distCUDA2

        binding = torch.as_tensor(points.face, dtype=torch.long, device=device)
        local = torch.as_tensor(points.local, dtype=torch.float32, device=device)
        frames = FaceFrames(*(t.to(device=device, dtype=torch.float32) for t in frames))
        if self.face_scale:
            local = local / frames.size[binding, None]
        world = local_to_world_positions(local, binding, frames, self.face_scale)
        dist2 = distCUDA2(world).clamp_min(1e-10)
        log_scale = torch.log(torch.sqrt(dist2))[:, None].repeat(1, 3)
        if self.face_scale:
            log_scale = log_scale - torch.log(frames.size[binding, None])
        n = binding.numel()
        num_rest = (self.max_sh_degree + 1) ** 2 - 1
        rgb = torch.as_tensor(points.rgb, dtype=torch.float32, device=device)
        rotation = torch.zeros(n, 4, device=device)
        rotation[:, 0] = 1.0
        self.binding = binding
        self._set_params({
            "xyz": local,
            "f_dc": rgb_to_sh(rgb)[:, None, :],
            "f_rest": torch.zeros(n, num_rest, 3, device=device),
            "scaling": log_scale,
            "rotation": rotation,
            "opacity": inverse_sigmoid(torch.full((n, 1), 0.1, device=device)),
        })

    # --- posing ------------------------------------------------------------------------------
    def world(self, frames: FaceFrames, trainable: Optional[torch.Tensor] = None) -> WorldGaussians:
        """Pose the Gaussians with one frame's face frames (the PyTorch reference).

        Differentiable in the parameters; with ``trainable`` (an (N,) bool mask), only those
        rows get a gradient: the others are rendered with their current values as constants.
        """
        p, b = self.params, self.binding
        if trainable is not None:
            p = {n: torch.where(trainable.view((-1,) + (1,) * (t.dim() - 1)), t, t.detach())
                 for n, t in p.items()}
        xyz = local_to_world_positions(p["xyz"], b, frames, self.face_scale)
        scales = torch.exp(p["scaling"])
        if self.face_scale:
            scales = scales * frames.size[b, None]
        face_q = matrix_to_quaternion(frames.rotation)[b]
        rotations = quaternion_multiply(face_q, F.normalize(p["rotation"], dim=-1))
        shs = torch.cat([p["f_dc"], p["f_rest"]], dim=1)
        return WorldGaussians(xyz, scales, rotations, torch.sigmoid(p["opacity"]), shs,
                              self.active_sh_degree)

    def pose(self, triangles: torch.Tensor, trainable: Optional[torch.Tensor] = None
             ) -> WorldGaussians:
        """``world`` for one frame's mesh (F, 3, 3), with ``trainable`` an (N,) bool mask.

        The training loop's path: on CUDA, one fused kernel each way (utils/fused) instead of
        the ~60 small operations of ``world`` and ``face_frames``; elsewhere it is ``world``.
        """
        p = self.params
        if not (p["xyz"].is_cuda and p["xyz"].dtype == torch.float32 and fused.available()):
            return self.world(face_frames(triangles), trainable)
        xyz, scales, rotations, opacity = _FusedPose.apply(
            triangles.contiguous(), self.binding, trainable, self.face_scale, p["xyz"],
            p["scaling"], p["rotation"], p["opacity"])
        shs = torch.cat([p["f_dc"], p["f_rest"]], dim=1)
        if trainable is not None:   # frozen rows' colours are constants, as in ``world``
            shs = torch.where(trainable[:, None, None], shs, shs.detach())
        return WorldGaussians(xyz, scales, rotations, opacity, shs, self.active_sh_degree)

    def one_up_sh_degree(self) -> None:
        self.active_sh_degree = min(self.active_sh_degree + 1, self.max_sh_degree)

    # --- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        return {"params": {n: t.detach().clone() for n, t in self.params.items()},
                "binding": self.binding.clone(), "active_sh_degree": self.active_sh_degree,
                "max_sh_degree": self.max_sh_degree, "face_scale": self.face_scale}

    def load_state_dict(self, sd: Dict, device: torch.device) -> None:
        self.max_sh_degree = int(sd["max_sh_degree"])
        self.active_sh_degree = int(sd["active_sh_degree"])
        self.face_scale = bool(sd["face_scale"])
        self.binding = sd["binding"].to(device)
        self._set_params({n: t.to(device) for n, t in sd["params"].items()})

    # --- PLY files ---------------------------------------------------------------------------
    def splat_attribute_names(self) -> List[str]:
        """The standard 3DGS vertex properties, in 3DGS's order (what Gaussian-splat viewers read)."""
        n_rest = self.params["f_rest"].shape[1] * 3
        return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(n_rest)] + ["opacity"]
                + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])

    @torch.no_grad()
    def splat_attributes(self, frames: FaceFrames) -> np.ndarray:
        """(N, D) float32 values of ``splat_attribute_names`` for the Gaussians posed with ``frames``.

        World position, zero normals, SH (f_rest channel-major as in 3DGS), opacity logit, world
        log-scale, world rotation (w first, unit). The one place that lays out the 3DGS fields:
        ``save_ply`` and the viewer export (scene/export.py) both use it.
        """
        g = self.world(frames)
        p = self.params
        n = self.num_gaussians
        # 3DGS stores f_rest channel-major: for each colour channel, all its coefficients.
        f_rest = p["f_rest"].transpose(1, 2).reshape(n, -1)
        columns = torch.cat([
            g.xyz, torch.zeros(n, 3, device=g.xyz.device), p["f_dc"].reshape(n, 3), f_rest,
            p["opacity"], torch.log(g.scales), F.normalize(g.rotations, dim=-1)], dim=1)
        return columns.detach().cpu().numpy().astype(np.float32)

    def _binding_attribute_names(self) -> List[str]:
        return (["em_x", "em_y", "em_z"] + [f"em_scale_{i}" for i in range(3)]
                + [f"em_rot_{i}" for i in range(4)])

    @torch.no_grad()
    def save_ply(self, path: Path, frames: FaceFrames, reference_keyframe: int) -> None:
        """Write a 3DGS-compatible PLY posed at ``reference_keyframe``, plus the binding.

        Viewers read x/y/z, f_dc/f_rest, opacity, scale/rot (world, at that frame); STGA reads
        em_* (local) and index. Written atomically.
        """
        p = self.params
        local = torch.cat([p["xyz"], p["scaling"], p["rotation"]], dim=1).cpu().numpy()
        write_vertex_ply(
            path, self.splat_attribute_names() + self._binding_attribute_names(),
            np.concatenate([self.splat_attributes(frames), local], axis=1),
            int_fields={"index": self.binding.cpu().numpy()},
            comments=[f"stga reference_keyframe {reference_keyframe}",
                      f"stga face_scale {int(self.face_scale)}"])

    def load_ply(self, path: Path, num_faces: int, device: torch.device) -> None:
        """Read a model written by ``save_ply`` (its em_* and index fields)."""
        try:
            ply = PlyData.read(str(path))
            v = ply["vertex"]
        except FileNotFoundError:
            raise DatasetError(f"{path}: model file is missing") from None
        except Exception as exc:
            raise DatasetError(f"{path}: not a readable PLY file ({exc})") from None
        names = set(v.data.dtype.names)
        needed = (["em_x", "em_y", "em_z", "index", "opacity", "f_dc_0", "f_dc_1", "f_dc_2"]
                  + [f"em_scale_{i}" for i in range(3)] + [f"em_rot_{i}" for i in range(4)])
        missing = [k for k in needed if k not in names]
        if missing:
            raise DatasetError(f"{path}: not an STGA model, missing fields {missing}")
        n_rest = len([k for k in names if k.startswith("f_rest_")])
        degree = int(round(math.sqrt(n_rest / 3 + 1))) - 1
        if 3 * ((degree + 1) ** 2 - 1) != n_rest:
            raise DatasetError(f"{path}: {n_rest} f_rest fields do not match any SH degree")
        col = lambda keys: torch.tensor(np.stack([np.asarray(v[k], np.float32) for k in keys], 1))
        binding = torch.tensor(np.asarray(v["index"]), dtype=torch.long)
        if binding.numel() and (binding.min() < 0 or binding.max() >= num_faces):
            raise DatasetError(f"{path}: face index out of range for meshes with {num_faces} faces")
        n = binding.numel()
        f_rest = col([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, -1).transpose(1, 2)
        for line in ply.comments:
            if line.startswith("stga face_scale"):
                self.face_scale = bool(int(line.split()[-1]))
        self.max_sh_degree = self.active_sh_degree = degree
        self.binding = binding.to(device)
        self._set_params({
            "xyz": col(["em_x", "em_y", "em_z"]).to(device),
            "f_dc": col(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3).to(device),
            "f_rest": f_rest.contiguous().to(device),
            "scaling": col([f"em_scale_{i}" for i in range(3)]).to(device),
            "rotation": col([f"em_rot_{i}" for i in range(4)]).to(device),
            "opacity": col(["opacity"]).to(device),
        })


def write_vertex_ply(path: Path, names: Sequence[str], columns: np.ndarray,
                     int_fields: Optional[Dict[str, np.ndarray]] = None,
                     comments: Sequence[str] = ()) -> None:
    """Write one binary little-endian ``vertex`` element: float32 ``columns`` named ``names``,
    then int32 ``int_fields``; atomically, so a reader never sees half a file."""
    columns = np.asarray(columns, dtype=np.float32)
    if columns.ndim != 2 or columns.shape[1] != len(names):
        raise ValueError(f"{len(names)} property names for columns of shape {columns.shape}")
    int_fields = int_fields or {}
    dtype = [(name, "<f4") for name in names] + [(name, "<i4") for name in int_fields]
    data = np.empty(columns.shape[0], dtype=dtype)
    for i, name in enumerate(names):
        data[name] = columns[:, i]
    for name, values in int_fields.items():
        data[name] = values
    ply = PlyData([PlyElement.describe(data, "vertex")], byte_order="<", comments=list(comments))
    with atomic_path(Path(path)) as tmp:
        ply.write(str(tmp))
