"""AdaIN behind the interface of :class:`scalestyle.transfer.TransferPipeline`: the style-transfer baseline
the StyleVAR authors compare against (Huang & Belongie 2017, model in :mod:`scalestyle.models.adain`).

Follows naoto0804/pytorch-AdaIN `test.py`: images in [0, 1], optionally resized to a shorter side of ``size``
with PIL's bilinear filter (torchvision's ``Resize(size)``), ``alpha`` interpolating in feature space, the
output clamped and rounded as ``save_image`` does. The encoder is the one the public decoder was trained
against (``vgg_normalised``), not the StyleVAR authors' torchvision VGG-19 ``features[:21]`` on raw input
(research note wave2_methods.md §1.7), so their numbers for AdaIN are not what this gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from scalestyle.adain_weights import load_adain, resolve_adain_files
from scalestyle.attention import AttentionController
from scalestyle.config import SamplingConfig
from scalestyle.images import MAX_SIDE, MIN_SIDE
from scalestyle.models.adain import AdaIN, AdaINConfig
from scalestyle.pipeline import pick_device
from scalestyle.sampling import ScaleEvent
from scalestyle.transfer import ImageInput, TransferOutput, _as_images, image_sha256


def _unit_B3HW(img: Image.Image, size: int | None) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]; with ``size``, the shorter side resized to it first (torchvision's
    ``Resize(size)`` on a PIL image: bilinear, the longer side rounded down)."""
    rgb = img.convert("RGB")
    if size is not None:
        short, long_side = sorted((rgb.width, rgb.height))
        other = int(size * long_side / short)
        wh = (size, other) if rgb.width <= rgb.height else (other, size)
        rgb = rgb.resize(wh, resample=Image.Resampling.BILINEAR)
    arr_HW3 = np.asarray(rgb)
    return rearrange(torch.from_numpy(arr_HW3.copy()), "h w c -> 1 c h w").float().div(255)


def _unit_to_pil(img_3HW: torch.Tensor) -> Image.Image:
    # torchvision's save_image: x255 + 0.5, clamped, truncated to uint8
    arr_HW3 = rearrange(img_3HW.float().mul(255).add(0.5).clamp(0, 255).byte(), "c h w -> h w c")
    return Image.fromarray(np.ascontiguousarray(arr_HW3.cpu().numpy()))


def adain_alpha(strength: float) -> float:
    """AdaIN's ``alpha`` for a transfer ``strength``: ``1 + strength`` on [-1, 0], so the default 0 is the
    full transfer (alpha 1, as the StyleVAR authors run it) and -1 the content decoded unchanged; AdaIN
    has nothing past alpha 1, so positive strengths are refused."""
    if not -1 <= strength <= 0:
        raise ValueError(f"AdaIN strength must be in [-1, 0] (alpha = 1 + strength), got {strength}")
    return 1.0 + strength


class AdaINPipeline:
    """An AdaIN on one device, called like :class:`TransferPipeline` (images with metadata).

    ``size``: the shorter side the content and style images are resized to; None keeps each at its own
    size (the output has the content's size)."""

    def __init__(self, model: AdaIN, name: str, device: torch.device, *, size: int | None = None) -> None:
        if size is not None and not MIN_SIDE <= size <= MAX_SIDE:
            raise ValueError(f"size must be in [{MIN_SIDE}, {MAX_SIDE}] pixels, got {size}")
        self.model, self.model_name, self.device, self.size = model.to(device).eval(), name, device, size

    @classmethod
    def load(
        cls, model_dir: str | Path, *, device: str | None = None, size: int | None = None
    ) -> AdaINPipeline:
        """A folder with the public ``vgg_normalised.pth`` + ``decoder.pth`` or a scalestyle AdaIN folder
        (``config.json`` + ``adain.safetensors``, as ``scalestyle train adain`` writes)."""
        files = resolve_adain_files(model_dir)
        return cls(load_adain(files), files.name, pick_device(device), size=size)

    @classmethod
    def random(
        cls,
        cfg: AdaINConfig | None = None,
        *,
        seed: int = 0,
        device: str | None = None,
        size: int | None = None,
    ) -> AdaINPipeline:
        """An AdaIN with random weights (tests, timing); ``cfg`` defaults to the public model's size."""
        cfg = cfg or AdaINConfig()
        with torch.device("meta"):
            model = AdaIN(cfg)
        model.to_empty(device="cpu").init_weights(torch.Generator().manual_seed(seed))
        return cls(model, f"adain {list(cfg.widths)} (random weights)", pick_device(device), size=size)

    @torch.inference_mode()
    def __call__(
        self,
        content: ImageInput | Sequence[ImageInput],
        style: ImageInput | Sequence[ImageInput],
        *,
        strength: float = 0.0,
        sampling: SamplingConfig | None = None,
        controller: AttentionController | None = None,
        on_scale: Callable[[ScaleEvent], None] | None = None,
    ) -> TransferOutput:
        """One image per (content, style) pair, as :meth:`TransferPipeline.__call__`; AdaIN draws nothing,
        so ``sampling`` is ignored, it has no attention, so ``controller`` must be None, and it has no
        scales, so ``on_scale`` is never called (taken so both pipelines are called alike)."""
        if controller is not None:
            raise ValueError("AdaIN has no attention layers: a controller cannot be installed")
        alpha = adain_alpha(strength)
        contents, styles = _as_images(content, "content"), _as_images(style, "style")
        if len(styles) == 1:
            styles = styles * len(contents)
        if len(styles) != len(contents):
            raise ValueError(
                f"give one style image or one per content: {len(contents)} contents, {len(styles)} styles"
            )
        settings = {"method": "adain", "alpha": alpha, "strength": strength, "size": self.size}
        images, meta = [], []
        for i, (c, s) in enumerate(zip(contents, styles, strict=True)):
            # one pair at a time: the images of a batch may differ in size
            content_13HW = _unit_B3HW(c, self.size).to(self.device)
            style_13HW = _unit_B3HW(s, self.size).to(self.device)
            out_13HW = self.model(content_13HW, style_13HW, alpha)
            # ceil pooling rounds the side up to a multiple of 8; the extra rows and columns are at the end
            height, width = content_13HW.shape[-2:]
            images.append(_unit_to_pil(out_13HW[0, :, :height, :width]))
            meta.append(
                {
                    "content_sha256": image_sha256(c),
                    "style_sha256": image_sha256(s),
                    "row": i,
                    "model": self.model_name,
                    "settings": settings,
                }
            )
        return TransferOutput(images, None, meta)
