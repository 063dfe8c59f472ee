"""Densification of mesh-bound Gaussians: binding inheritance, local splitting, safe pruning."""
import torch

from scene.binding import quaternion_to_matrix
from scene.gaussian_model import GaussianModel, inverse_sigmoid
from training.densify import DensityController
from training.selective_adam import SelectiveAdam


def model_with(scales, opacities, binding, rotations=None):
    n = len(binding)
    model = GaussianModel(sh_degree=1)
    model.binding = torch.tensor(binding)
    rot = torch.tensor(rotations, dtype=torch.float32) if rotations else \
        torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)
    model._set_params({
        "xyz": torch.arange(n * 3, dtype=torch.float32).view(n, 3) * 0.001,
        "f_dc": torch.arange(n * 3, dtype=torch.float32).view(n, 1, 3),
        "f_rest": torch.zeros(n, 3, 3),
        "scaling": torch.log(torch.tensor(scales, dtype=torch.float32)),
        "rotation": rot,
        "opacity": inverse_sigmoid(torch.tensor(opacities, dtype=torch.float32)[:, None]),
    })
    opt = SelectiveAdam(model.params, {k: 0.1 for k in model.params})
    return model, opt


def run(model, opt, grads, visible=None, trainable=None, threshold=1.0, size=0.01, min_op=0.005,
        seed=0):
    ctl = DensityController(model)
    n = model.num_gaussians
    screen = torch.zeros(n, 3)
    screen[:, 0] = torch.tensor(grads)
    ctl.accumulate(screen, torch.ones(n, dtype=torch.bool) if visible is None else visible,
                   trainable)
    return ctl.densify_and_prune(model, opt, threshold, min_op, size, torch.ones(10),
                                 torch.Generator().manual_seed(seed))


def test_clone_copies_row_and_binding_with_fresh_optimizer_state():
    model, opt = model_with([[0.001] * 3, [0.001] * 3], [0.5, 0.5], [3, 7])
    opt.state["xyz"]["step"] += 5
    report = run(model, opt, [2.0, 0.5])
    assert (report.cloned, report.split, report.pruned, report.total) == (1, 0, 0, 3)
    assert model.binding.tolist() == [3, 7, 3]
    assert torch.equal(model.params["xyz"][2], model.params["xyz"][0])
    assert torch.equal(model.params["f_dc"][2], model.params["f_dc"][0])
    assert opt.state["xyz"]["step"].tolist() == [5, 5, 0]
    assert opt.params is model.params  # the optimiser still sees the model's tensors


def test_split_samples_children_in_the_parents_local_frame():
    # a needle along the local x axis, rotated 90 degrees about z: children spread along local y
    q = [0.7071068, 0, 0, 0.7071068]
    model, opt = model_with([[0.05, 1e-5, 1e-5]], [0.5], [4], rotations=[q])
    parent_xyz = model.params["xyz"][0].detach().clone()
    report = run(model, opt, [2.0])
    assert (report.split, report.total) == (1, 2)
    assert model.binding.tolist() == [4, 4]
    offsets = model.params["xyz"].detach() - parent_xyz
    axis = quaternion_to_matrix(torch.tensor(q))[:, 0]
    along = offsets @ axis
    across = (offsets - along[:, None] * axis).norm(dim=1)
    assert (across < 1e-3).all() and (along.abs() > 0).all()
    torch.testing.assert_close(torch.exp(model.params["scaling"].detach()),
                               torch.tensor([[0.05, 1e-5, 1e-5]] * 2) / 1.6)


def test_prune_keeps_the_most_opaque_gaussian_of_an_otherwise_empty_face():
    model, opt = model_with([[0.001] * 3] * 5, [0.001, 0.003, 0.002, 0.5, 0.001],
                            [1, 1, 1, 2, 2])
    report = run(model, opt, [0.0] * 5)
    assert report.pruned == 3
    assert model.binding.tolist() == [1, 2]
    kept = torch.sigmoid(model.params["opacity"].detach()).squeeze(1)
    torch.testing.assert_close(kept, torch.tensor([0.003, 0.5]))


def test_statistics_only_count_trainable_gaussians():
    model, opt = model_with([[0.001] * 3] * 2, [0.5, 0.5], [0, 1])
    report = run(model, opt, [5.0, 5.0], trainable=torch.tensor([False, True]))
    assert report.cloned == 1 and model.binding.tolist() == [0, 1, 1]


def test_opacity_reset_clamps_and_zeroes_moments_but_keeps_step_counts():
    """As 3DGS: the moments restart, the step counts (Adam's bias correction) do not."""
    model, opt = model_with([0.001] * 4, [0.9, 0.5, 0.005, 0.02], [0, 0, 1, 1])
    for _ in range(3):
        model.params["opacity"].grad = torch.ones_like(model.params["opacity"])
        opt.step()
    before = opt.state["opacity"]["step"].clone()
    assert (before == 3).all()
    DensityController.reset_opacity(model, opt, ceiling=0.01)
    opacity = torch.sigmoid(model.params["opacity"].detach()).squeeze(1)
    assert (opacity <= 0.01 + 1e-6).all()
    assert (opt.state["opacity"]["exp_avg"] == 0).all()
    assert (opt.state["opacity"]["exp_avg_sq"] == 0).all()
    assert torch.equal(opt.state["opacity"]["step"], before)


def test_too_large_gaussians_are_pruned_only_when_limits_are_given():
    """3DGS's size rules: a screen radius above the limit since the last densification, or a
    world size above the limit; never a face's last Gaussian."""
    def fresh():
        model, opt = model_with([[0.001] * 3, [0.5] * 3, [0.001] * 3, [0.001] * 3], [0.9] * 4,
                                [0, 0, 1, 1])
        ctl = DensityController(model)
        n = model.num_gaussians
        radii = torch.tensor([3, 4, 30, 2])        # row 2 covers 30 pixels in one view
        ctl.accumulate(torch.zeros(n, 3), torch.ones(n, dtype=torch.bool), None, radii)
        ctl.accumulate(torch.zeros(n, 3), torch.ones(n, dtype=torch.bool), None,
                       torch.tensor([3, 4, 5, 2]))  # the maximum is kept
        return model, opt, ctl

    model, opt, ctl = fresh()
    ctl.densify_and_prune(model, opt, 1.0, 0.005, 0.01, torch.ones(10))
    assert model.num_gaussians == 4                 # no limits: nothing large is pruned
    model, opt, ctl = fresh()
    report = ctl.densify_and_prune(model, opt, 1.0, 0.005, 0.01, torch.ones(10),
                                   max_screen_size=20, max_world_size=0.1)
    # row 1 is too large in the world, row 2 on screen; both faces keep a Gaussian
    assert report.pruned == 2 and model.binding.tolist() == [0, 1]
    assert torch.exp(model.params["scaling"]).max() < 0.01
    assert ctl.max_radii.tolist() == [0, 0]         # statistics restart after densification
