"""train.py / render.py / metrics.py end to end on a tiny synthetic head, on the CPU.

Also the training guarantees: frozen Gaussians stay bitwise frozen, a resumed run equals a
straight one, Ctrl-C leaves a resumable checkpoint.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import metrics
import render
import train
from scene.demo_head import write_demo_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_head(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny_head"
    write_demo_dataset(path, width=40, height=48, n_train_frames=4, n_test_frames=2, n_cameras=3,
                       supersample=2, texture_size=256, progress=False)
    return path


def trainer(data: Path, model: Path, *extra: str) -> train.Trainer:
    argv = ["-s", str(data), "-m", str(model), "--quiet", "--device", "cpu", *extra]
    return train.Trainer(train.resolve_defaults(train.build_parser().parse_args(argv)))


def snapshot(t: train.Trainer):
    params = {k: v.detach().clone() for k, v in t.model.params.items()}
    state = {k: {s: x.clone() for s, x in st.items()} for k, st in t.optimizer.state.items()}
    return params, state, t.model.binding.clone()


def test_training_improves_the_held_out_frames(tiny_head, tmp_path):
    t = trainer(tiny_head, tmp_path / "m", "--iterations", "150", "--sh_degree", "1",
                "--densify_from_iter", "20", "--densification_interval", "30")
    before = t.evaluate(0)
    t.run()
    after = t.evaluate(150)
    for split in ("test", "val"):
        assert after[split]["PSNR"] > before[split]["PSNR"] + 2.0, (before, after)
        assert after[split]["SSIM"] > before[split]["SSIM"]
    ply = tmp_path / "m" / "point_cloud" / "iteration_150" / "point_cloud.ply"
    assert ply.exists()
    assert json.loads((tmp_path / "m" / "cfg_args.json").read_text())["iterations"] == 150

    # render.py writes every split, named after the source images; metrics.py scores them
    assert render.main(["-m", str(tmp_path / "m"), "--quiet"]) == 0
    for split, count in (("train", 4 * 3), ("test", 2 * 3), ("val", 4)):
        folder = tmp_path / "m" / split / "ours_150"
        names = sorted(p.name for p in (folder / "renders").iterdir())
        assert len(names) == count
        assert names == sorted(p.name for p in (folder / "gt").iterdir())
    assert "00000_00.png" in os.listdir(tmp_path / "m" / "train" / "ours_150" / "renders")
    assert metrics.main(["-m", str(tmp_path / "m"), "--no_lpips", "--quiet"]) == 0
    results = json.loads((tmp_path / "m" / "results.json").read_text())
    assert set(results) == {"train", "test", "val"}
    scored = results["test"]["ours_150"]
    assert scored["LPIPS"] is None
    # the 8-bit round trip costs little: metrics.py agrees with training's own evaluation
    assert scored["PSNR"] == pytest.approx(after["test"]["PSNR"], abs=0.3)


def test_frozen_gaussians_and_their_adam_state_stay_bitwise_unchanged(tiny_head, tmp_path):
    t = trainer(tiny_head, tmp_path / "m", "--iterations", "100", "--global_warmup", "0",
                "--global_every", "1000", "--no-densify", "--sh_degree", "0")
    t.train_step(1)  # a first selective step gives the moments of those rows non-zero values
    params0, state0, binding = snapshot(t)
    trained = torch.zeros(t.model.num_gaussians, dtype=torch.bool)
    for it in range(2, 8):
        step_rows = []
        original = t.trainable

        def recording(step):
            selection = original(step)
            step_rows.append(selection)
            return selection
        t.trainable = recording
        t.train_step(it)
        t.trainable = original
        assert step_rows[0] is not None  # selective, not global
        trained[step_rows[0].rows] = True
    frozen = ~trained
    assert frozen.any() and trained.any()
    assert torch.equal(t.model.binding, binding)
    for name, value in t.model.params.items():
        assert torch.equal(value.detach()[frozen], params0[name][frozen]), name
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(t.optimizer.state[name][key][frozen], state0[name][key][frozen])
    moved = (t.model.params["f_dc"].detach() != params0["f_dc"]).flatten(1).any(1)
    assert moved[trained].float().mean() > 0.5


@pytest.mark.parametrize("extra", [[], ["--error_faces", "0.3", "--crop_local_steps"]])
def test_resume_from_checkpoint_equals_a_straight_run(tiny_head, tmp_path, extra):
    args = ["--iterations", "40", "--sh_degree", "1", "--global_warmup", "10",
            "--densify_from_iter", "5", "--densification_interval", "10",
            "--random_background", "--test_iterations", "1000", "--save_iterations", "40", *extra]
    straight = trainer(tiny_head, tmp_path / "a", *args, "--checkpoint_iterations", "20")
    straight.run()
    ckpt = tmp_path / "a" / "chkpnt20.pth"
    assert ckpt.exists()
    resumed = trainer(tiny_head, tmp_path / "b", *args, "--start_checkpoint", str(ckpt))
    assert resumed.first_iteration == 21
    resumed.run()
    assert torch.equal(resumed.model.binding, straight.model.binding)
    for name in straight.model.params:
        assert torch.equal(resumed.model.params[name], straight.model.params[name]), name


def test_ctrl_c_writes_a_checkpoint_that_resumes_exactly(tiny_head, tmp_path, monkeypatch):
    args = ["--iterations", "16", "--sh_degree", "0", "--densify_from_iter", "2",
            "--densification_interval", "4", "--test_iterations", "1000"]
    straight = trainer(tiny_head, tmp_path / "a", *args)
    straight.run()

    interrupted = trainer(tiny_head, tmp_path / "b", *args)
    real_step = interrupted.train_step

    def step_then_interrupt(iteration):
        loss = real_step(iteration)
        if iteration == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return loss
    monkeypatch.setattr(interrupted, "train_step", step_then_interrupt)
    with pytest.raises(SystemExit) as info:
        interrupted.run()
    assert info.value.code == 130
    ckpt = tmp_path / "b" / "chkpnt7.pth"
    assert ckpt.exists()
    assert not list((tmp_path / "b").glob("*.tmp"))
    resumed = trainer(tiny_head, tmp_path / "b", *args, "--start_checkpoint", str(ckpt))
    resumed.run()
    for name in straight.model.params:
        assert torch.equal(resumed.model.params[name], straight.model.params[name]), name


def test_no_eval_trains_on_every_split_with_selection(tiny_head, tmp_path):
    t = trainer(tiny_head, tmp_path / "m", "--no-eval", "--iterations", "30",
                "--global_warmup", "0", "--global_every", "1000", "--no-densify")
    assert set(t.dataset.splits) == {"train"}
    assert len(t.train_cameras) == 4 * 3 + 2 * 3 + 4  # train + test + val images
    keyframes = {c.keyframe for c in t.train_cameras}
    assert keyframes == set(t.dataset.training_faces)
    for it in range(1, 31):  # visits test keyframes selectively without a KeyError
        t.train_step(it)
    assert t.reference_keyframe == min(keyframes)


def test_empty_selection_trains_nothing_in_that_step(tiny_head, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_head, data)
    for f in (data / "training_faces").iterdir():
        np.save(f, np.array([], dtype=np.int32))
    t = trainer(data, tmp_path / "m", "--iterations", "10", "--global_warmup", "0",
                "--global_every", "1000", "--no-densify")
    params0, _, _ = snapshot(t)
    assert t.train_step(1) is None
    for name, value in t.model.params.items():
        assert torch.equal(value.detach(), params0[name])


def run_cli(*argv):
    """Run a command as a user would; the packages come from the working tree, as in conftest."""
    paths = [str(ROOT / "submodules" / s) for s in ("diff-gaussian-rasterization", "simple-knn")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_commands_report_bad_input_without_a_traceback(tiny_head, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_head, data)
    (data / "images" / "00001_01.png").write_bytes(b"broken")
    out = run_cli("train.py", "-s", str(data), "-m", str(tmp_path / "m"), "--quiet")
    assert out.returncode == 2
    assert "00001_01.png" in out.stderr and "corrupt" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("render.py", "-m", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "cfg_args.json" in out.stderr


def test_a_bad_region_map_stops_training_before_it_starts(tiny_head, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_head, data)
    held_out = json.loads((data / "transforms_test.json").read_text())["frames"][0]
    name = Path(held_out["file_path"]).name
    (data / "regions" / name).write_bytes(b"broken")
    with pytest.raises(train.DatasetError, match=f"regions/{name}.*corrupt"):
        trainer(data, tmp_path / "m", "--iterations", "5")


def test_static_fit_must_not_be_negative(capsys):
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["-s", "x", "--static_fit", "-1"])
    assert "--static_fit: must be 0 or more" in capsys.readouterr().err


def test_help_documents_every_flag():
    for module in (train, render, metrics):
        for action in module.build_parser()._actions:
            assert action.help and len(action.help) > 8, (module.__name__, action.option_strings)
    text = run_cli("train.py", "--help").stdout
    for flag in ("--source_path", "--model_path", "--resolution", "--white_background", "--eval",
                 "--iterations", "--sh_degree", "--test_iterations", "--save_iterations",
                 "--checkpoint_iterations", "--start_checkpoint", "--quiet", "--selection",
                 "--global_warmup", "--global_every", "--densify"):
        assert flag in text


def test_progress_record_holds_quality_against_training_time(tiny_head, tmp_path):
    """progress.json: one entry per evaluation (regions included), seconds that grow, resumed
    runs continue the record; progress.png is written beside it."""
    model = tmp_path / "m"
    t = trainer(tiny_head, model, "--iterations", "40", "--test_iterations", "10", "20",
                "--checkpoint_iterations", "20", "--sh_degree", "0")
    t.run()
    entries = json.loads((model / "progress.json").read_text())
    assert [e["iteration"] for e in entries] == [10, 20, 40]
    seconds = [e["seconds"] for e in entries]
    assert 0 < seconds[0] < seconds[1] < seconds[2] <= t.train_seconds + 1e-3
    for e in entries:
        assert e["gaussians"] > 0
        for split in ("test", "val"):
            assert {"PSNR", "SSIM", "PSNR_mouth", "PSNR_eyes"} <= set(e[split])
    assert entries[-1]["test"]["PSNR"] == pytest.approx(t.evaluate(40)["test"]["PSNR"], abs=1e-3)
    png = (model / "progress.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    resumed = trainer(tiny_head, model, "--iterations", "60", "--test_iterations", "10", "20",
                      "50", "--start_checkpoint", str(model / "chkpnt20.pth"), "--sh_degree", "0")
    assert resumed.seconds_before == pytest.approx(seconds[1], abs=1e-3)
    resumed.run()
    again = json.loads((model / "progress.json").read_text())
    assert [e["iteration"] for e in again] == [10, 20, 50, 60]     # 40 belonged to the old run
    assert again[:2] == entries[:2] and again[2]["seconds"] > seconds[1]


@pytest.mark.parametrize("reset", [True, False])
def test_opacity_reset_in_the_selective_stage_is_an_option(tiny_head, tmp_path, reset):
    """An opacity reset that falls after the warm-up clamps every Gaussian by default; with
    --no-opacity_reset_in_selective_stage it is skipped (frozen rows could not recover)."""
    flag = "--opacity_reset_in_selective_stage" if reset else "--no-opacity_reset_in_selective_stage"
    t = trainer(tiny_head, tmp_path / "m", "--iterations", "100", "--global_warmup", "2",
                "--opacity_reset_interval", "4", "--densify_from_iter", "1",
                "--densification_interval", "1000", "--sh_degree", "0", flag)
    for it in (1, 2, 3):
        t.train_step(it)
    with torch.no_grad():
        t.model.params["opacity"].fill_(2.0)           # sigmoid 0.88: well above the ceiling
    t.train_step(4)                                    # a selective step on a reset iteration
    opacity = torch.sigmoid(t.model.params["opacity"].detach())
    if reset:
        assert opacity.max() < 0.02
    else:
        assert opacity.min() > 0.8


def test_crop_local_steps_train_on_part_of_the_image(tiny_head, tmp_path, monkeypatch):
    import gaussian_renderer.crop as crop_module
    fractions = []
    original = crop_module.footprint_crop

    def spy(*args, **kwargs):
        crop = original(*args, **kwargs)
        fractions.append(None if crop is None else crop.fraction)
        return crop

    monkeypatch.setattr(crop_module, "footprint_crop", spy)
    t = trainer(tiny_head, tmp_path / "m", "--iterations", "40", "--global_warmup", "5",
                "--crop_local_steps", "--sh_degree", "0", "--densify_from_iter", "10",
                "--densification_interval", "10")
    t.run()
    used = [f for f in fractions if f is not None]
    assert used and all(0.0 < f <= 1.0 for f in used)
    assert t.evaluate(40)["test"]["PSNR"] > 5.0


def test_selection_by_error_adds_the_worst_rendered_faces(tiny_head, tmp_path):
    """--error_faces: whole-image steps fill the error map; a selective step then trains the
    frame's moving faces and the share of faces rendered worst, renewed on arriving at a frame."""
    t = trainer(tiny_head, tmp_path / "m", "--iterations", "60", "--global_warmup", "30",
                "--error_faces", "0.25", "--sh_degree", "0", "--no-densify")
    assert t.face_error is not None
    for it in range(1, 31):
        t.train_step(it)
    assert (t.face_error.error > 0).any(1).all()       # every training keyframe was observed
    step = t.schedule.next()
    while step.faces is None:                           # the first selective step
        step = t.schedule.next()
    motion = t.model.select_rows(step.faces, t.dataset.num_faces)
    selection = t.trainable(step)
    worst = t.face_error.top_faces(step.camera.keyframe, 0.25)
    assert worst.numel() > 0
    assert selection.count > motion.count
    assert selection.mask[motion.mask].all()
    assert selection.mask[torch.isin(t.model.binding, worst)].all()
    off = trainer(tiny_head, tmp_path / "n", "--error_faces", "0")
    assert off.face_error is None


