"""The FLAME layer: safe loading of the official pickle layout, the forward pass, and teeth.

The real FLAME model cannot ship with the project, so these tests pickle a synthetic model the
way the official file is pickled: a dict of arrays, some wrapped in chumpy ``Ch`` objects (from a
stand-in ``chumpy`` module that exists only while pickling), ``J_regressor`` a scipy sparse
matrix, protocol 2. Loading then proves chumpy is not needed.
"""
import contextlib
import io
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from flame import FlameLayer, FlameModelError, find_lip_rings, load_flame_model
from flame.model_file import validate_model
from flame.safe_pickle import restricted_load, to_array
from flame.synthetic import make_synthetic_flame
from flame.teeth import NUM_TEETH_FACES, NUM_TEETH_VERTICES, boundary_loops

CHUMPY_KEYS = ("v_template", "shapedirs", "weights")


@contextlib.contextmanager
def fake_chumpy():
    """A stand-in ``chumpy`` package (module ``chumpy.ch`` with class ``Ch``), only inside."""
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod.Ch, pkg.ch = Ch, mod
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules.update({"chumpy": pkg, "chumpy.ch": mod})
    try:
        yield Ch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_model_pickle(path: Path, arrays: dict) -> Path:
    """Pickle FLAME arrays like the official file: chumpy Ch values, sparse J_regressor."""
    with fake_chumpy() as Ch:
        data = dict(arrays)
        for key in CHUMPY_KEYS:
            data[key] = Ch(np.asarray(arrays[key]))
        data["J_regressor"] = scipy.sparse.csc_matrix(np.asarray(arrays["J_regressor"]))
        data["bs_style"], data["bs_type"] = "lbs", "lrotmin"
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)
    assert "chumpy" not in sys.modules
    return path


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_flame()


@pytest.fixture(scope="module")
def model_file(synthetic, tmp_path_factory):
    return write_model_pickle(tmp_path_factory.mktemp("flame") / "generic_model.pkl",
                              synthetic.arrays)


@pytest.fixture(scope="module")
def model(model_file):
    return load_flame_model(model_file)


def rodrigues(r):
    """Rotation matrix of an axis-angle vector, written out for the tests."""
    r = np.asarray(r, dtype=np.float64)
    angle = np.linalg.norm(r)
    if angle == 0:
        return np.eye(3)
    k = r / angle
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def homogeneous(R, t):
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, t
    return M


# --- loading --------------------------------------------------------------------------------


def test_loads_the_official_layout_without_chumpy(model, synthetic):
    assert "chumpy" not in sys.modules
    a = synthetic.arrays
    np.testing.assert_array_equal(model.v_template, a["v_template"])
    np.testing.assert_array_equal(model.shapedirs, a["shapedirs"])
    np.testing.assert_array_equal(model.J_regressor, a["J_regressor"])
    np.testing.assert_array_equal(model.faces, a["f"].astype(np.int64))
    np.testing.assert_array_equal(model.parents, [-1, 0, 1, 1, 1])
    assert model.num_shape == 300 and model.num_expression == 100


