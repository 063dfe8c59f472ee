"""The STGA training schedule: warm-up, frame-grouped order, selection, global refinement."""
import numpy as np
import pytest
import torch

from scene.cameras import Camera
from training.schedule import TrainingSchedule


def cameras(frames=5, views=3):
    cams = []
    for k in range(frames):
        for v in range(views):
            cams.append(Camera(uid=len(cams), split="train", image_name=f"{k}_{v}", keyframe=k,
                               width=4, height=4, K=np.eye(3), world_to_camera=np.eye(4)))
    return cams


FACES = {k: np.array([k, k + 10]) for k in range(5)}


def test_warmup_is_global_and_covers_every_view():
    sched = TrainingSchedule(cameras(), FACES, torch.Generator().manual_seed(0), global_warmup=15)
    steps = [sched.next() for _ in range(15)]
    assert all(s.is_global and s.faces is None for s in steps)
    assert sorted(s.camera.uid for s in steps) == list(range(15))


def test_frames_are_grouped_with_selection_and_periodic_global_frames():
    sched = TrainingSchedule(cameras(), FACES, torch.Generator().manual_seed(1), global_warmup=0,
                             global_every=3)
    steps = [sched.next() for _ in range(30)]  # two passes over 5 frames x 3 views
    blocks = [steps[i:i + 3] for i in range(0, 30, 3)]
    seen_passes = [[], []]
    for j, block in enumerate(blocks):
        keyframes = {s.camera.keyframe for s in block}
        assert len(keyframes) == 1  # all views of a frame before the next
        assert sorted(s.camera.uid % 3 for s in block) == [0, 1, 2]
        k = keyframes.pop()
        seen_passes[j // 5].append(k)
        if (j + 1) % 3 == 0:  # every 3rd frame is trained globally
            assert all(s.is_global and s.faces is None for s in block)
        else:
            assert all(not s.is_global and s.faces.tolist() == [k, k + 10] for s in block)
    assert sorted(seen_passes[0]) == sorted(seen_passes[1]) == list(range(5))
    assert seen_passes[0] != seen_passes[1] or seen_passes[0] != list(range(5))  # shuffled


def test_no_selection_trains_everything():
    sched = TrainingSchedule(cameras(), None, torch.Generator().manual_seed(0), global_warmup=2)
    assert all(sched.next().faces is None for _ in range(20))


def test_random_order_with_selection():
    sched = TrainingSchedule(cameras(), FACES, torch.Generator().manual_seed(0), order="random")
    for _ in range(20):
        s = sched.next()
        assert s.faces.tolist() == [s.camera.keyframe, s.camera.keyframe + 10]


def test_missing_faces_of_a_keyframe_is_an_error():
    sched = TrainingSchedule(cameras(), {0: np.array([1])}, torch.Generator().manual_seed(0),
                             global_every=100)
    with pytest.raises(KeyError, match="keyframe"):
        for _ in range(15):
            sched.next()


def test_state_dict_resumes_the_same_sequence():
    gen = torch.Generator().manual_seed(3)
    sched = TrainingSchedule(cameras(), FACES, gen, global_warmup=4, global_every=2)
    for _ in range(10):
        sched.next()
    state, gen_state = sched.state_dict(), gen.get_state()
    expected = [(s.camera.uid, s.is_global) for s in (sched.next() for _ in range(25))]
    gen2 = torch.Generator()
    gen2.set_state(gen_state)
    other = TrainingSchedule(cameras(), FACES, gen2, global_warmup=4, global_every=2)
    other.load_state_dict(state)
    assert [(s.camera.uid, s.is_global) for s in (other.next() for _ in range(25))] == expected


def test_static_fit_trains_one_keyframe_before_the_warmup_and_resumes_exactly():
    sched = TrainingSchedule(cameras(), FACES, torch.Generator().manual_seed(2), global_warmup=15,
                             static_fit=7, static_keyframe=2)
    static = [sched.next() for _ in range(7)]
    assert all(s.is_global and s.camera.keyframe == 2 for s in static)
    assert {s.camera.uid for s in static[:3]} == {6, 7, 8}     # all its views, then again
    warm = [sched.next() for _ in range(15)]
    assert all(s.is_global for s in warm)
    assert sorted(s.camera.uid for s in warm) == list(range(15))
    assert sched.frame_stage_start == 23
    state, rng = sched.state_dict(), sched.generator.get_state()
    follow = [sched.next() for _ in range(6)]
    assert any(not s.is_global for s in follow)
    again = TrainingSchedule(cameras(), FACES, torch.Generator(), global_warmup=15,
                             static_fit=7, static_keyframe=2)
    again.load_state_dict(state)
    again.generator.set_state(rng)
    assert [again.next().camera.uid for _ in range(6)] == [s.camera.uid for s in follow]
    with pytest.raises(ValueError):
        TrainingSchedule(cameras(), FACES, torch.Generator(), static_fit=-1)
    with pytest.raises(ValueError):
        TrainingSchedule(cameras(), FACES, torch.Generator(), static_fit=3, static_keyframe=9)
