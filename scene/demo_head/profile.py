"""The skin surface of the demo head as a smooth parametric surface.

The head is lofted from horizontal super-elliptic cross-sections (flatter in front than an ellipse,
like a face) whose size follows a profile table from the crown down to the neck. A surface point is
addressed by ``(s, t)``: ``s`` in [-1, 1] runs round the head (0 = front, +-1 = the seam at the
back, denser columns in front), ``t`` in [0, 1] runs from the crown to the bottom of the neck,
proportional to arc length along the front profile so that texture texels are evenly spread down the
face. The same parametrisation drives the mesh grid and the texture painting, so features painted in
texture space land where the geometry puts them. Facial relief (nose, lips, brows...) is added on
top by :func:`relief`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Head layout in metres (head space: x to the head's left = image right for a front camera,
# y up, z out of the face).
Y_EYE = 0.0
Y_MOUTH = -0.060
Y_BROW = 0.021
Y_NOSE_TIP = -0.034
Y_CHIN = -0.092
SUPER_P = 2.3          # cross-section exponent (2 = ellipse)
COLUMN_WARP = 0.55     # how much denser the columns are in front (0 = uniform)

# Profile keys from the crown down: (y, half-width a, front depth cf, back depth cb).
_SKULL = [(0.02 + 0.098 * np.cos(np.radians(d)), 0.080 * np.sin(np.radians(d)),
           0.095 * np.sin(np.radians(d)), 0.100 * np.sin(np.radians(d)))
          for d in (0.0, 18.0, 36.0, 54.0, 72.0, 90.0)]
_LOWER = [
    (0.000, 0.0795, 0.0945, 0.099),
    (-0.030, 0.0765, 0.0925, 0.095),
    (-0.060, 0.0690, 0.0895, 0.086),
    (-0.082, 0.0600, 0.0850, 0.074),
    (-0.098, 0.0490, 0.0770, 0.066),
    (-0.108, 0.0440, 0.0640, 0.062),
    (-0.116, 0.0450, 0.0480, 0.061),
    (-0.128, 0.0480, 0.0420, 0.062),
    (-0.160, 0.0500, 0.0420, 0.063),
    (-0.200, 0.0505, 0.0420, 0.063),
]
PROFILE_KEYS = np.array(_SKULL + _LOWER, dtype=np.float64)
Y_TOP = float(PROFILE_KEYS[0, 0])
Y_BOTTOM = float(PROFILE_KEYS[-1, 0])


def _hermite(xk: np.ndarray, yk: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Cubic Hermite interpolation with centred finite-difference slopes (smooth, no scipy)."""
    h = np.diff(xk)
    d = np.diff(yk, axis=0) / h[:, None]
    m = np.empty_like(yk)
    m[0], m[-1] = d[0], d[-1]
    m[1:-1] = (d[:-1] * h[1:, None] + d[1:] * h[:-1, None]) / (h[:-1, None] + h[1:, None])
    i = np.clip(np.searchsorted(xk, x, side="right") - 1, 0, len(xk) - 2)
    u = ((x - xk[i]) / h[i])[:, None]
    h00 = 2 * u ** 3 - 3 * u ** 2 + 1
    h10 = u ** 3 - 2 * u ** 2 + u
    h01 = -2 * u ** 3 + 3 * u ** 2
    h11 = u ** 3 - u ** 2
    return h00 * yk[i] + h10 * h[i, None] * m[i] + h01 * yk[i + 1] + h11 * h[i, None] * m[i + 1]


@dataclass(frozen=True)
class Profile:
    """The head profile sampled finely against normalised front arc length ``t``."""

    t: np.ndarray       # (n,) increasing from 0 to 1
    table: np.ndarray   # (n, 4): y, a, cf, cb
    length: float       # front profile arc length in metres

    def at(self, t: np.ndarray) -> np.ndarray:
        """(..., 4) profile values (y, a, cf, cb) at parameters ``t``."""
        t = np.asarray(t, dtype=np.float64)
        out = np.stack([np.interp(t.ravel(), self.t, self.table[:, k]) for k in range(4)], -1)
        return out.reshape(t.shape + (4,))

    def t_of_y(self, y: float) -> float:
        """Parameter of the (unique) row at height ``y``."""
        return float(np.interp(-y, -self.table[:, 0], self.t))


def build_profile(samples: int = 4000) -> Profile:
    """Interpolate the key table and reparametrise it by front arc length."""
    keys = PROFILE_KEYS
    seg = np.hypot(np.diff(keys[:, 0]), np.diff(keys[:, 2]))
    tau = np.concatenate([[0.0], np.cumsum(seg)])
    x = np.linspace(0.0, tau[-1], samples)
    table = _hermite(tau, keys, x)
    table[:, 1:] = np.maximum(table[:, 1:], 0.0)
    table[0, 1:] = 0.0
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(table[:, 0]), np.diff(table[:, 2])))])
    return Profile(t=arc / arc[-1], table=table, length=float(arc[-1]))


def phi_of_s(s: np.ndarray) -> np.ndarray:
    """Azimuth (0 = front, +pi/2 = head's +x side) of column parameter ``s``; denser in front."""
    s = np.asarray(s, dtype=np.float64)
    return np.pi * s - COLUMN_WARP * np.sin(np.pi * s)


