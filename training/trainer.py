"""One training run: data, model, optimiser, schedule and the iteration loop (``Trainer``).

``train.py`` is its command line; benchmarks and tests drive a ``Trainer`` directly. A run
trains the mesh-bound Gaussians on the dataset's training split, scores the test and val splits
at ``--test_iterations`` into ``progress.json`` (training time beside quality), saves PLYs and
resumable checkpoints (parameters, optimiser, schedule, random state, error map).
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from arguments import model_path_for, save_config, set_threads
from gaussian_renderer import render
from gaussian_renderer.crop import CropPlanner
from scene import resolve_source
from scene.binding import face_frames
from scene.dataset import StgaDataset, load_dataset
from scene.errors import DatasetError
from scene.gaussian_model import GaussianModel, RowSelection
from scene.points import random_points_on_faces, read_points3d
from training.checkpoint import (LATEST_NAME, check_dataset, dataset_fingerprint,
                                 read_checkpoint, write_checkpoint)
from training.densify import DensityController
from training.face_error import FaceErrorMap
from training.image_feeder import ImageFeeder
from training.loss import training_loss
from training.progress import ProgressLog
from training.regularisation import local_regularisation
from training.schedule import Step, TrainingSchedule
from training.selective_adam import SelectiveAdam
from utils import fused
from utils.image_metrics import masked_psnr, masked_ssim, psnr, ssim
from utils.atomic import disk_full
from utils.images import composite_rgba
from utils.regions import MIN_REGION_PIXELS, REGIONS, RegionMapError, RegionMaps


def position_lr(args: argparse.Namespace, iteration: int, extent: float) -> float:
    """Log-linear decay from position_lr_init to position_lr_final (times the scene extent)."""
    t = min(max(iteration / max(args.position_lr_max_steps, 1), 0.0), 1.0)
    log_lr = (1 - t) * np.log(args.position_lr_init) + t * np.log(args.position_lr_final)
    return float(np.exp(log_lr)) * extent


def scene_extent(dataset: StgaDataset) -> float:
    """Radius of the training cameras' bounding sphere times 1.1 (3DGS's spatial lr scale)."""
    centres = np.stack([c.center for c in dataset.splits["train"]])
    radius = np.linalg.norm(centres - centres.mean(0), axis=1).max()
    return float(max(radius, 1e-3) * 1.1)


#: Bytes per Gaussian of a saved PLY (73 float32 fields and the face index) and of a checkpoint
#: (59 parameters with two Adam moments each, and the step counts).
PLY_BYTES_PER_GAUSSIAN = 73 * 4 + 4
CHECKPOINT_BYTES_PER_GAUSSIAN = 59 * 3 * 4 + 6 * 8
GROWTH = 2.0   # densification rarely doubles the count (demo: 1.5x; demo-large: 1.1x)


class OutputSpaceError(RuntimeError):
    """The model folder's disk lacks the space the run's outputs will need."""


class Trainer:
    """One training run: data, model, optimiser, schedule and the iteration loop."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        set_threads(args.threads)
        fused.set_enabled(args.fused != "off" and fused.ENVIRONMENT_ALLOWS)
        self.device = torch.device(args.device)
        self.model_dir = model_path_for(args)
        self.log = (lambda *a: None) if args.quiet else print
        source = resolve_source(args.source_path)
        self.dataset = load_dataset(source, resolution=args.resolution, quiet=args.quiet,
                                    require_training_faces=args.selection == "paper",
                                    hold_out=args.eval)
        self.train_cameras = self.dataset.splits["train"]
        self.meshes = torch.from_numpy(self.dataset.meshes).to(self.device)
        self.reference_keyframe = min(c.keyframe for c in self.train_cameras)
        self.extent = scene_extent(self.dataset)
        self.background = torch.tensor([1.0, 1.0, 1.0] if args.white_background else [0.0] * 3,
                                       device=self.device)
        torch.manual_seed(args.seed)
        # One stream per purpose, so that drawing from one (a random background) never changes
        # another (which views train when, the densification noise).
        streams = np.random.SeedSequence(args.seed).generate_state(2)
        self.generator = torch.Generator().manual_seed(args.seed)          # the view order
        self.background_generator = torch.Generator().manual_seed(int(streams[0]))
        self.densify_generator = torch.Generator().manual_seed(int(streams[1]))
        self.schedule = TrainingSchedule(
            self.train_cameras,
            self.dataset.training_faces if args.selection == "paper" else None,
            self.generator, order=args.order, global_warmup=args.global_warmup,
            global_every=args.global_every, static_fit=args.static_fit)
        reference = self.frames(self.reference_keyframe)
        self.face_size = reference.size
        self.mean_face_size = float(reference.size.mean())
        self.model = GaussianModel(args.sh_degree, args.face_scale)
        self.first_iteration = 1
        self.seconds_before = 0.0   # training time of the run this one resumes
        self.start_time: Optional[float] = None      # set by run()
        self.side_start: Optional[float] = None      # when this iteration's side work began
        self.region_maps = self._load_region_maps()
        self.fingerprint = dataset_fingerprint(self.dataset)
        self.face_error = None
        if args.error_faces > 0 and args.selection == "paper":
            self.face_error = FaceErrorMap([c.keyframe for c in self.train_cameras],
                                           self.dataset.num_faces, self.device)
        if args.start_checkpoint:
            self._restore(Path(args.start_checkpoint))
        else:
            self._initialise()
        self._selections: Dict[int, RowSelection] = {}
        self._selection_version = -1
        self._last_keyframe: Optional[int] = None
        self.crops = CropPlanner(self.device)
        self._stage_images()
        self.stop_requested = False

    # --- set-up ------------------------------------------------------------------------------
    def triangles(self, keyframe: int) -> torch.Tensor:
        """The (F, 3, 3) mesh of ``keyframe``, on the training device."""
        return self.meshes[self.dataset.mesh_row(keyframe)]

    def frames(self, keyframe: int):
        return face_frames(self.triangles(keyframe))

    def _initialise(self) -> None:
        ds = self.dataset
        if ds.points_path is not None:
            points = read_points3d(ds.points_path, ds.num_faces)
            origin = f"{ds.points_path.name}"
        else:
            tri = ds.meshes[ds.mesh_row(self.reference_keyframe)]
            points = random_points_on_faces(tri, self.args.init_per_face, seed=self.args.seed)
            origin = f"{self.args.init_per_face} random points per face"
        self.model.create_from_points(points, self.frames(self.reference_keyframe), self.device)
        self.optimizer = self._make_optimizer()
        self.density = DensityController(self.model)
        self.log(f"Initialised {self.model.num_gaussians} Gaussians from {origin} on "
                 f"{ds.num_faces} faces")

    def _make_optimizer(self) -> SelectiveAdam:
        a = self.args
        lrs = {"xyz": a.position_lr_init * self.extent, "f_dc": a.feature_lr,
               "f_rest": a.feature_lr / 20.0, "opacity": a.opacity_lr, "scaling": a.scaling_lr,
               "rotation": a.rotation_lr}
        return SelectiveAdam(self.model.params, lrs, eps=1e-15)

    def _stage_images(self) -> None:
        self.images = ImageFeeder(self.device)
        where = self.images.place(self.train_cameras, self.args.data_device)
        self.log(f"Training images in {where}")

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint_path(self, iteration: int) -> Path:
        return self.model_dir / f"chkpnt{iteration}.pth"

    def save_checkpoint(self, iteration: int, path: Optional[Path] = None) -> Path:
        """Write a resumable checkpoint (to ``chkpnt<iteration>.pth`` unless ``path``)."""
        state = {
            "iteration": iteration, "dataset": self.fingerprint,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(),
            "background_generator": self.background_generator.get_state(),
            "densify_generator": self.densify_generator.get_state(),
            "density": {"grad_accum": self.density.grad_accum, "denom": self.density.denom,
                        "max_radii": self.density.max_radii},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            "train_seconds": self.training_seconds(self.side_start),
            "face_error": None if self.face_error is None else self.face_error.error,
        }
        return write_checkpoint(path or self.checkpoint_path(iteration), state)

    def _restore(self, path: Path) -> None:
        state = read_checkpoint(path)
        check_dataset(path, state, self.dataset, self.args.resume_other_dataset)
        try:
            self._apply_checkpoint(path, state)
        except DatasetError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise DatasetError(f"{path}: incomplete or inconsistent checkpoint "
                               f"({type(exc).__name__}: {exc})") from None
        self.log(f"Resumed from {path} at iteration {state['iteration']}")

    def _apply_checkpoint(self, path: Path, state: Dict) -> None:
        self.model.load_state_dict(state["model"], self.device)
        if int(self.model.binding.max()) >= self.dataset.num_faces:
            raise DatasetError(f"{path}: binds Gaussians to faces the dataset's meshes lack")
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.density = DensityController(self.model)
        self.density.grad_accum = state["density"]["grad_accum"].to(self.device)
        self.density.denom = state["density"]["denom"].to(self.device)
        if state["density"].get("max_radii") is not None:   # absent before this was tracked
            self.density.max_radii = state["density"]["max_radii"].to(self.device)
        self.generator.set_state(state["generator"])
        for name in ("background_generator", "densify_generator"):
            if state.get(name) is not None:     # absent from checkpoints of older versions
                getattr(self, name).set_state(state[name])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.first_iteration = int(state["iteration"]) + 1
        self.seconds_before = float(state.get("train_seconds", 0.0))
        if self.face_error is not None and state.get("face_error") is not None:
            if tuple(state["face_error"].shape) != tuple(self.face_error.error.shape):
                raise DatasetError(f"{path}: its face-error map does not fit this dataset")
            self.face_error.error.copy_(state["face_error"])

    # --- evaluation --------------------------------------------------------------------------
    def _load_region_maps(self) -> Dict[str, np.ndarray]:
        """The label maps of the held-out views (``regions/<stem>.png``) at their resolution,
        read and checked at start-up: a bad map stops the run before training, naming the file.
        Views without a map (or datasets without ``regions/``) are scored over the whole image
        only."""
        maps = RegionMaps(str(self.dataset.root / "regions"))
        out = {}
        for split in ("test", "val"):
            for cam in self.dataset.splits.get(split) or []:
                try:
                    labels = maps.labels(f"{cam.image_name}.png", cam.height, cam.width)
                except RegionMapError as exc:
                    raise DatasetError(str(exc)) from None
                if labels is not None:
                    out[cam.image_name] = labels
        return out

    @torch.no_grad()
    def evaluate(self, iteration: int) -> Dict[str, Dict[str, float]]:
        """Mean PSNR and SSIM per held-out split, and inside the mouth and eye regions where the
        dataset has region maps (over the views where a region has ``MIN_REGION_PIXELS``)."""
        results = {}
        for split in ("test", "val"):
            cameras = self.dataset.splits.get(split) or []
            if not cameras:
                continue
            scores: Dict[str, List[float]] = {}
            for cam in cameras:
                world = self.model.pose(self.triangles(cam.keyframe))
                image = render(cam, world, self.background, backend=self.args.backend)["render"]
                gt = cam.gt_image(self.background)
                image = image.clamp(0, 1)
                scores.setdefault("PSNR", []).append(psnr(image, gt).item())
                scores.setdefault("SSIM", []).append(ssim(image, gt).item())
                labels = self.region_maps.get(cam.image_name)
                if labels is None:
                    continue
                for region, label in REGIONS.items():
                    mask = torch.from_numpy(labels == label).to(image.device)
                    if int(mask.sum()) >= MIN_REGION_PIXELS:
                        scores.setdefault(f"PSNR_{region}", []).append(
                            masked_psnr(image, gt, mask).item())
                        scores.setdefault(f"SSIM_{region}", []).append(
                            masked_ssim(image, gt, mask).item())
            results[split] = {k: float(np.mean(v)) for k, v in scores.items()}
            regions = "".join(f", {r} {results[split][f'PSNR_{r}']:.2f} dB" for r in REGIONS
                              if f"PSNR_{r}" in results[split])
            self.log(f"\n[ITER {iteration}] {split}: PSNR {results[split]['PSNR']:.2f} dB, "
                     f"SSIM {results[split]['SSIM']:.4f}{regions} ({len(cameras)} images)")
        return results

    def save_model(self, iteration: int) -> Path:
        path = self.model_dir / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply"
        self.model.save_ply(path, self.frames(self.reference_keyframe), self.reference_keyframe)
        return path

    # --- the loop ----------------------------------------------------------------------------
    def regularisation(self, selection: Optional[RowSelection]) -> torch.Tensor:
        """GaussianAvatars' position and scale regularisers on the trainable Gaussians.

        Thresholds are in units of the mean face size (in face units under --face_scale), so
        they act whatever the scene's units are.
        """
        a, p = self.args, self.model.params
        unit = 1.0 if self.model.face_scale else self.mean_face_size
        return local_regularisation(p["xyz"], p["scaling"], selection, a.lambda_xyz,
                                    a.threshold_xyz * unit, a.lambda_scale,
                                    a.threshold_scale * unit)

    def trainable(self, step: Step) -> Optional[RowSelection]:
        """The step's trainable rows (None: all), cached per keyframe until the rows change.

        Computing a selection reads its size back from the device; the cache keeps that sync
        out of all but the first step of a keyframe after each densification. With selection by
        error the faces also change as the error map does: a keyframe's selection is then
        renewed each time training moves to that keyframe.
        """
        keyframe = step.camera.keyframe
        arrived = keyframe != self._last_keyframe
        self._last_keyframe = keyframe
        if step.faces is None:
            return None
        if self._selection_version != self.model.version:
            self._selections.clear()
            self._selection_version = self.model.version
        if keyframe not in self._selections or (self.face_error is not None and arrived):
            faces = step.faces.to(self.device)
            if self.face_error is not None:
                faces = torch.cat([faces, self.face_error.top_faces(keyframe,
                                                                    self.args.error_faces)])
            self._selections[keyframe] = self.model.select_rows(faces, self.dataset.num_faces)
        return self._selections[keyframe]

    def train_step(self, iteration: int) -> Optional[torch.Tensor]:
        """One iteration; returns the loss, or None when the step's selection is empty."""
        a = self.args
        self.optimizer.lrs["xyz"] = position_lr(a, iteration, self.extent)
        if iteration % a.sh_up_every == 0:
            self.model.one_up_sh_degree()
        step = self.schedule.next()
        selection = self.trainable(step)
        densifying = a.densify and iteration < a.densify_until_iter
        loss = None
        if selection is None or selection.count > 0:
            camera = step.camera
            target = self.images.fetch(camera)  # overlaps the posing and rendering below
            mask = None if selection is None else selection.mask
            world = self.model.pose(self.triangles(camera.keyframe), mask)
            if a.random_background:
                background = torch.rand(3, generator=self.background_generator).to(self.device)
            else:
                background = self.background
            crop = None
            if a.crop_local_steps and selection is not None:
                crop = self.crops.plan(camera, world, selection.mask)
            if crop is None:
                out = render(camera, world, background, backend=a.backend)
                loss = training_loss(out["render"], target.get(), background, a.lambda_dssim)
                if self.face_error is not None and selection is None:
                    self.face_error.observe(camera, self.triangles(camera.keyframe),
                                            out["render"], composite_rgba(target.get(), background))
            else:   # only the part the trainable rows can reach, scaled as a share of the image
                out = render(self.crops.camera(camera, crop), world, background,
                             backend=a.backend)
                gt = target.get()[crop.slices()].contiguous()
                loss = training_loss(out["render"], gt, background, a.lambda_dssim) \
                    * crop.fraction
            loss = loss + self.regularisation(selection)
            loss.backward()
            if densifying:
                screen_grad = out["viewspace_points"].grad
                if crop is not None:   # d/d NDC of the crop -> d/d NDC of the full image
                    screen_grad = screen_grad * screen_grad.new_tensor(
                        [crop.full_width / crop.width, crop.full_height / crop.height, 1.0])
                self.density.accumulate(screen_grad, out["visibility_filter"], mask,
                                        out["radii"])
            self.optimizer.step(None if selection is None else selection.rows)
            self.optimizer.zero_grad()
            loss = loss.detach()
        if densifying:
            if iteration > a.densify_from_iter and iteration % a.densification_interval == 0:
                large = iteration > a.opacity_reset_interval and a.max_screen_size > 0
                self.density.densify_and_prune(
                    self.model, self.optimizer, a.densify_grad_threshold, a.min_opacity,
                    a.percent_dense * self.extent, self.face_size, self.densify_generator,
                    max_screen_size=a.max_screen_size if large else None,
                    max_world_size=0.1 * self.extent if large else None)
            selective_stage = (a.selection == "paper"
                               and iteration >= self.schedule.frame_stage_start)
            if (iteration % a.opacity_reset_interval == 0 or (
                    a.white_background and iteration == a.densify_from_iter)) and (
                    a.opacity_reset_in_selective_stage or not selective_stage):
                self.density.reset_opacity(self.model, self.optimizer)
        return loss

    def training_seconds(self, now: Optional[float] = None) -> float:
        """Training time so far, evaluation and saving excluded, earlier runs resumed from
        included (0 before ``run``)."""
        if self.start_time is None:
            return self.seconds_before
        now = time.perf_counter() if now is None else now
        return self.seconds_before + (now - self.start_time) - self.side_seconds

    def _on_sigint(self, signum, frame) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    def expected_output_bytes(self, saves: int, checkpoints: int) -> int:
        """What the run will write, about: its PLYs and checkpoints at twice today's count."""
        n = GROWTH * self.model.num_gaussians
        return int(n * (saves * PLY_BYTES_PER_GAUSSIAN
                        + checkpoints * CHECKPOINT_BYTES_PER_GAUSSIAN))

    def _check_space(self, saves: int, checkpoints: int) -> None:
        need = self.expected_output_bytes(saves, checkpoints)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.model_dir).free
        if free < need:
            raise OutputSpaceError(
                f"{self.model_dir}: {free / 2**20:.0f} MiB free, but the run will write about "
                f"{need / 2**20:.0f} MiB ({saves} PLYs, {checkpoints} checkpoints); free space, "
                f"save less often (--save_iterations, --checkpoint_iterations) or choose another "
                f"-m")

    def _rescue(self, iteration: int, failure: OSError) -> None:
        """A write failed for lack of space: keep the state elsewhere if possible, and stop with
        one message (the previous outputs are intact: every write is atomic)."""
        rescue = Path(tempfile.gettempdir()) / f"stga_rescue_{self.model_dir.name}_{iteration}.pth"
        try:
            self.save_checkpoint(iteration, rescue)
            kept = (f"the training state is saved in {rescue}; free space, then resume with "
                    f"--start_checkpoint {rescue}")
        except OSError:
            rescue.unlink(missing_ok=True)
            kept = ("the state could not be saved elsewhere either; resume from the last "
                    "checkpoint in the model folder")
        print(f"\nerror: {failure}; stopped at iteration {iteration}: {kept}", file=sys.stderr)
        raise SystemExit(1)

    def run(self) -> None:
        a = self.args
        last = a.iterations
        tests = set(a.test_iterations) | {last}
        saves = set(a.save_iterations) | {last}
        checkpoints = set(a.checkpoint_iterations)
        self._check_space(len([s for s in saves if s >= self.first_iteration]),
                          len(checkpoints) + (1 if a.checkpoint_minutes > 0 else 0))
        save_config(self.model_dir, a)
        side_work = tests | saves | checkpoints
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        bar = tqdm(range(self.first_iteration, last + 1), desc="Training", disable=a.quiet,
                   initial=self.first_iteration - 1, total=last, dynamic_ncols=True)
        ema = None
        rolling = self.model_dir / LATEST_NAME
        rolling_every = 60.0 * a.checkpoint_minutes
        next_rolling = self.seconds_before + rolling_every
        self.start_time = time.perf_counter()
        self.side_seconds = 0.0  # evaluation and saving, not training
        self.progress = ProgressLog.resume(self.model_dir, self.first_iteration - 1)
        try:
            for iteration in bar:
                loss = self.train_step(iteration)
                if loss is not None and (iteration % 10 == 0 or iteration == last):
                    value = loss.item()
                    ema = value if ema is None else 0.6 * value + 0.4 * ema
                    bar.set_postfix(loss=f"{ema:.4f}", n=self.model.num_gaussians)
                if iteration in side_work and self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)   # the step's queued work is training
                side = self.side_start = time.perf_counter()
                try:
                    if iteration in tests:
                        self.progress.add(iteration, self.training_seconds(side),
                                          self.model.num_gaussians, self.evaluate(iteration))
                    if iteration in saves:
                        self.log(f"\n[ITER {iteration}] Saved {self.save_model(iteration)}")
                    if iteration in checkpoints:
                        self.log(f"\n[ITER {iteration}] Checkpoint "
                                 f"{self.save_checkpoint(iteration)}")
                    if rolling_every > 0 and iteration < last and \
                            self.training_seconds(side) >= next_rolling:
                        self.save_checkpoint(iteration, rolling)
                        next_rolling = self.training_seconds(side) + rolling_every
                except OSError as exc:
                    if not disk_full(exc):
                        raise
                    bar.close()
                    self._rescue(iteration, exc)
                self.side_seconds += time.perf_counter() - side
                if self.stop_requested:
                    path = self.save_checkpoint(iteration)
                    bar.close()
                    print(f"\nInterrupted at iteration {iteration}; checkpoint written to {path}. "
                          f"Resume with --start_checkpoint {path}", file=sys.stderr)
                    raise SystemExit(130)
        finally:
            signal.signal(signal.SIGINT, previous)
            bar.close()
        total = time.perf_counter() - self.start_time
        self.train_seconds = total - self.side_seconds
        rolling.unlink(missing_ok=True)   # the run is complete: its model is saved
        self.log(f"Training done in {total:.1f} s ({self.train_seconds:.1f} s training, the rest "
                 f"evaluating and saving); model in {self.model_dir}")
