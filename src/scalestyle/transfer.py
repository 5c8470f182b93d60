"""Reference-based style transfer: a content image redrawn in the style of a style image, with StyleVAR.

Follows Senfier-LiqiJing/StyleVAR `eval/infer_grpo.py` and `StyleVAR.autoregressive_infer`: both images
resized to the model's square size with LANCZOS (no crop, as their `utils/data.py`), mapped to [-1, 1],
then sampled without CFG at top-k 900, top-p 0.96 (their inference defaults); ``strength`` in [-1, 1] is
their style-strength shift of the per-scale alphas. Generation goes through
:meth:`scalestyle.pipeline.Pipeline.run_paths`, the one place that installs an attention controller.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from scalestyle.attention import AttentionController
from scalestyle.config import TRANSFER_SAMPLING, SamplingConfig, get_stylevar_preset
from scalestyle.images import load_image
from scalestyle.models.stylevar import StyleVAR, TransferInputs
from scalestyle.models.vqvae import VQVAE
from scalestyle.pipeline import Pipeline, pick_device
from scalestyle.sampling import PathPlan, ScaleEvent
from scalestyle.stylevar_weights import load_stylevar_models, resolve_stylevar_files

ImageInput = Image.Image | str | os.PathLike[str]


@dataclass(frozen=True)
class TransferOutput:
    images: list[Image.Image]
    summed_codes_BdHW: torch.Tensor | None  # None from AdaIN, which has no codes
    metadata: list[dict[str, Any]]


def image_sha256(img: Image.Image) -> str:
    """sha256 of an image's decoded RGB pixels and size: the same picture in another file format or under
    another name has the same hash."""
    rgb = img.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def square_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) in [-1, 1]: LANCZOS resize to a square without cropping (the authors' transform)."""
    arr_HW3 = np.asarray(img.convert("RGB").resize((size, size), resample=Image.Resampling.LANCZOS))
    x_3HW = torch.from_numpy(arr_HW3.copy()).permute(2, 0, 1).float().div(255)
    return x_3HW.add(x_3HW).add_(-1)


def _as_images(value: ImageInput | Sequence[ImageInput], what: str) -> list[Image.Image]:
    items = [value] if isinstance(value, Image.Image | str | os.PathLike) else list(value)
    if not items:
        raise ValueError(f"give at least one {what} image")
    return [item if isinstance(item, Image.Image) else load_image(item) for item in items]


class TransferPipeline:
    """A StyleVAR with its VQ-VAE on one device (a :class:`Pipeline` of ``conditioning == "transfer"``)."""

    def __init__(self, pipe: Pipeline) -> None:
        if pipe.conditioning != "transfer":
            raise ValueError(
                f"{pipe.model_name} is not a StyleVAR model (conditioning {pipe.conditioning!r})"
            )
        self.pipe = pipe

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        variant: str | None = None,
        device: str | None = None,
        double_append: bool = False,
    ) -> TransferPipeline:
        """A StyleVAR folder: downloaded (:func:`scalestyle.stylevar_weights.download_stylevar`) or trained
        (`scalestyle train stylevar-sft`); ``variant`` ``"grpo"`` or ``"sft"``, None for the folder's own
        (a trained one) or ``"grpo"``; ``double_append=True`` samples as the authors' code does."""
        files = resolve_stylevar_files(model_dir, variant)
        if double_append:
            files = replace(
                files,
                preset=replace(
                    files.preset, transformer=replace(files.preset.transformer, double_append=True)
                ),
            )
        model, vqvae = load_stylevar_models(files)
        name = f"{files.preset.name}-{files.variant}" + (" (double append)" if double_append else "")
        return cls(Pipeline._place(model, vqvae, None, files.preset, name, pick_device(device)))

    @classmethod
    def random(cls, preset_name: str, *, seed: int = 0, device: str | None = None) -> TransferPipeline:
        """A StyleVAR preset with random weights (tests, timing)."""
        preset = get_stylevar_preset(preset_name)
        model = StyleVAR(preset.transformer)
        model.init_weights(torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[]):
            # PyTorch's default conv init draws from the global RNG: seed it without leaking the change
            torch.manual_seed(seed)
            vqvae = VQVAE(preset.vae)
        name = f"{preset_name} (random weights)"
        return cls(Pipeline._place(model, vqvae, None, preset, name, pick_device(device)))

    @property
    def size(self) -> int:
        """Pixels along one side of the content, style and output images."""
        return self.pipe.schedule_for().last_grid[0] * self.pipe.stride

    @torch.inference_mode()
    def inputs(
        self, content: Sequence[Image.Image], style: Sequence[Image.Image], strength: float
    ) -> TransferInputs:
        """The raw StyleVAR condition of image pairs (guide latents through the VQ-VAE)."""
        assert isinstance(self.pipe.vae, VQVAE)  # conditioning "transfer" comes with a VQ-VAE
        content_B3PP = torch.stack([square_tensor(c, self.size) for c in content]).to(self.pipe.device)
        style_B3PP = torch.stack([square_tensor(s, self.size) for s in style]).to(self.pipe.device)
        with self.pipe.autocast():
            return TransferInputs.encode(
                self.pipe.vae, content_B3PP, style_B3PP, self.pipe.schedule_for(), strength
            )

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
        """One image per (content, style) pair; one style image is used for every content image.
        ``on_scale`` is called after every scale, as in :meth:`Pipeline.__call__` (an exception it raises
        stops the transfer there)."""
        sampling = sampling or TRANSFER_SAMPLING
        contents, styles = _as_images(content, "content"), _as_images(style, "style")
        if len(styles) == 1:
            styles = styles * len(contents)
        if len(styles) != len(contents):
            raise ValueError(
                f"give one style image or one per content: {len(contents)} contents, {len(styles)} styles"
            )
        schedule = self.pipe.schedule_for()
        plan = PathPlan("gen", self.inputs(contents, styles, strength))
        summed = self.pipe.run_paths([plan], sampling, schedule, controller, on_scale)["gen"]
        images = self.pipe.decode(summed)
        settings = {**self.pipe.settings(sampling, schedule), "strength": strength}
        meta = [
            {
                "content_sha256": image_sha256(c),
                "style_sha256": image_sha256(s),
                "seed": sampling.seed,
                "row": i,
                "model": self.pipe.model_name,
                "settings": settings,
            }
            for i, (c, s) in enumerate(zip(contents, styles, strict=True))
        ]
        return TransferOutput(images, summed, meta)
