"""The training record: quality against training time, one entry per evaluation.

``train.py`` writes ``<model>/progress.json``, a list of entries::

    {"iteration": 7000, "seconds": 14.2, "gaussians": 104233,
     "test": {"PSNR": 33.1, "SSIM": 0.97, "PSNR_mouth": 31.0, "SSIM_mouth": 0.93,
              "PSNR_eyes": 22.5, "SSIM_eyes": 0.80}, "val": {...}}

``seconds`` is training time so far (evaluation and saving excluded, resumed runs included), so
runs are compared by quality against wall-clock. ``progress.png`` plots PSNR against seconds per
split and region. Both files are rewritten atomically after every evaluation.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np

from utils.atomic import atomic_path

PROGRESS_JSON = "progress.json"
PROGRESS_PNG = "progress.png"
_SERIES = (("test", "PSNR", (40, 40, 200)), ("val", "PSNR", (200, 90, 30)),
           ("test", "PSNR_mouth", (90, 90, 240)), ("val", "PSNR_mouth", (240, 160, 90)),
           ("test", "PSNR_eyes", (60, 160, 60)), ("val", "PSNR_eyes", (150, 200, 60)))


class ProgressLog:
    """Entries of one run, kept in memory and mirrored to ``progress.json`` / ``progress.png``."""

    def __init__(self, model_dir: Path, entries: List[dict] | None = None):
        self.model_dir = Path(model_dir)
        self.entries: List[dict] = list(entries or [])

    @classmethod
    def resume(cls, model_dir: Path, up_to_iteration: int) -> "ProgressLog":
        """The entries of an earlier run in ``model_dir`` up to ``up_to_iteration`` (a resumed
        run continues its record); an unreadable file starts a new record."""
        path = Path(model_dir) / PROGRESS_JSON
        try:
            data = json.loads(path.read_text())
            entries = [e for e in data if isinstance(e, dict)
                       and int(e.get("iteration", 1 << 62)) <= up_to_iteration]
        except (OSError, ValueError, TypeError):
            entries = []
        return cls(model_dir, entries)

    def add(self, iteration: int, seconds: float, gaussians: int,
            scores: Dict[str, Dict[str, float]]) -> None:
        entry = {"iteration": int(iteration), "seconds": round(float(seconds), 3),
                 "gaussians": int(gaussians)}
        for split, values in scores.items():
            entry[split] = {k: round(float(v), 4) for k, v in values.items()
                            if v is not None and math.isfinite(v)}
        self.entries = [e for e in self.entries if e["iteration"] != iteration] + [entry]
        self.save()

    def save(self) -> None:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.model_dir / PROGRESS_JSON) as tmp:
            tmp.write_text(json.dumps(self.entries, indent=1))
        with atomic_path(self.model_dir / PROGRESS_PNG) as tmp:
            if not cv2.imwrite(str(tmp), plot(self.entries)):
                raise OSError(f"could not write {self.model_dir / PROGRESS_PNG}")


def plot(entries: List[dict], width: int = 720, height: int = 420) -> np.ndarray:
    """A chart of PSNR (dB) against training seconds: one line per split and region."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 170, 20, 45
    series = []
    for split, key, colour in _SERIES:
        pts = [(e["seconds"], e[split][key]) for e in entries if key in e.get(split, {})]
        if pts:
            series.append((f"{split} {key.replace('PSNR_', '')}", colour, pts))
    cv2.putText(img, "seconds of training", (left + 150, height - 10), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "PSNR (dB)", (5, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    x0, x1, y0, y1 = left, width - right, height - bottom, top
    cv2.rectangle(img, (x0, y1), (x1, y0), (0, 0, 0), 1)
    if not series:
        return img
    xs = [p[0] for _, _, pts in series for p in pts]
    ys = [p[1] for _, _, pts in series for p in pts]
    xmax = max(max(xs), 1e-9)
    ylo, yhi = math.floor(min(ys)) - 1, math.ceil(max(ys)) + 1

    def to_px(x: float, y: float) -> tuple:
        return (int(round(x0 + (x1 - x0) * x / xmax)),
                int(round(y0 - (y0 - y1) * (y - ylo) / (yhi - ylo))))

    for i in range(5):
        yv = ylo + (yhi - ylo) * i / 4
        xv = xmax * i / 4
        _, py = to_px(0, yv)
        px, _ = to_px(xv, ylo)
        cv2.putText(img, f"{yv:.1f}", (5, py + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
        cv2.putText(img, f"{xv:.0f}", (px - 10, y0 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    for row, (label, colour, pts) in enumerate(series):
        px = [to_px(x, y) for x, y in pts]
        for a, b in zip(px[:-1], px[1:]):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in px:
            cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
        ly = top + 14 + 18 * row
        cv2.line(img, (x1 + 10, ly - 4), (x1 + 30, ly - 4), colour, 2, cv2.LINE_AA)
        cv2.putText(img, label, (x1 + 36, ly), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return img
