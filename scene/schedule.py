"""Which image trains next, and which faces are trainable at that step.

STGA's schedule (paper, section "selective training"): a global warm-up on random views with
every Gaussian trainable; then frames in shuffled order, all views of one frame before the next,
with only that frame's selected faces trainable, except every ``global_every``-th frame, which
trains everything. ``order="random"`` and ``selection=False`` give the ablation arms (plain 3DGS
order; frame-grouped without selection). The schedule is checkpointable so a resumed run continues
exactly where it stopped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch

from scene.cameras import Camera

ORDERS = ("frames", "random")


@dataclass
class Step:
    """One iteration's image, and the faces trainable in it (None: all)."""

    camera: Camera
    faces: Optional[torch.Tensor]
    is_global: bool


class TrainingSchedule:
    """Deterministic (given the generator) stream of training steps."""

    def __init__(self, cameras: List[Camera], training_faces: Optional[Mapping[int, np.ndarray]],
                 generator: torch.Generator, order: str = "frames", global_warmup: int = 0,
                 global_every: int = 20):
        if not cameras:
            raise ValueError("no training cameras")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if global_every < 1:
            raise ValueError("global_every must be at least 1")
        self.cameras = cameras
        self.generator = generator
        self.order = order
        self.global_warmup = global_warmup
        self.global_every = global_every
        self.faces = None if training_faces is None else {
            k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in training_faces.items()}
        by_frame: Dict[int, List[int]] = {}
        for i, cam in enumerate(cameras):
            by_frame.setdefault(cam.keyframe, []).append(i)
        self.frame_ids = sorted(by_frame)
        self.views_of = by_frame
        # position state
        self.steps = 0
        self.queue: List[int] = []        # camera indices still to visit (current epoch/frame)
        self.frame_queue: List[int] = []  # keyframes still to visit in this pass
        self.frames_started = 0
        self.current_global = True

    def _perm(self, n: int) -> List[int]:
        return torch.randperm(n, generator=self.generator).tolist()

    def _next_random(self) -> int:
        if not self.queue:
            self.queue = self._perm(len(self.cameras))
        return self.queue.pop(0)

    def _next_grouped(self) -> int:
        if not self.queue:
            if not self.frame_queue:
                self.frame_queue = [self.frame_ids[i] for i in self._perm(len(self.frame_ids))]
            keyframe = self.frame_queue.pop(0)
            views = self.views_of[keyframe]
            self.queue = [views[i] for i in self._perm(len(views))]
            self.frames_started += 1
            self.current_global = self.frames_started % self.global_every == 0
        return self.queue.pop(0)

    def next(self) -> Step:
        warm = self.steps < self.global_warmup
        self.steps += 1
        if warm:
            cam = self.cameras[self._next_random()]
            return Step(cam, None, True)
        if self.steps == self.global_warmup + 1:
            self.queue = []  # start the selective stage on a fresh frame
        if self.order == "random":
            cam = self.cameras[self._next_random()]
            is_global = self.faces is None
        else:
            cam = self.cameras[self._next_grouped()]
            is_global = self.faces is None or self.current_global
        faces = None if is_global else self.faces.get(cam.keyframe)
        if faces is None and not is_global:
            raise KeyError(f"no training faces for keyframe {cam.keyframe}")
        return Step(cam, faces, is_global)

    def state_dict(self) -> Dict:
        return {"steps": self.steps, "queue": torch.tensor(self.queue, dtype=torch.long),
                "frame_queue": torch.tensor(self.frame_queue, dtype=torch.long),
                "frames_started": self.frames_started, "current_global": self.current_global}

    def load_state_dict(self, sd: Dict) -> None:
        self.steps = int(sd["steps"])
        self.queue = sd["queue"].tolist()
        self.frame_queue = sd["frame_queue"].tolist()
        self.frames_started = int(sd["frames_started"])
        self.current_global = bool(sd["current_global"])
