"""Command-line options shared by train.py, render.py and metrics.py (3DGS's flag names).

Options are grouped as in 3DGS: model/data, optimisation, pipeline. A trained model folder keeps
its options in ``cfg_args.json`` so render.py can rebuild the same set-up (read as JSON, never
evaluated).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict

import cv2
import torch

from scene import builtin_variant
from utils.atomic import atomic_path

DEFAULT_ITERATIONS = 50_000
DEMO_ITERATIONS = 2_000
CONFIG_NAME = "cfg_args.json"


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a clear usage error otherwise)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a clear usage error otherwise)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a clear usage error otherwise)."""
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text}")
    return value


def resolution_value(text: str) -> float:
    """argparse type of -r: -1, or a positive scale divisor / target width."""
    value = float(text)
    if value != -1 and not value > 0:
        raise argparse.ArgumentTypeError(f"must be -1, 1, 2, 4, 8 or a width in pixels, "
                                         f"got {text}")
    return value


def torch_device(name: str | None) -> torch.device:
    """The device a command runs on (None: cuda when available, else cpu); a ValueError with a
    one-line reason for a malformed name or CUDA asked for without a usable GPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a torch device name (cpu, cuda, cuda:1, ...)") \
            from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this PyTorch build sees no CUDA GPU "
                             f"(torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                             f"device(s) here")
    return device


def unit_fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (a clear usage error otherwise)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser, source_required: bool = True) -> None:
    g = parser.add_argument_group("model and data")
    g.add_argument("-s", "--source_path", required=source_required, default=None,
                   help="dataset folder in the STGA format, or 'demo' / 'demo-large' for the "
                        "built-in realistic head (CPU-sized / NeRSemble-sized; generated on first "
                        "use into ~/.cache/stga or $STGA_CACHE)")
    g.add_argument("-m", "--model_path", default=None,
                   help="output folder of the model (default: output/<dataset name>)")
    g.add_argument("-r", "--resolution", type=resolution_value, default=-1,
                   help="image scale: 1, 2, 4 or 8 divide the size by that factor; another "
                        "positive number is a target width in pixels; -1 (default) keeps the full "
                        "size up to 1600 pixels wide")
    g.add_argument("-w", "--white_background", action="store_true",
                   help="composite RGBA images onto white instead of black")
    g.add_argument("--random_background", action="store_true",
                   help="train on a random background colour per iteration (transparent regions "
                        "then learn to stay transparent); evaluation uses the fixed background")
    g.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                   help="hold out the test and val splits and report them at --test_iterations "
                        "(default); --no-eval trains on every split")
    g.add_argument("--sh_degree", type=int, default=3, choices=range(4),
                   help="maximum spherical-harmonics degree of the colours (default 3)")
    g.add_argument("--face_scale", action="store_true",
                   help="multiply each Gaussian's local offset and scale by its face's size "
                        "(GaussianAvatars' convention); off by default, as in STGA")
    g.add_argument("--init_per_face", type=positive_int, default=2,
                   help="Gaussians per face when the dataset has no points3d.ply (default 2)")


def add_optimization_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("optimisation")
    g.add_argument("--iterations", type=positive_int, default=None,
                   help=f"training iterations (default {DEFAULT_ITERATIONS}; "
                        f"{DEMO_ITERATIONS} for -s demo)")
    g.add_argument("--position_lr_init", type=float, default=1.6e-4,
                   help="initial position learning rate, times the scene extent (default 1.6e-4)")
    g.add_argument("--position_lr_final", type=float, default=1.6e-6,
                   help="final position learning rate, times the scene extent (default 1.6e-6)")
    g.add_argument("--position_lr_max_steps", type=int, default=None,
                   help="iterations over which the position rate decays (default: --iterations)")
    g.add_argument("--feature_lr", type=float, default=2.5e-3,
                   help="learning rate of the SH base colour; higher orders use 1/20 of it")
    g.add_argument("--opacity_lr", type=float, default=0.05, help="opacity learning rate")
    g.add_argument("--scaling_lr", type=float, default=5e-3, help="log-scale learning rate")
    g.add_argument("--rotation_lr", type=float, default=1e-3, help="rotation learning rate")
    g.add_argument("--lambda_dssim", type=float, default=0.2,
                   help="weight of the D-SSIM term in the loss (1 - w) L1 + w (1 - SSIM)")
    g.add_argument("--sh_up_every", type=int, default=1000,
                   help="raise the active SH degree every this many iterations (default 1000)")
    g.add_argument("--lambda_xyz", type=float, default=0.01,
                   help="weight of the position regulariser relu(|mu_local| - threshold_xyz)")
    g.add_argument("--threshold_xyz", type=float, default=1.0,
                   help="position threshold in units of the mean face size (default 1.0)")
    g.add_argument("--lambda_scale", type=float, default=1.0,
                   help="weight of the scale regulariser relu(scale - threshold_scale)")
    g.add_argument("--threshold_scale", type=float, default=0.6,
                   help="scale threshold in units of the mean face size (default 0.6)")

    s = parser.add_argument_group("selective training (STGA)")
    s.add_argument("--selection", choices=("paper", "none"), default="paper",
                   help="paper: in selective steps only the Gaussians of the frame's "
                        "training_faces are optimised, the rest are frozen; none: all Gaussians "
                        "train at every step (the ablation / GaussianAvatars-style baseline)")
    s.add_argument("--order", choices=("frames", "random"), default="frames",
                   help="frames: after the warm-up, visit frames in shuffled order and train all "
                        "views of a frame before the next (STGA); random: one random training "
                        "image per iteration (3DGS)")
    s.add_argument("--global_warmup", type=int, default=None,
                   help="iterations of global warm-up (random views, all Gaussians trainable) "
                        "before selective training (default: 10%% of --iterations)")
    s.add_argument("--crop_local_steps", action=argparse.BooleanOptionalAction, default=None,
                   help="in selective steps, render and score only the image region the "
                        "trainable Gaussians can reach (their screen footprint widened by the "
                        "SSIM window), with the loss scaled to the full image's: the same "
                        "gradients for a fraction of the pixels (on a GPU the footprint is the "
                        "one of the image's previous visit, widened by 32 pixels, so that no step "
                        "waits for the device). Default: on for the CPU, where it saves about "
                        "10%% per selective step on the demo; off on a GPU, where it was measured "
                        "slower")
    s.add_argument("--static_fit", type=non_negative_int, default=0,
                   help="iterations of a static fit before the warm-up: random views of the "
                        "first training keyframe only, every Gaussian trainable (the authors' "
                        "pipeline starts its dynamic stage from such a model; default 0: none)")
    s.add_argument("--error_faces", type=unit_fraction, default=0.0,
                   help="selection by rendered error as well as by motion: in selective steps "
                        "also train this share of the keyframe's faces whose recent rendered "
                        "error is highest (measured in the whole-image steps at each face's "
                        "projected centre; default 0: motion only, as in the paper)")
    s.add_argument("--global_every", type=positive_int, default=2,
                   help="every this many frames, a frame is trained with all Gaussians "
                        "(global refinement; default 2: half the frames, measured 4 dB better "
                        "than the 1 in 20 of the paper's code on the demo at equal iterations)")

    d = parser.add_argument_group("densification (3DGS adaptive density control)")
    d.add_argument("--densify", action=argparse.BooleanOptionalAction, default=True,
                   help="clone/split Gaussians with large view-space gradients and prune faint "
                        "ones; new Gaussians inherit their parent's face (default on)")
    d.add_argument("--densify_from_iter", type=int, default=500,
                   help="first iteration of densification (default 500)")
    d.add_argument("--densify_until_iter", type=int, default=None,
                   help="last iteration of densification (default: half of --iterations)")
    d.add_argument("--densification_interval", type=int, default=100,
                   help="densify every this many iterations (default 100)")
    d.add_argument("--opacity_reset_interval", type=int, default=3000,
                   help="reset opacities to 0.01 every this many iterations while densifying")
    d.add_argument("--densify_grad_threshold", type=float, default=2e-4,
                   help="mean view-space (NDC) gradient norm above which a Gaussian densifies")
    d.add_argument("--percent_dense", type=float, default=0.01,
                   help="Gaussians larger than this fraction of the scene extent are split, "
                        "smaller ones cloned (default 0.01)")
    d.add_argument("--opacity_reset_in_selective_stage", action=argparse.BooleanOptionalAction,
                   default=False,
                   help="also apply the opacity resets (and the white-background reset at "
                        "--densify_from_iter) after the warm-up, in the selective stage; off by "
                        "default: a reset clamps every Gaussian, but in selective steps only the "
                        "selected ones can recover, the rest stay nearly transparent until a "
                        "global frame trains them (measured: -2.3 to -2.8 dB)")
    d.add_argument("--max_screen_size", type=non_negative_float, default=20.0,
                   help="after the first --opacity_reset_interval, densification also prunes "
                        "Gaussians whose screen radius exceeded this many pixels since the last "
                        "densification, or whose world size exceeds 0.1 of the scene extent "
                        "(3DGS's rules); 0 turns both off (default 20)")
    d.add_argument("--min_opacity", type=float, default=0.005,
                   help="Gaussians fainter than this are pruned (never a face's last one)")


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pipeline")
    g.add_argument("--device", default=None,
                   help="torch device (default: cuda when available, else cpu)")
    g.add_argument("--data_device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="where the decoded training images live on a GPU machine: cuda (GPU "
                        "memory, no copy per step), cpu (pinned host memory, each step's image "
                        "copied asynchronously); auto: cuda when they take at most half the "
                        "free GPU memory")
    g.add_argument("--backend", choices=("auto", "torch", "cuda"), default="auto",
                   help="rasterizer backend: auto picks the CUDA extension for CUDA tensors")
    g.add_argument("--fused", choices=("auto", "off"), default="auto",
                   help="the fused CUDA training kernels (loss, selective Adam, posing): auto "
                        "uses them on a GPU when they build; off uses the equivalent PyTorch "
                        "operations (for A/B comparisons)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_threads_arg(g)
    g.add_argument("--quiet", action="store_true", help="print only errors")


def add_threads_arg(group) -> None:
    """--threads, shared by the commands."""
    group.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads for PyTorch and OpenCV (default: PyTorch's, one per "
                            "core); with several jobs on one machine give each a share")


def set_threads(threads: int | None) -> None:
    """Apply --threads (None: leave the libraries' defaults)."""
    if threads is not None:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)


