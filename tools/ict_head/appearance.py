"""The painted look of the realistic head: albedo from solid textures, then a fixed light.

Every colour is a function of where a point sits on the *neutral* head (metres, y up, face
towards +z), so the paint moves with the skin through every expression. Pattern scales are in
millimetres of skin: blotches, pores, freckles, redness around the nose and cheeks, lips with a
cupid's bow, eyebrows of hair strokes, a short haircut with a hairline, irises with radial
fibres and a dark pupil, sclera, teeth, gums, tongue, dark eyelashes, a dim mouth cavity.

Lighting: a key light fixed to the head (it turns with it, so that the colour of a skin point
depends on the expression and the view, never on the head's pose), a soft wrap-around fill,
and a faint Blinn-Phong highlight (stronger on the lips and the wet eyes). Everything is
evaluated per sample in PyTorch on whatever device the samples are on; the seed picks the
noise, the iris colour and the freckles.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from tools.ict_head.asset import (EYELASHES, GUMS_TONGUE, IRIS, PART_EYE_SOCKET,
                                  PART_MOUTH_SOCKET, SCLERA, SKIN, TEETH, HeadAsset)

LIGHT = (0.38, 0.52, 0.76)          # towards the key light, head space (upper left-front)
AMBIENT = 0.40
DIFFUSE = 0.66
INTERIOR = (0.16, 0.07, 0.06)       # a triangle seen from behind: the inside of the head

#: Iris colours a seed chooses from: (base, fibre highlight).
IRIS_PALETTE = (((0.30, 0.42, 0.55), (0.55, 0.66, 0.74)),   # grey-blue
                ((0.36, 0.25, 0.13), (0.58, 0.44, 0.24)),   # brown
                ((0.32, 0.38, 0.20), (0.60, 0.58, 0.32)),   # hazel-green
                ((0.22, 0.15, 0.09), (0.42, 0.30, 0.18)))   # dark brown

_LATTICE = 1024          # the noise lattice repeats every 1024 cells (over 70 cm at 0.7 mm)
_tables: dict = {}


def _lattice(seed: int, device: torch.device):
    """A seeded permutation of the lattice and one random value per lattice entry."""
    key = (seed, str(device))
    if key not in _tables:
        rng = np.random.default_rng([seed, 99])
        perm = torch.from_numpy(rng.permutation(_LATTICE)).to(device)
        vals = torch.from_numpy(rng.random(_LATTICE)).to(device)
        _tables[key] = (perm, vals)
    return _tables[key]


def _hash(ix: torch.Tensor, iy: torch.Tensor, iz: torch.Tensor, seed: int) -> torch.Tensor:
    """Integer lattice coordinates -> pseudo-random values in [0, 1) (nested permutations)."""
    perm, vals = _lattice(seed, ix.device)
    m = _LATTICE - 1
    return vals[(perm[(perm[iz & m] + iy) & m] + ix) & m]


def value_noise(p: torch.Tensor, cell, seed: int) -> torch.Tensor:
    """Smooth 3D value noise in [0, 1] at points ``p`` (N, 3); ``cell`` is the lattice spacing in
    metres, one number or one per axis (long cells make strands and strokes)."""
    f = p / torch.as_tensor(cell, dtype=p.dtype, device=p.device)
    i = torch.floor(f)
    u = f - i
    u = u * u * (3.0 - 2.0 * u)
    i = i.long()
    out = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    for dx in (0, 1):
        wx = u[:, 0] if dx else 1.0 - u[:, 0]
        for dy in (0, 1):
            wy = u[:, 1] if dy else 1.0 - u[:, 1]
            for dz in (0, 1):
                wz = u[:, 2] if dz else 1.0 - u[:, 2]
                out = out + wx * wy * wz * _hash(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz,
                                                 seed).to(p.dtype)
    return out


def _smooth(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _bump(x: torch.Tensor, y: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((x / sx) ** 2 + (y / sy) ** 2))


def _mix(a: torch.Tensor, b, w: torch.Tensor) -> torch.Tensor:
    b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
    return a + (b - a) * w[:, None]


class Painter:
    """Albedo and lighting of the head for one seed (landmarks measured once on the asset)."""

    def __init__(self, asset: HeadAsset, seed: int = 0):
        self.seed = int(seed)
        self.eyes = asset.eyes
        self.nose = asset.nose_tip
        self.mouth_centre, self.mouth_half = asset.mouth
        self.eye_y = float(self.eyes[0].centre[1])
        self.iris = IRIS_PALETTE[self.seed % len(IRIS_PALETTE)]

    # --- albedo --------------------------------------------------------------------------------
    def albedo(self, material: torch.Tensor, part: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """(N, 3) colour in [0, 1] of samples with triangle ``material``, ``part`` and neutral
        position ``q`` (N, 3)."""
        out = torch.empty(q.shape[0], 3, dtype=q.dtype, device=q.device)
        groups = {
            "skin": (material == SKIN) & (part != PART_MOUTH_SOCKET),
            "socket": (material == SKIN) & (part == PART_MOUTH_SOCKET),
            "gums": material == GUMS_TONGUE,
            "teeth": material == TEETH,
            "eye": (material == SCLERA) | (material == IRIS),
            "lashes": material == EYELASHES,
        }
        for name, m in groups.items():
            if bool(m.any()):
                out[m] = getattr(self, f"_{name}")(q[m], part[m])
        return out.clamp(0.0, 1.0)

    def lip_weight(self, q: torch.Tensor) -> torch.Tensor:
        """1 on the lips' red part, 0 off it (soft edge), from the mouth's landmarks."""
        x, y, z = q[:, 0], q[:, 1] - self.mouth_centre[1], q[:, 2]
        u = (x / (self.mouth_half * 1.08)).clamp(-1.0, 1.0)
        body = (1.0 - u * u).clamp_min(0.0)
        upper = 0.0058 * body.sqrt() + 0.0010 * torch.exp(-((u.abs() - 0.24) / 0.12) ** 2) \
            - 0.0009 * torch.exp(-(u / 0.07) ** 2)
        lower = 0.0074 * body ** 0.65
        edge = 0.0008
        w_up = _smooth(edge, -edge, y - upper) * (y >= 0)
        w_lo = _smooth(edge, -edge, -y - lower) * (y < 0)
        near = _smooth(self.mouth_centre[2] - 0.030, self.mouth_centre[2] - 0.018, z)
        inside = (x.abs() < self.mouth_half * 1.08).to(q.dtype)
        return ((w_up + w_lo) * near * inside).clamp(0.0, 1.0)

    def _skin(self, q: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        s = self.seed
        x, y, z = q[:, 0], q[:, 1], q[:, 2]
        ax = x.abs()
        front = _smooth(0.02, 0.06, z)
        col = torch.tensor([0.86, 0.655, 0.56], dtype=q.dtype, device=q.device).expand(len(q), 3)
        blot = 0.6 * value_noise(q, 0.020, s) + 0.4 * value_noise(q, 0.006, s + 1)
        col = col * (0.92 + 0.16 * blot)[:, None]
        # a cooler, paler neck; warmer, redder nose, cheeks, ears and chin
        col = _mix(col, (0.83, 0.66, 0.58), _smooth(-0.07, -0.12, y) * 0.6)
        red = 0.55 * _bump(x, y - self.nose[1], 0.011, 0.012) * front
        red = red + 0.40 * _bump(ax - 0.024, y - (self.nose[1] - 0.004), 0.010, 0.008) * front
        red = red + 0.45 * _bump(ax - 0.048, y - (self.eye_y - 0.035), 0.017, 0.014) * front
        red = red + 0.25 * _bump(x, y - (self.mouth_centre[1] - 0.040), 0.016, 0.010) * front
        red = red + 0.35 * _smooth(0.070, 0.085, ax) * _smooth(0.03, -0.01, z)   # ears
        red = red * (0.75 + 0.5 * value_noise(q, 0.004, s + 2))
        col = _mix(col, (0.80, 0.45, 0.42), (0.55 * red).clamp(0.0, 1.0))
        # pores: fine dark dots, strongest on the nose and cheeks
        pore_zone = 0.4 + 0.6 * (_bump(x, y - self.nose[1], 0.020, 0.020)
                                 + _bump(ax - 0.045, y - (self.eye_y - 0.035), 0.020, 0.018))
        pores = _smooth(0.62, 0.85, value_noise(q, 0.0007, s + 3))
        col = col * (1.0 - 0.10 * (pores * pore_zone.clamp(0, 1) * front))[:, None]
        fine = value_noise(q, 0.0016, s + 4)
        col = col * (0.96 + 0.08 * fine)[:, None]
        # freckles: sparse brown spots over the nose and upper cheeks
        fz = _bump(x, y - (self.nose[1] + 0.012), 0.045, 0.018) * front
        spots = _smooth(0.76, 0.82, value_noise(q, 0.0016, s + 5)) * fz
        col = _mix(col, (0.66, 0.44, 0.32), 0.45 * spots)
        # lips
        lip = self.lip_weight(q)
        lip_col = torch.tensor([0.72, 0.45, 0.43], dtype=q.dtype, device=q.device) \
            * (0.9 + 0.2 * value_noise(q * torch.tensor([1.0, 0.2, 1.0], dtype=q.dtype,
                                                         device=q.device), 0.0009, s + 6))[:, None]
        col = col + (lip_col - col) * lip[:, None]
        # eyebrows: hair strokes along an arch above each eye
        col = _mix(col, (0.24, 0.16, 0.11), self._brows(q))
        # short hair above a hairline; lashes' line on the lid margins
        col = _mix(col, (0.20, 0.14, 0.10), self._hair(q))
        lid = _bump(ax - 0.032, y - (self.eye_y + 0.003), 0.016, 0.0016) * (part == PART_EYE_SOCKET)
        col = _mix(col, (0.45, 0.28, 0.24), 0.5 * lid)
        # stubble shadow on chin, jaw and upper lip
        jaw = _smooth(self.mouth_centre[1] + 0.006, self.mouth_centre[1] - 0.012, y) \
            * _smooth(-0.09, -0.06, y) * front * (1.0 - lip)
        lipup = _bump(x, y - (self.mouth_centre[1] + 0.013), 0.022, 0.005) * (1.0 - lip)
        stub = _smooth(0.55, 0.75, value_noise(q, 0.0006, s + 7)) * (0.5 * jaw + 0.4 * lipup)
        col = col * (1.0 - 0.25 * stub)[:, None]
        return col

    def _brows(self, q: torch.Tensor) -> torch.Tensor:
        x, y, z = q[:, 0], q[:, 1], q[:, 2]
        ax = x.abs()
        u = (ax - 0.013) / 0.050                             # 0 at the inner end, 1 at the tail
        centre = self.eye_y + 0.0175 + 0.0055 * torch.sin(math.pi * u.clamp(0, 1) ** 0.8) \
            - 0.004 * u.clamp(0, 1) ** 2
        half = 0.0045 * (1.0 - 0.6 * u.clamp(0, 1))
        inside = _smooth(-0.05, 0.02, u) * _smooth(1.05, 0.9, u) \
            * _smooth(half + 0.0012, half - 0.0008, (y - centre).abs()) * _smooth(0.05, 0.07, z)
        # strokes: cells long along the brow, thin across it
        rot = torch.stack([ax, y - 0.25 * (ax - 0.013), z], -1)
        strokes = _smooth(0.35, 0.65, value_noise(rot, (0.0035, 0.00035, 0.0035), self.seed + 8))
        return (inside * (0.35 + 0.6 * strokes)).clamp(0.0, 1.0)

    def _hair(self, q: torch.Tensor) -> torch.Tensor:
        x, y, z = q[:, 0], q[:, 1], q[:, 2]
        phi = torch.atan2(x, z - 0.01).abs()                 # 0 in front, pi at the back
        knots_phi = torch.tensor([0.0, 0.45, 0.85, 1.25, 1.55, 1.95, 2.4, math.pi],
                                 dtype=q.dtype, device=q.device)
        knots_y = torch.tensor([0.108, 0.104, 0.092, 0.070, 0.052, 0.030, -0.045, -0.070],
                               dtype=q.dtype, device=q.device)
        k = torch.bucketize(phi.clamp(0, math.pi - 1e-9), knots_phi).clamp(1, len(knots_phi) - 1)
        t = (phi - knots_phi[k - 1]) / (knots_phi[k] - knots_phi[k - 1])
        line = knots_y[k - 1] + (knots_y[k] - knots_y[k - 1]) * t
        line = line + 0.004 * (value_noise(q, 0.006, self.seed + 9) - 0.5)
        ears = _smooth(0.072, 0.080, x.abs()) * _smooth(0.06, 0.04, y)
        cover = _smooth(-0.001, 0.004, y - line) * (1.0 - ears)
        strands = value_noise(q, 0.00045, self.seed + 10)
        return (cover * (0.72 + 0.28 * strands)).clamp(0.0, 1.0)

    def _socket(self, q: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        col = torch.tensor([0.62, 0.26, 0.27], dtype=q.dtype, device=q.device).expand(len(q), 3)
        return col * (0.85 + 0.3 * value_noise(q, 0.002, self.seed + 11))[:, None]

    def _gums(self, q: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        x, y = q[:, 0], q[:, 1]
        tongue = _smooth(0.020, 0.015, x.abs()) * _smooth(-0.022, -0.028, y)
        base = torch.tensor([0.80, 0.38, 0.40], dtype=q.dtype, device=q.device).expand(len(q), 3)
        col = _mix(base, (0.78, 0.44, 0.46), tongue)
        bumps = value_noise(q, 0.0012, self.seed + 12)
        return col * (0.88 + 0.2 * bumps)[:, None]

    def _teeth(self, q: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        base = torch.tensor([0.95, 0.93, 0.86], dtype=q.dtype, device=q.device).expand(len(q), 3)
        # yellower towards the gums (|y| far from the bite line), a little grain
        gum = _smooth(0.004, 0.011, (q[:, 1] - self.mouth_centre[1]).abs())
        col = _mix(base, (0.90, 0.84, 0.70), 0.6 * gum)
        return col * (0.95 + 0.07 * value_noise(q, 0.0015, self.seed + 13))[:, None]

    def _eye(self, q: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(q), 3, dtype=q.dtype, device=q.device)
        for eye, side in zip(self.eyes, (1.0, -1.0)):
            m = torch.sign(q[:, 0]) == side
            if not bool(m.any()):
                continue
            c = torch.as_tensor(eye.centre, dtype=q.dtype, device=q.device)
            a = torch.as_tensor(eye.axis, dtype=q.dtype, device=q.device)
            d = q[m] - c
            d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
            ang = torch.acos((d @ a).clamp(-1.0, 1.0))            # from the gaze axis
            # angle around the axis, for the iris' radial fibres
            e1 = torch.linalg.cross(a, torch.tensor([0.0, 1.0, 0.0], dtype=q.dtype,
                                                    device=q.device), dim=0)
            e1 = e1 / e1.norm()
            e2 = torch.linalg.cross(a, e1, dim=0)
            around = torch.atan2(d @ e2, d @ e1)
            r_iris, r_pupil = 0.40, 0.145                         # radians on the eyeball
            sclera = torch.tensor([0.93, 0.91, 0.88], dtype=q.dtype, device=q.device)
            col = sclera.expand(len(d), 3).clone()
            horiz = (d @ e1).abs()
            col = _mix(col, (0.88, 0.70, 0.66), 0.5 * _smooth(0.55, 0.95, horiz))   # pink corners
            veins = _smooth(0.80, 0.90, value_noise(q[m], (0.004, 0.0004, 0.004), self.seed + 14))
            col = _mix(col, (0.80, 0.45, 0.42), 0.35 * veins * _smooth(0.7, 1.0, ang))
            base, light = self.iris
            fib = value_noise(torch.stack([around * 8.0, ang * 60.0, torch.zeros_like(ang)], -1),
                              (0.35, 1.0, 1.0), self.seed + 15)
            icol = torch.tensor(base, dtype=q.dtype, device=q.device).expand(len(d), 3)
            icol = _mix(icol, light, 0.7 * fib * _smooth(r_pupil, r_iris * 0.8, ang))
            icol = _mix(icol, (0.05, 0.05, 0.06), 0.7 * _smooth(r_iris * 0.82, r_iris, ang))
            t_iris = _smooth(r_iris + 0.02, r_iris - 0.01, ang)
            col = col + (icol - col) * t_iris[:, None]
            pupil = _smooth(r_pupil + 0.015, r_pupil - 0.01, ang)
            col = _mix(col, (0.025, 0.022, 0.025), pupil)
            out[m] = col
        return out

    def _lashes(self, q: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.07, 0.05, 0.045], dtype=q.dtype, device=q.device).expand(len(q), 3)

    def lash_coverage(self, q: torch.Tensor) -> torch.Tensor:
        """(N,) how much of an eyelash strip a sample covers: thin dark hairs with gaps."""
        hairs = value_noise(q, (0.00035, 0.004, 0.004), self.seed + 16)
        return 0.85 * _smooth(0.5, 0.62, hairs)

    # --- light ---------------------------------------------------------------------------------
    def shade(self, albedo: torch.Tensor, material: torch.Tensor, part: torch.Tensor,
              q: torch.Tensor, normal: torch.Tensor, view: torch.Tensor,
              front: torch.Tensor) -> torch.Tensor:
        """Lit colour of samples: ``normal`` and ``view`` (towards the camera) unit vectors in
        head space; ``front`` whether the sample's triangle faces the camera."""
        L = torch.tensor(LIGHT, dtype=albedo.dtype, device=albedo.device)
        L = L / L.norm()
        ndl = normal @ L
        diffuse = AMBIENT * (0.75 + 0.25 * (0.5 + 0.5 * ndl)) + DIFFUSE * ndl.clamp_min(0.0)
        h = L + view
        h = h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)
        ndh = (normal * h).sum(1).clamp_min(0.0)
        spec_k = torch.full_like(ndl, 0.035)
        shin = torch.full_like(ndl, 24.0)
        eye = (material == SCLERA) | (material == IRIS)
        spec_k[eye], shin[eye] = 0.55, 300.0
        lip = self.lip_weight(q) * (material == SKIN)
        spec_k = spec_k + 0.08 * lip
        spec = spec_k * ndh ** shin * (ndl > 0)
        # the mouth's inside and the eye sockets get little light: darker the deeper they lie
        inner = (material == GUMS_TONGUE) | (material == TEETH) | (part == PART_MOUTH_SOCKET)
        depth = (self.mouth_centre[2] - q[:, 2]).clamp_min(0.0)
        cavity = torch.where(inner, 0.22 + 0.78 * torch.exp(-depth / 0.018),
                             torch.ones_like(depth))
        cavity = torch.where(part == PART_EYE_SOCKET, 0.55 + 0.45 * cavity, cavity)
        lashes = material == EYELASHES
        diffuse = torch.where(lashes, torch.full_like(diffuse, 0.8), diffuse)
        col = albedo * (diffuse * cavity)[:, None] + (spec * cavity)[:, None]
        interior = torch.tensor(INTERIOR, dtype=col.dtype, device=col.device)
        col = torch.where((front | lashes)[:, None], col, interior.expand_as(col))
        return col.clamp(0.0, 1.0)
