"""Shared plumbing of the metrics: image checks, PIL conversion, devices, chunking and model loading."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]
"""A feature extractor: ``img_B3HW`` in [0, 1] -> feature maps ``(B, C, H, W)`` (or tokens ``(B, L, C)``).

It normalises its own input (ImageNet mean/std, [-1, 1], ...): the metrics only ever hand it [0, 1]."""

PairedMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(img_B3HW, ref_R3HW) -> (B,)`` with R = 1 (one reference for every image) or R = B (pairs)."""

DEFAULT_BATCH_SIZE = 32

# Decoders and VAEs overshoot [0, 1] by a little; a larger excursion means the caller passed [-1, 1]
# or [0, 255].
_RANGE_TOLERANCE = 1e-2
# owner/name or name, as the hub spells repository ids; anything else is read as a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_images(img_B3HW: torch.Tensor, name: str = "img_B3HW") -> torch.Tensor:
    """Validate a batch of RGB images in [0, 1] and return it clamped to [0, 1].

    Raises ValueError for a wrong shape or dtype, non-finite values, or values clearly outside [0, 1] (the
    usual sign of images still in [-1, 1]: map them with ``(x + 1) / 2``).
    """
    if not isinstance(img_B3HW, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(img_B3HW).__name__}")
    if img_B3HW.ndim != 4 or img_B3HW.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(img_B3HW.shape)}")
    if img_B3HW.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if not img_B3HW.is_floating_point():
        raise ValueError(f"{name} must be floating point in [0, 1], got dtype {img_B3HW.dtype}")
    if not bool(torch.isfinite(img_B3HW).all()):
        raise ValueError(f"{name} has NaN or infinite values")
    lo, hi = (float(v) for v in torch.aminmax(img_B3HW))
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
            "(images in [-1, 1] map to [0, 1] with (x + 1) / 2)"
        )
    return img_B3HW.clamp(0, 1)


def check_refs(img_B3HW: torch.Tensor, ref_R3HW: torch.Tensor, *, same_size: bool) -> torch.Tensor:
    """Validate references for ``img_B3HW``: R = 1 (broadcast) or R = B; the same H, W when ``same_size``."""
    ref_R3HW = check_images(ref_R3HW, "ref_B3HW")
    b, r = img_B3HW.shape[0], ref_R3HW.shape[0]
    if r not in (1, b):
        raise ValueError(f"ref_B3HW must hold 1 image or one per image ({b}), got {r}")
    if same_size and img_B3HW.shape[2:] != ref_R3HW.shape[2:]:
        raise ValueError(
            f"images {tuple(img_B3HW.shape[2:])} and references {tuple(ref_R3HW.shape[2:])} must have the "
            "same height and width for this metric"
        )
    return ref_R3HW


def check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    """Slices ``[0, n)`` in consecutive pieces of at most ``batch_size``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``None`` picks CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def finish(values: torch.Tensor) -> torch.Tensor:
    """Results as float32 on CPU, detached from inference mode.

    Tensors created under ``torch.inference_mode`` refuse later in-place updates and autograd; a clone made
    outside it is an ordinary tensor. Call this outside the ``inference_mode`` block.
    """
    return values.detach().float().cpu().clone()


def pil_to_batch(images: Sequence[Image.Image], size_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """PIL images -> ``img_B3HW`` float32 in [0, 1] (RGB; alpha dropped by PIL's conversion).

    Images must share one size unless ``size_hw`` is given, which resizes each (bicubic, PIL's antialiased
    filter) to that (height, width).
    """
    if not images:
        raise ValueError("no images given")
    arrays: list[np.ndarray] = []
    for i, img in enumerate(images):
        rgb = img.convert("RGB")
        if size_hw is not None and rgb.size != (size_hw[1], size_hw[0]):
            rgb = rgb.resize((size_hw[1], size_hw[0]), Image.Resampling.BICUBIC)
        if arrays and (rgb.size[1], rgb.size[0]) != arrays[0].shape[:2]:
            raise ValueError(
                f"image {i} is {rgb.size[0]}x{rgb.size[1]} but image 0 is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; pass size_hw to resize them to one size"
            )
        arrays.append(np.asarray(rgb, dtype=np.uint8))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch.float().div_(255)


def to_pil_list(img_B3HW: torch.Tensor) -> list[Image.Image]:
    """[0, 1] images -> 8-bit RGB PIL images (rounded), the form in which generations are saved and scored.

    Used to feed transformers' image processors exactly what they receive when scoring saved PNGs.
    """
    u8 = img_B3HW.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in u8]


def resolve_source(source: str | Path) -> Path | str:
    """A local directory as a Path, or a hub id as a string (only when no such local path exists)."""
    if isinstance(source, Path):
        path = source
    else:
        path = Path(source).expanduser()
        if not path.exists() and _HUB_ID.fullmatch(source):
            return source
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"model source {path} is not a directory")
    return path


def load_pretrained(
    load: Callable[[Path | str, bool], Any], source: str | Path, *, local_files_only: bool, what: str
) -> Any:
    """Call ``load(resolved_source, local_files_only)`` with the loading rules of the package.

    Local directories never touch the network (and hide transformers' per-load progress bar); hub ids use
    the cache or download unless ``local_files_only``. Failures name the source in one line.
    """
    # Private helpers shared with the text encoder, which loads from the same two kinds of source.
    from scalestyle.models.text_encoder import _no_transformers_progress_bar

    resolved = resolve_source(source)
    if isinstance(resolved, Path):
        with _no_transformers_progress_bar():
            return load(resolved, True)
    try:
        return load(resolved, local_files_only)
    except OSError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"{what} {resolved!r} is neither a local directory nor loadable from the hub "
            f"(cache or download): {first_line}"
        ) from err


def dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    from scalestyle.models.text_encoder import _dtype_kwarg

    return _dtype_kwarg(dtype)


def pooled(output: Any) -> torch.Tensor:
    """``get_image_features``/``get_text_features`` return a tensor before transformers 5 and an output
    object with the projected embedding in ``pooler_output`` from 5 on."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def as_maps(feat: torch.Tensor) -> torch.Tensor:
    """Feature maps ``(B, C, H, W)`` as they are; transformer tokens ``(B, L, C)`` as ``(B, C, L, 1)``.

    Spatial metrics (LPIPS, Gram) then treat each token as one spatial position.
    """
    if feat.ndim == 4:
        return feat
    if feat.ndim == 3:
        return feat.transpose(1, 2).unsqueeze(-1)
    raise ValueError(f"features must be (B, C, H, W) maps or (B, L, C) tokens, got {tuple(feat.shape)}")
