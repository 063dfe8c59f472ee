"""Teeth for FLAME, as GaussianAvatars adds them: two rigid 4 x 15 vertex strips behind the lips.

FLAME has no mouth interior, so a Gaussian avatar has nothing to bind teeth to. We add 120
vertices (8 rows of 15: 4 rows of upper teeth, 4 of lower teeth) and 168 triangles (3 x 14 quads
per jaw), skinned 100% to the neck joint (upper teeth, they move with the skull) or to the jaw
(lower teeth). They follow identity shape like the lips they are built from, and ignore
expression and pose correctives (teeth do not deform).

Where the lips are is found from the template's geometry, not from hard-coded vertex ids: FLAME's
mouth is open in its topology, so the inner lip line is a boundary loop (edges used by one face
only). Among the boundary loops, the largest (the neck cut) is dropped, loops off the mid-sagittal
plane (eye openings) are dropped, and the most frontal remaining loop is the mouth. Its leftmost
and rightmost vertices are the mouth corners; they split it into the upper lip ring (the arc whose
faces lie above it: the upper lip) and the lower lip ring, each resampled to 15 points evenly
spaced along its length. The teeth follow a parabolic arch fitted to both rings, set back into
the mouth; their rows are placed in units of the mouth width (constants below).

Axes are FLAME's canonical ones: x across the face, y up, z out of the face.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

TEETH_COLUMNS = 15
TEETH_ROWS = 4                     # per jaw
NUM_TEETH_VERTICES = 2 * TEETH_ROWS * TEETH_COLUMNS          # 120
NUM_TEETH_FACES = 2 * 2 * (TEETH_ROWS - 1) * (TEETH_COLUMNS - 1)  # 168
UP = np.array([0.0, 1.0, 0.0])
FORWARD = np.array([0.0, 0.0, 1.0])
UPPER_JOINT, LOWER_JOINT = 1, 2    # neck, jaw

# Strip geometry in units of the mouth width (corner to corner), measured from the mid-point
# between the lip rings: (height along up, extra depth into the mouth). Row 0 is the gum line
# (hidden by the lip), row 2 the biting edge, row 3 the same edge set back: the biting surface.
# The lower teeth sit a little behind the upper ones (overjet), both DEPTH behind the lip line.
UPPER_ROWS = ((0.26, 0.02), (0.15, 0.0), (0.02, 0.0), (0.02, 0.14))
LOWER_ROWS = ((-0.24, 0.06), (-0.13, 0.04), (-0.02, 0.04), (-0.02, 0.18))
DEPTH = 0.10
LATERAL = 0.92                     # the dental arch is a little narrower than the mouth


class LipRingError(ValueError):
    """The mouth's boundary loop could not be found in the template."""


@dataclass
class RingSamples:
    """Points along a lip ring: (1 - w) * v[ids[:, 0]] + w * v[ids[:, 1]], left to right."""

    ids: np.ndarray      # (n, 2) vertex ids
    weights: np.ndarray  # (n,)

    def points(self, vertices: np.ndarray) -> np.ndarray:
        w = self.weights[:, None]
        return (1.0 - w) * vertices[self.ids[:, 0]] + w * vertices[self.ids[:, 1]]

    def interpolate(self, per_vertex: np.ndarray) -> np.ndarray:
        """Any per-vertex array (V, ...) sampled at the ring points (n, ...)."""
        w = self.weights.reshape((-1,) + (1,) * (per_vertex.ndim - 1))
        return (1.0 - w) * per_vertex[self.ids[:, 0]] + w * per_vertex[self.ids[:, 1]]


@dataclass
class LipRings:
    """The mouth's boundary loop split at the corners into upper and lower lip rings."""

    loop: np.ndarray        # (L,) vertex ids of the whole mouth loop, in loop order
    upper: np.ndarray       # vertex ids corner to corner (left to right) along the upper lip
    lower: np.ndarray       # the same along the lower lip (shares the two corners)
    upper_samples: RingSamples
    lower_samples: RingSamples


@dataclass
class Teeth:
    """Teeth vertices in the template (120, 3), their identity blendshapes, faces and joints."""

    vertices: np.ndarray    # (120, 3) upper strip rows 0..3 then lower strip rows 0..3
    shapedirs: np.ndarray   # (120, 3, S) identity components (expression: none)
    faces: np.ndarray       # (168, 3) indices into the 120 teeth vertices
    joint: np.ndarray       # (120,) 1 (neck) for upper teeth, 2 (jaw) for lower teeth
    rings: LipRings


