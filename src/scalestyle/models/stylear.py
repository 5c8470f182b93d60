"""StyleAR (Wu et al., 2025, arXiv 2505.19874) on the Infinity backbone: a frozen image encoder and a
trained perceiver resampler turn a reference image into style tokens that join the caption tokens of every
cross-attention.

Facts from the authors' code (wuyi2020/StyleAR, ``../shared/research/wave2_methods.md`` §2):

- Resampler: `LoraModel.py::Resampler` (IP-Adapter-Plus's): learned latents (16 queries, init
  ``randn / sqrt(dim)``), ``proj_in`` from the encoder width, ``depth`` layers of residual
  :class:`PerceiverAttention` (LayerNorm on features and latents, queries from the latents, keys and values
  from features and latents together, no biases) and residual feed-forward (LayerNorm, ``ff_mult`` x,
  GELU, no biases), then ``proj_out`` and a LayerNorm. Ours projects to the transformer's text width E, so
  the style tokens are pseudo caption features: they pass the model's own ``text_norm``,
  ``text_proj_for_ca`` and each layer's key/value projection, as StyleAR's replace prompt embeddings.
- Encoder: ``CLIPVisionModelWithProjection`` with ``hidden_states[-2]`` (penultimate layer, 257 x 1280 for
  ViT-H-14) on the CLIP processor's 224 px input (:class:`CLIPImageEncoder`).
- Style-enhanced tokens ``0.2 * P(E_style) + 0.8 * P(E_style - 0.8 * E_object)``, then
  ``tokens += randn * noise_strength`` (:func:`style_tokens`). How the object image is made is not in
  their code; ours masks the reference's background to the encoder's mean colour and crops the mask's box
  (:func:`object_image`).
- CFG: their unconditional branch holds neither text nor style tokens; ours is Infinity's learned empty
  caption with the style tokens dropped (the controller gives unconditional rows no style keys).
- LoRA: theirs is rank 4 on q/k/v/o and the MLP's down projection; ours is peft LoRA on the block modules
  the model calls as modules (:data:`LORA_TARGETS`).

Joining and the ``scale`` knob (:class:`StyleTokenController`, installed on the control seam): in
``"decoupled"`` mode (default; IP-Adapter's decoupled cross-attention, with the layer's own key/value
weights) a row's cross-attention output is ``attn(q, caption) + scale * attn(q, style)``: ``scale = 0``
adds an exact zero, so the output is the base model's to the bit, for every row and every scale value
that is 0, and unconditional rows are the base model's at any scale. In ``"joint"`` mode (StyleAR's own:
one softmax over caption and style tokens) the style keys carry an additive bias ``log(scale)``; at
``scale = 0`` their weight ``exp(-inf)`` is zero and the kernel runs on the caption keys alone, which is
the base model exactly (extra keys masked with ``-inf`` change the kernel's rounding, so they are not
passed at all). The pooled caption vector (AdaLN, start token) is left to the caption: joining the style
tokens there would leave ``scale`` no way to switch them off.

Demo encoder (:class:`VAEImageEncoder`): the demo model's own frozen BSQ VAE encoder, its latent grid as
tokens (16 x 16 tokens of 16 channels at 64 px). It sees world images and was trained on training styles
only; the world's judges (`eval/classifier.py`) were not used, because they saw the held-out styles and
are the instruments that score the result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from scalestyle.attention import AttendFn, AttnSite
from scalestyle.images import preprocess
from scalestyle.models.bsq_vae import BSQVAE

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection, SamModel, SamProcessor

    from scalestyle.models.infinity import Infinity

JoinMode = Literal["decoupled", "joint"]
EncoderKind = Literal["clip", "vae"]
JOIN_MODES: tuple[str, ...] = ("decoupled", "joint")
ENCODER_KINDS: tuple[str, ...] = ("clip", "vae")
LORA_TARGETS: tuple[str, ...] = ("sa.proj", "ca.mat_q", "ca.proj", "ffn.fc1", "ffn.fc2")
"""Block modules a LoRA can adapt. ``sa.mat_qkv`` and ``ca.mat_kv`` are not among them: the attention
modules call ``F.linear`` on their weights (with a concatenated bias), so a LoRA there would never run."""
TEXT_LORA_TARGETS: tuple[str, ...] = ("text_proj_for_ca.0", "text_proj_for_ca.2")
"""Modules outside the blocks a LoRA can adapt: the caption memory's projection, shared by every layer's
cross-attention keys and values. It is the only place a LoRA can change what a caption's tokens say to
the blocks (the key/value weights themselves are ``F.linear``'d), which a subject adapter needs to bind a
new identifier to a shape."""
DEFAULT_LORA_TARGETS = ("sa.proj", "ca.mat_q", "ca.proj", "ffn.fc2")
LORA_ADAPTER_NAME = "stylear"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "adapter.safetensors"
CLIP_VIT_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_float(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True)
class StyleARConfig:
    """What an adapter is (saved in its ``config.json``): the resampler, the encoder it reads, how its
    tokens join the transformer, and the LoRA on the transformer (``lora_rank`` 0: none).

    Upstream's resampler width is the LLM's (4096) with depth 4, 12 heads of 64; ours is a setting."""

    text_width: int
    encoder: EncoderKind = "clip"
    encoder_width: int = 1280
    encoder_source: str | None = CLIP_VIT_H
    num_queries: int = 16
    depth: int = 4
    heads: int = 12
    dim_head: int = 64
    width: int = 1024
    ff_mult: int = 4
    join: JoinMode = "decoupled"
    lora_rank: int = 0
    lora_alpha: int | None = None
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS

    def __post_init__(self) -> None:
        _check_int("text_width", self.text_width, 1, 1 << 16)
        _check_int("encoder_width", self.encoder_width, 1, 1 << 16)
        _check_int("num_queries", self.num_queries, 1, 1024)
        _check_int("depth", self.depth, 1, 64)
        _check_int("heads", self.heads, 1, 256)
        _check_int("dim_head", self.dim_head, 1, 1024)
        _check_int("width", self.width, 1, 1 << 16)
        _check_int("ff_mult", self.ff_mult, 1, 16)
        _check_int("lora_rank", self.lora_rank, 0, 4096)
        if self.encoder not in ENCODER_KINDS:
            raise ValueError(f"encoder must be one of {ENCODER_KINDS}, got {self.encoder!r}")
        if self.encoder == "clip" and not self.encoder_source:
            raise ValueError("a clip encoder needs encoder_source (a hub id or a folder), got none")
        if self.join not in JOIN_MODES:
            raise ValueError(f"join must be one of {JOIN_MODES}, got {self.join!r}")
        if self.lora_alpha is not None:
            _check_int("lora_alpha", self.lora_alpha, 1, 1 << 16)
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad or (self.lora_rank and not self.lora_targets):
            raise ValueError(
                f"lora_targets must be a non-empty subset of {LORA_TARGETS}, got {self.lora_targets}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StyleARConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "lora_targets" in known:
            known["lora_targets"] = tuple(known["lora_targets"])
        return cls(**known)


@dataclass(frozen=True)
class StyleARSettings:
    """Inference settings of the style tokens (never part of a model): ``scale`` is their attention
    strength (0: the base model exactly); ``noise_strength`` the Gaussian noise added to them (upstream's
    CLI default 0.3); ``se_plain``, ``se_enhanced``, ``se_object`` the SE coefficients of
    ``se_plain * P(E) + se_enhanced * P(E - se_object * E_object)``, used where a reference has a mask."""

    scale: float = 1.0
    noise_strength: float = 0.3
    se_plain: float = 0.2
    se_enhanced: float = 0.8
    se_object: float = 0.8

    def __post_init__(self) -> None:
        _check_float("scale", self.scale, 0.0, 100.0)
        _check_float("noise_strength", self.noise_strength, 0.0, 10.0)
        _check_float("se_plain", self.se_plain, 0.0, 10.0)
        _check_float("se_enhanced", self.se_enhanced, 0.0, 10.0)
        _check_float("se_object", self.se_object, 0.0, 1.0)
        if self.se_plain + self.se_enhanced <= 0:
            raise ValueError(f"se_plain + se_enhanced must be > 0, got {self.se_plain} + {self.se_enhanced}")


def block_lora_config(rank: int, alpha: int | None, targets: Sequence[str]) -> Any:
    """peft's ``LoraConfig`` for ``targets`` at ``rank``, scaled by ``alpha`` (None: the rank, a scale of
    1); StyleAR's and the subject adapters' LoRA. A target is a module name inside every Infinity block
    (:data:`LORA_TARGETS`) or a top-level module (:data:`TEXT_LORA_TARGETS`)."""
    from peft import LoraConfig

    def alternatives(names: Sequence[str]) -> str:
        return "|".join(t.replace(".", r"\.") for t in names)

    block = [t for t in targets if t not in TEXT_LORA_TARGETS]
    top = [t for t in targets if t in TEXT_LORA_TARGETS]
    # full-name regexes: "ca.proj" as a suffix would also match the text pool's proj
    patterns = [rf"block_chunks\.\d+\.module\.\d+\.({alternatives(block)})"] if block else []
    patterns += [f"({alternatives(top)})"] if top else []
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        target_modules="|".join(patterns),
        lora_dropout=0.0,
    )


# ---- the resampler ------------------------------------------------------------------------------------
class PerceiverAttention(nn.Module):
    """Latents attend to the image features and to themselves (upstream `PerceiverAttention`)."""

    def __init__(self, width: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(width, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, width, bias=False)

    def forward(self, x_BNW: torch.Tensor, latents_BQW: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x_BNW), self.norm2(latents_BQW)
        q = rearrange(self.to_q(latents), "b q (h c) -> b h q c", h=self.heads)
        kv = self.to_kv(torch.cat((x, latents), dim=1))
        k, v = rearrange(kv, "b n (two h c) -> two b h n c", two=2, h=self.heads).unbind(0)
        # upstream scales q and k by dim_head ** -0.25 each: the same as sdpa's default dim_head ** -0.5
        o = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(o, "b h q c -> b q (h c)"))


class FeedForward(nn.Sequential):
    def __init__(self, width: int, mult: int) -> None:
        super().__init__(
            nn.LayerNorm(width),
            nn.Linear(width, width * mult, bias=False),
            nn.GELU(),
            nn.Linear(width * mult, width, bias=False),
        )


class PerceiverResampler(nn.Module):
    """Image features (B, N, encoder_width) -> ``num_queries`` style tokens (B, Q, text_width)."""

    def __init__(self, cfg: StyleARConfig) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, cfg.num_queries, cfg.width))
        self.proj_in = nn.Linear(cfg.encoder_width, cfg.width)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [PerceiverAttention(cfg.width, cfg.heads, cfg.dim_head), FeedForward(cfg.width, cfg.ff_mult)]
            )
            for _ in range(cfg.depth)
        )
        self.proj_out = nn.Linear(cfg.width, cfg.text_width)
        self.norm_out = nn.LayerNorm(cfg.text_width)

    def forward(self, feats_BNW: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(feats_BNW.shape[0], -1, -1)
        x = self.proj_in(feats_BNW.to(self.proj_in.weight.dtype))
        for layer in self.layers:
            attn, ff = cast(nn.ModuleList, layer)
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Upstream's latents (``randn / sqrt(width)``) and PyTorch's default Linear init, drawn from
        ``generator`` so that training starts reproducibly."""
        width = self.latents.shape[-1]
        self.latents.copy_(torch.randn(self.latents.shape, generator=generator) / math.sqrt(width))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                bound = 1 / math.sqrt(module.in_features)
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 * bound - bound)
                if module.bias is not None:
                    module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 2 * bound - bound)
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


