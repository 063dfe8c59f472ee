"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", version 0.1) without torchvision.

Why this exists: the `lpips` package imports torchvision, and the torchvision wheel on PyPI is
a CUDA build whose import fails on CPU-only installs. The metric itself only needs

  * the backbone convolutions (the `features` part of AlexNet or VGG16), rebuilt here in plain
    torch.nn with torchvision's layer indices, so torchvision's ImageNet checkpoints
    (`features.N.weight` / `features.N.bias`) load as they are, from torch's hub cache
    (`torch.hub.get_dir()/checkpoints/`), the file torchvision itself would download;
  * the learned 1x1 linear heads, read from the weight files that ship inside the `lpips`
    package (`lpips/weights/v0.1/{alex,vgg}.pth`), located without importing the package.

The backbone is fetched on first use, as the `lpips` package (through torchvision) does: from
PyTorch's model server into the hub cache, its SHA-256 checked against the prefix in the file name,
with a progress bar. Without a network, or for a missing head file, `LpipsUnavailable` says in one
message which file is missing, the folder it belongs in, and how to get it.

Distance, for images x, y in [0, 1]:
  1. map to [-1, 1] (2x - 1), then the LPIPS scaling layer ((v - shift) / scale), which turns
     [-1, 1] input into ImageNet-normalised input;
  2. backbone activations at 5 ReLU taps, each unit-normalised along channels
     (f / (||f||_2 + 1e-10));
  3. squared difference, 1x1 conv with the learned non-negative weights (no bias),
     spatial mean, sum over the 5 taps.
