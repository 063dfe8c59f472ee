"""Render a trained STGA model over every split of its dataset, next to the ground truth.

    python render.py -m <model folder> [--iteration N] [--skip_train] [--skip_val] [--skip_test]
                     [--video [--fps F]] [--orbit N [--orbit_frame K]]
                     [--export_ply K [K ...] | all]

Writes ``<model>/<split>/ours_<iteration>/renders/<image name>.png`` and ``.../gt/...``, which
metrics.py then scores. With ``--video``, also one mp4 per camera of each split in
``.../videos/camera_<index>.mp4``: the avatar animated through that camera's frames in keyframe
order, render on the left and ground truth on the right. ``--orbit N`` renders N views on a circle
around the head at one keyframe into ``<model>/orbit_<iteration>/`` (orbit.mp4 and frames/*.png).
``--export_ply K`` writes the avatar posed at keyframe K as a plain 3DGS PLY for Gaussian-splat
viewers, ``<model>/export/keyframe_<K>.ply``; ``--export_ply all`` every keyframe, with
``export/index.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import utils.threads  # noqa: F401 - before torch, which reads OpenMP's waiting settings once
import cv2
import imageio_ffmpeg
import numpy as np
import torch
from tqdm import tqdm

from arguments import (add_threads_arg, check_output_folder, load_config, set_threads,
                       torch_device)
from gaussian_renderer import render
from scene import resolve_source
from scene.binding import face_frames
from scene.cameras import Camera
from scene.dataset import SPLITS, StgaDataset, load_dataset, load_split_pixels
from scene.errors import DatasetError
from scene.export import export_path, export_splat_ply, write_export_index
from scene.gaussian_model import GaussianModel
from utils.atomic import DiskFullError, atomic_folder, atomic_path

VIDEO_CODEC = "libx264"


class RenderError(RuntimeError):
    """A problem the user must fix (the message names the file or the flag)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Render a trained STGA model (and the ground truth) for every split; "
                    "optionally per-camera videos, an orbit around the head, and a viewer-ready "
                    "PLY export.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-m", "--model_path", required=True, help="model folder from train.py")
    parser.add_argument("-s", "--source_path", default=None,
                        help="dataset folder (default: the one the model was trained on)")
    parser.add_argument("--iteration", type=int, default=-1,
                        help="saved iteration to render (-1: the latest)")
    for split in SPLITS:
        parser.add_argument(f"--skip_{split}", action="store_true", help=f"skip the {split} split")
    parser.add_argument("--video", action="store_true",
                        help="also write, for every camera of every rendered split, an mp4 of "
                             "the avatar through that camera's frames in keyframe order, render "
                             "left and ground truth right, into <split>/ours_<N>/videos/"
                             "camera_<index>.mp4 (cameras without camera_index are grouped by "
                             "pose and intrinsics)")
    parser.add_argument("--fps", type=float, default=25.0,
                        help="frame rate of the --video and --orbit videos")
    parser.add_argument("--orbit", type=int, default=0, metavar="N",
                        help="render N views on a circle around the head at --orbit_frame into "
                             "<model>/orbit_<iteration>/orbit.mp4 and frames/*.png; the circle is centred "
                             "on the mesh centroid, at the training cameras' mean distance and "
                             "mean height, starting at the first training camera, with its "
                             "intrinsics (0: no orbit)")
    parser.add_argument("--orbit_frame", type=int, default=None, metavar="KEYFRAME",
                        help="keyframe whose mesh poses the avatar for --orbit (default: the "
                             "first training keyframe, the pose of the saved PLY)")
    parser.add_argument("--export_ply", type=keyframe_or_all, nargs="+", default=None,
                        metavar="KEYFRAME",
                        help="write the avatar posed at each KEYFRAME as a plain 3DGS PLY (world "
                             "x y z, zero normals, f_dc and all 45 f_rest (zero beyond the "
                             "trained degree), opacity logit, log scale, unit rotation; no STGA "
                             "fields) for Gaussian-splat viewers, into "
                             "<model>/export/keyframe_<K>.ply; 'all' exports every keyframe of the "
                             "sequence and writes export/index.json (keyframes and files in "
                             "order). Add --skip_train --skip_val --skip_test to export without "
                             "rendering")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_threads_arg(parser)
    parser.add_argument("--backend", choices=("auto", "torch", "cuda"), default="auto",
                        help="rasterizer backend")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def saved_iterations(model_dir: Path) -> List[int]:
    folder = model_dir / "point_cloud"
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            match = re.fullmatch(r"iteration_(\d+)", child.name)
            if match and (child / "point_cloud.ply").exists():
                found.append(int(match.group(1)))
    return sorted(found)


