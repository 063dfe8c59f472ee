"""Per-frame selection of the triangles whose Gaussians are trained at that frame.

The idea: a triangle needs training at a frame only where the face has moved away from its
neutral state. Head pose is not such a movement (the Gaussians ride on the mesh), so every frame is
first rigidly aligned to a reference ("neutral") frame; the triangles that are still displaced by
at least ``tau`` after the alignment, grown by ``dilate`` rings of neighbours, are selected.

The alignment must be robust: a least-squares fit over all vertices lets an opening jaw tilt the
whole head, so the forehead would look as if it moved. We use a trimmed Kabsch fit (least trimmed
squares by concentration steps): fit, keep the ``keep`` fraction of vertices with the smallest
residuals, refit on those, repeat until the transform stops moving. The rigid part of a head
(skull, forehead, ears, back of the head) is more than ``keep`` of FLAME's vertices, so with the
default ``keep=0.4`` the fit locks onto it and moving regions have no influence at all.

Everything is vectorised over frames (batched 3x3 SVDs) and processed in chunks of frames, so a
3000-frame FLAME sequence takes seconds and memory stays bounded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

# Scene units are metres for NeRSemble/FLAME tracking. Tracking jitter of a well-tracked FLAME
# mesh is well below a millimetre after removing head pose, while expression motion that changes
# appearance (eyelids, brows, lips, jaw, cheeks) moves vertices by several millimetres to
# centimetres. 2 mm sits between the two: above noise, below any visible expression change.
DEFAULT_TAU = 0.002
# One ring of neighbours covers the transition band around a moving region (its Gaussians overlap
# the moving triangles on screen) without flooding the rigid parts of the head.
DEFAULT_DILATE = 1
# Fraction of vertices the trimmed fit keeps. The fit is unbiased as long as the kept vertices are
# all rigid. On FLAME the eyeballs alone are about a fifth of the vertices and turn with gaze; jaw,
# lips, chin and the lower neck (neck pose) move too, so the rigid part (scalp, forehead, ears,
# nose bridge, back of the head) is only around half the vertices: 0.4 leaves a margin and still
# fits on ~2000 vertices, plenty against tracking noise.
DEFAULT_KEEP = 0.4
# Maximum number of trimming (concentration) steps; they usually converge in 3-6.
DEFAULT_ITERATIONS = 20
# Corners closer than this fraction of the mesh size are welded into one vertex.
DEFAULT_WELD_TOL = 1e-6


@dataclass
class SelectionResult:
    """Result of :func:`compute_selection`; index ``t`` always refers to the input frame order.

    Transforms map a frame onto the reference: ``aligned = x @ rotations[t].T + translations[t]``.
    """
    faces: List[np.ndarray]          # per frame: sorted int32 selected face indices
    reference: int                   # index (into the frames) of the reference frame
    fractions: np.ndarray            # (T,) float64: selected faces / face count
    displacement: np.ndarray         # (T, F) float32: mean corner displacement after alignment
    rotations: np.ndarray            # (T, 3, 3) float64
    translations: np.ndarray         # (T, 3) float64
    face_vertices: np.ndarray        # (F, 3) int64: welded vertex id of each corner
    tau: float
    dilate: int
    reference_distance: Optional[np.ndarray] = field(default=None)  # (T,) when the rule chose


# --------------------------------------------------------------------------------------------
# welding and adjacency


def weld_corners(meshes: np.ndarray, rel_tol: float = DEFAULT_WELD_TOL,
                 frames: Optional[List[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Find shared vertices of a triangle soup by position, for adjacency and the alignment.

    Corners are quantised to ``rel_tol`` times the mesh extent and compared in several frames at
    once (first, middle and last by default), so that two distinct vertices that happen to touch
    in one frame (closed lips) are not merged. Returns ``face_vertices`` (F, 3) int64 vertex ids
    and ``first_corner`` (V,) int64: for each vertex, one flat corner index (``f * 3 + k``).
    """
    meshes = np.asarray(meshes)
    if meshes.ndim == 3:
        meshes = meshes[None]
    T, F = meshes.shape[:2]
    if frames is None:
        frames = sorted({0, T // 2, T - 1})
    corners0 = meshes[frames[0]].reshape(-1, 3).astype(np.float64)
    extent = float(np.max(corners0.max(axis=0) - corners0.min(axis=0)))
    quantum = rel_tol * extent if extent > 0 else 1.0
    keys = [np.round(meshes[t].reshape(-1, 3).astype(np.float64) / quantum).astype(np.int64)
            for t in frames]
    key = np.concatenate(keys, axis=1)
    _, first_corner, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    face_vertices = inverse.reshape(F, 3).astype(np.int64)
    return face_vertices, first_corner.astype(np.int64)


@dataclass
class VertexFaces:
    """CSR list of the faces around each vertex: ``faces[offsets[v]:offsets[v + 1]]``."""
    faces: np.ndarray
    offsets: np.ndarray  # (V + 1,)


def vertex_faces(face_vertices: np.ndarray, num_vertices: Optional[int] = None) -> VertexFaces:
    """Build the vertex -> incident faces table, the sparse structure used by dilation."""
    flat = np.asarray(face_vertices, dtype=np.int64).ravel()
    V = int(flat.max()) + 1 if num_vertices is None else int(num_vertices)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=V)
    offsets = np.zeros(V + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return VertexFaces(faces=(order // 3).astype(np.int64), offsets=offsets)


def dilate_masks(masks: np.ndarray, face_vertices: np.ndarray, rings: int,
                 table: Optional[VertexFaces] = None) -> np.ndarray:
    """Grow face masks (..., F) by ``rings`` rings of faces sharing a vertex.

    One ring = a vertex is marked when any face around it is selected (a segmented OR over the
    CSR table), then a face is selected when any of its corners is marked. No loop over faces.
    """
    masks = np.asarray(masks, dtype=bool)
    if rings <= 0:
        return masks.copy()
    face_vertices = np.asarray(face_vertices, dtype=np.int64)
    if table is None:
        table = vertex_faces(face_vertices)
    shape = masks.shape
    flat = masks.reshape(-1, shape[-1])
    starts = table.offsets[:-1]
    if np.any(table.offsets[1:] == starts):
        raise ValueError("dilate_masks: a vertex has no face (face_vertices ids must be dense)")
    for _ in range(int(rings)):
        vmask = np.logical_or.reduceat(flat[:, table.faces], starts, axis=1)
        flat = vmask[:, face_vertices].any(axis=2)
    return flat.reshape(shape)


# --------------------------------------------------------------------------------------------
# robust rigid alignment


def _weighted_kabsch(P1: np.ndarray, Q: np.ndarray, Q1: np.ndarray,
                     w: np.ndarray) -> np.ndarray:
    """Batched weighted Kabsch. P1 (B,V,4) = [p, 1], Q (V,3), Q1 (V,4) = [q, 1], w (B,V) >= 0.

    Returns M (B,4,3) = [R^T; t] so that ``P1 @ M`` is the aligned frame, with R, t minimising
    sum_v w_v |R p_v + t - q_v|^2. Inputs are centred by the caller, so the one-pass moment
    formula below loses no precision.
    """
    wn = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    # S[b] = sum_v wn p1 q1^T: S[:, :3, :3] = sum wn p q^T, S[:, :3, 3] = pc, S[:, 3, :3] = qc
    S = np.matmul(P1.transpose(0, 2, 1), wn[:, :, None] * Q1)
    pc, qc = S[:, :3, 3], S[:, 3, :3]
    H = S[:, :3, :3] - pc[:, :, None] * qc[:, None, :]
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    d[d == 0] = 1.0
    U[:, :, 2] *= d[:, None]
    Rt = np.matmul(U, Vt)                       # R^T (R = V D U^T)
    M = np.empty((P1.shape[0], 4, 3))
    M[:, :3] = Rt
    M[:, 3] = qc - np.matmul(pc[:, None, :], Rt)[:, 0]
    return M


def _sq_residuals(P1: np.ndarray, M: np.ndarray, Q: np.ndarray) -> np.ndarray:
    diff = np.matmul(P1, M)
    diff -= Q
    return np.einsum("bvi,bvi->bv", diff, diff)


def robust_align(P: np.ndarray, Q: np.ndarray, keep: float = DEFAULT_KEEP,
                 iterations: int = DEFAULT_ITERATIONS,
                 init: Optional[Tuple[np.ndarray, np.ndarray]] = None
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trimmed Kabsch fit of each frame P[b] (B,V,3) onto Q (V,3).

    Starts from the plain least-squares fit (or from ``init`` = (R, t)), then repeatedly refits
    on the ``keep`` fraction of vertices with the smallest residuals (least trimmed squares by
    concentration steps; each step can only lower the trimmed error). A frame stops when its
    transform no longer moves (1e-9 of the mesh size). ``keep >= 1`` gives the plain fit.
    Returns R (B,3,3), t (B,3) with ``aligned = p @ R.T + t``, and residual distances (B,V).
    """
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    B, V = P.shape[:2]
    # centre both sides (precision of the moment formula; undone at the end)
    pm = P.mean(axis=1)
    qm = Q.mean(axis=0)
    P1 = np.empty((B, V, 4))
    P1[..., :3] = P - pm[:, None, :]
    P1[..., 3] = 1.0
    Qc = Q - qm
    Q1 = np.concatenate([Qc, np.ones((V, 1))], axis=1)
    scale = max(float(np.abs(Qc).max()), 1e-300)
    if init is None:
        M = _weighted_kabsch(P1, Qc, Q1, np.ones((B, V)))
    else:
        R0, t0 = (np.asarray(a, dtype=np.float64) for a in init)
        M = np.empty((B, 4, 3))
        M[:, :3] = R0.transpose(0, 2, 1)
        M[:, 3] = np.einsum("bij,bj->bi", R0, pm) + t0 - qm
    r2 = _sq_residuals(P1, M, Qc)
    if keep < 1.0 and V > 3:
        k = min(V, max(3, int(np.ceil(keep * V))))
        active = np.arange(B)
        for _ in range(int(iterations)):
            sub_r2 = r2[active]
            thr = np.partition(sub_r2, k - 1, axis=1)[:, k - 1:k]
            sub_P1 = P1[active] if len(active) < B else P1
            newM = _weighted_kabsch(sub_P1, Qc, Q1, (sub_r2 <= thr).astype(np.float64))
            moved = np.abs(newM - M[active])
            moved[:, :3] *= scale
            M[active] = newM
            r2[active] = _sq_residuals(sub_P1, newM, Qc)
            active = active[moved.max(axis=(1, 2)) > 1e-9 * scale]
            if len(active) == 0:
                break
    R = M[:, :3].transpose(0, 2, 1)
    t = M[:, 3] + qm - np.einsum("bij,bj->bi", R, pm)
    return R, t, np.sqrt(r2)


# --------------------------------------------------------------------------------------------
# the selection


def _check_meshes(meshes: np.ndarray) -> np.ndarray:
    meshes = np.asarray(meshes)
    if meshes.ndim != 4 or meshes.shape[2:] != (3, 3) or meshes.shape[0] < 1 or meshes.shape[1] < 1:
        raise ValueError(f"meshes must have shape (T, F, 3, 3) with T, F >= 1, got {meshes.shape}")
    if not np.issubdtype(meshes.dtype, np.floating):
        meshes = meshes.astype(np.float64)
    return meshes


def _align_all(verts: np.ndarray, ref: int, keep: float, iterations: int, chunk: int,
               store_aligned: bool = False,
               init: Optional[Tuple[np.ndarray, np.ndarray]] = None):
    """Robustly align every frame of ``verts`` (T,V,3) to frame ``ref``, chunk by chunk."""
    T, V = verts.shape[:2]
    Q = verts[ref].astype(np.float64)
    Rs = np.empty((T, 3, 3))
    ts = np.empty((T, 3))
    resid = np.empty((T, V), dtype=np.float32)
    aligned = np.empty((T, V, 3), dtype=np.float32) if store_aligned else None
    for s in range(0, T, chunk):
        P = verts[s:s + chunk].astype(np.float64)
        guess = None if init is None else (init[0][s:s + chunk], init[1][s:s + chunk])
        R, t, r = robust_align(P, Q, keep=keep, iterations=iterations, init=guess)
        Rs[s:s + chunk], ts[s:s + chunk], resid[s:s + chunk] = R, t, r
        if store_aligned:
            aligned[s:s + chunk] = np.matmul(P, R.transpose(0, 2, 1)) + t[:, None, :]
    return Rs, ts, resid, aligned


def choose_reference(aligned: np.ndarray, chunk: int = 512) -> Tuple[int, np.ndarray]:
    """The frame closest (mean vertex distance) to the per-vertex median of aligned frames."""
    T, V = aligned.shape[:2]
    dist = np.zeros(T, dtype=np.float64)
    for s in range(0, V, chunk):
        block = aligned[:, s:s + chunk]
        diff = block - np.median(block, axis=0)
        dist += np.sqrt(np.einsum("tvi,tvi->tv", diff, diff)).sum(axis=1, dtype=np.float64)
    dist /= V
    return int(np.argmin(dist)), dist


def compute_selection(meshes: np.ndarray, tau: float | None = None, dilate: int | None = None,
                      reference: int | None = None, *, keep: float = DEFAULT_KEEP,
                      iterations: int = DEFAULT_ITERATIONS, chunk: int = 64,
                      weld_tol: float = DEFAULT_WELD_TOL) -> SelectionResult:
    """Select, per frame, the faces displaced by >= ``tau`` from the reference after robust rigid
    alignment, grown by ``dilate`` vertex-sharing rings.

    ``meshes``: (T, F, 3, 3) triangle soup in face order. ``reference``: frame index, or None for
    the rule "frame closest to the per-vertex median of the aligned sequence". The displacement of
    a face is the mean of its three corners' displacements (it also catches a face that turns or
    stretches in place, which the centroid distance would miss). Deterministic.
    """
    meshes = _check_meshes(meshes)
    T, F = meshes.shape[:2]
    tau = DEFAULT_TAU if tau is None else float(tau)
    dilate = DEFAULT_DILATE if dilate is None else int(dilate)
    if not np.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if dilate < 0:
        raise ValueError(f"dilate must be >= 0, got {dilate}")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if reference is not None and not 0 <= int(reference) < T:
        raise ValueError(f"reference index {reference} is out of range for {T} frames")
    chunk = max(1, int(chunk))

    face_vertices, first_corner = weld_corners(meshes, rel_tol=weld_tol)
    V = first_corner.shape[0]
    verts = meshes.reshape(T, F * 3, 3)[:, first_corner]  # (T, V, 3), input dtype

    ref_dist = None
    if reference is None:
        # Align everything to frame 0 (the trimmed fit locks onto the rigid part whatever frame 0
        # shows), take the per-vertex median shape, and pick the frame closest to it.
        R0, t0, resid, aligned = _align_all(verts, 0, keep, iterations, chunk, store_aligned=True)
        ref, ref_dist = choose_reference(aligned)
        del aligned
        if ref != 0:
            # re-fit to the chosen frame, starting from the composed transform
            # (frame -> frame 0 -> reference), which is already close: a step or two per frame
            Rr = R0[ref].T
            init = (np.matmul(Rr, R0), np.einsum("ij,tj->ti", Rr, t0 - t0[ref]))
            R0, t0, resid, _ = _align_all(verts, ref, keep, iterations, chunk, init=init)
    else:
        ref = int(reference)
        R0, t0, resid, _ = _align_all(verts, ref, keep, iterations, chunk)

    # mean corner displacement, from the welded vertices (the corners of a face are vertices)
    displacement = resid[:, face_vertices[:, 0]]
    displacement += resid[:, face_vertices[:, 1]]
    displacement += resid[:, face_vertices[:, 2]]
    displacement /= 3.0  # (T, F) float32
    table = vertex_faces(face_vertices, V)
    faces: List[np.ndarray] = []
    counts = np.empty(T, dtype=np.int64)
    for s in range(0, T, chunk):
        mask = dilate_masks(displacement[s:s + chunk] >= tau, face_vertices, dilate, table)
        counts[s:s + chunk] = mask.sum(axis=1)
        faces.extend(np.flatnonzero(m).astype(np.int32) for m in mask)
    return SelectionResult(faces=faces, reference=ref, fractions=counts / float(F),
                           displacement=displacement, rotations=R0, translations=t0,
                           face_vertices=face_vertices, tau=tau, dilate=dilate,
                           reference_distance=ref_dist)
