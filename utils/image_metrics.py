"""Image-quality metrics shared by training (the D-SSIM loss) and evaluation (metrics.py).

Conventions:
  * Images are float tensors shaped (C, H, W) or (B, C, H, W) with values meant to lie in [0, 1].
    Per-image results come back as a 0-d tensor for (C, H, W) input and as (B,) for batched input.
  * `psnr` clamps both images to [0, 1] first (a metric of what would be written to a PNG).
    `ssim` does NOT clamp: it is also the training loss, and clamping would silently zero the
    gradient of out-of-range pixels.
  * SSIM follows the formulation used by 3D Gaussian Splatting: a normalised Gaussian window
    (11 taps, sigma 1.5) applied per channel with zero padding of window_size // 2 (a 'same'
    convolution), constants C1 = 0.01^2 and C2 = 0.03^2 (data range 1), and the mean of the
    SSIM map. The blur is two separable 1-D convolutions over a stack of the five maps
    (x, y, x*x, y*y, x*y), so each SSIM costs two grouped conv calls.
  * Identical images have infinite PSNR. `psnr` returns +inf unless `cap_db` is given;
    metrics.py passes PSNR_CAP_DB so that its JSON never holds a non-finite number.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "PSNR_CAP_DB",
    "psnr",
    "masked_psnr",
    "ssim",
    "ssim_map",
    "masked_ssim",
    "gaussian_window_1d",
]

# PSNR reported for images that are (numerically) identical. JSON has no +inf and one
# infinite view would make every mean infinite; 100 dB (MSE 1e-10) is far above any real
# render (typically 20-40 dB) so a capped value cannot be mistaken for a real one.
PSNR_CAP_DB: float = 100.0

_C1 = 0.01 ** 2
_C2 = 0.03 ** 2


def _check_pair(img: torch.Tensor, gt: torch.Tensor) -> None:
    """Reject shape mistakes early: a silent broadcast would produce a plausible wrong number."""
    if img.shape != gt.shape:
        raise ValueError(f"image shapes differ: {tuple(img.shape)} vs {tuple(gt.shape)}")
    if img.dim() not in (3, 4):
        raise ValueError(f"expected (C,H,W) or (B,C,H,W) images, got shape {tuple(img.shape)}")


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == 3 else x


def _check_mask(mask: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Return the mask as a (B or 1, 1, H, W) bool tensor, after checking its shape."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.dim() == 2 and mask.shape == (height, width):
        return mask[None, None]
    if mask.dim() == 3 and mask.shape == (batch, height, width):
        return mask[:, None]
    raise ValueError(
        f"mask shape {tuple(mask.shape)} does not match the images: expected ({height}, {width})"
        f" or ({batch}, {height}, {width})"
    )


def _mse_to_psnr(mse: torch.Tensor, cap_db: float | None) -> torch.Tensor:
    out = -10.0 * torch.log10(mse)  # mse == 0 -> +inf
    if cap_db is not None:
        out = out.clamp(max=cap_db)
    return out


def psnr(img: torch.Tensor, gt: torch.Tensor, cap_db: float | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (both clamped to [0, 1]).

    The mean squared error is taken over (C, H, W) of each image. Identical images give
    +inf unless `cap_db` is set, in which case the result is at most `cap_db`.
    """
    _check_pair(img, gt)
    x = _as_batch(img).clamp(0.0, 1.0)
    y = _as_batch(gt).clamp(0.0, 1.0)
    mse = (x - y).square().flatten(1).mean(dim=1)
    out = _mse_to_psnr(mse, cap_db)
    return out[0] if img.dim() == 3 else out


def masked_psnr(
    img: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, cap_db: float | None = None
) -> torch.Tensor:
    """PSNR over the pixels where the bool `mask` ((H,W) or (B,H,W)) is True, all channels.

    Used for region metrics (e.g. face parts). A view whose mask is empty gives NaN, so a
    region that is not visible in a view can be skipped by the caller instead of crashing.
    """
    _check_pair(img, gt)
    x = _as_batch(img).clamp(0.0, 1.0)
    y = _as_batch(gt).clamp(0.0, 1.0)
    b, c, h, w = x.shape
    m = _check_mask(mask, b, h, w).to(device=x.device, dtype=x.dtype).expand(b, 1, h, w)
    sq_err = ((x - y).square() * m).flatten(1).sum(dim=1)
    count = m.flatten(1).sum(dim=1) * c
    mse = sq_err / count  # 0 / 0 -> NaN for an empty mask
    out = _mse_to_psnr(mse, cap_db)
    return out[0] if img.dim() == 3 else out


