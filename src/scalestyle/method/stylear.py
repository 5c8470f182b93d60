"""StyleAR generation (arXiv 2505.19874) with a trained adapter (:mod:`scalestyle.models.stylear`): the
references' style tokens join the caption of one generation path, through :meth:`Pipeline.run_paths`.

The call takes :class:`~scalestyle.method.style.StylePipeline`'s argument names. There is one path, the
generation path, whose caption is ``"<prompt> in <style_prompt>"`` (``style_prompt`` None: the word
``style``, as the training captions read, so the tokens carry the style); ``style`` holds the
:class:`StyleARSettings`. Several references (``style_images=[(img, 0.7), (img2, 0.3)]``, an optional
mask as a third item for SE tokens) are mixed in token space by their relative weights. The noise on
the tokens is drawn from a CPU generator seeded with the sampling seed, so a seed fixes the image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from scalestyle.config import SamplingConfig
from scalestyle.images import load_image
from scalestyle.method.style import make_prompts
from scalestyle.models.bsq_vae import BSQVAE
from scalestyle.models.infinity import Infinity
from scalestyle.models.stylear import (
    CLIPImageEncoder,
    ImageEncoder,
    PathStyle,
    Reference,
    StyleARAdapter,
    StyleARSettings,
    StyleTokenController,
    VAEImageEncoder,
)
from scalestyle.pipeline import GenerationOutput, Pipeline
from scalestyle.sampling import PathPlan, ScaleEvent
from scalestyle.transfer import image_sha256

ImageLike = Image.Image | str | os.PathLike[str]
WeightedReference = (
    Reference | ImageLike | tuple[ImageLike, float] | tuple[ImageLike, float, np.ndarray | None]
)


def _image(value: ImageLike) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, str | os.PathLike):
        return load_image(value)
    raise TypeError(f"a style image must be a PIL image or a path, got {type(value).__name__}")


def as_reference(value: WeightedReference) -> Reference:
    """A :class:`Reference` from an image, a path, ``(image, weight)`` or ``(image, weight, mask)``."""
    if isinstance(value, Reference):
        return value
    if isinstance(value, tuple):
        if len(value) not in (2, 3):
            raise ValueError(
                f"a weighted reference is (image, weight) or (image, weight, mask), got {value!r}"
            )
        mask = value[2] if len(value) == 3 else None
        return Reference(_image(value[0]), float(value[1]), mask)
    return Reference(_image(value))


def make_encoder(
    adapter: StyleARAdapter, pipe: Pipeline, *, source: str | Path | None = None
) -> ImageEncoder:
    """The adapter's encoder: the pipeline's own VAE at its default image size (``"vae"``, the demo), or
    the CLIP vision model at ``source`` (default: the adapter's ``encoder_source``)."""
    if adapter.cfg.encoder == "vae":
        if not isinstance(pipe.vae, BSQVAE):
            raise ValueError(f"{pipe.model_name} has no BSQ VAE to serve as the StyleAR encoder")
        grid = pipe.schedule_for().last_grid
        encoder: ImageEncoder = VAEImageEncoder(pipe.vae, grid[0] * pipe.stride)
    else:
        found = source or adapter.cfg.encoder_source
        assert found is not None  # StyleARConfig requires a source for clip
        encoder = CLIPImageEncoder.from_pretrained(found, device=pipe.device)
    if encoder.width != adapter.cfg.encoder_width:
        raise ValueError(
            f"the encoder gives {encoder.width}-wide features; "
            f"the adapter expects {adapter.cfg.encoder_width}"
        )
    return encoder


class StyleARPipeline:
    """A loaded :class:`Pipeline` (Infinity, text-conditioned) with a StyleAR adapter and its encoder."""

    def __init__(self, pipe: Pipeline, adapter: StyleARAdapter, encoder: ImageEncoder) -> None:
        self.pipe, self.adapter, self.encoder = pipe, adapter, encoder

    @classmethod
    def load(
        cls, pipe: Pipeline, adapter: str | Path | StyleARAdapter, *, encoder_source: str | Path | None = None
    ) -> StyleARPipeline:
        """``adapter``: a folder, ``"stylear-demo"`` (the adapter shipped for the demo model) or a loaded
        adapter (moved to the pipeline's device); its encoder is made by :func:`make_encoder`."""
        if not isinstance(adapter, StyleARAdapter):
            from scalestyle.locate import adapter_folder

            adapter = StyleARAdapter.load(adapter_folder(adapter))
        adapter = adapter.to(pipe.device)
        if not isinstance(pipe.transformer, Infinity):
            raise ValueError(f"StyleAR runs on Infinity models; {pipe.model_name} is not one")
        adapter.check_fits(pipe.transformer)
        return cls(pipe, adapter, make_encoder(adapter, pipe, source=encoder_source))

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | None = None,
        style_image: ImageLike | None = None,
        *,
        style_images: Sequence[WeightedReference] | None = None,
        style_mask: np.ndarray | None = None,
        style_prompt: str | None = None,
        content_prompt: str | None = None,
        gen_prompt: str | None = None,
        class_label: int | None = None,
        style_class: int | None = None,
        style: StyleARSettings | None = None,
        sampling: SamplingConfig | None = None,
        on_scale: Callable[[ScaleEvent], None] | None = None,
    ) -> GenerationOutput:
        """One image of ``prompt`` in the style of ``style_image`` (its object's ``style_mask`` gives SE
        tokens) or of the weighted ``style_images``. ``content_prompt``, ``class_label`` and
        ``style_class`` are the training-free method's and are refused here (one path, text models)."""
        settings = style or StyleARSettings()
        sampling = sampling or SamplingConfig()
        transformer = self.pipe.transformer
        if self.pipe.conditioning != "text" or not isinstance(transformer, Infinity):
            raise ValueError(
                f"StyleAR runs on text-to-image Infinity models; {self.pipe.model_name} is not one"
            )
        if class_label is not None or style_class is not None:
            raise ValueError(
                f"{self.pipe.model_name} is a text-to-image model: give prompts, not class labels"
            )
        if content_prompt is not None:
            raise ValueError(
                "StyleAR runs the generation path only: give prompt or gen_prompt, not content_prompt"
            )
        if prompt is None:
            raise ValueError("a text model needs the prompt")
        references = self._references(style_image, style_images, style_mask)
        prompts = make_prompts(prompt, style_prompt, content_prompt=None, gen_prompt=gen_prompt)
        text = self.pipe.encode_text([prompts.generation])
        schedule = self.pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn)
        noise = torch.Generator().manual_seed(sampling.seed)
        tokens_1QE = self.adapter.references_tokens(self.encoder, references, settings, noise)
        with self.adapter.lora_applied(transformer), self.pipe.autocast():
            controller = StyleTokenController(
                transformer,
                {"gen": PathStyle(tokens_1QE.to(self.pipe.device))},
                scale=settings.scale,
                join=self.adapter.cfg.join,
            )
            plans = [PathPlan("gen", text)]
            summed = self.pipe.run_paths(plans, sampling, schedule, controller, on_scale)["gen"]
        meta: dict[str, Any] = {
            "method": "stylear",
            "prompt": prompts.generation,
            "style_prompt": prompts.style,
            "style_images": [
                {"sha256": image_sha256(r.image), "weight": r.weight, "mask": r.mask is not None}
                for r in references
            ],
            "seed": sampling.seed,
            "model": self.pipe.model_name,
            "settings": self.pipe.settings(sampling, schedule),
            "style": asdict(settings),
            "adapter": asdict(self.adapter.cfg),
        }
        return GenerationOutput(self.pipe.decode(summed), summed, [meta])

    @staticmethod
    def _references(
        style_image: ImageLike | None,
        style_images: Sequence[WeightedReference] | None,
        style_mask: np.ndarray | None,
    ) -> list[Reference]:
        if (style_image is None) == (style_images is None):
            raise ValueError("give the style as style_image or as weighted style_images (one of the two)")
        if style_image is not None:
            return [Reference(_image(style_image), 1.0, style_mask)]
        if style_mask is not None:
            raise ValueError("with style_images, give each reference's mask in its (image, weight, mask)")
        assert style_images is not None
        references = [as_reference(r) for r in style_images]
        if not references:
            raise ValueError("style_images is empty")
        return references