def model_path_for(args: argparse.Namespace) -> Path:
    if args.model_path:
        return Path(args.model_path)
    if builtin_variant(args.source_path) is not None:
        name = args.source_path
    else:
        name = Path(args.source_path).resolve().name
    return Path("output") / name


def check_output_folder(path: Path) -> None:
    """ValueError (one line) unless ``path`` is, or can be created as, a folder this process can
    write: the commands check their model folder before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder; choose another -m")
    existing = path
    while not existing.exists():       # the first ancestor that exists decides
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{path}: cannot be created, {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is" if existing == path else f"cannot be created: {existing} is"
        raise ValueError(f"{path}: {where} not writable; choose another -m or fix its "
                         f"permissions")


def save_config(model_dir: Path, args: argparse.Namespace) -> None:
    """Write the options of a run to ``<model>/cfg_args.json`` atomically."""
    model_dir.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list,
                                                                     type(None)))}
    with atomic_path(model_dir / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def load_config(model_dir: Path) -> Dict[str, Any]:
    """Options a model was trained with, checked: FileNotFoundError when the folder is not a
    model, ValueError (naming the file) when the file is corrupt or lacks what the commands
    read."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {model_dir} a folder written by train.py?")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of options")
    if not isinstance(data.get("source_path"), str) or not data["source_path"]:
        raise ValueError(f"{path}: 'source_path' is missing or not a string; pass -s to say "
                         f"where the dataset is, or retrain")
    checks = {"resolution": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "white_background": lambda v: isinstance(v, bool),
              "sh_degree": lambda v: isinstance(v, int) and not isinstance(v, bool)}
    for key, valid in checks.items():
        if key in data and not valid(data[key]):
            raise ValueError(f"{path}: '{key}' has a value of the wrong type: {data[key]!r}")
    return data
