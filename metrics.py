"""Evaluate rendered images against ground truth: PSNR, SSIM and LPIPS per split and iteration.

Reads only what render.py wrote:

    <model>/<split>/ours_<iteration>/renders/<name>.png
    <model>/<split>/ours_<iteration>/gt/<name>.png

and writes

    <model>/results.json   {split: {"ours_<it>": {"PSNR": mean, "SSIM": mean, "LPIPS": mean|null}}}
    <model>/per_view.json  {split: {"ours_<it>": {"PSNR": {name: v}, "SSIM": {...}, "LPIPS": {...}|null}}}

Splits are the folders train, val and test (in that order) plus any other folder that holds
`ours_<iteration>` folders (e.g. a reenactment split). PSNR of a render identical to its ground
truth is infinite; it is stored as PSNR_CAP_DB (100 dB) because JSON has no infinity and one
infinite view would make the mean infinite. LPIPS is null when its weight files are not
available (the reason is printed once).

With ``--masks``, PSNR and SSIM are also computed inside face regions, from the label maps
``regions/<image stem>.png`` of the dataset the model was trained on (0 background, 1 skin/other,
2 mouth, 3 eyes; read from cfg_args.json's source_path, or given with ``--regions DIR``). A view
scores a region only when the region covers at least MIN_REGION_PIXELS pixels there. Extra keys:
results.json gets "PSNR_<region>", "SSIM_<region>" (mean over the views that score it, null if
none) and "views_<region>" (how many); per_view.json gets "PSNR_<region>" and "SSIM_<region>"
({name: value} for those views).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import utils.threads  # noqa: F401 - before torch, which reads OpenMP's waiting settings once
import cv2
import numpy as np
import torch
from tqdm import tqdm

from arguments import add_threads_arg, check_output_folder, set_threads, torch_device
from utils.atomic import atomic_path
from utils.image_metrics import PSNR_CAP_DB, masked_psnr, masked_ssim, psnr, ssim
from utils.lpips import LPIPS, LpipsUnavailable, get_lpips
from utils.regions import MIN_REGION_PIXELS, REGIONS, RegionMapError, RegionMaps

KNOWN_SPLITS = ("train", "val", "test")
_METHOD_RE = re.compile(r"^ours_(\d+)$")
_IMAGE_EXT = ".png"
REGIONS_DIR = "regions"


class MetricsError(RuntimeError):
    """A problem with the rendered folders that the user must fix (message says what and where)."""


# ---------------------------------------------------------------------------------------------
# Discovery and pairing


def _method_dirs(split_dir: str) -> list[tuple[int, str]]:
    """(iteration, name) of the `ours_<iteration>` folders of a split, by iteration."""
    found = []
    for name in os.listdir(split_dir):
        m = _METHOD_RE.match(name)
        if m and os.path.isdir(os.path.join(split_dir, name)):
            found.append((int(m.group(1)), name))
    return sorted(found)


def find_splits(model_dir: str) -> list[str]:
    """Split folder names of a model: train/val/test if present, then other folders with ours_*."""
    if not os.path.isdir(model_dir):
        raise MetricsError(f"model folder {model_dir} does not exist")
    splits = [s for s in KNOWN_SPLITS if os.path.isdir(os.path.join(model_dir, s))]
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if name not in KNOWN_SPLITS and os.path.isdir(path) and _method_dirs(path):
            splits.append(name)
    return splits


def _list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(
        n for n in os.listdir(folder)
        if n.lower().endswith(_IMAGE_EXT) and os.path.isfile(os.path.join(folder, n))
    )


def pair_images(method_dir: str) -> list[str]:
    """Names present in both `renders/` and `gt/` of one ours_<it> folder; [] when both are empty.

    Raises MetricsError, naming the files, when a render has no ground truth or vice versa.
    """
    renders_dir = os.path.join(method_dir, "renders")
    gt_dir = os.path.join(method_dir, "gt")
    renders = _list_images(renders_dir)
    gts = _list_images(gt_dir)
    only_r = sorted(set(renders) - set(gts))
    only_g = sorted(set(gts) - set(renders))
    if only_r or only_g:
        def show(names: list[str], folder: str) -> str:
            head = ", ".join(os.path.join(folder, n) for n in names[:5])
            return head + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")

        parts = []
        if only_r:
            parts.append(f"{len(only_r)} render(s) without ground truth: {show(only_r, renders_dir)}")
        if only_g:
            parts.append(f"{len(only_g)} ground-truth image(s) without render: {show(only_g, gt_dir)}")
        raise MetricsError(
            f"renders and gt do not match in {method_dir}: " + "; ".join(parts)
            + ". Re-run render.py for this model so both folders hold the same file names."
        )
    return renders


def read_image(path: str) -> np.ndarray:
    """PNG -> float32 RGB array (H, W, 3) in [0, 1]; 8- and 16-bit, grey or with alpha (dropped)."""
    arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise MetricsError(f"cannot read image {path} (missing, empty or not a valid PNG)")
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    else:
        raise MetricsError(f"unsupported pixel type {arr.dtype} in {path} (expected 8 or 16 bit)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]  # like 3DGS: keep the colour channels, ignore alpha
    elif arr.shape[2] != 3:
        raise MetricsError(f"unsupported channel count {arr.shape[2]} in {path}")
    rgb = arr[:, :, ::-1]  # OpenCV reads BGR
    return np.ascontiguousarray(rgb, dtype=np.float32) / np.float32(scale)


def _to_tensor(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).to(device)


# ---------------------------------------------------------------------------------------------
# LPIPS loading with a single explanation when it is unavailable

_reported: set[str] = set()


def load_lpips_or_none(net: str, device: torch.device | str) -> LPIPS | None:
    """The cached LPIPS model, or None (printing why, once per distinct reason) if unavailable."""
    try:
        return get_lpips(net, device)
    except LpipsUnavailable as exc:
        msg = str(exc)
        if msg not in _reported:
            _reported.add(msg)
            print(f"LPIPS will be null: {msg}", file=sys.stderr)
        return None


# ---------------------------------------------------------------------------------------------
# Region maps (--masks)


def find_region_maps(model_dir: str, regions_dir: str | None = None) -> tuple[RegionMaps | None, str]:
    """Region maps for a model: ``regions_dir`` if given, else ``<dataset>/regions``.

    Returns (maps or None, where they were looked for / why there are none).
    """
    if regions_dir is not None:
        if not os.path.isdir(regions_dir):
            raise MetricsError(f"--regions {regions_dir}: folder does not exist")
        return RegionMaps(regions_dir), regions_dir
    cfg_path = os.path.join(model_dir, "cfg_args.json")
    try:
        with open(cfg_path) as f:
            source = json.load(f)["source_path"]
    except FileNotFoundError:
        return None, (f"{cfg_path} is missing, so the model's dataset is unknown; "
                      f"pass --regions DIR")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return None, f"{cfg_path} names no source_path ({exc!r}); pass --regions DIR"
    from scene import resolve_source  # only --masks needs the dataset (generates 'demo' if absent)

    folder = os.path.join(str(resolve_source(source, quiet=True)), REGIONS_DIR)
    if not os.path.isdir(folder):
        return None, (f"the dataset {os.path.dirname(folder)} has no region maps "
                      f"({REGIONS_DIR}/<image stem>.png)")
    return RegionMaps(folder), folder


# ---------------------------------------------------------------------------------------------
# Evaluation


def _mean(values: dict[str, float]) -> float:
    return float(np.mean(np.asarray(list(values.values()), dtype=np.float64)))


def evaluate_method(
    method_dir: str,
    names: list[str],
    device: torch.device,
    lpips_model: LPIPS | None,
    progress: bool = True,
    desc: str = "",
    region_maps: RegionMaps | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, dict[str, float] | None]:
    """Per-image metrics of one ours_<it> folder: {"PSNR": {name: v}, "SSIM": ..., "LPIPS": ... or None}.

    With ``region_maps``, also "PSNR_<region>" and "SSIM_<region>" over the views where the
    region has at least MIN_REGION_PIXELS pixels; ``counts`` (if given) receives "no_map" (views
    without a region map) and "small_<region>" (views skipped for that region).
    """
    per: dict[str, dict[str, float] | None] = {
        "PSNR": {}, "SSIM": {}, "LPIPS": {} if lpips_model is not None else None
    }
    if region_maps is not None:
        for region in REGIONS:
            per[f"PSNR_{region}"] = {}
            per[f"SSIM_{region}"] = {}
    if counts is not None:
        counts.update({"no_map": 0, **{f"small_{r}": 0 for r in REGIONS}})
    # a caller's model stays where it is (nn.Module.to would move a shared, cached model)
    lpips_device = next(lpips_model.parameters()).device if lpips_model is not None else device
    for name in tqdm(names, desc=desc or method_dir, unit="img", disable=not progress):
        r_path = os.path.join(method_dir, "renders", name)
        g_path = os.path.join(method_dir, "gt", name)
        r_arr = read_image(r_path)
        g_arr = read_image(g_path)
        if r_arr.shape != g_arr.shape:
            raise MetricsError(
                f"size mismatch: render {r_path} is {r_arr.shape[1]}x{r_arr.shape[0]} but ground "
                f"truth {g_path} is {g_arr.shape[1]}x{g_arr.shape[0]} (width x height)"
            )
        with torch.no_grad():
            r = _to_tensor(r_arr, device)
            g = _to_tensor(g_arr, device)
            per["PSNR"][name] = float(psnr(r, g, cap_db=PSNR_CAP_DB)[0])
            per["SSIM"][name] = float(ssim(r, g)[0])
            if lpips_model is not None:
                per["LPIPS"][name] = float(lpips_model(r.to(lpips_device), g.to(lpips_device))[0])
            if region_maps is None:
                continue
            labels = region_maps.labels(name, r_arr.shape[0], r_arr.shape[1])
            if labels is None:
                if counts is not None:
                    counts["no_map"] += 1
                continue
            for region, value in REGIONS.items():
                mask = torch.from_numpy(labels == value).to(device)
                if int(mask.sum()) < MIN_REGION_PIXELS:
                    if counts is not None:
                        counts[f"small_{region}"] += 1
                    continue
                per[f"PSNR_{region}"][name] = float(masked_psnr(r, g, mask, cap_db=PSNR_CAP_DB)[0])
                per[f"SSIM_{region}"][name] = float(masked_ssim(r, g, mask)[0])
    return per


def evaluate_model(
    model_dir: str,
    lpips_net: str = "alex",
    use_lpips: bool = True,
    device: torch.device | str | None = None,
    lpips_model: LPIPS | None = None,
    progress: bool = True,
    write: bool = True,
    masks: bool = False,
    regions_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate every split / ours_<it> of a model; returns {"results": ..., "per_view": ...}.

    Writes results.json and per_view.json into `model_dir` when `write` (atomically).
    `lpips_model` overrides the default weights (tests, or callers that already hold one) and
    runs on its own device; otherwise it is loaded for `lpips_net` and is None (LPIPS null) if unavailable.
    Empty splits / iterations are reported on stdout and left out of the results.
    Raises MetricsError when nothing was rendered or the folders are inconsistent.
    With `masks`, also scores the face regions (see the module docstring) from `regions_dir` or
    the model's dataset; when there are no region maps it says so on stderr and scores the rest.
    """
    dev = torch_device(None) if device is None else torch.device(device)
    if write:
        try:
            check_output_folder(Path(model_dir))  # results.json and per_view.json go into it
        except ValueError as exc:
            raise MetricsError(str(exc)) from None
    splits = find_splits(model_dir)
    if not splits:
        raise MetricsError(
            f"no rendered splits in {model_dir} (expected {'/'.join(KNOWN_SPLITS)}/ours_<iteration>/"
            f"renders and gt): run `python render.py -m {model_dir}` first"
        )
    region_maps = None
    if masks:
        region_maps, where = find_region_maps(model_dir, regions_dir)
        if region_maps is None:
            print(f"--masks: no region metrics for {model_dir}: {where}", file=sys.stderr)
        else:
            print(f"{model_dir}: region maps from {where}")
    if use_lpips and lpips_model is None:
        lpips_model = load_lpips_or_none(lpips_net, dev)
    if not use_lpips:
        lpips_model = None

    results: dict[str, dict[str, dict[str, float | None]]] = {}
    per_view: dict[str, dict[str, dict[str, Any]]] = {}
    for split in splits:
        split_dir = os.path.join(model_dir, split)
        methods = _method_dirs(split_dir)
        any_images = False
        for _, method in methods:
            method_dir = os.path.join(split_dir, method)
            names = pair_images(method_dir)
            if not names:
                print(f"{model_dir}: {split}/{method} has no images, skipped")
                continue
            any_images = True
            counts: dict[str, int] = {}
            per = evaluate_method(
                method_dir, names, dev, lpips_model, progress, desc=f"{split}/{method}",
                region_maps=region_maps, counts=counts,
            )
            means: dict[str, float | int | None] = {
                "PSNR": _mean(per["PSNR"]),
                "SSIM": _mean(per["SSIM"]),
                "LPIPS": _mean(per["LPIPS"]) if per["LPIPS"] is not None else None,
            }
            if region_maps is not None:
                for region in REGIONS:
                    scored = per[f"PSNR_{region}"]
                    means[f"PSNR_{region}"] = _mean(scored) if scored else None
                    means[f"SSIM_{region}"] = _mean(per[f"SSIM_{region}"]) if scored else None
                    means[f"views_{region}"] = len(scored)
                print(_region_summary(f"{model_dir}: {split}/{method}", len(names), counts))
            results.setdefault(split, {})[method] = means
            per_view.setdefault(split, {})[method] = per
        if not methods:
            print(f"{model_dir}: split '{split}' has no ours_<iteration> folders, skipped")
        elif not any_images:
            print(f"{model_dir}: split '{split}' is empty (no images), skipped")

    if not results:
        raise MetricsError(
            f"no rendered images in any split of {model_dir} ({', '.join(splits)}): "
            f"run `python render.py -m {model_dir}` first"
        )
    if write:
        write_json_atomic(os.path.join(model_dir, "results.json"), results)
        write_json_atomic(os.path.join(model_dir, "per_view.json"), per_view)
    return {"results": results, "per_view": per_view}