# --- images and videos -------------------------------------------------------------------------
def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3,H,W) float image in [0,1] -> (H,W,3) uint8 RGB, rounded as the PNGs are."""
    return (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Save an (H,W,3) uint8 RGB array as PNG, atomically."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not be written")


def pad_even(rgb: np.ndarray, fill: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Pad an (H,W,3) frame at the bottom/right to even sizes (what many video codecs need)."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    out = np.empty((h + h % 2, w + w % 2, 3), dtype=rgb.dtype)
    out[...] = np.asarray(fill, dtype=rgb.dtype)
    out[:h, :w] = rgb
    return out


class VideoFile:
    """An H.264 (yuv420p) mp4 written frame by frame, which browsers and players play.

    Encoded by the ffmpeg binary that the ``imageio-ffmpeg`` package ships (OpenCV's writers offer
    only ``mp4v``, which browsers do not play). Frames go to a temporary file beside the target,
    renamed into place by ``close``, so an interrupted run never leaves a truncated video under
    the final name. The encoder starts on the first frame (its size fixes the video's); odd sizes
    are padded to even ones (yuv420p needs them) with ``fill``.
    """

    def __init__(self, path: Path, fps: float, fill: Sequence[int] = (0, 0, 0), crf: int = 18):
        self.path = Path(path)
        self.fps = fps
        self.fill = fill
        self.crf = crf
        self.size: Optional[Tuple[int, int]] = None  # (width, height) after padding
        self.frames = 0
        self._writer = None
        self._atomic = atomic_path(self.path)
        self._tmp: Optional[Path] = None

    def _open(self) -> None:
        try:
            self._writer = imageio_ffmpeg.write_frames(
                str(self._tmp), self.size, fps=float(self.fps), codec=VIDEO_CODEC,
                pix_fmt_in="rgb24", pix_fmt_out="yuv420p", macro_block_size=2,
                output_params=["-crf", str(self.crf), "-movflags", "+faststart"],
                ffmpeg_log_level="error")
            self._writer.send(None)
        except (OSError, RuntimeError) as exc:
            raise RenderError(
                f"{self.path}: could not start the H.264 encoder ({VIDEO_CODEC}, {self.size[0]}x"
                f"{self.size[1]}, {self.fps:g} fps): {exc}") from None

    def write(self, rgb: np.ndarray) -> None:
        frame = pad_even(rgb, self.fill)
        if self._writer is None:
            self.size = (frame.shape[1], frame.shape[0])
            self._open()
        elif (frame.shape[1], frame.shape[0]) != self.size:
            raise RenderError(f"{self.path}: frame of {frame.shape[1]}x{frame.shape[0]} in a "
                              f"video of {self.size[0]}x{self.size[1]}")
        try:
            self._writer.send(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        except (OSError, RuntimeError) as exc:
            raise RenderError(f"{self.path}: the H.264 encoder failed: {exc}") from None
        self.frames += 1

    def __enter__(self) -> "VideoFile":
        self._tmp = self._atomic.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        failure = None
        if self._writer is not None:
            try:
                self._writer.close()          # flushes the encoder and waits for it
            except (OSError, RuntimeError) as close_exc:
                failure = RenderError(f"{self.path}: the H.264 encoder failed: {close_exc}")
        if exc_type is None and failure is None and (
                self._writer is None or self._tmp.stat().st_size == 0):
            failure = RenderError(f"{self.path}: the video writer produced no file")
        if exc_type is None and failure is not None:
            self._atomic.__exit__(RenderError, failure, None)   # drops the temporary file
            raise failure
        self._atomic.__exit__(exc_type, exc, tb)


def camera_groups(cameras: Sequence[Camera]) -> List[Tuple[str, List[Camera]]]:
    """The cameras of a split per physical camera, each list in keyframe order, with a name.

    Groups by ``camera_index``; when some frame lacks it, by identical pose, intrinsics and size.
    """
    groups: Dict[object, List[Camera]] = {}
    if all(c.camera_index is not None for c in cameras):
        for cam in cameras:
            groups.setdefault(int(cam.camera_index), []).append(cam)
        named = [(f"camera_{k:02d}", groups[k]) for k in sorted(groups)]
    else:
        for cam in cameras:
            key = (cam.width, cam.height, tuple(np.round(cam.world_to_camera[:3], 6).ravel()),
                   tuple(np.round(cam.K, 4).ravel()))
            groups.setdefault(key, []).append(cam)
        named = [(f"camera_{i:02d}", cams) for i, cams in enumerate(groups.values())]
    return [(name, sorted(cams, key=lambda c: c.keyframe)) for name, cams in named]


# --- orbit -------------------------------------------------------------------------------------
def orbit_cameras(dataset: StgaDataset, keyframe: int, count: int) -> List[Camera]:
    """``count`` cameras on a circle around the head at ``keyframe``, looking at its centroid.

    Centre: the mean of the mesh's face centres. Up: the training cameras' mean up vector. Each
    orbit camera sits at the training cameras' mean distance from the centre and at their mean
    height above it (along up); the circle starts at the first training camera's azimuth and
    turns about up. Intrinsics and image size are the first training camera's.
    """
    train = dataset.splits["train"]
    first = train[0]
    centre = dataset.meshes[dataset.mesh_row(keyframe)].reshape(-1, 3).astype(np.float64).mean(0)
    up = np.mean([-c.world_to_camera[1, :3] for c in train], axis=0)  # OpenCV y points down
    if np.linalg.norm(up) < 1e-8:
        raise RenderError("--orbit: the training cameras' up vectors cancel out; no orbit axis")
    up /= np.linalg.norm(up)
    offsets = np.stack([c.center for c in train]) - centre
    distance = float(np.linalg.norm(offsets, axis=1).mean())
    height = float((offsets @ up).mean())
    radius = math.sqrt(max(distance ** 2 - height ** 2, (0.1 * distance) ** 2))
    start = offsets[0] - (offsets[0] @ up) * up
    if np.linalg.norm(start) < 1e-8 * max(distance, 1e-12):  # first camera straight above
        start = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 = start / np.linalg.norm(start)
    e2 = np.cross(up, e1)
    cameras = []
    for i in range(count):
        angle = 2.0 * math.pi * i / count
        position = centre + height * up + radius * (math.cos(angle) * e1 + math.sin(angle) * e2)
        forward = centre - position
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        w2c = np.eye(4)
        w2c[:3, :3] = np.stack([right, down, forward])
        w2c[:3, 3] = -w2c[:3, :3] @ position
        cameras.append(Camera(uid=i, split="orbit", image_name=f"{i:04d}", keyframe=keyframe,
                              width=first.width, height=first.height, K=first.K.copy(),
                              world_to_camera=w2c))
    return cameras


# --- the command -------------------------------------------------------------------------------
def keyframe_or_all(text: str):
    """argparse type of --export_ply: a keyframe number or 'all'."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a keyframe number or 'all', got {text!r}") \
            from None