def test_loads_official_array_shapes(tmp_path):
    rng = np.random.default_rng(1)
    V, F = 5023, 9976
    J = np.zeros((5, V))
    J[np.arange(5), rng.integers(0, V, 5)] = 1.0
    arrays = {"v_template": rng.normal(size=(V, 3)),
              "shapedirs": rng.normal(size=(V, 3, 400)).astype(np.float32),
              "posedirs": rng.normal(size=(V, 3, 36)), "J_regressor": J,
              "weights": np.full((V, 5), 0.2), "f": rng.integers(0, V, (F, 3)).astype(np.uint32),
              "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]])}
    m = load_flame_model(write_model_pickle(tmp_path / "flame2023.pkl", arrays))
    assert m.v_template.shape == (V, 3) and m.shapedirs.shape == (V, 3, 400)
    assert m.posedirs.shape == (V, 3, 36) and m.J_regressor.shape == (5, V)
    assert m.faces.shape == (F, 3) and m.weights.shape == (V, 5)
    np.testing.assert_array_equal(m.J_regressor, J)


def test_protocol_0_pickles_with_python_2_names_load_too():
    with fake_chumpy() as Ch:
        data = pickle.dumps({"x": Ch(np.arange(4.0).reshape(2, 2)), "n": np.int64(3),
                             "J": scipy.sparse.csc_matrix(np.eye(3)[:2] * 0.5)}, protocol=0)
    assert b"copy_reg" in data  # objects go through copyreg._reconstructor at protocol 0
    raw = restricted_load(io.BytesIO(data))
    np.testing.assert_array_equal(to_array(raw["x"], "x"), np.arange(4.0).reshape(2, 2))
    np.testing.assert_array_equal(to_array(raw["J"], "J"), np.eye(3)[:2] * 0.5)
    assert raw["n"] == 3


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


def test_a_malicious_pickle_is_refused(tmp_path, synthetic):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"v_template": _Evil(marker)}, f, protocol=2)
    with pytest.raises(FlameModelError, match=r"system") as info:
        load_flame_model(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"f": eval}, protocol=2))  # any other global is refused too
    with pytest.raises(FlameModelError, match="builtins.eval"):
        load_flame_model(path)


def test_a_missing_file_says_where_to_get_flame(tmp_path):
    path = tmp_path / "nowhere" / "generic_model.pkl"
    with pytest.raises(FlameModelError) as info:
        load_flame_model(path)
    message = str(info.value)
    assert str(path) in message and "flame.is.tue.mpg.de" in message


