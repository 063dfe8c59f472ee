"""Selection on the demo head: a jaw that opens under head motion selects the jaw region only."""
import numpy as np

from scene.demo_head import build_head_mesh
from scene.demo_head.rig import Expression, pose
from selection import compute_selection, dilate_masks, weld_corners


def rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def test_jaw_opening_selects_the_jaw_region_and_nothing_far_from_it():
    mesh = build_head_mesh()
    rng = np.random.default_rng(0)
    jaw = [0.0, 0.3, 1.0, 0.6, 0.0, 0.0]
    frames = []
    for j in jaw:
        R = rotation(rng.normal(size=3), np.deg2rad(rng.uniform(2, 6)))
        ex = Expression(jaw=j, blink=0.0, smile=0.0, gaze=np.zeros(2), head_R=R,
                        head_t=rng.uniform(-0.004, 0.004, 3))
        frames.append(pose(mesh, ex)[mesh.faces])
    meshes = np.stack(frames)
    result = compute_selection(meshes, reference=0)

    face_jaw = mesh.jaw_weight[mesh.faces]            # (F, 3)
    jaw_region = (face_jaw > 0).any(axis=1)
    ring = dilate_masks(jaw_region, weld_corners(meshes)[0], rings=result.dilate)
    strongly_moved = face_jaw.mean(axis=1) > 0.5
    centroid_y = mesh.rest[mesh.faces].mean(axis=1)[:, 1]
    far_above = centroid_y > np.percentile(centroid_y, 60)  # upper head: brows, forehead, crown

    open_frame = result.faces[2]
    selected = np.zeros(len(mesh.faces), bool)
    selected[open_frame] = True
    assert selected[strongly_moved].all()          # the jaw is selected
    assert not selected[~ring].any()               # nothing outside the jaw region + its ring
    assert not selected[far_above].any()
    # the neutral frames select nothing; the selection grows with the opening
    assert result.faces[0].size == 0 and result.faces[4].size == 0
    assert result.faces[1].size < result.faces[3].size < result.faces[2].size