# --------------------------------------------------------------------------------------------
# boundary loops and the lip rings


def boundary_loops(faces: np.ndarray) -> List[np.ndarray]:
    """Closed loops of boundary edges (edges used by exactly one face), as ordered vertex ids.

    Components that are not simple cycles (a vertex on more than two boundary edges) are
    skipped: no lip line looks like that.
    """
    faces = np.asarray(faces, dtype=np.int64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(edges, axis=1)
    uniq, counts = np.unique(key, axis=0, return_counts=True)
    boundary = uniq[counts == 1]
    neighbours: dict = {}
    for a, b in boundary.tolist():
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    loops, seen = [], set()
    for start in sorted(neighbours):
        if start in seen:
            continue
        # collect the component, then keep it only if it is a simple cycle
        component, stack = {start}, [start]
        while stack:
            v = stack.pop()
            for n in neighbours[v]:
                if n not in component:
                    component.add(n)
                    stack.append(n)
        seen |= component
        if any(len(neighbours[v]) != 2 for v in component):
            continue
        loop, prev, cur = [start], None, start
        while True:
            a, b = neighbours[cur]
            nxt = b if a == prev else a
            if nxt == start:
                break
            loop.append(nxt)
            prev, cur = cur, nxt
        loops.append(np.asarray(loop, dtype=np.int64))
    return loops


def _perimeter(vertices: np.ndarray, loop: np.ndarray) -> float:
    p = vertices[loop]
    return float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())


