"""The realistic head's sequence in memory: posed meshes, cameras, and the ground-truth renderer.

Keyframe k < n_train is frame ``k * stride`` of a 25 fps performance; the held-out test
keyframes continue the same performance after the training part, ``test_stride`` frames apart
(sparser, so that a few test keyframes span talking, smiles and blinks rather than one pause).
Vertices are rounded to 0.1 micrometre once, here, so that the images, the written meshes and
the selection agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from scene.demo_head.cameras import Camera, RigSplits
from scene.demo_head.mesh import REGION_EYES, REGION_MOUTH, REGION_SKIN
from tools.ict_head.animation import FPS, PIVOT, Performance, perform
from tools.ict_head.appearance import Painter
from tools.ict_head.asset import (EYELASHES, GUMS_TONGUE, IRIS, PART_EYE_SOCKET,
                                  PART_MOUTH_SOCKET, SCLERA, SKIN, TEETH, HeadAsset, load_asset)
from tools.ict_head.cameras import build_rig
from tools.ict_head.raster import project, rasterize

ROUND_DECIMALS = 7
PAINT_DTYPE = torch.float32   # paint and light (the z-buffer itself works in float64)


@dataclass(frozen=True)
class RenderOutput:
    """One view: colour with coverage, and what each pixel's central sample sees."""

    rgba: np.ndarray       # (H, W, 4) uint8, straight alpha (coverage), as written to PNG
    region: np.ndarray     # (H, W) uint8: 0 background, 1 skin/other, 2 mouth, 3 eyes
    material: np.ndarray   # (H, W) int8 material at the central sample, -1 for background


