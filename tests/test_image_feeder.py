"""Training images placed once (GPU memory or pinned host memory) and fetched step by step."""
import numpy as np
import pytest
import torch

from scene.cameras import Camera
from training.image_feeder import ImageFeeder


def cameras(count=3, channels=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [Camera(uid=i, split="train", image_name=f"im{i}", keyframe=i, width=6, height=5,
                   K=np.eye(3), world_to_camera=np.eye(4),
                   image=torch.randint(0, 256, (5, 6, channels), generator=gen,
                                       dtype=torch.uint8))
            for i in range(count)]


def test_cpu_training_reads_the_images_where_they_are():
    cams = cameras()
    originals = [c.image for c in cams]
    feeder = ImageFeeder(torch.device("cpu"))
    assert feeder.place(cams, "auto") == "host memory"
    for cam, original in zip(cams, originals):
        assert feeder.fetch(cam).get() is original


def test_unknown_data_device_is_refused():
    with pytest.raises(ValueError, match="data_device"):
        ImageFeeder(torch.device("cpu")).place(cameras(), "gpu")


@pytest.mark.cuda
@pytest.mark.parametrize("data_device", ["cuda", "cpu", "auto"])
def test_gpu_fetch_gives_the_same_pixels(data_device):
    cams = cameras(channels=3)
    originals = [c.image.clone() for c in cams]
    feeder = ImageFeeder(torch.device("cuda"))
    where = feeder.place(cams, data_device)
    if data_device == "cpu":
        assert "pinned" in where and all(c.image.is_pinned() for c in cams)
    else:
        assert where.startswith("GPU memory") and all(c.image.is_cuda for c in cams)
    for _ in range(2):
        for cam, original in zip(cams, originals):
            image = feeder.fetch(cam).get()
            assert image.is_cuda
            assert torch.equal((image.float() * 2).cpu(), original.float() * 2)
