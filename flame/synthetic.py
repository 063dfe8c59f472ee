"""A synthetic FLAME-format model for tests: the real one cannot ship with the project.

The "head" is an ellipsoid cut open at the neck, with a mouth slit on its front (an open boundary
loop, as FLAME's mouth is), two eye openings, two eyeballs, a jaw, and the five FLAME joints
(root, neck, jaw, left eye, right eye). Arrays have FLAME's layout and FLAME's blendshape and
joint counts; only the vertex and face counts are smaller. Axes as FLAME: y up, z out of the face.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from flame.model_file import NUM_JOINTS, NUM_POSE_FEATURES

SEMI_AXES = (0.075, 0.10, 0.09)   # metres: half width, half height, half depth


@dataclass
class SyntheticFlame:
    """The raw arrays (FLAME's keys, J_regressor dense) and what the tests need to know."""

    arrays: Dict[str, np.ndarray]
    upper_lip: np.ndarray      # vertex ids of the upper lip line, left to right
    lower_lip: np.ndarray      # vertex ids of the lower lip line (without the corners)
    jaw: np.ndarray            # (V,) jaw skinning weight


def _octahedron(centre: np.ndarray, radius: float):
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                  [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return centre + radius * v, f


def make_synthetic_flame(n_lat: int = 22, n_lon: int = 64, num_shape: int = 300,
                         num_expr: int = 100, seed: int = 0) -> SyntheticFlame:
    """Build the synthetic model (about 1.4k vertices and 2.8k faces by default)."""
    if n_lon % 4:
        raise ValueError("n_lon must be a multiple of 4")
    rng = np.random.default_rng(seed)
    A, B, C = SEMI_AXES
    lat = np.linspace(0.12 * np.pi, 0.80 * np.pi, n_lat)          # 0 = top; open below 0.8 pi
    lon = -np.pi + 2.0 * np.pi * np.arange(n_lon) / n_lon          # 0 (front) at n_lon / 2
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    grid = np.stack([A * np.sin(la) * np.sin(lo), B * np.cos(la), C * np.sin(la) * np.cos(lo)], -1)
    verts = [np.array([[0.0, B, 0.0]]), grid.reshape(-1, 3)]

    def vid(i, j):
        return 1 + i * n_lon + np.mod(j, n_lon)

    j = np.arange(n_lon)
    faces = [np.stack([np.zeros(n_lon, int), vid(0, j), vid(0, j + 1)], 1)]
    front = n_lon // 2
    i_mouth = int(np.argmin(np.abs(lat - 0.63 * np.pi)))
    i_eye = int(np.argmin(np.abs(lat - 0.40 * np.pi)))
    holes = {(i_mouth, c) for c in range(front - 3, front + 3)}
    for side in (-1, 1):
        holes |= {(i_eye, front + side * 5 + c) for c in (-1, 0)}
    for i in range(n_lat - 1):
        for c in range(n_lon):
            if (i, c) in holes:
                continue
            a, b, cc, d = vid(i, c), vid(i + 1, c), vid(i + 1, c + 1), vid(i, c + 1)
            faces.append(np.array([[a, b, cc], [a, cc, d]]))
    faces = [np.asarray(f).reshape(-1, 3) for f in faces]

    n_head = 1 + n_lat * n_lon
    eye_centres = []
    for side in (1, -1):   # joint 3 then joint 4
        ring = [vid(i_eye, front + side * 5 + c) for c in (-2, -1, 0)]
        ring += [vid(i_eye + 1, front + side * 5 + c) for c in (-2, -1, 0)]
        eye_centres.append(np.concatenate(verts)[ring].mean(0) * 0.9)
    offset = n_head
    for centre in eye_centres:
        ev, ef = _octahedron(centre, 0.011)
        verts.append(ev)
        faces.append(ef + offset)
        offset += len(ev)
    v = np.concatenate(verts)
    f = np.concatenate(faces).astype(np.int64)
    V = len(v)

    # joints: regressed as means of vertex sets
    J = np.zeros((NUM_JOINTS, V))
    J[0, vid(n_lat - 1, j)] = 1.0 / n_lon                              # root: the neck cut
    J[1, vid(n_lat - 4, j)] = 1.0 / n_lon                              # neck: a ring above
    J[2, [vid(i_mouth, n_lon // 4), vid(i_mouth, 3 * n_lon // 4)]] = 0.5  # jaw: between the ears
    for k in range(2):
        J[3 + k, n_head + 6 * k: n_head + 6 * k + 6] = 1.0 / 6

    # skinning: head on the neck joint, neck cut blended to the root, jaw below the mouth
    W = np.zeros((V, NUM_JOINTS))
    W[:n_head, 1] = 1.0
    ring_of = np.concatenate([[-1], np.repeat(np.arange(n_lat), n_lon)])
    lon_of = np.concatenate([[0.0], np.tile(lon, n_lat)])
    t = np.clip((ring_of - (n_lat - 4)) / 3.0, 0.0, 1.0)
    W[:n_head, 0], W[:n_head, 1] = t, 1.0 - t
    jaw = np.zeros(V)
    in_jaw = (ring_of > i_mouth) & (ring_of < n_lat - 4)
    jaw[:n_head] = in_jaw * np.clip((1.2 - np.abs(lon_of)) / 0.4, 0.0, 1.0)
    W[:, 2] = jaw
    W[:n_head, 1] -= jaw[:n_head]
    for k in range(2):
        W[n_head + 6 * k: n_head + 6 * k + 6, 3 + k] = 1.0

    # identity / expression blendshapes: smooth fields; expressions only around mouth and eyes
    p = v / np.array(SEMI_AXES)
    feats = np.stack([np.ones(V), p[:, 0], p[:, 1], p[:, 2], p[:, 0] * p[:, 1], p[:, 1] * p[:, 2],
                      p[:, 2] * p[:, 0], p[:, 0] ** 2, p[:, 1] ** 2, p[:, 2] ** 2], 1)
    # coefficients are in standard deviations: all components at 1 move a vertex by ~5 mm
    M = rng.normal(0.0, 3e-4, size=(num_shape + num_expr, 3, feats.shape[1]))
    M[num_shape:] *= 2.0
    shapedirs = np.einsum("vf,kcf->vck", feats, M)
    mouth = v[vid(i_mouth, np.arange(front - 3, front + 4))].mean(0)
    near = np.exp(-np.sum((v - mouth) ** 2, 1) / (2 * 0.03 ** 2))
    for centre in eye_centres:
        near += np.exp(-np.sum((v - centre) ** 2, 1) / (2 * 0.015 ** 2))
    shapedirs[:, :, num_shape:] *= near[:, None, None]

    # pose correctives: jaw block on jaw vertices, neck block on the neck
    posedirs = np.zeros((V, 3, NUM_POSE_FEATURES))
    posedirs[:, :, 9:18] = rng.normal(0.0, 0.01, (V, 3, 9)) * (jaw > 0)[:, None, None]
    posedirs[:, :, 0:9] = rng.normal(0.0, 0.005, (V, 3, 9)) * (W[:, 0] > 0)[:, None, None]

    kintree = np.array([[2 ** 32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    arrays = {"v_template": v, "shapedirs": shapedirs, "posedirs": posedirs, "J_regressor": J,
              "weights": W, "kintree_table": kintree, "f": f.astype(np.uint32)}
    upper = vid(i_mouth, np.arange(front - 3, front + 4))
    lower = vid(i_mouth + 1, np.arange(front - 2, front + 3))
    return SyntheticFlame(arrays=arrays, upper_lip=upper, lower_lip=lower, jaw=jaw)