"""
from __future__ import annotations

import importlib.util
import os
import re
import urllib.error

import torch
import torch.nn as nn

__all__ = [
    "LpipsUnavailable",
    "LPIPS",
    "NETS",
    "BACKBONE_URL",
    "backbone_checkpoint_path",
    "fetch_backbone",
    "lpips_weights_dir",
    "head_weights_path",
    "get_lpips",
    "lpips",
]


class LpipsUnavailable(RuntimeError):
    """A weight file LPIPS needs is missing or unreadable; the message says which and how to fix it."""


# Per network: torchvision checkpoint file, (kind, args) per `features` index, ReLU indices
# tapped by LPIPS, and channels at each tap.
#   conv: (in, out, kernel, stride, padding); pool: (kernel, stride)
_ALEX_LAYERS: list[tuple] = [
    ("conv", (3, 64, 11, 4, 2)), ("relu", ()), ("pool", (3, 2)),
    ("conv", (64, 192, 5, 1, 2)), ("relu", ()), ("pool", (3, 2)),
    ("conv", (192, 384, 3, 1, 1)), ("relu", ()),
    ("conv", (384, 256, 3, 1, 1)), ("relu", ()),
    ("conv", (256, 256, 3, 1, 1)), ("relu", ()),
]


def _vgg16_layers() -> list[tuple]:
    layers: list[tuple] = []
    c_in = 3
    for block, (c_out, n_convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
        if block > 0:
            layers.append(("pool", (2, 2)))
        for _ in range(n_convs):
            layers.append(("conv", (c_in, c_out, 3, 1, 1)))
            layers.append(("relu", ()))
            c_in = c_out
    return layers


NETS: dict[str, dict] = {
    "alex": {
        "backbone_file": "alexnet-owt-7be5be79.pth",
        "torchvision_fn": "alexnet",
        "layers": _ALEX_LAYERS,
        "taps": (1, 4, 7, 9, 11),
        "channels": (64, 192, 384, 256, 256),
    },
    "vgg": {
        "backbone_file": "vgg16-397923af.pth",
        "torchvision_fn": "vgg16",
        "layers": _vgg16_layers(),  # torchvision's features.0 .. features.29 (last pool unused)
        "taps": (3, 8, 15, 22, 29),
        "channels": (64, 128, 256, 512, 512),
    },
}

#: Where torchvision's ImageNet checkpoints are served (``{file}``: the backbone file name).
BACKBONE_URL = "https://download.pytorch.org/models/{file}"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")   # torchvision's names end in -<sha256 prefix>

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


def _check_net(net: str) -> dict:
    if net not in NETS:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {sorted(NETS)}")
    return NETS[net]


def backbone_checkpoint_path(net: str, hub_dir: str | None = None) -> str:
    """Where torchvision keeps the ImageNet weights for `net`: <torch hub dir>/checkpoints/<file>."""
    spec = _check_net(net)
    hub = hub_dir if hub_dir is not None else torch.hub.get_dir()
    return os.path.join(hub, "checkpoints", spec["backbone_file"])


def lpips_weights_dir() -> str:
    """The installed lpips package's `weights/v0.1` folder, found without importing lpips.

    Importing lpips would import torchvision, which fails on CPU-only installs.
    """
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise LpipsUnavailable(
            "LPIPS needs the linear-head weights that ship with the 'lpips' Python package "
            "(lpips/weights/v0.1/alex.pth and vgg.pth), but the package is not installed. "
            "Install it with `pip install lpips==0.1.4` (it is only read from disk, never imported, "
            "so a broken torchvision does not matter)."
        )
    pkg_dir = list(spec.submodule_search_locations)[0]
    return os.path.join(pkg_dir, "weights", "v0.1")


def head_weights_path(net: str, weights_dir: str | None = None) -> str:
    """Path of the LPIPS v0.1 linear-head file for `net` (`<weights_dir>/<net>.pth`)."""
    _check_net(net)
    folder = weights_dir if weights_dir is not None else lpips_weights_dir()
    return os.path.join(folder, f"{net}.pth")


def _missing_backbone_message(net: str, path: str) -> str:
    spec = NETS[net]
    fname = spec["backbone_file"]
    folder = os.path.dirname(path)
    return (
        f"LPIPS ({net}) needs torchvision's ImageNet weights file '{fname}', "
        f"which is not at {path}. Put it in the folder {folder} (torch.hub.get_dir()/checkpoints; "
        f"set TORCH_HOME to use another hub folder). To get it: on a machine with internet run "
        f"`python -c \"import torchvision; torchvision.models.{spec['torchvision_fn']}(weights='DEFAULT')\"` "
        f"and copy {fname} from that machine's torch hub checkpoints folder "
        f"(by default ~/.cache/torch/hub/checkpoints/) into {folder}, or download "
        f"https://download.pytorch.org/models/{fname} there."
    )


def fetch_backbone(net: str, path: str | None = None, progress: bool = True) -> str:
    """Download ``net``'s ImageNet backbone to ``path`` (default: the hub cache), check its
    SHA-256 prefix, and return the path; ``LpipsUnavailable`` (one line) when that fails."""
    spec = _check_net(net)
    dest = path if path is not None else backbone_checkpoint_path(net)
    url = BACKBONE_URL.format(file=spec["backbone_file"])
    match = _HASH_IN_NAME.search(spec["backbone_file"])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, dest, hash_prefix=match.group(1) if match else None,
                                       progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LpipsUnavailable(
            f"could not download {url} ({reason}); without a network, put {spec['backbone_file']} "
            f"into {os.path.dirname(dest)} to get LPIPS") from None
    except RuntimeError as exc:   # torch.hub's hash check
        raise LpipsUnavailable(f"the download of {url} is corrupt ({exc}); nothing was kept") \
            from None
    return dest


def _missing_head_message(net: str, path: str) -> str:
    folder = os.path.dirname(path)
    return (
        f"LPIPS ({net}) needs the linear-head weights file '{net}.pth' of the lpips package "
        f"(v0.1), which is not at {path}. It belongs in {folder}; reinstall the package with "
        f"`pip install --force-reinstall lpips==0.1.4`, or copy {net}.pth from another "
        f"installation's lpips/weights/v0.1/ folder there."
    )


def _load_state_dict(path: str, what: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated file: make it a clear, catchable error
        raise LpipsUnavailable(f"cannot read {what} file {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise LpipsUnavailable(f"{what} file {path} does not hold a state dict")
    return obj


class _Backbone(nn.Module):
    """The convolutional `features` stack of AlexNet / VGG16, returning the 5 LPIPS taps.

    Layer indices equal torchvision's, so its `features.N.*` checkpoint keys load directly.
    ReLUs are not in-place so the module can also be used in a differentiable loss.
    """

    def __init__(self, net: str) -> None:
        super().__init__()
        spec = _check_net(net)
        modules: list[nn.Module] = []
        for kind, args in spec["layers"]:
            if kind == "conv":
                c_in, c_out, k, s, p = args
                modules.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
            elif kind == "relu":
                modules.append(nn.ReLU(inplace=False))
            else:
                k, s = args
                modules.append(nn.MaxPool2d(kernel_size=k, stride=s))
        self.features = nn.Sequential(*modules)
        self.taps = tuple(spec["taps"])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        last = self.taps[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
            if i == last:
                break
        return outs


class LPIPS(nn.Module):
    """LPIPS v0.1 distance module. forward(x, y) with images in [0, 1] -> per-image distance.

    Build with `LPIPS.from_files(...)` (or `get_lpips`, which caches) to load real weights;
    the bare constructor leaves random weights (only useful for tests).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        spec = _check_net(net)
        self.net = net
        self.backbone = _Backbone(net)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in spec["channels"])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def load_backbone(self, path: str) -> None:
        """Load torchvision's ImageNet checkpoint (only its `features.*` entries are used)."""
        if not os.path.isfile(path):
            raise LpipsUnavailable(_missing_backbone_message(self.net, path))
        sd = _load_state_dict(path, f"{self.net} backbone")
        feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        expected = self.backbone.features.state_dict()
        missing = sorted(set(expected) - set(feats))
        wrong = sorted(
            k for k in expected if k in feats and tuple(feats[k].shape) != tuple(expected[k].shape)
        )
        if missing or wrong:
            raise LpipsUnavailable(
                f"{path} is not torchvision's {NETS[self.net]['torchvision_fn']} checkpoint: "
                f"missing features.{missing[:3]} / wrong shapes for features.{wrong[:3]}"
            )
        self.backbone.features.load_state_dict({k: feats[k] for k in expected})

    def load_heads(self, path: str) -> None:
        """Load the lpips package's linear heads (keys `lin{i}.model.1.weight`, shape (1,C,1,1))."""
        if not os.path.isfile(path):
            raise LpipsUnavailable(_missing_head_message(self.net, path))
        sd = _load_state_dict(path, f"LPIPS {self.net} head")
        for i, head in enumerate(self.heads):
            # the package wraps each 1x1 conv as Sequential(Dropout, Conv2d): index 1 is the conv
            key = f"lin{i}.model.1.weight"
            if key not in sd or tuple(sd[key].shape) != tuple(head.weight.shape):
                got = tuple(sd[key].shape) if key in sd else "missing"
                raise LpipsUnavailable(
                    f"{path} is not an LPIPS v0.1 '{self.net}' head file: {key} is {got}, "
                    f"expected {tuple(head.weight.shape)}"
                )
            with torch.no_grad():
                head.weight.copy_(sd[key])

    @classmethod
    def from_files(
        cls,
        net: str = "alex",
        backbone_path: str | None = None,
        head_path: str | None = None,
    ) -> "LPIPS":
        """Build and load a model; default paths are the hub cache and the lpips package folder."""
        model = cls(net)
        # Check the head first: if lpips is not installed, say that rather than blame the backbone.
        hp = head_path if head_path is not None else head_weights_path(net)
        bp = backbone_path if backbone_path is not None else backbone_checkpoint_path(net)
        model.load_heads(hp)
        model.load_backbone(bp)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @staticmethod
    def _unit_normalise(f: torch.Tensor) -> torch.Tensor:
        return f / (f.square().sum(dim=1, keepdim=True).sqrt() + _EPS)

    def forward(self, img: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Distance between images in [0, 1]: 0-d for (3,H,W), (B,) for (B,3,H,W). Symmetric."""
        if img.shape != gt.shape:
            raise ValueError(f"image shapes differ: {tuple(img.shape)} vs {tuple(gt.shape)}")
        single = img.dim() == 3
        x = img.unsqueeze(0) if single else img
        y = gt.unsqueeze(0) if single else gt
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects (3,H,W) or (B,3,H,W) RGB images, got {tuple(img.shape)}")
        dtype = self.shift.dtype
        b = x.shape[0]
        both = torch.cat([x, y], dim=0).to(dtype)
        both = ((2.0 * both - 1.0) - self.shift) / self.scale
        total = both.new_zeros(b)
        for feat, head in zip(self.backbone(both), self.heads):
            n = self._unit_normalise(feat)
            diff = (n[:b] - n[b:]).square()
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total[0] if single else total


_CACHE: dict[tuple, LPIPS] = {}


def get_lpips(
    net: str = "alex",
    device: torch.device | str = "cpu",
    backbone_path: str | None = None,
    head_path: str | None = None,
    download: bool = True,
) -> LPIPS:
    """A loaded, frozen LPIPS model on `device`, cached per (net, device, weight files).

    Paths default to the torch hub cache (backbone) and the installed lpips package (heads);
    tests inject their own. A backbone missing from the hub cache is downloaded there first
    (unless ``download`` is False). Raises LpipsUnavailable when a weight file is missing or
    cannot be fetched.
    """
    _check_net(net)
    dev = torch.device(device)
    bp = backbone_path if backbone_path is not None else backbone_checkpoint_path(net)
    hp = head_path if head_path is not None else head_weights_path(net)
    if download and backbone_path is None and not os.path.isfile(bp) and os.path.isfile(hp):
        fetch_backbone(net, bp)
    key = (net, str(dev), os.path.abspath(bp), os.path.abspath(hp))
    model = _CACHE.get(key)
    if model is None:
        model = LPIPS.from_files(net, backbone_path=bp, head_path=hp).to(dev)
        _CACHE[key] = model
    return model


def lpips(img: torch.Tensor, gt: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """Convenience: LPIPS distance with the default weight files, on the images' device."""
    return get_lpips(net, img.device)(img, gt)
