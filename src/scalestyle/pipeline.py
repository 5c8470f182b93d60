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
from typing import Any, Literal, Protocol

import torch
from PIL import Image

from scalestyle.attention import AttentionController
from scalestyle.config import PRESETS, ModelPreset, SamplingConfig, StyleVARPreset, VARPreset, get_preset
from scalestyle.images import preprocess, to_pil
from scalestyle.models.bsq_vae import BSQVAE, BitwiseCodec
from scalestyle.models.infinity import Infinity
from scalestyle.models.random_text import RandomTextEncoder
from scalestyle.models.stylevar import StyleVAR
from scalestyle.models.text_encoder import PackedText, TextEncoder
from scalestyle.models.var import VAR, ClassLabels
from scalestyle.models.vqvae import VQVAE, IndexCodec
from scalestyle.sampling import PathPlan, ScaleEvent, run_scales
from scalestyle.scale_model import TokenCodec
from scalestyle.schedules import Schedule, get_schedule, var_schedule
from scalestyle.weights import (
    WeightsError,
    check_infinity_weights,
    check_vae_weights,
    is_var_folder,
    load_infinity_weights,
    load_vae_weights,
    load_var_models,
    read_state_dict,
    resolve_model_files,
    resolve_var_files,
)


class TextEncoding(Protocol):
    def encode(self, prompts: Sequence[str]) -> PackedText: ...


def bundled_demo_dir() -> Path:
    return Path(str(resources.files("scalestyle") / "assets" / "demo"))