def _spow(v: np.ndarray, e: float) -> np.ndarray:
    return np.sign(v) * np.abs(v) ** e


def cross_section(phi: np.ndarray, a: np.ndarray, cf: np.ndarray, cb: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Point (x, z) on the super-elliptic section at azimuth ``phi`` and its horizontal normal."""
    e = 2.0 / SUPER_P
    sp, cp = np.sin(phi), np.cos(phi)
    c = np.where(cp >= 0, cf, cb)
    x = a * _spow(sp, e)
    z = c * _spow(cp, e)
    # gradient of |x/a|^p + |z/c|^p, i.e. the outward normal in the horizontal plane
    gx = _spow(x / np.maximum(a, 1e-9), SUPER_P - 1) / np.maximum(a, 1e-9)
    gz = _spow(z / np.maximum(c, 1e-9), SUPER_P - 1) / np.maximum(c, 1e-9)
    norm = np.maximum(np.hypot(gx, gz), 1e-12)
    return x, z, gx / norm, gz / norm


def base_surface(profile: Profile, s: np.ndarray, t: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) positions of the undecorated skin at ``(s, t)`` and (..., 3) horizontal normals."""
    s, t = np.broadcast_arrays(np.asarray(s, np.float64), np.asarray(t, np.float64))
    y, a, cf, cb = np.moveaxis(profile.at(t), -1, 0)
    x, z, nx, nz = cross_section(phi_of_s(s), a, cf, cb)
    pos = np.stack([x, y, z], -1)
    nrm = np.stack([nx, np.zeros_like(nx), nz], -1)
    return pos, nrm


def front_depth(profile: Profile, x: np.ndarray, y: float) -> np.ndarray:
    """z of the undecorated skin's front at lateral position ``x`` and height ``y``."""
    _, a, cf, _ = profile.at(np.array(profile.t_of_y(y)))
    r = np.clip(np.abs(np.asarray(x, np.float64)) / a, 0.0, 1.0)
    return cf * (1.0 - r ** SUPER_P) ** (1.0 / SUPER_P)


def _bump(d2: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * d2)


def smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    """Hermite ramp from 0 at ``e0`` to 1 at ``e1`` (either order)."""
    u = np.clip((np.asarray(v, np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def relief(pos: np.ndarray, eye_x: float, mouth_half: float) -> np.ndarray:
    """Outward offset (metres, along the horizontal normal) of the facial features at ``pos``.

    Nose, brow ridge, eye sockets, cheekbones, lips, chin and ears, all smooth bumps so that the
    coarse grid samples them without folds.
    """
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    ax = np.abs(x)
    front = smoothstep(0.02, 0.05, z)
    # nose: a ridge growing from the bridge to the tip, ending sharply at its base
    yb, yt, ybase = Y_EYE + 0.008, Y_NOSE_TIP, Y_NOSE_TIP - 0.012
    u = np.clip((yb - y) / (yb - yt), 0.0, 1.0)
    height = np.where(y > yt, 0.004 + 0.019 * u ** 1.4, 0.023 * smoothstep(ybase, yt, y))
    height = height * smoothstep(yb + 0.012, yb, y)
    width = 0.0052 + 0.0040 * u
    nose = height * np.exp(-0.5 * (x / width) ** 2)
    alae = 0.0055 * _bump(((ax - 0.0135) / 0.0045) ** 2 + ((y - (yt - 0.004)) / 0.005) ** 2)
    # brow ridge, eye sockets, cheekbones
    brow = 0.0032 * _bump(((y - Y_BROW) / 0.0055) ** 2) * smoothstep(0.058, 0.035, ax)
    socket = -0.0045 * _bump(((ax - eye_x) / 0.014) ** 2 + ((y - Y_EYE) / 0.010) ** 2)
    cheek = 0.0035 * _bump(((ax - 0.045) / 0.014) ** 2 + ((y - (Y_EYE - 0.028)) / 0.014) ** 2)
    # lips: upper and lower rolls, tapering to the corners; a shallow groove on the line itself
    taper = np.sqrt(np.clip(1.0 - (x / (mouth_half * 1.05)) ** 2, 0.0, 1.0))
    upper = 0.0035 * _bump(((y - (Y_MOUTH + 0.0042)) / 0.0028) ** 2)
    lower = 0.0042 * _bump(((y - (Y_MOUTH - 0.0050)) / 0.0034) ** 2)
    groove = -0.0012 * _bump(((y - Y_MOUTH) / 0.0014) ** 2)
    lips = taper * (upper + lower + groove)
    philtrum = 0.0012 * _bump(((y - (Y_MOUTH + 0.012)) / 0.006) ** 2) * smoothstep(0.012, 0.0, ax)
    chin = 0.0045 * _bump((x / 0.016) ** 2 + ((y - (Y_CHIN + 0.008)) / 0.009) ** 2)
    face = front * (nose + alae + brow + socket + cheek + lips + philtrum + chin)
    # ears: outward shells on the sides, a little behind the middle
    ear = 0.010 * _bump(((y - (Y_EYE - 0.014)) / 0.013) ** 2 + ((z + 0.006) / 0.0085) ** 2)
    ear = ear * smoothstep(0.055, 0.07, ax)
    return face + ear
