"""Text-to-image generation: load a model (bundled demo, a model folder, or a preset with random weights)
and sample images with :meth:`Pipeline.__call__`.

Precision follows upstream `tools/run_infinity.py`: on CUDA the transformer blocks are bf16 and the loop
runs under bf16 autocast (head, AdaLN tables and RoPE stay fp32); on CPU everything is fp32.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from scalestyle.attention import AttentionController
from scalestyle.config import ModelPreset, SamplingConfig, get_preset
from scalestyle.images import to_pil
from scalestyle.models.bsq_vae import BSQVAE, BitwiseCodec
from scalestyle.models.infinity import Infinity
from scalestyle.models.random_text import RandomTextEncoder
from scalestyle.models.text_encoder import PackedText, TextEncoder
from scalestyle.sampling import PathPlan, ScaleEvent, run_scales
from scalestyle.schedules import Schedule, get_schedule
from scalestyle.weights import (
    WeightsError,
    load_infinity_weights,
    load_vae_weights,
    read_state_dict,
    resolve_model_files,
)


class TextEncoding(Protocol):
    def encode(self, prompts: Sequence[str]) -> PackedText: ...


def bundled_demo_dir() -> Path:
    return Path(str(resources.files("scalestyle") / "assets" / "demo"))


def default_home() -> Path:
    """Where `scalestyle download` puts official weights (override with SCALESTYLE_HOME)."""
    return Path(os.environ.get("SCALESTYLE_HOME", Path.home() / ".cache" / "scalestyle"))


def pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class GenerationOutput:
    images: list[Image.Image]
    summed_codes_BdHW: torch.Tensor
    metadata: list[dict[str, Any]]


class Pipeline:
    """An Infinity-architecture model ready to sample: transformer, VAE and text encoder on one device."""

    def __init__(
        self,
        transformer: Infinity,
        vae: BSQVAE,
        text_encoder: TextEncoding,
        preset: ModelPreset,
        *,
        model_name: str,
    ) -> None:
        self.transformer, self.vae, self.text_encoder = transformer.eval(), vae.eval(), text_encoder
        self.preset, self.model_name = preset, model_name
        self.codec = BitwiseCodec(preset.transformer.bits, preset.vae.spatial_patchify)

    @property
    def device(self) -> torch.device:
        return self.transformer.pos_start.device

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        device: str | None = None,
        random_weights: bool = False,
        seed: int = 0,
    ) -> Pipeline:
        """``model``: None for the bundled demo, a preset name, or a model folder. With ``random_weights``
        the preset is built with random weights and a stand-in text encoder (for timing)."""
        dev = pick_device(device)
        if random_weights:
            if model is None or isinstance(model, Path) or Path(str(model)).exists():
                raise ValueError("--random-weights needs a preset name such as infinity-2b")
            preset = get_preset(str(model))
            transformer = Infinity(preset.transformer)
            transformer.init_weights(torch.Generator().manual_seed(seed))
            with torch.random.fork_rng(devices=[]):
                # PyTorch's default conv init draws from the global RNG: seed it without leaking the change
                torch.manual_seed(seed)
                vae = BSQVAE(preset.vae)
            text: TextEncoding = RandomTextEncoder(preset.transformer.text_channels, preset.text.max_length)
            return cls._place(transformer, vae, text, preset, f"{preset.name} (random weights)", dev)
        if model is None:
            folder = bundled_demo_dir()
            if not (folder / "config.json").is_file():
                raise WeightsError(f"the bundled demo model is missing from {folder}; reinstall scalestyle")
        elif Path(str(model)).is_dir():
            folder = Path(str(model))
        elif str(model) in {"infinity-2b", "infinity-8b", "demo", "tiny"}:
            folder = default_home() / str(model)
            if not folder.is_dir():
                raise WeightsError(
                    f"no weights for {model} at {folder}: run `scalestyle download {model}` (needs internet) "
                    "or pass --model DIR, or --random-weights to time the architecture"
                )
        else:
            raise WeightsError(
                f"--model {model!r} is neither a model folder nor a preset (infinity-2b, infinity-8b)"
            )
        files = resolve_model_files(folder)
        transformer = Infinity(files.preset.transformer)
        load_infinity_weights(transformer, read_state_dict(files.transformer), source=str(files.transformer))
        vae = BSQVAE(files.preset.vae)
        load_vae_weights(vae, read_state_dict(files.vae), source=str(files.vae))
        text_encoder = TextEncoder.from_pretrained(files.text_encoder, device=dev)
        return cls._place(transformer, vae, text_encoder, files.preset, str(model or "demo"), dev)

    @classmethod
    def _place(
        cls,
        transformer: Infinity,
        vae: BSQVAE,
        text: TextEncoding,
        preset: ModelPreset,
        name: str,
        device: torch.device,
    ) -> Pipeline:
        transformer.to(device)
        if device.type == "cuda":
            for block in transformer.blocks:
                block.to(torch.bfloat16)
        vae.to(device)
        transformer.requires_grad_(False)
        vae.requires_grad_(False)
        return cls(transformer, vae, text, preset, model_name=name)

    def autocast(self) -> Any:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def schedule_for(self, *, h_div_w: float = 1.0, pn: str | None = None) -> Schedule:
        return get_schedule(h_div_w, pn or self.preset.default_pn)

    def encode_text(self, prompts: Sequence[str]) -> PackedText:
        return self.text_encoder.encode(list(prompts)).to(self.device)

    @torch.inference_mode()
    def decode(self, summed_codes_BdHW: torch.Tensor) -> list[Image.Image]:
        with self.autocast():
            img = self.vae.decode(summed_codes_BdHW.float())
        return [to_pil(im) for im in img.float().cpu()]

    @torch.inference_mode()
    def run_paths(
        self,
        plans: Sequence[PathPlan],
        sampling: SamplingConfig,
        schedule: Schedule,
        controller: AttentionController | None = None,
        on_scale: Callable[[ScaleEvent], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run paths in one batch with ``controller`` installed (restored afterwards, whatever happens):
        the one place every generation (plain, stylized, baselines, analyses) goes through."""
        with self.autocast(), self.transformer.control.install(controller):
            return run_scales(self.transformer, self.codec, plans, schedule, sampling, on_scale=on_scale)

    def settings(self, sampling: SamplingConfig, schedule: Schedule) -> dict[str, Any]:
        """The sampling settings and resolved schedule that every image's metadata records."""
        return {
            **asdict(sampling),
            "pn": schedule.pn,
            "template": schedule.template,
            "size_hw": [s * self.preset.vae.stride for s in schedule.last_grid],
        }

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        sampling: SamplingConfig | None = None,
        negative_prompt: str | None = None,
        on_scale: Callable[[ScaleEvent], None] | None = None,
    ) -> GenerationOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError("prompt must be non-empty text")
        sampling = sampling or SamplingConfig()
        schedule = self.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn)
        text = self.encode_text(prompts)
        uncond = None
        if negative_prompt:
            uncond = PackedText.concat([self.encode_text([negative_prompt])] * len(prompts))
        plan = PathPlan("gen", text, uncond=uncond)
        summed = self.run_paths([plan], sampling, schedule, on_scale=on_scale)["gen"]
        images = self.decode(summed)
        meta = [
            {
                "prompt": p,
                "negative_prompt": negative_prompt or "",
                "seed": sampling.seed,
                "row": i,
                "model": self.model_name,
                "settings": self.settings(sampling, schedule),
            }
            for i, p in enumerate(prompts)
        ]
        return GenerationOutput(images, summed, meta)
