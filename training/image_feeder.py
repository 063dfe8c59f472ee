"""Where the training images live, and how each step's image reaches the GPU.

The dataset decodes every training image once into uint8 tensors. On a GPU they are moved into
device memory when they fit (``--data_device cuda``; ``auto`` when they take at most half the free
memory): a step then reads its image with no copy at all. Otherwise (``--data_device cpu``) they
stay in pinned host memory, and each step's image is copied on a side stream as soon as the step
knows its camera, so the copy overlaps the posing and rendering kernels queued before the loss
needs it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from scene.cameras import Camera

DATA_DEVICES = ("auto", "cuda", "cpu")


class PendingImage:
    """A step's image on its way to the device; ``get()`` returns it, ready for the main stream."""

    def __init__(self, image: torch.Tensor, event: Optional[torch.cuda.Event] = None):
        self._image = image
        self._event = event

    def get(self) -> torch.Tensor:
        if self._event is not None:
            torch.cuda.current_stream(self._image.device).wait_event(self._event)
            self._event = None
        return self._image


class ImageFeeder:
    """Places the training images (``place``) and starts each step's transfer (``fetch``)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.on_device = False
        self._stream: Optional[torch.cuda.Stream] = None

    def place(self, cameras: Sequence[Camera], data_device: str = "auto",
              max_fraction: float = 0.5) -> str:
        """Move or pin the cameras' images; returns where they went, for the log."""
        if data_device not in DATA_DEVICES:
            raise ValueError(f"data_device must be one of {DATA_DEVICES}, got {data_device!r}")
        images = [c for c in cameras if c.image is not None]
        if self.device.type != "cuda" or not images:
            return "host memory"
        total = sum(c.image.numel() for c in images)
        size = f"{total / 2 ** 30:.2f} GiB"
        if data_device == "auto":
            free, _ = torch.cuda.mem_get_info(self.device)
            data_device = "cuda" if total <= max_fraction * free else "cpu"
        if data_device == "cuda":
            for c in images:
                c.image = c.image.to(self.device)
            self.on_device = True
            return f"GPU memory ({size})"
        self._stream = torch.cuda.Stream(self.device)
        try:
            for c in images:
                c.image = c.image.pin_memory()
        except RuntimeError:  # pinning can fail on a memory-limited host; copies still work
            return f"host memory ({size}, not pinned: copies are synchronous)"
        return f"pinned host memory ({size}), copied to the GPU step by step"

    def fetch(self, camera: Camera) -> PendingImage:
        """Start bringing ``camera``'s image to the device (a no-op when it is already there)."""
        image = camera.image
        if image is None:
            raise RuntimeError(f"camera {camera.image_name} has no image loaded")
        if image.device == self.device or self._stream is None:
            return PendingImage(image.to(self.device, non_blocking=True))
        main = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            copy = image.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        copy.record_stream(main)  # not reused by the copy stream before the main stream is done
        return PendingImage(copy, event)