@dataclass
class HeadSequence(RigSplits):
    """A performance of the head seen by the rig."""

    asset: HeadAsset
    performance: Performance
    n_train: int
    n_test: int
    stride: int
    test_stride: int
    cameras: list[Camera]
    seed: int = 0
    teeth_in_mesh: bool = False
    device: str = "cpu"

    @property
    def n_keyframes(self) -> int:
        return self.n_train + self.n_test

    @property
    def train_keyframes(self) -> np.ndarray:
        return np.arange(self.n_train)

    @property
    def test_keyframes(self) -> np.ndarray:
        return np.arange(self.n_train, self.n_keyframes)

    def frame_of(self, keyframe: int) -> int:
        """The performance frame (25 fps) shown at ``keyframe``."""
        k = int(keyframe)
        if k < self.n_train:
            return k * self.stride
        return self.n_train * self.stride + (k - self.n_train) * self.test_stride

    def weights(self, keyframe: int) -> np.ndarray:
        return self.performance.weights[self.frame_of(keyframe)]

    def local_vertices(self, keyframe: int) -> np.ndarray:
        """(V, 3) vertices with the keyframe's expression, in head space (no head motion)."""
        return self.asset.pose_local(self.weights(keyframe))

    @cached_property
    def vertices(self) -> np.ndarray:
        """(T, V, 3) world vertices of every keyframe (rounded: see the module note)."""
        out = []
        for k in range(self.n_keyframes):
            f = self.frame_of(k)
            R, t = self.performance.rotations[f], self.performance.translations[f]
            world = (self.local_vertices(k) - PIVOT) @ R.T + PIVOT + t
            out.append(np.round(world, ROUND_DECIMALS))
        return np.stack(out)

    @cached_property
    def tracked_faces(self) -> np.ndarray:
        return self.asset.tracked_faces(self.teeth_in_mesh)

    @property
    def meshes(self) -> np.ndarray:
        """(T, F, 3, 3) triangle soup of the tracked mesh per keyframe, as written to files."""
        return self.vertices[:, self.asset.faces[self.tracked_faces]]

    @cached_property
    def painter(self) -> Painter:
        return Painter(self.asset, self.seed)

    @cached_property
    def face_region(self) -> np.ndarray:
        """(F,) uint8 region label of every triangle of the full head."""
        a = self.asset
        centroid = a.vertices[a.faces].mean(1)
        x, y, z = centroid.T
        my = a.mouth[0][1]
        lips = (np.abs(x) < a.mouth[1] * 1.25) & (np.abs(y - my) < 0.015) & (z > 0.085)
        eye_y = a.eyes[0].centre[1]
        lids = (((np.abs(x) - 0.031) / 0.024) ** 2 + ((y - eye_y) / 0.015) ** 2 < 1.0) \
            & (z > 0.06)
        region = np.full(len(a.faces), REGION_SKIN, np.uint8)
        skin = a.material == SKIN
        region[skin & lips] = REGION_MOUTH
        region[skin & lids] = REGION_EYES
        region[np.isin(a.material, (GUMS_TONGUE, TEETH))] = REGION_MOUTH
        region[a.face_part == PART_MOUTH_SOCKET] = REGION_MOUTH
        region[np.isin(a.material, (SCLERA, IRIS, EYELASHES))] = REGION_EYES
        region[a.face_part == PART_EYE_SOCKET] = REGION_EYES
        return region

    @cached_property
    def _weld(self) -> np.ndarray:
        """Vertex -> welded id (vertices at the same neutral position shade as one)."""
        key = np.round(self.asset.vertices / 1e-7).astype(np.int64)
        return np.unique(key, axis=0, return_inverse=True)[1].ravel()

    @cached_property
    def _tensors(self) -> dict:
        a, dev = self.asset, torch.device(self.device)
        return {"faces": torch.from_numpy(a.faces).to(dev),
                "material": torch.from_numpy(a.material).to(dev),
                "part": torch.from_numpy(a.face_part).to(dev),
                "region": torch.from_numpy(self.face_region).to(dev),
                "neutral": torch.from_numpy(a.vertices).to(dev, PAINT_DTYPE),
                "weld": torch.from_numpy(self._weld).to(dev),
                "opaque": torch.from_numpy(np.nonzero(a.material != EYELASHES)[0]).to(dev),
                "lashes": torch.from_numpy(np.nonzero(a.material == EYELASHES)[0]).to(dev)}

    def _normals(self, local: torch.Tensor) -> torch.Tensor:
        """Area-weighted vertex normals, shared across welded vertices."""
        T = self._tensors
        v = local[T["faces"]]
        fn = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=1)
        acc = torch.zeros(int(T["weld"].max()) + 1, 3, dtype=local.dtype, device=local.device)
        for k in range(3):
            acc.index_add_(0, T["weld"][T["faces"][:, k]], fn)
        n = acc[T["weld"]]
        return n / n.norm(dim=1, keepdim=True).clamp_min(1e-20)

    def _shade(self, face: torch.Tensor, bary: torch.Tensor, local: torch.Tensor,
               normals: torch.Tensor, cam_local: torch.Tensor) -> torch.Tensor:
        """(N, 3) lit colour of samples on triangles ``face`` at barycentrics ``bary``, seen from
        ``cam_local`` (N, 3), the camera centre of each sample in head space."""
        T = self._tensors
        corners = T["faces"][face]
        b = bary.to(PAINT_DTYPE)
        q = torch.einsum("nk,nkc->nc", b, T["neutral"][corners])
        p = torch.einsum("nk,nkc->nc", b, local[corners])
        n = torch.einsum("nk,nkc->nc", b, normals[corners])
        n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-20)
        view = cam_local - p
        view = view / view.norm(dim=1, keepdim=True).clamp_min(1e-20)
        tri = local[corners]
        fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
        front = (fn * (cam_local - tri[:, 0])).sum(1) > 0
        n = torch.where(front[:, None], n, -n)
        mat, part = T["material"][face], T["part"][face]
        albedo = self.painter.albedo(mat, part, q)
        return self.painter.shade(albedo, mat, part, q, n, view, front)

    def render(self, keyframe: int, camera: Camera, supersample: int = 3) -> RenderOutput:
        """Ground-truth image of ``keyframe`` seen by ``camera``."""
        return self.render_views(keyframe, [camera], supersample)[0]

    @torch.no_grad()
    def render_views(self, keyframe: int, cameras: list[Camera], supersample: int = 3,
                     max_samples: int | None = None) -> list[RenderOutput]:
        """Ground-truth images of ``keyframe`` seen by each of ``cameras``.

        Two passes per camera: every surface but the eyelashes (opaque), then the eyelashes,
        blended over it where they are in front with the partial coverage of their hair strands.
        The samples of several cameras (up to ``max_samples`` of supersampled grid in all) are
        painted and lit together: a few large tensor operations instead of many small ones.
        """
        if max_samples is None:   # a GPU takes a whole keyframe of the large variant at once
            max_samples = 1 << 25 if self.device.startswith("cuda") else 1 << 23
        out: list[RenderOutput] = []
        group: list[Camera] = []
        ss = int(supersample)
        for cam in cameras:
            if group and (sum(c.width * c.height for c in group) + cam.width * cam.height) \
                    * ss * ss > max_samples:
                out += self._render_group(keyframe, group, ss)
                group = []
            group.append(cam)
        if group:
            out += self._render_group(keyframe, group, ss)
        return out

    def _render_group(self, keyframe: int, cameras: list[Camera], ss: int) -> list[RenderOutput]:
        T, dev = self._tensors, torch.device(self.device)
        f = self.frame_of(keyframe)
        R = torch.from_numpy(self.performance.rotations[f]).to(dev)
        t = torch.from_numpy(self.performance.translations[f]).to(dev)
        pivot = torch.from_numpy(PIVOT).to(dev)
        world = torch.from_numpy(self.vertices[keyframe]).to(dev)
        local64 = (world - pivot - t) @ R + pivot       # exact inverse of the head motion
        local = local64.to(PAINT_DTYPE)
        normals = self._normals(local64).to(PAINT_DTYPE)
        views = []
        base_samples, lash_samples = [], []
        for cam in cameras:
            w2c = torch.from_numpy(cam.w2c).to(dev)
            cam_local = ((-w2c[:3, :3].T @ w2c[:3, 3] - pivot - t) @ R + pivot).to(PAINT_DTYPE)
            W, H = cam.width * ss, cam.height * ss
            xy, z = project(world, torch.from_numpy(cam.K).to(dev), w2c, ss)
            base = rasterize(xy, z, T["faces"][T["opaque"]], W, H)
            pix = torch.nonzero(base.covered).squeeze(1)
            face = T["opaque"][base.face[pix]]
            bary = base.bary[pix]
            depth = torch.full((H * W,), float("inf"), dtype=torch.float64, device=dev)
            depth[pix] = (bary * z[T["faces"][face]]).sum(1)
            base_samples.append((pix, face, bary, cam_local))
            lash = rasterize(xy, z, T["faces"][T["lashes"]], W, H)
            lpix = torch.nonzero(lash.covered).squeeze(1)
            lface = T["lashes"][lash.face[lpix]]
            lbary = lash.bary[lpix]
            front = (lbary * z[T["faces"][lface]]).sum(1) < depth[lpix]
            lash_samples.append((lpix[front], lface[front], lbary[front], cam_local))
            views.append((cam, base.face))
        colours = self._shade_samples(base_samples, local, normals)
        lash_colours = self._shade_samples(lash_samples, local, normals, coverage=True)
        outputs = []
        for i, (cam, base_face) in enumerate(views):
            W, H = cam.width * ss, cam.height * ss
            acc = torch.zeros(H * W, 4, dtype=torch.float64, device=dev)
            pix = base_samples[i][0]
            acc[pix, :3] = colours[i]
            acc[pix, 3] = 1.0
            lpix = lash_samples[i][0]
            if lpix.numel():
                col, a = lash_colours[i]
                a = a[:, None]
                acc[lpix, :3] = a * col + (1.0 - a) * acc[lpix, :3]
                acc[lpix, 3] = a[:, 0] + (1.0 - a[:, 0]) * acc[lpix, 3]
            outputs.append(self._finish(cam, acc, base_face, ss))
        return outputs

    def _shade_samples(self, samples: list, local: torch.Tensor, normals: torch.Tensor,
                       coverage: bool = False) -> list:
        """Shade the samples of every camera in one call (each camera's samples a tuple of pixel
        ids, faces, barycentrics and its centre in head space); split the result back."""
        counts = [s[0].numel() for s in samples]
        face = torch.cat([s[1] for s in samples])
        bary = torch.cat([s[2] for s in samples])
        cam_local = torch.cat([s[3].expand(n, 3) for s, n in zip(samples, counts)])
        col = self._shade(face, bary, local, normals, cam_local).double()
        if not coverage:
            return list(torch.split(col, counts))
        q = torch.einsum("nk,nkc->nc", bary.to(PAINT_DTYPE),
                         self._tensors["neutral"][self._tensors["faces"][face]])
        a = self.painter.lash_coverage(q).double()
        return list(zip(torch.split(col, counts), torch.split(a, counts)))

    def _finish(self, cam: Camera, acc: torch.Tensor, base_face: torch.Tensor,
                ss: int) -> RenderOutput:
        """Box-filter the supersampled colours (premultiplied) into the image; labels from the
        central sample of each pixel."""
        T = self._tensors
        W, H = cam.width * ss, cam.height * ss
        img = acc.reshape(H, W, 4).permute(2, 0, 1)[None]
        img = torch.cat([img[:, :3] * img[:, 3:], img[:, 3:]], 1)
        if ss > 1:
            img = F.avg_pool2d(img, ss)
        img = img[0].permute(1, 2, 0)
        alpha = img[..., 3:]
        rgb = (img[..., :3] / alpha.clamp_min(1e-12)).clamp(0, 1)
        rgba = torch.cat([rgb, alpha.clamp(0, 1)], -1).float()
        rgba = (rgba * 255.0).round().to(torch.uint8).cpu().numpy()   # 8 bits on the device
        c = ss // 2
        central = base_face.reshape(cam.height, ss, cam.width, ss)[:, c, :, c]
        hit = central >= 0
        glob = T["opaque"][central.clamp_min(0)]
        region = torch.where(hit, T["region"][glob].long(), torch.zeros_like(central))
        material = torch.where(hit, T["material"][glob], torch.full_like(central, -1))
        return RenderOutput(rgba=rgba, region=region.to(torch.uint8).cpu().numpy(),
                            material=material.to(torch.int8).cpu().numpy())


def build_sequence(seed: int = 0, width: int = 550, height: int = 802, n_train: int = 60,
                   n_test: int = 12, stride: int = 3, test_stride: int | None = None,
                   n_cameras: int = 16, teeth_in_mesh: bool = False,
                   device: str = "cpu") -> HeadSequence:
    """The sequence in memory (nothing is rendered until asked)."""
    asset = load_asset()
    test_stride = stride if test_stride is None else test_stride
    n_frames = n_train * stride + n_test * test_stride
    perf = perform(asset.expression_names, n_frames, seed, FPS)
    return HeadSequence(asset=asset, performance=perf, n_train=n_train, n_test=n_test,
                        stride=stride, test_stride=test_stride,
                        cameras=build_rig(width, height, n_cameras), seed=seed,
                        teeth_in_mesh=teeth_in_mesh, device=device)