def check_keyframe(dataset: StgaDataset, keyframe: int, flag: str) -> None:
    if keyframe not in dataset.keyframes:
        ks = dataset.keyframes
        raise RenderError(f"{flag} {keyframe}: the dataset {dataset.root} has no mesh for that "
                          f"keyframe (keyframes {ks[0]}..{ks[-1]}, {len(ks)} in all)")


def render_splits(model: GaussianModel, dataset: StgaDataset, meshes: torch.Tensor,
                  background: torch.Tensor, out_root: Path, iteration: int,
                  splits: Sequence[str], args: argparse.Namespace, resolution: float) -> None:
    fill = tuple(int(round(float(v) * 255)) for v in background.tolist())
    for split in splits:
        cameras = dataset.splits.get(split)
        if cameras is None:
            continue
        load_split_pixels(dataset, split, resolution, args.quiet)
        out = out_root / split / f"ours_{iteration}"
        groups = camera_groups(cameras) if args.video else [("", list(cameras))]
        bar = tqdm(total=len(cameras), desc=f"Rendering {split}", disable=args.quiet, unit="img")
        # written beside, then swapped in whole: an interrupted or failed render (a full disk)
        # leaves the previous folder as it was, never half of a new one
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "renders").mkdir()
            (tmp / "gt").mkdir()
            for name, cams in groups:
                target = VideoFile(tmp / "videos" / f"{name}.mp4", args.fps, fill) \
                    if name else None
                with target or contextlib.nullcontext() as video:
                    for cam in cams:
                        world = model.world(face_frames(meshes[dataset.mesh_row(cam.keyframe)]))
                        image = to_uint8(render(cam, world, background,
                                                backend=args.backend)["render"])
                        gt = to_uint8(cam.gt_image(background))
                        write_png(tmp / "renders" / f"{cam.image_name}.png", image)
                        write_png(tmp / "gt" / f"{cam.image_name}.png", gt)
                        if video is not None:
                            video.write(np.concatenate([image, gt], axis=1))
                        bar.update()
        bar.close()
        for cam in cameras:
            cam.image = None  # free the split's pixels before the next one
        if not args.quiet:
            extra = f" and {len(groups)} video(s)" if args.video else ""
            print(f"{split}: {len(cameras)} images{extra} -> {out}")