def find_mouth_loop(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The boundary loop of the mouth (see the module docstring for the rule)."""
    loops = [l for l in boundary_loops(faces) if len(l) >= 4]
    if len(loops) >= 2:  # the largest opening is the neck cut
        loops.sort(key=lambda l: _perimeter(vertices, l))
        loops = loops[:-1]
    x = vertices[:, 0]
    mid = 0.5 * (x.min() + x.max())
    centred = []
    for loop in loops:
        p = vertices[loop]
        width = p[:, 0].max() - p[:, 0].min()
        if width > 0 and abs(p[:, 0].mean() - mid) <= 0.25 * width:
            centred.append(loop)
    if not centred:
        raise LipRingError("no boundary loop on the face's mid-line: cannot find the mouth "
                           "opening in the template (is the mouth open in the topology?)")
    return max(centred, key=lambda l: float(vertices[l].mean(0) @ FORWARD))


def _resample(vertices: np.ndarray, path: np.ndarray, n: int) -> RingSamples:
    """``n`` points evenly spaced along a polyline of vertex ids, ends included."""
    p = vertices[path]
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 0:
        raise LipRingError("a lip ring has zero length")
    target = np.linspace(0.0, cum[-1], n)
    k = np.clip(np.searchsorted(cum, target, side="right") - 1, 0, len(path) - 2)
    w = np.clip((target - cum[k]) / np.maximum(seg[k], 1e-300), 0.0, 1.0)
    return RingSamples(np.stack([path[k], path[k + 1]], axis=1), w)


def _tissue_side(vertices: np.ndarray, faces: np.ndarray, arc: np.ndarray) -> float:
    """How far above its boundary edges the faces along ``arc`` lie, summed over the arc."""
    faces = np.asarray(faces, dtype=np.int64)
    edge_key = np.sort(np.stack([arc[:-1], arc[1:]], axis=1), axis=1)
    wanted = {tuple(e) for e in edge_key.tolist()}
    total = 0.0
    for k in range(3):
        pair = np.sort(faces[:, [k, (k + 1) % 3]], axis=1)
        for f, e in enumerate(map(tuple, pair.tolist())):
            if e in wanted:
                mid = 0.5 * (vertices[e[0]] + vertices[e[1]])
                total += float((vertices[faces[f]].mean(0) - mid) @ UP)
    return total


def find_lip_rings(vertices: np.ndarray, faces: np.ndarray,
                   samples: int = TEETH_COLUMNS,
                   loop: Optional[Sequence[int]] = None) -> LipRings:
    """Upper and lower lip rings of the template, from its geometry (or from a given ``loop``).

    Raises LipRingError when no mouth opening is found.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    loop = find_mouth_loop(vertices, faces) if loop is None else np.asarray(loop, np.int64)
    p = vertices[loop]
    left, right = int(np.argmin(p[:, 0])), int(np.argmax(p[:, 0]))
    if left == right:
        raise LipRingError("the mouth loop has no width")
    L = len(loop)
    arc1 = [(left + i) % L for i in range(((right - left) % L) + 1)]      # left -> right
    arc2 = [(left - i) % L for i in range(((left - right) % L) + 1)]      # left -> right, other way
    arcs = [loop[arc1], loop[arc2]]
    # the upper lip is the arc whose lip tissue (its boundary faces) lies above it; this holds
    # for a closed mouth too, where the two arcs nearly coincide
    side = [_tissue_side(vertices, faces, a) for a in arcs]
    upper, lower = arcs if side[0] >= side[1] else arcs[::-1]
    return LipRings(loop=loop, upper=upper, lower=lower,
                    upper_samples=_resample(vertices, upper, samples),
                    lower_samples=_resample(vertices, lower, samples))


# --------------------------------------------------------------------------------------------
# the teeth strips


def _strip_faces(rows: int, cols: int, base: int) -> np.ndarray:
    g = base + np.arange(rows * cols).reshape(rows, cols)
    a, b = g[:-1, :-1].ravel(), g[1:, :-1].ravel()
    c, d = g[1:, 1:].ravel(), g[:-1, 1:].ravel()
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def _oriented(faces: np.ndarray, verts: np.ndarray, outward: np.ndarray, base: int) -> np.ndarray:
    """Flip a strip's winding if its front rows (gum to biting edge) face into the mouth."""
    row = (faces[:, 0] - base) // TEETH_COLUMNS
    front = faces[row < TEETH_ROWS - 2]
    tri = verts[front]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    facing = float(np.einsum("ij,ij->", normal, outward[front[:, 0] - base]))
    return faces if facing >= 0.0 else faces[:, [0, 2, 1]]


def build_teeth(v_template: np.ndarray, faces: np.ndarray, shape_dirs: np.ndarray,
                rings: Optional[LipRings] = None) -> Teeth:
    """Teeth strips for a template (V, 3) with faces (F, 3) and identity blendshapes (V, 3, S)."""
    v = np.asarray(v_template, dtype=np.float64)
    rings = find_lip_rings(v, faces) if rings is None else rings
    U = rings.upper_samples.points(v)
    Lw = rings.lower_samples.points(v)
    a = U[-1] - U[0]
    a /= np.linalg.norm(a)
    width = float(np.linalg.norm(v[rings.upper[-1]] - v[rings.upper[0]]))
    u = UP - (UP @ a) * a
    u /= np.linalg.norm(u)
    f = np.cross(a, u)
    centre = 0.5 * (U + Lw).mean(axis=0)
    # the dental arch: a parabola (depth against lateral position) fitted to both lip rings,
    # curving backwards (or straight), narrowed by LATERAL; smooth whatever the rings look like
    rel = np.concatenate([U, Lw]) - centre
    lateral, depth = rel @ a, rel @ f
    design = np.stack([np.ones_like(lateral), lateral, lateral ** 2], axis=1)
    coef = np.linalg.lstsq(design, depth, rcond=None)[0]
    if coef[2] > 0:  # curving forwards: not an arch, use the straight line
        coef = np.append(np.linalg.lstsq(design[:, :2], depth, rcond=None)[0], 0.0)
    x = np.linspace(-0.5, 0.5, TEETH_COLUMNS) * LATERAL * width
    arch = centre + np.outer(x, a) + np.outer(coef[0] + coef[1] * x + coef[2] * x ** 2, f)
    tangent = a + np.outer(coef[1] + 2.0 * coef[2] * x, f)
    inward = np.cross(u, tangent)
    inward /= np.linalg.norm(inward, axis=1, keepdims=True)   # horizontal, into the mouth
    strips, dirs = [], []
    for rows, samples in ((UPPER_ROWS, rings.upper_samples), (LOWER_ROWS, rings.lower_samples)):
        for height, extra in rows:
            strips.append(arch + width * (height * u + (DEPTH + extra) * inward))
            dirs.append(samples.interpolate(shape_dirs))
    verts = np.concatenate(strips)
    shapedirs = np.concatenate(dirs)
    n = TEETH_ROWS * TEETH_COLUMNS
    outward = -np.tile(inward, (TEETH_ROWS, 1))   # per strip vertex: out of the mouth
    upper_faces = _oriented(_strip_faces(TEETH_ROWS, TEETH_COLUMNS, 0), verts, outward, 0)
    lower_faces = _oriented(_strip_faces(TEETH_ROWS, TEETH_COLUMNS, n), verts, outward, n)
    joint = np.repeat([UPPER_JOINT, LOWER_JOINT], n)
    return Teeth(vertices=verts, shapedirs=shapedirs,
                 faces=np.concatenate([upper_faces, lower_faces]).astype(np.int64),
                 joint=joint, rings=rings)
