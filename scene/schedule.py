"""Order in which training images are visited; checkpointable so resumed runs continue exactly."""
from __future__ import annotations

from typing import Dict, List

import torch

from scene.cameras import Camera


class RandomViewSampler:
    """3DGS's order: a fresh random permutation of all training images, one per iteration."""

    def __init__(self, cameras: List[Camera], generator: torch.Generator):
        if not cameras:
            raise ValueError("no training cameras")
        self.cameras = cameras
        self.generator = generator
        self.order: List[int] = []
        self.position = 0

    def next(self) -> Camera:
        if self.position >= len(self.order):
            self.order = torch.randperm(len(self.cameras), generator=self.generator).tolist()
            self.position = 0
        camera = self.cameras[self.order[self.position]]
        self.position += 1
        return camera

    def state_dict(self) -> Dict:
        return {"order": torch.tensor(self.order, dtype=torch.long), "position": self.position}

    def load_state_dict(self, sd: Dict) -> None:
        self.order = sd["order"].tolist()
        self.position = int(sd["position"])