@functools.lru_cache(maxsize=64)
def _cached_window(
    window_size: int, sigma: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    # Computed in float64 then cast, so every dtype gets the same (best-rounded) taps.
    centre = window_size // 2
    taps = torch.tensor(
        [math.exp(-((i - centre) ** 2) / (2.0 * sigma ** 2)) for i in range(window_size)],
        dtype=torch.float64,
    )
    taps = taps / taps.sum()
    return taps.to(device=device, dtype=dtype)


def gaussian_window_1d(
    window_size: int = 11,
    sigma: float = 1.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Normalised 1-D Gaussian taps; the 2-D SSIM window is their outer product.

    Cached per (size, sigma, device, dtype) so the training loop does not rebuild it each step.
    """
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd number, got {window_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return _cached_window(int(window_size), float(sigma), dev, dtype)


def _blur_stack(stack: torch.Tensor, window_size: int, sigma: float) -> torch.Tensor:
    """Gaussian-blur every channel of (B, K, H, W) with zero 'same' padding: two grouped 1-D convs."""
    k = stack.shape[1]
    g = gaussian_window_1d(window_size, sigma, stack.device, stack.dtype)
    pad = window_size // 2
    out = F.conv2d(stack, g.view(1, 1, -1, 1).expand(k, 1, -1, 1), padding=(pad, 0), groups=k)
    out = F.conv2d(out, g.view(1, 1, 1, -1).expand(k, 1, 1, -1), padding=(0, pad), groups=k)
    return out


def ssim_map(
    img: torch.Tensor, gt: torch.Tensor, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-pixel, per-channel SSIM map, shaped like the (batched) input: (B, C, H, W).

    Exposed so that region metrics can average it inside a mask.
    """
    _check_pair(img, gt)
    if not (img.is_floating_point() and gt.is_floating_point()):
        raise TypeError("ssim needs floating-point images")
    if img.dtype != gt.dtype:
        gt = gt.to(img.dtype)
    x = _as_batch(img)
    y = _as_batch(gt)
    c = x.shape[1]
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    blurred = _blur_stack(stack, window_size, sigma)
    mu_x, mu_y, e_xx, e_yy, e_xy = blurred.split(c, dim=1)
    mu_xx = mu_x * mu_x
    mu_yy = mu_y * mu_y
    mu_xy = mu_x * mu_y
    var_x = e_xx - mu_xx
    var_y = e_yy - mu_yy
    cov_xy = e_xy - mu_xy
    num = (2.0 * mu_xy + _C1) * (2.0 * cov_xy + _C2)
    den = (mu_xx + mu_yy + _C1) * (var_x + var_y + _C2)
    return num / den


def ssim(
    img: torch.Tensor, gt: torch.Tensor, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity (3DGS flavour): mean of the SSIM map over (C, H, W) of each image.

    Differentiable; the training loss D-SSIM is `1 - ssim(render, gt)` (use `.mean()` on a
    batch). Returns a 0-d tensor for (C,H,W) input and (B,) for (B,C,H,W) input.
    """
    out = ssim_map(img, gt, window_size, sigma).flatten(1).mean(dim=1)
    return out[0] if img.dim() == 3 else out


def masked_ssim(
    img: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """SSIM map (computed on the full image) averaged over channels and the pixels in `mask`.

    The map is computed on the whole image so that pixels at the region border see their
    real neighbourhood. `mask` is bool (H,W) or (B,H,W); an empty mask gives NaN.
    """
    smap = ssim_map(img, gt, window_size, sigma)
    b, c, h, w = smap.shape
    m = _check_mask(mask, b, h, w).to(device=smap.device, dtype=smap.dtype).expand(b, 1, h, w)
    total = (smap * m).flatten(1).sum(dim=1)
    count = m.flatten(1).sum(dim=1) * c
    out = total / count
    return out[0] if img.dim() == 3 else out