# ---- image encoders -----------------------------------------------------------------------------------
class CLIPImageEncoder(nn.Module):
    """Penultimate hidden states (B, 1 + patches, hidden) of a CLIP vision tower through transformers, on
    its image processor's input (resize, centre crop, mean/std; 224 px for ViT-H-14)."""

    def __init__(self, model: CLIPVisionModelWithProjection, processor: CLIPImageProcessor) -> None:
        super().__init__()
        self.model, self.processor = model, processor
        self.width = int(model.config.hidden_size)
        self.fill = tuple(round(255 * m) for m in processor.image_mean)

    @classmethod
    def from_pretrained(cls, source: str | Path, *, device: torch.device | None = None) -> CLIPImageEncoder:
        """``source``: a hub id (e.g. :data:`CLIP_VIT_H`) or a local folder with the model and its
        ``preprocessor_config.json``."""
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(source))
            processor = CLIPImageProcessor.from_pretrained(str(source))
        except OSError as err:
            raise FileNotFoundError(
                f"no CLIP vision model at {source}: download it (e.g. `huggingface-cli download "
                f"{CLIP_VIT_H}`) or pass a local folder ({str(err).splitlines()[0]})"
            ) from None
        return cls(model.eval().requires_grad_(False), processor).to(device or torch.device("cpu"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(self.device), output_hidden_states=True)
        return out.hidden_states[-2].float()


class VAEImageEncoder(nn.Module):
    """The demo's encoder: a frozen BSQ VAE encoder's latent grid (B, h * w, d) at ``size`` px."""

    def __init__(self, vae: BSQVAE, size: int) -> None:
        super().__init__()
        if size < vae.cfg.patch_size or size % vae.cfg.patch_size:
            raise ValueError(f"size must be a positive multiple of {vae.cfg.patch_size}, got {size}")
        self.vae, self.size = vae, size
        self.width = vae.cfg.codebook_dim
        self.fill = (128, 128, 128)  # 0 in the VAE's [-1, 1] input

    @torch.no_grad()
    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        device = next(self.vae.parameters()).device
        img_B3PP = torch.stack([preprocess(im, (self.size, self.size)) for im in images]).to(device)
        return rearrange(self.vae.encode_latent(img_B3PP), "b d h w -> b (h w) d")


ImageEncoder = CLIPImageEncoder | VAEImageEncoder


def object_image(image: Image.Image, mask_HW: np.ndarray, fill: tuple[int, ...]) -> Image.Image:
    """The reference's main object for SE tokens: pixels outside ``mask_HW`` (bool, any size: resized to
    the image, nearest) painted ``fill``, cropped to the mask's bounding box padded to a square."""
    mask = np.asarray(mask_HW, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    if not mask.any():
        raise ValueError("the object mask is empty: it selects no pixel")
    if mask.shape != (image.height, image.width):
        resized = Image.fromarray(mask).resize((image.width, image.height), Image.Resampling.NEAREST)
        mask = np.asarray(resized, dtype=bool)
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[~mask] = fill[:3]
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(bottom - top, right - left)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = fill[:3]
    oy, ox = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    canvas[oy : oy + bottom - top, ox : ox + right - left] = pixels[top:bottom, left:right]
    return Image.fromarray(canvas)


class SamMasker:
    """The main object's mask of a real image with SAM through transformers (``SamModel``), prompted by
    one point (default: the image centre); the mask of the highest predicted IoU is kept."""

    def __init__(self, model: SamModel, processor: SamProcessor) -> None:
        self.model, self.processor = model, processor

    @classmethod
    def from_pretrained(cls, source: str | Path, *, device: torch.device | None = None) -> SamMasker:
        from transformers import SamModel, SamProcessor

        try:
            model = SamModel.from_pretrained(str(source))
            processor = SamProcessor.from_pretrained(str(source))
        except OSError as err:
            raise FileNotFoundError(
                f"no SAM model at {source}: download one (e.g. facebook/sam-vit-base) or pass a folder "
                f"({str(err).splitlines()[0]})"
            ) from None
        cast(nn.Module, model).eval().requires_grad_(False).to(device or torch.device("cpu"))
        return cls(model, processor)

    @torch.no_grad()
    def __call__(self, image: Image.Image, point_xy: tuple[float, float] | None = None) -> np.ndarray:
        point = point_xy or (image.width / 2, image.height / 2)
        inputs = self.processor(images=image, input_points=[[[list(point)]]], return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model(
            pixel_values=inputs["pixel_values"].to(device), input_points=inputs["input_points"].to(device)
        )
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]
        best = int(out.iou_scores[0, 0].argmax())
        result: np.ndarray = masks[0, best].numpy().astype(bool)
        return result


# ---- style tokens -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # eq=False: an ndarray field has no boolean equality
class Reference:
    """One style reference: its image, its weight in the mix, and optionally the object's mask (for SE)."""

    image: Image.Image
    weight: float = 1.0
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_float("reference weight", self.weight, 0.0, 1e6)


def style_tokens(
    resampler: PerceiverResampler,
    feats_BNW: torch.Tensor,
    object_feats_BNW: torch.Tensor | None,
    settings: StyleARSettings,
) -> torch.Tensor:
    """``P(E)``, or with object features the SE tokens ``a P(E) + b P(E - c E_object)`` (B, Q, E)."""
    plain = resampler(feats_BNW)
    if object_feats_BNW is None:
        return plain
    enhanced = resampler(feats_BNW - settings.se_object * object_feats_BNW)
    return settings.se_plain * plain + settings.se_enhanced * enhanced


def mix_references(tokens_RQE: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean (1, Q, E) of R references' tokens; weights are relative (any non-negative, sum > 0)."""
    if len(weights) != tokens_RQE.shape[0]:
        raise ValueError(f"{tokens_RQE.shape[0]} references but {len(weights)} weights")
    total = float(sum(weights))
    if not total > 0 or min(weights) < 0:
        raise ValueError(f"reference weights must be >= 0 with a sum > 0, got {list(weights)}")
    w_R = torch.tensor([w / total for w in weights], dtype=tokens_RQE.dtype, device=tokens_RQE.device)
    return torch.einsum("r,rqe->qe", w_R, tokens_RQE)[None]


def add_noise(tokens_BQE: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Upstream's ``tokens += randn_like(tokens) * noise_strength``, drawn from ``generator``."""
    if strength == 0:
        return tokens_BQE
    noise = torch.randn(tokens_BQE.shape, generator=generator, device=generator.device)
    return tokens_BQE + noise.to(tokens_BQE) * strength


# ---- joining the transformer --------------------------------------------------------------------------
@dataclass(frozen=True)
class PathStyle:
    """The style tokens of one path's conditional rows (B, Q, E); ``keep_B`` (bool) marks the rows that
    get them (None: all; training drops them with the caption for CFG)."""

    tokens_BQE: torch.Tensor
    keep_B: torch.Tensor | None = None


class StyleTokenController:
    """Adds style tokens to every cross-attention (see the module docstring for the two join modes).

    ``styles`` maps path names to their tokens; rows of other paths and every unconditional row get none.
    The tokens' memory (``text_norm`` then ``text_proj_for_ca``) is computed once here, their keys and values
    per layer with that layer's own projection, so a LoRA or a dtype cast of the model applies to them."""

    def __init__(
        self, transformer: Infinity, styles: Mapping[str, PathStyle], *, scale: float, join: JoinMode
    ) -> None:
        _check_float("scale", scale, 0.0, 100.0)
        if join not in JOIN_MODES:
            raise ValueError(f"join must be one of {JOIN_MODES}, got {join!r}")
        self.scale, self.join = scale, join
        self.cross = [block.ca for block in transformer.blocks]
        self.memory = {
            name: transformer.text_proj_for_ca(transformer.text_norm(style.tokens_BQE.float()))
            for name, style in styles.items()
        }
        self.keep = {name: style.keep_B for name, style in styles.items()}

    def __call__(
        self,
        site: AttnSite,
        q_BHLc: torch.Tensor,
        k_BHKc: torch.Tensor,
        v_BHKc: torch.Tensor,
        bias: torch.Tensor | None,
        attend: AttendFn,
    ) -> torch.Tensor:
        if site.kind != "cross" or (self.join == "joint" and self.scale == 0):
            return attend(q_BHLc, k_BHKc, v_BHKc, bias)
        k_sty, v_sty, has_B = self._style_kv(site)
        if self.join == "decoupled":
            o = attend(q_BHLc, k_BHKc, v_BHKc, bias)
            o_sty = attend(q_BHLc, k_sty, v_sty, None)
            gate_B = has_B.to(o.dtype) * self.scale
            return o + o_sty * gate_B[:, None, None, None]
        log_scale = torch.full(has_B.shape, math.log(self.scale), device=q_BHLc.device)
        bias_B11Q = log_scale.masked_fill(~has_B, -math.inf)[:, None, None, None].expand(
            -1, 1, 1, k_sty.shape[2]
        )
        base = bias if bias is not None else torch.zeros(q_BHLc.shape[0], 1, 1, k_BHKc.shape[2])
        joint_bias = torch.cat((base.to(bias_B11Q), bias_B11Q), dim=-1)
        return attend(q_BHLc, torch.cat((k_BHKc, k_sty), 2), torch.cat((v_BHKc, v_sty), 2), joint_bias)

    def _style_kv(self, site: AttnSite) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Style keys and values (B, H, Q, c) for every row of the batch (zeros where a row has none) and
        which rows have them (B,)."""
        ca = self.cross[site.layer]
        weight = ca.mat_kv.weight
        some = next(iter(self.memory.values()), None)
        q_len, dtype = (1, torch.float32) if some is None else (some.shape[1], some.dtype)
        rows: list[torch.Tensor] = []
        has: list[torch.Tensor] = []
        for path, uncond, sl in site.layout.groups():
            n = sl.stop - sl.start
            memory = self.memory.get(path)
            if uncond or memory is None:
                rows.append(torch.zeros(n, q_len, weight.shape[1], dtype=dtype, device=weight.device))
                has.append(torch.zeros(n, dtype=torch.bool))
                continue
            if memory.shape[0] != n:
                raise ValueError(f"path {path!r} has {n} rows but {memory.shape[0]} rows of style tokens")
            rows.append(memory)
            keep = self.keep[path]
            has.append(torch.ones(n, dtype=torch.bool) if keep is None else keep.cpu().bool())
        memory_BQC = torch.cat(rows)
        # projected packed, as the caption memory is (TextMemory: the same rounding per token)
        kv = F.linear(
            rearrange(memory_BQC, "b q c -> (b q) c"), weight, torch.cat((ca.zero_k_bias, ca.v_bias))
        )
        k, v = rearrange(
            kv, "(b q) (two h c) -> two b h q c", b=memory_BQC.shape[0], two=2, h=ca.heads
        ).unbind(0)
        return k, v, torch.cat(has).to(k.device)


# ---- the adapter --------------------------------------------------------------------------------------
class StyleARAdapter(nn.Module):
    """The trained part: the resampler, plus (``lora_rank`` > 0) LoRA weights for the transformer, kept
    as a peft state dict and put into the transformer only inside :meth:`lora_applied`."""

    def __init__(self, cfg: StyleARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.resampler = PerceiverResampler(cfg)
        self.lora: dict[str, torch.Tensor] = {}

    def lora_config(self) -> Any:
        return block_lora_config(self.cfg.lora_rank, self.cfg.lora_alpha, self.cfg.lora_targets)

    @contextmanager
    def lora_applied(self, transformer: Infinity, *, seed: int = 0) -> Iterator[None]:
        """The transformer with this adapter's LoRA in it (a fresh one, seeded by ``seed``, when the adapter
        has none yet); on exit the LoRA weights, trained or not, are read back into :attr:`lora` and the
        transformer gets its own modules and ``requires_grad`` flags back."""
        if not self.cfg.lora_rank:
            yield
            return
        from peft import LoraModel, get_peft_model_state_dict, set_peft_model_state_dict

        flags = {name: p.requires_grad for name, p in transformer.named_parameters()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # peft draws lora_A from the global generator
            tuner = LoraModel(transformer, self.lora_config(), LORA_ADAPTER_NAME)
        try:
            if self.lora:
                result: Any = set_peft_model_state_dict(
                    transformer, self.lora, adapter_name=LORA_ADAPTER_NAME
                )
                if result.unexpected_keys:
                    raise ValueError(f"LoRA weights that fit no module: {result.unexpected_keys[:3]}")
            yield
        finally:
            state = get_peft_model_state_dict(transformer, adapter_name=LORA_ADAPTER_NAME)
            self.lora = {k: v.detach().clone() for k, v in state.items()}
            tuner.unload()
            for name, p in transformer.named_parameters():
                p.requires_grad_(flags[name])

    def references_tokens(
        self,
        encoder: ImageEncoder,
        references: Sequence[Reference],
        settings: StyleARSettings,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The mixed style tokens (1, Q, E) of weighted references (SE where a reference has a mask), with
        the settings' noise drawn from ``generator``."""
        if not references:
            raise ValueError("at least one style reference is needed")
        tokens = []
        for ref in references:
            # one image per encoder call: a reference's tokens never depend on the others in the mix
            obj = None
            if ref.mask is not None:
                obj = encoder([object_image(ref.image, ref.mask, encoder.fill)])
            tokens.append(style_tokens(self.resampler, encoder([ref.image]), obj, settings))
        mixed = mix_references(torch.cat(tokens), [r.weight for r in references])
        return add_noise(mixed, settings.noise_strength, generator)

    def save(self, out_dir: str | Path) -> Path:
        """``config.json`` and ``adapter.safetensors`` (``resampler.*`` and ``lora.*`` keys)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {f"resampler.{k}": v.contiguous() for k, v in self.resampler.state_dict().items()}
        state |= {f"lora.{k}": v.contiguous() for k, v in self.lora.items()}
        save_file(state, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps({"stylear": asdict(self.cfg)}, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> StyleARAdapter:
        path = Path(folder)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a StyleAR adapter (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        data = json.loads((path / CONFIG_FILE).read_text())
        if "stylear" not in data:
            raise ValueError(f"{path / CONFIG_FILE} has no 'stylear' section")
        adapter = cls(StyleARConfig.from_dict(data["stylear"]))
        state = load_file(str(path / WEIGHTS_FILE))
        resampler = {k.removeprefix("resampler."): v for k, v in state.items() if k.startswith("resampler.")}
        adapter.resampler.load_state_dict(resampler)
        adapter.lora = {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}
        if len(resampler) + len(adapter.lora) != len(state):
            raise ValueError(f"{path / WEIGHTS_FILE} holds keys that are neither resampler.* nor lora.*")
        return adapter.eval()

    def check_fits(self, transformer: Infinity) -> None:
        if self.cfg.text_width != transformer.cfg.text_channels:
            raise ValueError(
                f"the adapter's text_width {self.cfg.text_width} is not the transformer's text width "
                f"{transformer.cfg.text_channels}"
            )
