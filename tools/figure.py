"""A comparison picture of one rendered view: render | ground truth, plus mouth and eyes up close.

    python -m tools.figure -m <model> [--split test] [--image 00021_03] [--out figure.png]

Reads what ``render.py`` wrote (``<model>/<split>/ours_<N>/renders`` and ``gt``) and the region
maps of the dataset the model was trained on (``regions/``: 2 mouth, 3 eyes) to place the
close-ups; each row is scaled up with nearest-neighbour sampling so pixels stay visible.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from arguments import load_config
from scene import resolve_source
from utils.regions import REGIONS, RegionMapError, RegionMaps


def _latest(folder: Path) -> Path:
    runs = sorted(folder.glob("ours_*"), key=lambda p: int(p.name.split("_")[1]))
    if not runs:
        raise FileNotFoundError(f"{folder}: no ours_<N> folder; run render.py first")
    return runs[-1]


def _box(mask: np.ndarray, margin: int, aspect: float) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min() - margin, ys.max() + margin + 1, xs.min() - margin, xs.max() + margin + 1
    h, w = y1 - y0, x1 - x0
    if w / h < aspect:                      # widen to the row's aspect ratio
        pad = int(round((h * aspect - w) / 2))
        x0, x1 = x0 - pad, x1 + pad
    H, W = mask.shape
    return slice(max(y0, 0), min(y1, H)), slice(max(x0, 0), min(x1, W))


def compose(render: np.ndarray, gt: np.ndarray, regions: np.ndarray | None,
            scale: int = 3) -> np.ndarray:
    """The picture: a top row render | gt, and under it mouth and eye crops of both."""
    gap = np.full((render.shape[0], 4, 3), 255, np.uint8)
    top = np.concatenate([render, gap, gt], 1)
    rows = [cv2.resize(top, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)]
    if regions is not None:
        for label in (REGIONS["mouth"], REGIONS["eyes"]):
            mask = regions == label
            if mask.sum() < 4:
                continue
            ys, xs = _box(mask, 2, 2.0)
            pair = np.concatenate([render[ys, xs], np.full((ys.stop - ys.start, 1, 3), 255,
                                                           np.uint8), gt[ys, xs]], 1)
            f = rows[0].shape[1] / pair.shape[1]
            rows.append(cv2.resize(pair, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    return np.concatenate(rows, 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="model folder (render.py done)")
    p.add_argument("--split", default="test",
                   help="which rendered split to take the view from (default test)")
    p.add_argument("--image", default=None,
                   help="image stem (default: the view whose mouth region is largest)")
    p.add_argument("--scale", type=int, default=3, help="upscaling of the top row (default 3)")
    p.add_argument("--out", default=None, help="output PNG (default: <model>/figure.png)")
    args = p.parse_args(argv)
    model = Path(args.model_path)
    out = Path(args.out) if args.out else model / "figure.png"
    try:
        run = _latest(model / args.split)
        maps = RegionMaps(str(resolve_source(load_config(model)["source_path"]) / "regions"))
        stems = sorted(q.stem for q in (run / "renders").glob("*.png"))
        if not stems:
            raise FileNotFoundError(f"{run / 'renders'}: no images")
        size = cv2.imread(str(run / "renders" / f"{stems[0]}.png"), cv2.IMREAD_COLOR).shape[:2]
        if args.image is None:
            def mouth(stem: str) -> int:
                labels = maps.labels(f"{stem}.png", *size)
                return 0 if labels is None else int((labels == REGIONS["mouth"]).sum())
            args.image = max(stems, key=mouth)
        render = cv2.imread(str(run / "renders" / f"{args.image}.png"), cv2.IMREAD_COLOR)
        gt = cv2.imread(str(run / "gt" / f"{args.image}.png"), cv2.IMREAD_COLOR)
        if render is None or gt is None:
            raise FileNotFoundError(f"{run}: no render/gt image {args.image}.png")
        regions = maps.labels(f"{args.image}.png", *render.shape[:2])
        if not cv2.imwrite(str(out), compose(render, gt, regions, args.scale)):
            raise FileNotFoundError(f"{out}: could not be written")
    except (FileNotFoundError, KeyError, RegionMapError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: {args.split} view {args.image}, render (left) and ground truth (right)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