def bundled_references_dir() -> Path:
    """Renders of the demo world's held-out styles (``tools/world_references.py``), for a first stylize."""
    return Path(str(resources.files("scalestyle") / "assets" / "references"))


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
    """A scale-wise model ready to sample on one device: an Infinity transformer with its BSQ VAE and text
    encoder (``conditioning == "text"``), a VAR transformer with its VQ-VAE (``"class"``: ImageNet
    class labels, no text encoder), or a StyleVAR with its VQ-VAE (``"transfer"``: a content and a style
    image, see :class:`scalestyle.transfer.TransferPipeline`)."""

    def __init__(
        self,
        transformer: Infinity | VAR | StyleVAR,
        vae: BSQVAE | VQVAE,
        text_encoder: TextEncoding | None,
        preset: ModelPreset | VARPreset | StyleVARPreset,
        *,
        model_name: str,
    ) -> None:
        self.transformer, self.vae, self.text_encoder = transformer.eval(), vae.eval(), text_encoder
        self.preset, self.model_name = preset, model_name
        self.codec: TokenCodec
        if isinstance(preset, VARPreset | StyleVARPreset):
            family = VAR if isinstance(preset, VARPreset) else StyleVAR
            if not isinstance(vae, VQVAE) or not isinstance(transformer, family):
                raise TypeError(
                    f"a {family.__name__} preset needs a {family.__name__} transformer and a VQVAE"
                )
            self.codec = IndexCodec(vae)
        else:
            if not isinstance(vae, BSQVAE) or not isinstance(transformer, Infinity) or text_encoder is None:
                raise TypeError(
                    "an Infinity preset needs an Infinity transformer, a BSQVAE and a text encoder"
                )
            self.codec = BitwiseCodec(preset.transformer.bits, preset.vae.spatial_patchify)

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def conditioning(self) -> Literal["text", "class", "transfer"]:
        if isinstance(self.preset, StyleVARPreset):
            return "transfer"
        return "class" if isinstance(self.preset, VARPreset) else "text"

    @property
    def stride(self) -> int:
        """Pixels per token of the last scale, along one side."""
        if isinstance(self.preset, VARPreset | StyleVARPreset):
            return self.preset.vae.downsample
        return self.preset.vae.stride

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
        the preset is built with random weights and a stand-in text encoder (for timing).

        Weights are checked before anything of the model's size is allocated: the model is first built on
        the meta device and the files' keys and shapes are checked against it."""
        dev = pick_device(device)
        if random_weights:
            if model is None or isinstance(model, Path) or Path(str(model)).exists():
                raise ValueError("--random-weights needs a preset name such as infinity-2b or var-d16")
            return cls._random(str(model), seed, dev)
        if model is None:
            folder = bundled_demo_dir()
            if not (folder / "config.json").is_file():
                raise WeightsError(f"the bundled demo model is missing from {folder}; reinstall scalestyle")
        elif Path(str(model)).is_dir():
            folder = Path(str(model))
        elif str(model) in PRESETS:
            folder = default_home() / str(model)
            if not folder.is_dir():
                raise WeightsError(
                    f"no weights for {model} at {folder}: run `scalestyle download {model}` (needs internet) "
                    "or pass --model DIR, or --random-weights to time the architecture"
                )
        else:
            raise WeightsError(
                f"--model {model!r} is neither a model folder nor a preset ({', '.join(sorted(PRESETS))})"
            )
        name = str(model or "demo")
        if is_var_folder(folder):
            var_files = resolve_var_files(folder)
            var, vqvae = load_var_models(var_files)
            return cls._place(var, vqvae, None, var_files.preset, name, dev)
        files = resolve_model_files(folder)
        transformer_state = read_state_dict(files.transformer)
        vae_state = read_state_dict(files.vae)
        with torch.device("meta"):
            meta_transformer, meta_vae = Infinity(files.preset.transformer), BSQVAE(files.preset.vae)
        check_infinity_weights(meta_transformer, transformer_state, source=str(files.transformer))
        check_vae_weights(meta_vae, vae_state, source=str(files.vae))
        transformer = Infinity(files.preset.transformer)
        load_infinity_weights(transformer, transformer_state, source=str(files.transformer))
        vae = BSQVAE(files.preset.vae)
        load_vae_weights(vae, vae_state, source=str(files.vae))
        text_encoder = TextEncoder.from_config(files.preset.text, source=files.text_encoder, device=dev)
        return cls._place(transformer, vae, text_encoder, files.preset, name, dev)

    @classmethod
    def _random(cls, name: str, seed: int, device: torch.device) -> Pipeline:
        preset = PRESETS.get(name) or get_preset(name)  # get_preset names the presets when it is none
        transformer: Infinity | VAR = (
            VAR(preset.transformer) if isinstance(preset, VARPreset) else Infinity(preset.transformer)
        )
        transformer.init_weights(torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[]):
            # PyTorch's default conv init draws from the global RNG: seed it without leaking the change
            torch.manual_seed(seed)
            vae: BSQVAE | VQVAE = VQVAE(preset.vae) if isinstance(preset, VARPreset) else BSQVAE(preset.vae)
        if isinstance(preset, VARPreset):
            return cls._place(transformer, vae, None, preset, f"{name} (random weights)", device)
        text: TextEncoding = RandomTextEncoder(preset.transformer.text_channels, preset.text.max_length)
        return cls._place(transformer, vae, text, preset, f"{name} (random weights)", device)

    @classmethod
    def _place(
        cls,
        transformer: Infinity | VAR | StyleVAR,
        vae: BSQVAE | VQVAE,
        text: TextEncoding | None,
        preset: ModelPreset | VARPreset | StyleVARPreset,
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
        """Infinity's schedule for an aspect ratio and pixel budget; VAR's one schedule (its patch_nums),
        which takes neither (nor does StyleVAR's)."""
        if isinstance(self.preset, VARPreset | StyleVARPreset):
            if h_div_w != 1.0 or pn is not None:
                raise ValueError(
                    f"{self.model_name} generates square images on its own schedule: "
                    "aspect ratio and pixel budget are Infinity settings"
                )
            return var_schedule(self.preset.transformer.patch_nums)
        return get_schedule(h_div_w, pn or self.preset.default_pn)

    def encode_text(self, prompts: Sequence[str]) -> PackedText:
        if self.text_encoder is None:
            raise ValueError(
                f"{self.model_name} is class-conditional: give class labels (0-999), not a prompt"
            )
        return self.text_encoder.encode(list(prompts)).to(self.device)

    def class_labels(self, labels: Sequence[int]) -> ClassLabels:
        if not isinstance(self.preset, VARPreset):
            raise ValueError(f"{self.model_name} is a text-to-image model: give a prompt, not a class label")
        top = self.preset.transformer.num_classes
        bad = [c for c in labels if not 0 <= c < top]
        if bad or not labels:
            raise ValueError(f"class labels must be in [0, {top - 1}], got {list(labels)}")
        return ClassLabels.of(list(labels)).to(self.device)

    @torch.inference_mode()
    def reference_tokens(self, image: Image.Image, schedule: Schedule) -> tuple[torch.Tensor, ...]:
        """The tokens of every scale of ``image`` (cover-resized and centre-cropped to the schedule's size),
        for teacher forcing a path with it: ``bits_BhwD`` for Infinity, ``idx_Bhw`` for VAR."""
        h, w = schedule.last_grid
        img_3PP = preprocess(image, (h * self.stride, w * self.stride)).to(self.device)
        with self.autocast():
            if isinstance(self.vae, VQVAE):
                return tuple(self.vae.encode_indices(img_3PP[None].float(), schedule))
            enc = self.vae.encode_multiscale(img_3PP[None].float(), schedule.grids)
        return tuple(b.long() for b in enc.bits)

    @torch.inference_mode()
    def decode(self, summed_codes_BdHW: torch.Tensor) -> list[Image.Image]:
        with self.autocast():
            if isinstance(self.vae, VQVAE):
                img = self.vae.decode_fhat(summed_codes_BdHW.float())
            else:
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
            "size_hw": [s * self.stride for s in schedule.last_grid],
        }

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        class_label: int | Sequence[int] | None = None,
        sampling: SamplingConfig | None = None,
        negative_prompt: str | None = None,
        on_scale: Callable[[ScaleEvent], None] | None = None,
    ) -> GenerationOutput:
        """One image per prompt (text models) or per class label (class-conditional models)."""
        sampling = sampling or SamplingConfig()
        plan, rows = self._generation_plan(prompt, class_label, negative_prompt)
        schedule = self.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn)
        summed = self.run_paths([plan], sampling, schedule, on_scale=on_scale)["gen"]
        images = self.decode(summed)
        meta = [
            {
                **row,
                "seed": sampling.seed,
                "row": i,
                "model": self.model_name,
                "settings": self.settings(sampling, schedule),
            }
            for i, row in enumerate(rows)
        ]
        return GenerationOutput(images, summed, meta)

    def _generation_plan(
        self,
        prompt: str | Sequence[str] | None,
        class_label: int | Sequence[int] | None,
        negative_prompt: str | None,
    ) -> tuple[PathPlan, list[dict[str, Any]]]:
        """The "gen" path of a plain generation and each row's metadata."""
        if self.conditioning == "transfer":
            raise ValueError(
                f"{self.model_name} redraws a content image in a style: use transfer.TransferPipeline"
            )
        if self.conditioning == "class":
            if prompt is not None or negative_prompt:
                raise ValueError(
                    f"{self.model_name} is class-conditional: give class labels (0-999), not a prompt"
                )
            if class_label is None:
                raise ValueError(f"{self.model_name} is class-conditional: give at least one class label")
            labels = [class_label] if isinstance(class_label, int) else list(class_label)
            return PathPlan("gen", self.class_labels(labels)), [{"class_label": c} for c in labels]
        if class_label is not None:
            raise ValueError(f"{self.model_name} is a text-to-image model: give a prompt, not a class label")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError("prompt must be non-empty text")
        text = self.encode_text(prompts)
        uncond = None
        if negative_prompt:
            uncond = PackedText.concat([self.encode_text([negative_prompt])] * len(prompts))
        rows = [{"prompt": p, "negative_prompt": negative_prompt or ""} for p in prompts]
        return PathPlan("gen", text, uncond=uncond), rows
