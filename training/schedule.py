"""Which image trains next, and which faces are trainable at that step.

STGA's schedule (paper, section "selective training"): optionally a static fit first (random
views of one keyframe, every Gaussian trainable: the authors' code starts its dynamic run from
such a model), then a global warm-up on random views with
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
                 global_every: int = 20, static_fit: int = 0,
                 static_keyframe: Optional[int] = None):
        if not cameras:
            raise ValueError("no training cameras")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if global_every < 1:
            raise ValueError("global_every must be at least 1")
        if static_fit < 0 or global_warmup < 0:
            raise ValueError("static_fit and global_warmup must not be negative")
        self.cameras = cameras
        self.generator = generator
        self.order = order
        self.global_warmup = global_warmup
        self.global_every = global_every
        self.static_fit = static_fit
        self.faces = None if training_faces is None else {
            k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in training_faces.items()}
        by_frame: Dict[int, List[int]] = {}
        for i, cam in enumerate(cameras):
            by_frame.setdefault(cam.keyframe, []).append(i)
        self.frame_ids = sorted(by_frame)
        self.views_of = by_frame
        if static_keyframe is None:
            static_keyframe = self.frame_ids[0]
        if static_fit > 0 and static_keyframe not in by_frame:
            raise ValueError(f"static keyframe {static_keyframe} has no training views")
        self.static_keyframe = static_keyframe
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

    @property
    def frame_stage_start(self) -> int:
        """The first step (1-based) of the frame stage, after the static fit and the warm-up."""
        return self.static_fit + self.global_warmup + 1

    def next(self) -> Step:
        self.steps += 1
        if self.steps <= self.static_fit:
            if not self.queue:
                views = self.views_of[self.static_keyframe]
                self.queue = [views[i] for i in self._perm(len(views))]
            return Step(self.cameras[self.queue.pop(0)], None, True)
        if self.steps == self.static_fit + 1:
            self.queue = []  # the warm-up draws from every view
        if self.steps < self.frame_stage_start:
            cam = self.cameras[self._next_random()]
            return Step(cam, None, True)
        if self.steps == self.frame_stage_start:
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