def test_random_background_does_not_change_which_views_train_when(tiny_head, tmp_path):
    """The view order, the background colours and the densification noise draw from separate
    random streams: turning --random_background on leaves the order of the views unchanged."""
    orders = []
    for flag in ([], ["--random_background"]):
        t = trainer(tiny_head, tmp_path / f"m{len(flag)}", "--iterations", "30",
                    "--global_warmup", "10", "--sh_degree", "0", "--densify_from_iter", "5",
                    "--densification_interval", "5", *flag)
        seen = []
        inner = t.schedule.next

        def spy(inner=inner, seen=seen):
            step = inner()
            seen.append(step.camera.uid)
            return step

        t.schedule.next = spy
        for it in range(1, 31):
            t.train_step(it)
        orders.append(seen)
    assert orders[0] == orders[1]


@pytest.mark.parametrize("argv, fragment", [
    (["-r", "0"], "--resolution"), (["--iterations", "0"], "--iterations"),
    (["--init_per_face", "0"], "--init_per_face"), (["--device", "gpu"], "not a torch device"),
    (["--error_faces", "2"], "--error_faces")])
def test_bad_options_are_one_line_usage_errors(tiny_head, tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        train.main(["-s", str(tiny_head), "-m", str(tmp_path / "m"), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()       # refused before any work


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_a_gpu_is_a_usage_error(tiny_head, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["-s", str(tiny_head), "-m", str(tmp_path / "m"), "--device", "cuda"])
    assert info.value.code == 2 and "sees no CUDA GPU" in capsys.readouterr().err


def test_the_dataset_path_is_kept_absolute_so_render_works_from_any_folder(tiny_head, tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tiny_head.parent)
    args = train.resolve_defaults(train.build_parser().parse_args(
        ["-s", tiny_head.name, "-m", str(tmp_path / "m"), "--device", "cpu"]))
    assert args.source_path == str(tiny_head.resolve())
    builtin = train.resolve_defaults(train.build_parser().parse_args(["-s", "demo",
                                                                      "--device", "cpu"]))
    assert builtin.source_path == "demo"


@pytest.mark.parametrize("content, fragment", [
    ("{", "not readable as JSON"), ("[1, 2]", "JSON object"),
    ('{"resolution": -1}', "source_path"), ('{"source_path": "x", "sh_degree": "3"}', "sh_degree")])
def test_a_corrupt_or_incomplete_cfg_args_is_a_one_line_error(tmp_path, capsys, content, fragment):
    (tmp_path / "cfg_args.json").write_text(content)
    assert render.main(["-m", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cfg_args.json" in err and fragment in err


def test_two_trainings_cannot_write_one_model_folder(tiny_head, tmp_path, capsys):
    from training.lock import LOCK_NAME, FolderLock
    model = tmp_path / "m"
    model.mkdir()
    with FolderLock(model):
        code = train.main(["-s", str(tiny_head), "-m", str(model), "--quiet", "--device", "cpu",
                           "--iterations", "2"])
        err = capsys.readouterr().err
        assert code == 2 and "another training is writing" in err and f"pid {os.getpid()}" in err
        assert not (model / "cfg_args.json").exists()
    # released: a stale lock file left behind does not block the next run
    assert (model / LOCK_NAME).exists()
    assert train.main(["-s", str(tiny_head), "-m", str(model), "--quiet", "--device", "cpu",
                       "--iterations", "2", "--test_iterations", "-1"]) == 0


def test_a_bad_dataset_leaves_no_empty_model_folder(tiny_head, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_head, data)
    (data / "transforms_train.json").write_text("{")
    assert train.main(["-s", str(data), "-m", str(tmp_path / "m"), "--quiet",
                       "--device", "cpu"]) == 2
    assert not (tmp_path / "m").exists()


def test_checkpoints_that_are_not_ours_or_incomplete_are_one_line_errors(tiny_head, tmp_path):
    args = ["--iterations", "4", "--sh_degree", "0", "--test_iterations", "-1",
            "--checkpoint_iterations", "4"]
    t = trainer(tiny_head, tmp_path / "a", *args)
    t.run()
    ckpt = tmp_path / "a" / "chkpnt4.pth"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage, not saved tensors")
    with pytest.raises(train.DatasetError) as info:
        trainer(tiny_head, tmp_path / "b", "--start_checkpoint", str(junk))
    assert "junk.pth" in str(info.value) and "weights_only" not in str(info.value)
    state = torch.load(ckpt, weights_only=True)
    del state["optimizer"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(train.DatasetError, match="partial.pth: incomplete.*optimizer"):
        trainer(tiny_head, tmp_path / "b", "--start_checkpoint", str(tmp_path / "partial.pth"))
    state = torch.load(ckpt, weights_only=True)
    state["model"]["params"].pop("xyz")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(train.DatasetError, match="broken.pth: incomplete or inconsistent"):
        trainer(tiny_head, tmp_path / "b", "--start_checkpoint", str(tmp_path / "broken.pth"))


def test_resuming_on_another_dataset_is_refused_unless_asked(tiny_head, tmp_path):
    t = trainer(tiny_head, tmp_path / "a", "--iterations", "4", "--sh_degree", "0",
                "--test_iterations", "-1", "--checkpoint_iterations", "4")
    t.run()
    other = tmp_path / "other"
    shutil.copytree(tiny_head, other)
    frames = json.loads((other / "transforms_train.json").read_text())
    frames["frames"][0]["transform_matrix"][0][3] += 0.05     # one camera moved
    (other / "transforms_train.json").write_text(json.dumps(frames))
    ckpt = str(tmp_path / "a" / "chkpnt4.pth")
    with pytest.raises(train.DatasetError, match="another dataset.*--resume_other_dataset"):
        trainer(other, tmp_path / "b", "--start_checkpoint", ckpt)
    resumed = trainer(other, tmp_path / "b", "--start_checkpoint", ckpt, "--resume_other_dataset")
    assert resumed.first_iteration == 5
    assert trainer(tiny_head, tmp_path / "c", "--start_checkpoint", ckpt).first_iteration == 5


def test_a_crash_loses_only_the_work_since_the_rolling_checkpoint(tiny_head, tmp_path,
                                                                  monkeypatch):
    """A run that dies mid-way (here: an error at iteration 25) leaves chkpnt_latest.pth from
    a recent iteration; resuming from it ends exactly where an uninterrupted run ends."""
    args = ["--iterations", "30", "--sh_degree", "1", "--global_warmup", "10",
            "--densify_from_iter", "5", "--densification_interval", "10",
            "--test_iterations", "1000", "--save_iterations", "30"]
    straight = trainer(tiny_head, tmp_path / "a", *args, "--checkpoint_minutes", "0")
    straight.run()
    assert not (tmp_path / "a" / "chkpnt_latest.pth").exists()
    crashing = trainer(tiny_head, tmp_path / "b", *args, "--checkpoint_minutes", "1e-9")
    inner = crashing.train_step

    def dies_at_25(iteration):
        if iteration == 25:
            raise OSError("simulated crash")
        return inner(iteration)

    crashing.train_step = dies_at_25
    with pytest.raises(OSError):
        crashing.run()
    latest = tmp_path / "b" / "chkpnt_latest.pth"
    state = torch.load(latest, weights_only=True)
    assert state["iteration"] == 24                  # written after every iteration here
    resumed = trainer(tiny_head, tmp_path / "b", *args, "--start_checkpoint", str(latest))
    resumed.run()
    for name in straight.model.params:
        assert torch.equal(resumed.model.params[name], straight.model.params[name]), name
    assert not latest.exists()                       # removed once the run completed


def test_commands_spin_briefly_unless_told_and_take_a_thread_count(tiny_head, tmp_path):
    """OpenMP's waiting must be set before torch loads: a brief spin by default (two CPU runs
    at once no longer spin against each other), the user's choice when given."""
    code = ("import os, sys; import {0}; "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for module in ("train", "render", "metrics"):
        out = subprocess.run([sys.executable, "-c", code.format(module)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.split() == ["1000", "None"], (module, out.stderr)
    out = subprocess.run([sys.executable, "-c", code.format("train")], cwd=ROOT,
                         env=dict(env, OMP_WAIT_POLICY="ACTIVE"), capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["None", "ACTIVE"]
    before = torch.get_num_threads()
    try:
        trainer(tiny_head, tmp_path / "m", "--threads", "1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_fused_kernels_are_an_option_not_an_environment_switch(tiny_head, tmp_path):
    from utils import fused
    before = fused.enabled()
    try:
        trainer(tiny_head, tmp_path / "a", "--fused", "off")
        assert not fused.enabled() and not fused.available()
        trainer(tiny_head, tmp_path / "b")
        assert fused.enabled() == fused.ENVIRONMENT_ALLOWS
        with fused.disabled():
            assert not fused.available()
        assert fused.enabled() == fused.ENVIRONMENT_ALLOWS
    finally:
        fused.set_enabled(before)


def test_a_model_folder_that_is_a_file_or_read_only_is_a_one_line_error(tiny_head, tmp_path,
                                                                       capsys, monkeypatch):
    a_file = tmp_path / "model.txt"
    a_file.write_text("not a folder")
    base = ["-s", str(tiny_head), "--quiet", "--device", "cpu"]
    assert train.main([*base, "-m", str(a_file)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert train.main([*base, "-m", str(a_file / "sub")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    locked = tmp_path / "ro"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked
                        else real(p, mode))           # as if read-only (root ignores modes)
    assert train.main([*base, "-m", str(locked)]) == 2
    assert f"{locked}: is not writable" in capsys.readouterr().err
    (locked / "cfg_args.json").write_text(json.dumps({"source_path": str(tiny_head)}))
    assert render.main(["-m", str(locked), "--quiet"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert metrics.main(["-m", str(locked), "--no_lpips", "--quiet"]) == 1
    assert "not writable" in capsys.readouterr().err


def test_render_after_an_interrupted_training_says_how_to_resume(tiny_head, tmp_path, capsys):
    t = trainer(tiny_head, tmp_path / "m", "--iterations", "3", "--sh_degree", "0",
                "--test_iterations", "-1")
    from arguments import save_config
    save_config(t.model_dir, t.args)
    t.save_checkpoint(2)                       # what Ctrl-C leaves: options and a checkpoint
    assert render.main(["-m", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "only the checkpoint chkpnt2.pth" in err and "--start_checkpoint" in err
    assert str(tiny_head) in err


def test_too_little_free_space_is_refused_at_start(tiny_head, tmp_path, capsys, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    assert train.main(["-s", str(tiny_head), "-m", str(tmp_path / "m"), "--quiet",
                       "--device", "cpu", "--iterations", "2"]) == 2
    err = capsys.readouterr().err
    assert "MiB free" in err and "--save_iterations" in err
    assert not (tmp_path / "m" / "cfg_args.json").exists()


def test_a_full_disk_stops_the_run_with_its_state_kept_elsewhere(tiny_head, tmp_path,
                                                                 monkeypatch, capsys):
    """The checkpoint write at iteration 5 hits a full disk: the run stops with one message
    naming the file, keeps its state in the temporary folder, and resuming from there ends
    exactly where an uninterrupted run ends."""
    import errno
    import tempfile
    import training.checkpoint as checkpoint_module
    args = ["--iterations", "8", "--sh_degree", "0", "--global_warmup", "3",
            "--densify_from_iter", "2", "--densification_interval", "3",
            "--test_iterations", "-1", "--save_iterations", "8", "--checkpoint_minutes", "0"]
    straight = trainer(tiny_head, tmp_path / "a", *args)
    straight.run()
    model = tmp_path / "b"
    real_save = torch.save

    def full_disk(obj, path, *a, **k):
        if Path(path).parent == model:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "spare"))
    (tmp_path / "spare").mkdir()
    failing = trainer(tiny_head, model, *args, "--checkpoint_iterations", "5")
    with pytest.raises(SystemExit) as info:
        failing.run()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "chkpnt5.pth: the disk is full" in err and "--start_checkpoint" in err
    assert not list(model.glob("*.pth")) and not list(model.glob(".*tmp*"))
    rescue = next((tmp_path / "spare").glob("stga_rescue_b_5.pth"))
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    resumed = trainer(tiny_head, model, *args, "--start_checkpoint", str(rescue))
    resumed.run()
    for name in straight.model.params:
        assert torch.equal(resumed.model.params[name], straight.model.params[name]), name


def test_crops_default_to_on_for_the_cpu_only(tiny_head):
    parse = lambda *extra: train.resolve_defaults(train.build_parser().parse_args(
        ["-s", str(tiny_head), "--device", "cpu", *extra]))
    assert parse().crop_local_steps is True
    assert parse("--no-crop_local_steps").crop_local_steps is False
    assert parse().global_every == 2


def test_a_killed_training_resumes_from_its_rolling_checkpoint(tiny_head, tmp_path):
    """SIGKILL mid-run (no handler runs): the rolling checkpoint left behind is whole (atomic
    writes) and the run resumes from it to the end."""
    model = tmp_path / "m"
    args = ["-s", str(tiny_head), "-m", str(model), "--device", "cpu", "--quiet",
            "--iterations", "100000", "--sh_degree", "0", "--test_iterations", "-1",
            "--checkpoint_minutes", "0.002", "--no-densify"]
    paths = [str(ROOT / "submodules" / s) for s in ("diff-gaussian-rasterization", "simple-knn")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = model / "chkpnt_latest.pth"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not latest.exists():
            time.sleep(0.5)
        time.sleep(1.0)                          # let it write a few more, then kill it mid-run
    finally:
        proc.kill()
        proc.wait()
    assert latest.exists(), "no rolling checkpoint was written"
    state = torch.load(latest, weights_only=True)
    killed_at = int(state["iteration"])
    assert killed_at >= 1
    resumed = trainer(tiny_head, model, "--iterations", str(killed_at + 5), "--sh_degree", "0",
                      "--test_iterations", "-1", "--no-densify", "--start_checkpoint", str(latest))
    assert resumed.first_iteration == killed_at + 1
    resumed.run()
    assert (model / "point_cloud" / f"iteration_{killed_at + 5}" / "point_cloud.ply").is_file()
