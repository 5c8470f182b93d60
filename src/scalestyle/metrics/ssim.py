"""SSIM (Wang, Bovik, Sheikh & Simoncelli 2004) in pure torch, batched.

Per window (an 11x11 Gaussian of sigma 1.5, "valid" positions only, as the paper's reference code):

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

with C1 = (0.01 L)^2, C2 = (0.03 L)^2 and data range L = 1; the image's score is the mean over windows.
Colour images: ``channels="rgb"`` (default) averages the SSIM maps of R, G and B (as scikit-image with
``channel_axis``, torchmetrics and pytorch-msssim do); ``channels="luma"`` scores the BT.601 luma
Y = 0.299 R + 0.587 G + 0.114 B only (the paper's grayscale setting; MATLAB's ``rgb2gray`` weights). The
reference code's optional downsampling of large images is not applied.

Moments are computed as E[x^2] - E[x]^2 with separable convolutions. In float32 that difference loses
about 1e-4 of SSIM in flat regions (relative to C2 = 9e-4), the precision of torchmetrics and
pytorch-msssim; the default float64 agrees with the window-by-window definition to ~1e-12, as
scikit-image does.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from scalestyle.metrics._common import (
    check_batch_size,
    check_images,
    check_refs,
    chunks,
    finish,
)

SSIMChannels = Literal["rgb", "luma"]

WINDOW_SIZE = 11
SIGMA = 1.5
K1 = 0.01
K2 = 0.03
_LUMA = (0.299, 0.587, 0.114)


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """1-D Gaussian weights of odd ``size``, summing to 1 (the 2-D window is their outer product)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be odd and positive, got {size}")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_chunk(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    b, c = x.shape[:2]
    # the five local moments in one grouped, separable convolution: filter rows, then columns
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    k = g.to(x).view(1, 1, -1, 1).expand(5 * c, 1, -1, 1)
    blurred = F.conv2d(F.conv2d(stack, k, groups=5 * c), k.transpose(2, 3), groups=5 * c)
    mu_x, mu_y, ex2, ey2, exy = blurred.split(c, dim=1)
    var_x = ex2 - mu_x * mu_x
    var_y = ey2 - mu_y * mu_y
    cov = exy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (num / den).reshape(b, -1).mean(1)


SSIM_BATCH_SIZE = 8
"""Default chunk: in float64 a 1024x1024 RGB image holds ~120 MB of moment maps while it is scored."""


def ssim(
    img_B3HW: torch.Tensor,
    ref_B3HW: torch.Tensor,
    *,
    channels: SSIMChannels = "rgb",
    batch_size: int = SSIM_BATCH_SIZE,
    dtype: torch.dtype = torch.float64,
    window_size: int = WINDOW_SIZE,
    sigma: float = SIGMA,
) -> torch.Tensor:
    """SSIM of each image with its reference, ``(B,)`` float32 on CPU; 1 for identical images.

    Images and references in [0, 1], of one size, at least ``window_size`` pixels on each side; one
    reference may serve all images. Computed on the images' device in ``dtype`` (see the module
    docstring on float32).
    """
    if channels not in ("rgb", "luma"):
        raise ValueError(f"channels must be 'rgb' or 'luma', got {channels!r}")
    check_batch_size(batch_size)
    img_B3HW = check_images(img_B3HW)
    ref_B3HW = check_refs(img_B3HW, ref_B3HW, same_size=True)
    if min(img_B3HW.shape[2:]) < window_size:
        raise ValueError(
            f"images of {tuple(img_B3HW.shape[2:])} are smaller than the {window_size}-pixel window"
        )
    g = gaussian_window(window_size, sigma)
    c1, c2 = K1**2, K2**2  # data range 1
    luma = torch.tensor(_LUMA, dtype=dtype, device=img_B3HW.device).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        ref = ref_B3HW.to(device=img_B3HW.device, dtype=dtype)
        for rows in chunks(len(img_B3HW), batch_size):
            x = img_B3HW[rows].to(dtype)
            y = ref.expand(len(x), -1, -1, -1) if len(ref) == 1 else ref[rows]
            if channels == "luma":
                x, y = (x * luma).sum(1, keepdim=True), (y * luma).sum(1, keepdim=True)
            out.append(_ssim_chunk(x, y, g, c1, c2))
    return finish(torch.cat(out))