def test_unknown_layouts_are_reported(tmp_path, synthetic):
    a = dict(synthetic.arrays)
    del a["posedirs"]
    with pytest.raises(FlameModelError, match="'posedirs' is missing"):
        validate_model(a, tmp_path / "x.pkl")
    a = dict(synthetic.arrays, weights=np.ones((5, 5)))
    with pytest.raises(FlameModelError, match="'weights' has shape"):
        validate_model(a, tmp_path / "x.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(FlameModelError, match="junk.pkl"):
        load_flame_model(tmp_path / "junk.pkl")


# --- forward --------------------------------------------------------------------------------


def test_neutral_frame_is_template_plus_blendshapes(model):
    layer = FlameLayer(model, dtype=torch.float64)
    rng = np.random.default_rng(0)
    shape, expr = rng.normal(size=50), rng.normal(size=(1, 10))  # fewer than 300 / 100
    static = rng.normal(0, 1e-3, size=(1, model.num_vertices, 3))
    trans = np.array([0.01, -0.02, 0.3])
    got = layer(shape=shape, expr=expr, static_offset=static, translation=trans)[0].numpy()
    want = (model.v_template + model.shapedirs[:, :, :50] @ shape
            + model.shapedirs[:, :, 300:310] @ expr[0] + static[0] + trans)
    np.testing.assert_allclose(got, want, atol=1e-12)
    dyn = rng.normal(0, 1e-3, size=(model.num_vertices, 3))
    got = layer(dynamic_offset=dyn, static_offset=static)[0].numpy()
    np.testing.assert_allclose(got, model.v_template + static[0] + dyn, atol=1e-12)


def test_jaw_rotation_moves_only_jaw_vertices_like_rodrigues_and_lbs(model):
    layer = FlameLayer(model, dtype=torch.float64)
    jaw = np.array([0.25, 0.05, -0.03])
    got = layer(jaw_pose=jaw)[0].numpy()
    v0 = model.v_template
    w = model.weights[:, 2]
    R = rodrigues(jaw)
    joint = model.J_regressor[2] @ v0
    features = (R - np.eye(3)).ravel()              # jaw is the 2nd non-root joint: 9..17
    posed = v0 + model.posedirs[:, :, 9:18] @ features
    want = w[:, None] * ((posed - joint) @ R.T + joint) + (1 - w[:, None]) * posed
    np.testing.assert_allclose(got, want, atol=1e-12)
    still = w == 0
    assert still.sum() > 0.5 * len(w)
    np.testing.assert_allclose(got[still], v0[still], rtol=0, atol=1e-15)
    assert np.abs(got[~still] - v0[~still]).max() > 1e-3


def test_pose_correctives_use_R_minus_I(model):
    m = validate_model({**{k: getattr(model, k) for k in ("v_template", "shapedirs",
                                                          "posedirs", "J_regressor",
                                                          "weights")},
                        "kintree_table": np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
                        "f": model.faces}, Path("inline"))
    m.posedirs[:] = 0.0
    m.weights[:] = 0.0
    m.weights[:, 1] = 1.0                 # everything on the neck: the jaw skins nothing
    m.posedirs[7, 2, 9 + 4] = 0.5         # vertex 7, z, from (R_jaw - I)[1, 1]
    layer = FlameLayer(m, dtype=torch.float64)
    np.testing.assert_array_equal(layer()[0].numpy(), m.v_template)  # zero pose: no corrective
    theta = 0.4
    got = layer(jaw_pose=[theta, 0.0, 0.0])[0].numpy()
    expected = m.v_template.copy()
    expected[7, 2] += 0.5 * (np.cos(theta) - 1.0)
    np.testing.assert_allclose(got, expected, atol=1e-14)


def test_full_pose_matches_a_kinematic_chain_written_out(model):
    layer = FlameLayer(model, dtype=torch.float64)
    rng = np.random.default_rng(3)
    pose = rng.normal(0, 0.3, size=15)
    trans = rng.normal(0, 0.1, size=3)
    got, joints = layer(rotation=pose[0:3], neck_pose=pose[3:6], jaw_pose=pose[6:9],
                        eyes_pose=pose[9:15], translation=trans, return_joints=True)
    v0 = model.v_template
    J = model.J_regressor @ v0
    Rs = [rodrigues(pose[3 * j:3 * j + 3]) for j in range(5)]
    posed = v0 + model.posedirs @ np.concatenate([(R - np.eye(3)).ravel() for R in Rs[1:]])
    parents = [-1, 0, 1, 1, 1]
    world = []
    for j in range(5):
        local = homogeneous(Rs[j], J[j] - (J[parents[j]] if j else 0))
        world.append(local if j == 0 else world[parents[j]] @ local)
    skinning = [G @ homogeneous(np.eye(3), -J[j]) for j, G in enumerate(world)]
    ph = np.concatenate([posed, np.ones((len(v0), 1))], 1)
    want = sum(model.weights[:, j:j + 1] * (ph @ skinning[j].T)[:, :3] for j in range(5)) + trans
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-12)
    np.testing.assert_allclose(joints[0].numpy(), np.stack([G[:3, 3] for G in world]) + trans,
                               atol=1e-12)


def test_batches_equal_single_frames_and_gradients_are_finite_at_rest(model):
    layer = FlameLayer(model)
    rng = np.random.default_rng(4)
    jaw = torch.tensor(rng.normal(0, 0.2, size=(3, 3)), dtype=torch.float32)
    expr = torch.tensor(rng.normal(size=(3, 20)), dtype=torch.float32)
    batch = layer(jaw_pose=jaw, expr=expr, shape=np.ones(300) * 0.1)
    for i in range(3):
        single = layer(jaw_pose=jaw[i], expr=expr[i:i + 1], shape=np.ones(300) * 0.1)
        torch.testing.assert_close(batch[i], single[0])
    rest = torch.zeros(2, 3, requires_grad=True)
    layer(jaw_pose=rest, rotation=rest).square().sum().backward()
    assert torch.isfinite(rest.grad).all()
    with pytest.raises(ValueError, match="expr"):
        layer(expr=np.zeros(101))


# --- teeth ----------------------------------------------------------------------------------