def render_orbit(model: GaussianModel, dataset: StgaDataset, meshes: torch.Tensor,
                 background: torch.Tensor, out: Path, keyframe: int,
                 args: argparse.Namespace) -> Path:
    cameras = orbit_cameras(dataset, keyframe, args.orbit)
    world = model.world(face_frames(meshes[dataset.mesh_row(keyframe)]))
    fill = tuple(int(round(float(v) * 255)) for v in background.tolist())
    # written beside and swapped in whole, like the split folders (no frames of an older orbit)
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "frames").mkdir()
        with VideoFile(tmp / "orbit.mp4", args.fps, fill) as video:
            for cam in tqdm(cameras, desc=f"Orbit at keyframe {keyframe}", disable=args.quiet,
                            unit="view"):
                image = to_uint8(render(cam, world, background, backend=args.backend)["render"])
                write_png(tmp / "frames" / f"{cam.image_name}.png", image)
                video.write(image)
    if not args.quiet:
        print(f"orbit: {len(cameras)} views at keyframe {keyframe} -> {out / 'orbit.mp4'}")
    return out / "orbit.mp4"


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir = Path(args.model_path)
    try:
        cfg = load_config(model_dir)
        check_output_folder(model_dir)           # renders, videos and exports go into it
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.orbit < 0 or not args.fps > 0:
        print("error: --orbit must be >= 0 and --fps > 0", file=sys.stderr)
        return 2
    iterations = saved_iterations(model_dir)
    if not iterations:
        checkpoints = sorted(model_dir.glob("chkpnt*.pth"), key=lambda p: p.stat().st_mtime)
        if checkpoints:
            latest = checkpoints[-1]
            print(f"error: {model_dir} holds no saved model, only the checkpoint {latest.name} of "
                  f"an interrupted training; resume it with `python train.py -s "
                  f"{cfg.get('source_path')} -m {model_dir} --start_checkpoint {latest}`",
                  file=sys.stderr)
        else:
            print(f"error: {model_dir / 'point_cloud'} holds no saved model; train first",
                  file=sys.stderr)
        return 2
    iteration = iterations[-1] if args.iteration == -1 else args.iteration
    if iteration not in iterations:
        print(f"error: no model saved at iteration {iteration} (saved: {iterations})",
              file=sys.stderr)
        return 2
    try:
        device = torch_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    set_threads(args.threads)
    splits = [s for s in SPLITS if not getattr(args, f"skip_{s}")]
    resolution = cfg.get("resolution", -1)
    try:
        source = resolve_source(args.source_path or cfg["source_path"])
        # cameras and meshes of every split (cheap); pixels are read per rendered split
        dataset = load_dataset(source, resolution=resolution, load_pixels=False, quiet=args.quiet)
        model = GaussianModel()
        ply = model_dir / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply"
        model.load_ply(ply, dataset.num_faces, device)
        orbit_frame = args.orbit_frame
        if orbit_frame is None:
            orbit_frame = dataset.splits["train"][0].keyframe
        if args.orbit:
            check_keyframe(dataset, orbit_frame, "--orbit_frame")
        exports = list(args.export_ply or [])
        whole_sequence = "all" in exports
        if whole_sequence:
            exports = sorted(dataset.keyframes)
        for keyframe in exports:
            check_keyframe(dataset, keyframe, "--export_ply")
        if args.video and not splits:
            print("note: --video makes videos of the rendered splits, and every split is skipped",
                  file=sys.stderr)
        meshes = torch.from_numpy(dataset.meshes).to(device)
        background = torch.tensor([1.0] * 3 if cfg.get("white_background") else [0.0] * 3,
                                  device=device)
        with torch.no_grad():
            written = {}
            for keyframe in tqdm(exports, desc="Exporting", disable=args.quiet or
                                 len(exports) < 2):
                frames = face_frames(meshes[dataset.mesh_row(keyframe)])
                written[keyframe] = export_splat_ply(model, frames,
                                                     export_path(model_dir, keyframe))
            if whole_sequence:
                index = write_export_index(model_dir, written, exports)
                if not args.quiet:
                    print(f"export: {len(written)} keyframes, index {index}")
            elif not args.quiet:
                for keyframe, path in written.items():
                    print(f"export: keyframe {keyframe} -> {path}")
            render_splits(model, dataset, meshes, background, model_dir, iteration, splits,
                          args, resolution)
            if args.orbit:
                render_orbit(model, dataset, meshes, background,
                             model_dir / f"orbit_{iteration}", orbit_frame, args)
    except (DatasetError, RenderError, DiskFullError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
