"""The demo head's triangle mesh and its rig data, in its construction pose.

Parts: the skin (a grid over the parametric surface of :mod:`profile`), two eyeballs, a mouth
cavity and two rows of teeth. The skin grid is cut along three row segments, the two eye slits
and the mouth slit: the vertices inside a slit are duplicated, the upper copy used by the faces
above and the lower copy by the faces below, so eyelids and lips can part. The construction pose
has every slit closed; :mod:`rig` opens the eyes (the neutral expression) and the jaw.

Every face is wound so that ``(v2 - v1) x (v3 - v1)`` points out of its part (out of the head for
the skin; towards the mouth opening for the cavity and the teeth). Region labels per face (1 skin,
2 mouth, 3 eyes) feed the region metrics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scene.demo_head import atlas
from scene.demo_head.profile import (Y_BOTTOM, Y_EYE, Y_MOUTH, base_surface, build_profile,
                                     front_depth, relief, smoothstep)

PART_SKIN, PART_EYEBALL, PART_CAVITY, PART_TEETH = 0, 1, 2, 3
REGION_BACKGROUND, REGION_SKIN, REGION_MOUTH, REGION_EYES = 0, 1, 2, 3

EYE_RADIUS = 0.0120
LID_MARGIN = 0.0016          # lid skin keeps this far outside the eyeball
UPPER_LID_OPEN = np.radians(27.0)
LOWER_LID_OPEN = np.radians(11.0)
JAW_PIVOT = np.array([0.0, -0.016, -0.006])


@dataclass(frozen=True)
class MeshLayout:
    """Resolution of the procedural mesh."""

    columns: int = 44                        # skin columns round the head (even)
    rows: tuple[int, ...] = (12, 6, 11, 10, 4)  # skin rows: crown, forehead, eye-mouth, jaw, neck
    eye_rings: int = 8
    eye_segments: int = 12
    cavity_rings: int = 6
    cavity_segments: int = 12
    teeth_columns: int = 12


@dataclass(frozen=True)
class HeadMesh:
    """Indexed mesh in its construction pose, with what it takes to pose, texture and label it."""

    rest: np.ndarray          # (V, 3) construction pose (eyelids and lips closed), metres
    faces: np.ndarray         # (F, 3) int64 vertex indices, corner order = binding order
    uv: np.ndarray            # (F, 3, 2) per-corner atlas coordinates
    face_part: np.ndarray     # (F,) uint8 PART_*
    face_region: np.ndarray   # (F,) uint8 REGION_*
    vertex_part: np.ndarray   # (V,) uint8 PART_*
    jaw_weight: np.ndarray    # (V,) share of the jaw rotation
    lid_angle: np.ndarray     # (V,) eyelid rotation (rad, about +x through lid_axis) when open
    smile_offset: np.ndarray  # (V, 3) displacement at a full smile
    eye_of_vertex: np.ndarray  # (V,) int8: eyeball index 0/1, or -1
    eye_centres: np.ndarray   # (2, 3)
    lid_axis: np.ndarray      # (3,) a point on the eyelids' rotation axis (parallel to x)
    eye_x: float              # lateral distance of the eye centres
    eye_half_width: float     # half the length of an eye slit
    mouth_half_width: float   # half the length of the mouth slit

    @property
    def num_faces(self) -> int:
        """Face count (the same in every frame)."""
        return int(self.faces.shape[0])


def _grid_columns(n: int) -> np.ndarray:
    return -1.0 + 2.0 * np.arange(n) / n


def _row_params(profile, layout: MeshLayout) -> tuple[np.ndarray, int, int]:
    """t of every skin ring (crown pole excluded, neck bottom included) and the eye/mouth rings."""
    knots = [0.0, profile.t_of_y(0.036), profile.t_of_y(Y_EYE), profile.t_of_y(Y_MOUTH),
             profile.t_of_y(-0.118), 1.0]
    ts = []
    for k, n in enumerate(layout.rows):
        ts.append(np.linspace(knots[k], knots[k + 1], n + 1)[1:])
    t = np.concatenate(ts)
    eye_ring = layout.rows[0] + layout.rows[1] - 1
    mouth_ring = eye_ring + layout.rows[2]
    return t, eye_ring, mouth_ring


def _nearest_column(x_row: np.ndarray, target: float) -> int:
    half = len(x_row) // 2
    cand = np.arange(half, len(x_row))  # columns on the +x side (front to back)
    return int(cand[np.argmin(np.abs(x_row[cand] - target))])


def _sphere(rings: int, segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit sphere with its pole on +z: directions (V, 3), faces (F, 3), and per-corner polar
    angle / azimuth (F, 3) for the azimuthal texture map."""
    alpha = np.pi * np.arange(1, rings) / rings
    beta = 2.0 * np.pi * np.arange(segments) / segments
    a, b = np.meshgrid(alpha, beta, indexing="ij")
    dirs = np.stack([np.sin(a) * np.cos(b), np.sin(a) * np.sin(b), np.cos(a)], -1).reshape(-1, 3)
    dirs = np.concatenate([[[0.0, 0.0, 1.0]], dirs, [[0.0, 0.0, -1.0]]])
    front, back = 0, dirs.shape[0] - 1
    ring = lambda r, c: 1 + r * segments + (c % segments)  # noqa: E731
    faces, pa, pb = [], [], []
    c = np.arange(segments)
    faces.append(np.stack([np.full(segments, front), ring(0, c), ring(0, c + 1)], -1))
    pa.append(np.stack([np.zeros(segments), np.full(segments, alpha[0]),
                        np.full(segments, alpha[0])], -1))
    pb.append(np.stack([beta[c] + np.pi / segments, beta[c], beta[c] + 2 * np.pi / segments], -1))
    for r in range(rings - 2):
        A, B, C, D = ring(r, c), ring(r, c + 1), ring(r + 1, c + 1), ring(r + 1, c)
        faces += [np.stack([A, D, C], -1), np.stack([A, C, B], -1)]
        pa += [np.stack([np.full(segments, alpha[r]), np.full(segments, alpha[r + 1]),
                         np.full(segments, alpha[r + 1])], -1),
               np.stack([np.full(segments, alpha[r]), np.full(segments, alpha[r + 1]),
                         np.full(segments, alpha[r])], -1)]
        b0, b1 = beta[c], beta[c] + 2 * np.pi / segments
        pb += [np.stack([b0, b0, b1], -1), np.stack([b0, b1, b1], -1)]
    faces.append(np.stack([ring(rings - 2, c), np.full(segments, back), ring(rings - 2, c + 1)],
                          -1))
    pa.append(np.stack([np.full(segments, alpha[-1]), np.full(segments, np.pi),
                        np.full(segments, alpha[-1])], -1))
    pb.append(np.stack([beta[c], beta[c] + np.pi / segments, beta[c] + 2 * np.pi / segments], -1))
    return dirs, np.concatenate(faces), np.concatenate(pa), np.concatenate(pb)