def test_lip_rings_are_found_from_the_geometry(model, synthetic):
    loops = boundary_loops(model.faces)
    assert len(loops) == 4  # neck, mouth, two eyes
    rings = find_lip_rings(model.v_template, model.faces)
    np.testing.assert_array_equal(rings.upper, synthetic.upper_lip)
    assert set(synthetic.lower_lip) <= set(rings.lower.tolist())
    assert rings.upper[0] == rings.lower[0] and rings.upper[-1] == rings.lower[-1]
    assert len(rings.upper_samples.ids) == len(rings.lower_samples.ids) == 15
    # lips pressed together so that the lower lip line lies above the upper one: the lip
    # tissue side of each arc still tells them apart
    pressed = model.v_template.copy()
    inner = rings.lower[1:-1]
    gap = pressed[synthetic.upper_lip, 1].mean() - pressed[inner, 1].mean()
    pressed[inner, 1] += 1.2 * gap
    assert pressed[inner, 1].min() > pressed[rings.upper, 1].max()
    squeezed = find_lip_rings(pressed, model.faces)
    np.testing.assert_array_equal(squeezed.upper, synthetic.upper_lip)
    # no hard-coded ids: the same ring is found in a renumbered mesh
    perm = np.random.default_rng(0).permutation(model.num_vertices)
    inverse = np.argsort(perm)
    moved = find_lip_rings(model.v_template[perm], inverse[model.faces])
    np.testing.assert_array_equal(perm[moved.upper], rings.upper)


def test_teeth_vertices_faces_and_skinning(model):
    plain = FlameLayer(model, dtype=torch.float64)
    layer = FlameLayer(model, teeth=True, dtype=torch.float64)
    V, F = model.num_vertices, len(model.faces)
    assert layer.num_vertices == V + NUM_TEETH_VERTICES == V + 120
    assert layer.num_faces == F + NUM_TEETH_FACES == F + 168
    assert layer.faces[:F].tolist() == plain.faces.tolist()
    rest = layer()[0].numpy()
    np.testing.assert_allclose(rest[:V], plain()[0].numpy())
    teeth = rest[V:]
    tri = rest[layer.faces[F:].numpy()]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.linalg.norm(normal, axis=1).min() > 1e-8          # no degenerate triangles
    rings = layer.teeth.rings
    lips = model.v_template[np.concatenate([rings.upper, rings.lower])]
    centre = lips.mean(0)
    assert teeth[:, 2].max() < lips[:, 2].max()                  # behind the lips
    assert lips[:, 0].min() < teeth[:, 0].min() and teeth[:, 0].max() < lips[:, 0].max()
    assert teeth[:60, 1].mean() > centre[1] > teeth[60:, 1].mean()  # upper above, lower below
    # the middle front faces look out of the mouth (+z)
    middle = np.abs(tri.mean(1)[:, 0] - centre[0]) < 0.3 * np.ptp(lips[:, 0])
    assert (normal[middle, 2] > 0).mean() > 0.5
    # skinning: upper teeth follow the neck rigidly, lower teeth the jaw
    jaw, neck = np.array([0.3, 0.0, 0.0]), np.array([0.0, 0.2, 0.1])
    posed, joints = layer(jaw_pose=jaw, return_joints=True)
    J = model.J_regressor @ model.v_template
    R = rodrigues(jaw)
    np.testing.assert_allclose(posed[0, V + 60:].numpy(), (teeth[60:] - J[2]) @ R.T + J[2],
                               atol=1e-12)
    np.testing.assert_allclose(posed[0, V:V + 60].numpy(), teeth[:60], atol=1e-12)
    posed = layer(neck_pose=neck)[0].numpy()
    R = rodrigues(neck)
    np.testing.assert_allclose(posed[V:], (teeth - J[1]) @ R.T + J[1], atol=1e-12)
    # identity shape moves teeth with the lips; expression does not move them
    shaped = layer(shape=np.full(300, 0.5), expr=np.full(100, 2.0))[0].numpy()
    only_shape = layer(shape=np.full(300, 0.5))[0].numpy()
    np.testing.assert_allclose(shaped[V:], only_shape[V:], atol=1e-12)
    assert np.abs(only_shape[V:] - teeth).max() > 1e-4