def _region_summary(where: str, total: int, counts: dict[str, int]) -> str:
    """One line saying how many views scored each region and why the others did not."""
    parts = []
    with_map = total - counts["no_map"]
    for region in REGIONS:
        small = counts[f"small_{region}"]
        parts.append(f"{region} in {with_map - small}/{total} views"
                     + (f" ({small} with < {MIN_REGION_PIXELS} {region} pixels skipped)" if small else ""))
    line = f"{where}: regions scored: " + ", ".join(parts)
    if counts["no_map"]:
        line += f"; {counts['no_map']} views have no region map"
    return line


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON atomically, so readers never see half a file."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def format_table(model_dir: str, results: dict[str, Any], per_view: dict[str, Any] | None = None) -> str:
    """Human-readable table of the mean metrics of one model."""
    lines = [f"Model: {model_dir}"]
    header = f"  {'split':<12} {'iteration':<14} {'images':>6} {'PSNR':>9} {'SSIM':>8} {'LPIPS':>8}"
    lines.append(header)
    lines.append("  " + "-" * (len(header) - 2))
    for split, methods in results.items():
        for method, vals in methods.items():
            n = len(per_view[split][method]["PSNR"]) if per_view else ""
            lp = "n/a" if vals["LPIPS"] is None else f"{vals['LPIPS']:.4f}"
            lines.append(
                f"  {split:<12} {method:<14} {n:>6} {vals['PSNR']:>9.3f} {vals['SSIM']:>8.4f} {lp:>8}"
            )
    if any(f"views_{region}" in vals for methods in results.values() for vals in methods.values()
           for region in REGIONS):
        header = f"  {'split':<12} {'iteration':<14} {'region':<8} {'images':>6} {'PSNR':>9} {'SSIM':>8}"
        lines += ["", "  Regions (PSNR and SSIM inside each region, over the views showing it)",
                  header, "  " + "-" * (len(header) - 2)]
        for split, methods in results.items():
            for method, vals in methods.items():
                for region in REGIONS:
                    if f"views_{region}" not in vals:
                        continue
                    p, s = vals[f"PSNR_{region}"], vals[f"SSIM_{region}"]
                    ps = "n/a" if p is None else f"{p:.3f}"
                    ss = "n/a" if s is None else f"{s:.4f}"
                    lines.append(f"  {split:<12} {method:<14} {region:<8} "
                                 f"{vals[f'views_{region}']:>6} {ps:>9} {ss:>8}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Compute PSNR, SSIM and LPIPS between render.py's renders and ground truth "
            "(<model>/<split>/ours_<iteration>/{renders,gt}/*.png) and write <model>/results.json "
            "(means) and <model>/per_view.json (per image). Identical images are stored as "
            f"PSNR {PSNR_CAP_DB:g} dB."
        )
    )
    parser.add_argument(
        "-m", "--model_paths", nargs="+", required=True, metavar="MODEL",
        help="one or more trained model folders, each already rendered with render.py",
    )
    parser.add_argument(
        "--lpips_net", choices=["alex", "vgg"], default="alex",
        help="LPIPS backbone: 'alex' (default, the LPIPS authors' recommendation for evaluation) "
             "or 'vgg' (what 3DGS's metrics.py reports)",
    )
    parser.add_argument(
        "--no_lpips", action="store_true",
        help="skip LPIPS (stored as null); PSNR and SSIM only, no network weights needed",
    )
    parser.add_argument(
        "--device", default=None,
        help="torch device to compute on, e.g. 'cpu' or 'cuda:1' (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="hide the per-image progress bars",
    )
    parser.add_argument(
        "--masks", action="store_true",
        help=f"also report PSNR and SSIM inside the mouth (label {REGIONS['mouth']}) and eyes "
             f"(label {REGIONS['eyes']}) regions, from the label maps regions/<image stem>.png of "
             f"the dataset each model was trained on (cfg_args.json's source_path); views where a "
             f"region has fewer than {MIN_REGION_PIXELS} pixels do not score it. Adds "
             f"PSNR_<region>, SSIM_<region> and views_<region> to results.json",
    )
    parser.add_argument(
        "--regions", default=None, metavar="DIR",
        help="with --masks: read the label maps from DIR/<image stem>.png instead of the "
             "dataset's regions/ folder (implies --masks)",
    )
    add_threads_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 if every model was evaluated, 1 otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = torch_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    set_threads(args.threads)
    lpips_model = None if args.no_lpips else load_lpips_or_none(args.lpips_net, device)
    failed = 0
    for model_dir in args.model_paths:
        try:
            out = evaluate_model(
                model_dir,
                lpips_net=args.lpips_net,
                use_lpips=lpips_model is not None,
                device=device,
                lpips_model=lpips_model,
                progress=not args.quiet,
                masks=args.masks or args.regions is not None,
                regions_dir=args.regions,
            )
        except (MetricsError, RegionMapError) as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(format_table(model_dir, out["results"], out["per_view"]))
        print(f"  written: {os.path.join(model_dir, 'results.json')}, per_view.json")
        print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