def _orient(verts: np.ndarray, faces: np.ndarray, outward: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Flip faces whose normal points against ``outward`` (F, 3) reference directions (a zero
    reference leaves the face alone); returns the faces and the mask of flipped ones."""
    v = verts[faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    flip = np.einsum("ij,ij->i", n, outward) < 0
    out = faces.copy()
    out[flip] = out[flip][:, [0, 2, 1]]
    return out, flip


def _azimuthal_uv(rect, polar: np.ndarray, azim: np.ndarray) -> np.ndarray:
    r = 0.5 * polar / np.pi
    local = np.stack([0.5 + r * np.cos(azim), 0.5 - r * np.sin(azim)], -1)
    return atlas.to_atlas(rect, local)


def build_head_mesh(layout: MeshLayout = MeshLayout()) -> HeadMesh:
    """Build the head mesh (deterministic: no randomness in the geometry)."""
    profile = build_profile()
    N = layout.columns
    if N % 2:
        raise ValueError("the number of skin columns must be even (the face is symmetric)")
    s_col = _grid_columns(N)
    t_ring, eye_ring, mouth_ring = _row_params(profile, layout)
    R = len(t_ring)

    # ---------------------------------------------------------------- skin grid, base positions
    base, hnorm = base_surface(profile, s_col[None, :], t_ring[:, None])     # (R, N, 3)
    c_in = _nearest_column(base[eye_ring, :, 0], 0.0165)
    c_out = _nearest_column(base[eye_ring, :, 0], 0.0460)
    c_mouth = _nearest_column(base[mouth_ring, :, 0], 0.0245)
    eye_x = 0.5 * (base[eye_ring, c_in, 0] + base[eye_ring, c_out, 0])
    eye_hw = 0.5 * (base[eye_ring, c_out, 0] - base[eye_ring, c_in, 0])
    mouth_hw = float(base[mouth_ring, c_mouth, 0])
    # slit columns: strictly between the corners (eyes on both sides, the mouth across the front)
    eye_cols = list(range(c_in + 1, c_out))
    slits = {eye_ring: eye_cols + [N - c for c in eye_cols],
             mouth_ring: [c for c in range(N) if abs(c - N // 2) < c_mouth - N // 2]}

    pos = base + relief(base, eye_x, mouth_hw)[..., None] * hnorm
    top = np.array([[0.0, profile.at(np.array(0.0))[0], 0.0]])
    _, _, cfb, cbb = profile.at(np.array(1.0))
    bottom = np.array([[0.0, Y_BOTTOM, 0.5 * (cfb - cbb)]])

    ring_id = np.arange(R * N).reshape(R, N) + 1          # vertex 0 is the crown pole
    verts = [top, pos.reshape(-1, 3)]
    rows_of = [np.array([-1]), np.repeat(np.arange(R), N)]
    side = [np.array([0]), np.zeros(R * N, np.int8)]
    lower_id = ring_id.copy()
    nxt = 1 + R * N                       # next free vertex id after the crown and the rings
    for r, cols in slits.items():
        cols = np.array(sorted(cols))
        lower_id[r, cols] = nxt + np.arange(len(cols))
        nxt += len(cols)
        verts.append(pos[r, cols])
        rows_of.append(np.full(len(cols), r))
        side.append(np.full(len(cols), -1, np.int8))
        side[1].reshape(R, N)[r, cols] = 1
    bottom_id = nxt
    verts.append(bottom)
    rows_of.append(np.array([R]))
    side.append(np.array([0]))
    skin_v = np.concatenate(verts)
    v_row = np.concatenate(rows_of)
    v_side = np.concatenate(side)

    # faces: bands between ring b-1 and b (b = 0: crown fan), corner parameters for the UVs
    faces, corner_st = [], []
    c = np.arange(N)
    s_lo, s_hi = s_col[c], s_col[c] + 2.0 / N
    for b in range(R + 1):
        if b == 0:
            top_ids, t_top = np.zeros(N, np.int64), 0.0
        else:
            top_ids, t_top = lower_id[b - 1], t_ring[b - 1]
        if b == R:
            bot_ids, t_bot = np.full(N, bottom_id), 1.0
        else:
            bot_ids, t_bot = ring_id[b], t_ring[b]
        A, B = top_ids[c], top_ids[(c + 1) % N]
        D, C = bot_ids[c], bot_ids[(c + 1) % N]
        sm = 0.5 * (s_lo + s_hi)
        if b > 0:      # (A, C, B)
            faces.append(np.stack([A, C, B], -1))
            corner_st.append(np.stack([np.stack([s_lo, np.full(N, t_top)], -1),
                                       np.stack([s_hi if b < R else sm, np.full(N, t_bot)], -1),
                                       np.stack([s_hi, np.full(N, t_top)], -1)], 1))
        if b < R:      # (A, D, C)
            faces.append(np.stack([A, D, C], -1))
            corner_st.append(np.stack([np.stack([s_lo if b > 0 else sm, np.full(N, t_top)], -1),
                                       np.stack([s_lo, np.full(N, t_bot)], -1),
                                       np.stack([s_hi, np.full(N, t_bot)], -1)], 1))
    skin_f = np.concatenate(faces).astype(np.int64)
    st = np.concatenate(corner_st)
    skin_uv = atlas.to_atlas(atlas.SKIN, np.stack([(st[..., 0] + 1) / 2, st[..., 1]], -1), 1.0)

    # eyelids hug a sphere round the eyeball: pull nearby skin onto it, and never inside it
    z_socket = front_depth(profile, np.array(eye_x), Y_EYE) + relief(
        np.array([eye_x, Y_EYE, front_depth(profile, np.array(eye_x), Y_EYE)]), eye_x, mouth_hw)
    lid_r = EYE_RADIUS + LID_MARGIN
    ez = float(z_socket) + 0.0012 - lid_r
    eye_centres = np.array([[eye_x, Y_EYE + 0.0005, ez], [-eye_x, Y_EYE + 0.0005, ez]])
    for e in eye_centres:
        d = skin_v - e
        dist = np.linalg.norm(d, axis=1)
        w = np.exp(-0.5 * (((skin_v[:, 0] - e[0]) / 0.0105) ** 2
                           + ((skin_v[:, 1] - e[1]) / 0.0075) ** 2)) * (skin_v[:, 2] > 0.03)
        on_sphere = e + lid_r * d / np.maximum(dist, 1e-12)[:, None]
        skin_v = skin_v + w[:, None] * (on_sphere - skin_v)
        d = skin_v - e
        dist = np.linalg.norm(d, axis=1)
        inside = dist < lid_r
        skin_v[inside] = e + lid_r * d[inside] / np.maximum(dist[inside], 1e-12)[:, None]

    # ---------------------------------------------------------------- eyeballs
    dirs, sf, polar, azim = _sphere(layout.eye_rings, layout.eye_segments)
    eye_v, eye_f, eye_uv = [], [], []
    for e in eye_centres:
        eye_f.append(sf + sum(len(x) for x in eye_v) + len(skin_v))
        eye_v.append(e + EYE_RADIUS * dirs)
        eye_uv.append(_azimuthal_uv(atlas.EYE, polar, azim))

    # ---------------------------------------------------------------- mouth cavity
    z_m = float(front_depth(profile, np.array(0.0), Y_MOUTH))
    cav_axes = np.array([0.027, 0.021, 0.024])
    cav_c = np.array([0.0, Y_MOUTH - 0.004, z_m - 0.008 - cav_axes[2]])
    dirs_c, cf, polar_c, azim_c = _sphere(layout.cavity_rings, layout.cavity_segments)
    cav_v = cav_c + dirs_c * cav_axes
    cav_uv = _azimuthal_uv(atlas.CAVITY, polar_c, azim_c)

    # ---------------------------------------------------------------- teeth (two curved strips)
    n_t = layout.teeth_columns
    tx = np.linspace(-0.019, 0.019, n_t + 1)
    tz = front_depth(profile, tx, Y_MOUTH) - 0.0055 - 0.006 * (tx / 0.02) ** 2
    teeth_v, teeth_f, teeth_uv = [], [], []
    for k, (y0, y1, dz) in enumerate([(Y_MOUTH + 0.007, Y_MOUTH - 0.0042, 0.0),
                                      (Y_MOUTH + 0.0005, Y_MOUTH - 0.008, -0.0015)]):
        ys = np.linspace(y0, y1, 3)
        gx, gy = np.meshgrid(tx, ys, indexing="xy")
        gz = np.broadcast_to(tz + dz, gx.shape)
        vid = np.arange(gx.size).reshape(gx.shape)
        A, B = vid[:-1, :-1], vid[:-1, 1:]
        D, C = vid[1:, :-1], vid[1:, 1:]
        f = np.concatenate([np.stack([A, D, C], -1).reshape(-1, 3),
                            np.stack([A, C, B], -1).reshape(-1, 3)])
        lu = (gx + 0.019) / 0.038
        lv = (np.arange(3)[:, None] / 2.0 + k) / 2.0 * np.ones_like(gx)
        loc = np.stack([lu, lv], -1).reshape(-1, 2)
        teeth_f.append(f)
        teeth_uv.append(atlas.to_atlas(atlas.TEETH, loc)[f])
        teeth_v.append(np.stack([gx, gy, gz], -1).reshape(-1, 3))

    # ---------------------------------------------------------------- assemble
    parts_v = [skin_v] + eye_v + [cav_v] + teeth_v
    offsets = np.cumsum([0] + [len(v) for v in parts_v])
    all_v = np.concatenate(parts_v)
    faces_all = np.concatenate([skin_f, eye_f[0], eye_f[1], cf + offsets[3],
                                teeth_f[0] + offsets[4], teeth_f[1] + offsets[5]])
    uv_all = np.concatenate([skin_uv, eye_uv[0], eye_uv[1], cav_uv, teeth_uv[0], teeth_uv[1]])
    part_f = np.concatenate([np.full(len(skin_f), PART_SKIN), np.full(2 * len(sf), PART_EYEBALL),
                             np.full(len(cf), PART_CAVITY),
                             np.full(2 * len(teeth_f[0]), PART_TEETH)]).astype(np.uint8)
    part_v = np.concatenate([np.full(len(skin_v), PART_SKIN), np.full(2 * len(dirs), PART_EYEBALL),
                             np.full(len(cav_v), PART_CAVITY),
                             np.full(len(teeth_v[0]) * 2, PART_TEETH)]).astype(np.uint8)

    # the skin is wound outward by construction; the closed convex parts are oriented from their
    # centres and the teeth towards the mouth opening (+z)
    cen = all_v[faces_all].mean(1)
    ref = np.zeros_like(cen)
    for k, e in enumerate(eye_centres):
        sel = slice(len(skin_f) + k * len(sf), len(skin_f) + (k + 1) * len(sf))
        ref[sel] = cen[sel] - e
    sel = part_f == PART_CAVITY
    ref[sel] = cen[sel] - cav_c
    ref[part_f == PART_TEETH] = np.array([0.0, 0.0, 1.0])
    ref[part_f == PART_SKIN] = 0.0
    faces_all, flipped = _orient(all_v, faces_all, ref)
    uv_all[flipped] = uv_all[flipped][:, [0, 2, 1]]

    # ---------------------------------------------------------------- rig weights
    V = len(all_v)
    nskin = len(skin_v)
    x, y, z = all_v[:, 0], all_v[:, 1], all_v[:, 2]
    # jaw: everything below the mouth line, widening towards the chin, not the neck or the back
    jaw = np.zeros(V)
    # share by row: 1 below the mouth line, 0 above; on the line the lower lip 1, the upper lip 0,
    # the cheek beyond the corners 0.5
    on_line = np.where(v_side == -1, 1.0, np.where(v_side == 1, 0.0, 0.5))
    vert = np.where(v_row > mouth_ring, 1.0, np.where(v_row == mouth_ring, on_line, 0.0))
    half = mouth_hw + 0.55 * np.clip(Y_MOUTH - y[:nskin], 0.0, None)
    lateral = 1.0 - smoothstep(half - 0.004, half + 0.018, np.abs(x[:nskin]))
    depth = smoothstep(-0.005, 0.035, z[:nskin])
    throat = smoothstep(-0.135, -0.105, y[:nskin])
    jaw[:nskin] = vert * lateral * depth * throat
    cav_sl = slice(offsets[3], offsets[4])
    jaw[cav_sl] = smoothstep(Y_MOUTH + 0.003, Y_MOUTH - 0.003, y[cav_sl])
    jaw[offsets[5]:offsets[6]] = 1.0

    # eyelids: rotation about the line through both eye centres (parallel to x)
    lid = np.zeros(V)
    ax = np.abs(x[:nskin])
    along = np.clip(1.0 - ((ax - eye_x) / eye_hw) ** 2, 0.0, None) ** 0.6
    dy_rows = (v_row - eye_ring).astype(np.float64)
    upper = (v_row < eye_ring) | ((v_row == eye_ring) & (v_side == 1))
    lower = (v_row > eye_ring) | ((v_row == eye_ring) & (v_side == -1))
    fall = np.exp(-0.5 * (dy_rows / 0.9) ** 2) * (z[:nskin] > 0.03)
    lid[:nskin] = along * fall * np.where(upper, -UPPER_LID_OPEN,
                                         np.where(lower, LOWER_LID_OPEN, 0.0))
    lid[:nskin][(v_row == eye_ring) & (v_side == 0)] = 0.0

    # smile: mouth corners up, out and back; cheeks up
    smile = np.zeros((V, 3))
    zc = float(front_depth(profile, np.array(mouth_hw), Y_MOUTH))
    for sgn in (1.0, -1.0):
        corner = np.array([sgn * mouth_hw, Y_MOUTH, zc])
        cheek = np.array([sgn * 0.042, Y_MOUTH + 0.026, zc - 0.004])
        w1 = np.exp(-0.5 * np.sum((all_v[:nskin] - corner) ** 2, 1) / 0.011 ** 2)
        w2 = np.exp(-0.5 * np.sum((all_v[:nskin] - cheek) ** 2, 1) / 0.014 ** 2)
        smile[:nskin] += w1[:, None] * np.array([sgn * 0.0055, 0.0052, -0.0022])
        smile[:nskin] += w2[:, None] * np.array([sgn * 0.0010, 0.0030, 0.0015])

    eye_of = np.full(V, -1, np.int8)
    eye_of[offsets[1]:offsets[2]] = 0
    eye_of[offsets[2]:offsets[3]] = 1

    # ---------------------------------------------------------------- regions per face
    region = np.full(len(faces_all), REGION_SKIN, np.uint8)
    fc = all_v[faces_all].mean(1)
    eyelid = (((np.abs(fc[:, 0]) - eye_x) / (eye_hw + 0.004)) ** 2
              + ((fc[:, 1] - Y_EYE) / 0.0095) ** 2 < 1.0) & (fc[:, 2] > 0.03)
    lipzone = ((fc[:, 0] / (mouth_hw + 0.003)) ** 2
               + ((fc[:, 1] - Y_MOUTH + 0.0005) / 0.0105) ** 2 < 1.0) & (fc[:, 2] > 0.03)
    region[(part_f == PART_SKIN) & eyelid] = REGION_EYES
    region[(part_f == PART_SKIN) & lipzone] = REGION_MOUTH
    region[part_f == PART_EYEBALL] = REGION_EYES
    region[(part_f == PART_CAVITY) | (part_f == PART_TEETH)] = REGION_MOUTH

    return HeadMesh(rest=all_v, faces=faces_all, uv=uv_all, face_part=part_f, face_region=region,
                    vertex_part=part_v, jaw_weight=jaw, lid_angle=lid, smile_offset=smile,
                    eye_of_vertex=eye_of, eye_centres=eye_centres,
                    lid_axis=eye_centres[0].copy(), eye_x=float(eye_x),
                    eye_half_width=float(eye_hw), mouth_half_width=mouth_hw)
