"""Image I/O: reading user images safely, the upstream preprocessing, and tensors back to PIL.

:func:`preprocess` and :func:`to_pil` follow `tools/run_infinity.py` of FoundationVision/Infinity
(``transform``; the uint8 truncation at the end of ``gen_one_img``'s caller), except that :func:`to_pil`
returns RGB where upstream flips to BGR for OpenCV.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

MAX_PIXELS = 64_000_000
"""Images with more pixels than this are refused before decoding (64 megapixels, ~200 MB as RGB)."""

MIN_SIDE = 16
"""Default smallest accepted side in pixels."""

MAX_SIDE = 4096
"""Images with a longer side are downscaled on open to this long side (LANCZOS, aspect kept): over twice the
largest generated side (1776 px), so any schedule's preprocessing still only downscales; a 62-megapixel
JPEG decodes at a half or less of its size (``Image.draft``) instead of in full."""

_WHITE = (255, 255, 255)


def load_image(
    path: str | os.PathLike[str],
    *,
    min_side: int = MIN_SIDE,
    max_pixels: int = MAX_PIXELS,
    max_side: int | None = MAX_SIDE,
) -> Image.Image:
    """Read an image file as an RGB PIL image.

    - EXIF orientation is applied (photos are shown upright; upstream ignores it).
    - Transparency (RGBA, LA, palette with transparency) is composited on white rather than dropped.
    - 16-bit and 32-bit grayscale (I;16, I, F) are scaled to 8 bits; CMYK, YCbCr, palette, L and 1 use
      PIL's conversion. Animated files give their first frame.
    - A long side above ``max_side`` (None: no cap) is downscaled to it while decoding: JPEGs decode at
      1/2, 1/4 or 1/8 scale first (``Image.draft``), other formats decode and are reduced at once.
      PIL's decompression-bomb guard stays on.

    Raises ValueError, naming the file, when it is missing, not an image, truncated or corrupt, in an
    unsupported mode, has more than ``max_pixels`` pixels, or a side shorter than ``min_side``.
    """
    if min_side < 1:
        raise ValueError(f"min_side must be >= 1, got {min_side}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if max_side is not None and max_side < min_side:
        raise ValueError(f"max_side must be >= min_side {min_side}, got {max_side}")
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"{name}: no such file")
    try:
        with warnings.catch_warnings():
            # we enforce our own, lower, limit below; PIL's bomb warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(name)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        # UnidentifiedImageError is an OSError; malformed headers can surface as SyntaxError
        raise ValueError(f"{name}: not a readable image ({err})") from err
    with img:
        # only the header is read so far: refuse oversized files before decoding their pixels
        w, h = img.size
        if w * h > max_pixels:
            raise ValueError(
                f"{name}: image is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of "
                f"{max_pixels / 1e6:.1f} megapixels"
            )
        if min(w, h) < min_side:
            raise ValueError(f"{name}: image is {w}x{h}, smaller than the minimum side of {min_side} pixels")
        try:
            if max_side is not None and max(w, h) > max_side:
                # draft (JPEG) before the pixels are read, then one LANCZOS resize to the cap
                img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            else:
                img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
        except (OSError, SyntaxError, ValueError) as err:
            # truncated or corrupt pixel data (OSError), or a mode PIL cannot convert (ValueError)
            raise ValueError(f"{name}: not a readable image ({err})") from err


def _to_rgb(img: Image.Image) -> Image.Image:
    # img is already a copy detached from the file (exif_transpose copies), so it can be returned as it is
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        # palette images may carry transparency; PIL only honours it when converting via RGBA
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_gray_to_rgb(img)
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert image mode {mode!r} to RGB: {err}") from err


def _high_depth_gray_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit grayscale to 8 bits (PIL's own conversion clips at 255, which turns most pixels white).

    I;16 is [0, 65535]. Mode I holds 16-bit PNGs in older Pillow, so it is read as 16-bit when any value
    exceeds 255 and as 8-bit otherwise. Mode F is read as [0, 1] when its maximum is <= 1, else [0, 255].
    """
    arr = np.asarray(img).astype(np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if img.mode.startswith("I;16") or (img.mode == "I" and peak > 255):
        arr = arr / 257.0
    elif img.mode == "F" and peak <= 1.0:
        arr = arr * 255.0
    gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")  # 2-D uint8 gives mode L


def cover_size(width: int, height: int, size_hw: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the resize that covers ``size_hw``, keeping the aspect ratio (upstream formula).

    The float expressions are upstream's exactly (they truncate); a side that rounds one pixel short of the
    target, which upstream would then crop to a wrong-sized tensor, is raised to the target.
    """
    tgt_h, tgt_w = size_hw
    if width / height <= tgt_w / tgt_h:
        return tgt_w, max(tgt_h, int(tgt_w / (width / height)))
    return max(tgt_w, int((width / height) * tgt_h)), tgt_h


def preprocess(img: Image.Image, size_hw: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1]: LANCZOS cover-resize, centre crop, x*2 - 1 (upstream ``transform``)."""
    if len(size_hw) != 2 or min(size_hw) < 1:
        raise ValueError(f"size_hw must be (H, W) with H, W >= 1, got {tuple(size_hw)}")
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}; read files with load_image")
    tgt_h, tgt_w = size_hw
    rw, rh = cover_size(img.width, img.height, (tgt_h, tgt_w))
    arr_HW3 = np.asarray(img.resize((rw, rh), resample=Image.Resampling.LANCZOS), dtype=np.uint8)
    top, left = (rh - tgt_h) // 2, (rw - tgt_w) // 2
    arr_HW3 = arr_HW3[top : top + tgt_h, left : left + tgt_w]
    # torchvision's to_tensor: float32 divided by 255, channels first
    x_3HW = torch.from_numpy(arr_HW3.copy()).permute(2, 0, 1).float().div(255)
    return x_3HW.add(x_3HW).add_(-1)


def to_pil(img_3HW: torch.Tensor) -> Image.Image:
    """RGB PIL image of a (3, H, W) tensor in [-1, 1]: ``(x+1)/2*255`` truncated to uint8, as upstream.

    Values are computed in float32 and clamped to [-1, 1] first (the decoder already clamps; this only
    guards against wrap-around in the uint8 cast).
    """
    if img_3HW.ndim != 3 or img_3HW.shape[0] != 3:
        raise ValueError(f"expected an image tensor (3, H, W), got shape {tuple(img_3HW.shape)}")
    x = img_3HW.detach().float().cpu()
    if not torch.isfinite(x).all():
        raise ValueError("image tensor has NaN or infinite values")
    x = (x.clamp(-1, 1) + 1) / 2
    arr_HW3 = x.permute(1, 2, 0).mul(255).to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(arr_HW3))  # (H, W, 3) uint8 gives mode RGB
