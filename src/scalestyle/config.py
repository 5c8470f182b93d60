"""Model configurations and their presets, all in one place.

Sizes of the official models follow `tools/run_infinity.py` of FoundationVision/Infinity (see the spec,
section 1.1 and 2.1). Sampling settings live in :class:`SamplingConfig`, never in model constructors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scalestyle.schedules import PN_NUM_SCALES


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class InfinityConfig:
    """The bitwise scale-wise transformer. ``bits`` = D, the bits per token of its VAE."""

    depth: int
    width: int
    heads: int
    bits: int
    block_chunks: int = 8
    text_channels: int = 2048
    text_maxlen: int = 512
    mlp_ratio: float = 4.0
    num_levels: int = 15
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("depth", "width", "heads", "bits", "block_chunks", "text_channels", "text_maxlen"):
            _check_positive(name, getattr(self, name))
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if self.head_dim % 4:
            raise ValueError(f"head dim {self.head_dim} must be a multiple of 4 (RoPE-2D pairs per axis)")
        if self.depth % self.block_chunks:
            raise ValueError(f"depth {self.depth} must be a multiple of block_chunks {self.block_chunks}")
        if self.text_channels % 128:
            raise ValueError(f"text_channels {self.text_channels} must be a multiple of 128")
        if self.width % self.pool_heads:
            raise ValueError(
                f"width {self.width} must be a multiple of the pool heads {self.pool_heads} "
                "(text_channels / 128, or / 64 above width 4096)"
            )
        if self.mlp_hidden < 1:
            raise ValueError(
                f"width * mlp_ratio = {self.width * self.mlp_ratio} rounds to an empty FFN (< 128)"
            )
        if not 1 <= self.num_levels <= 64:
            raise ValueError(f"num_levels must be in [1, 64], got {self.num_levels}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        # upstream basic.py::CrossAttnBlock: round(C * mlp_ratio / 256) * 256
        return round(self.width * self.mlp_ratio / 256) * 256

    @property
    def pool_heads(self) -> int:
        """Heads of the attentive text pool: one per 128 text channels (upstream's Ct5 / 128), or per 64
        above width 4096 (upstream `TextAttentivePool`; see :func:`scalestyle.attention.pool_heads`)."""
        return self.text_channels // (64 if self.width > 4096 else 128)


@dataclass(frozen=True)
class BSQVAEConfig:
    """The BSQ multi-scale VAE (upstream `bsq_vae/flux_vqgan.py` with `MultiScaleBSQ`)."""

    codebook_dim: int
    patch_size: int
    ch_mult: tuple[int, ...]
    base_ch: int = 128
    num_res_blocks: int = 2
    spatial_patchify: bool = False

    def __post_init__(self) -> None:
        _check_positive("codebook_dim", self.codebook_dim)
        _check_positive("base_ch", self.base_ch)
        _check_positive("num_res_blocks", self.num_res_blocks)
        if self.patch_size < 1 or self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch_size must be a power of two >= 1, got {self.patch_size}")
        if len(self.ch_mult) != int(math.log2(self.patch_size)) + 1:
            raise ValueError(
                f"ch_mult {self.ch_mult} must have log2(patch_size)+1 = "
                f"{int(math.log2(self.patch_size)) + 1} entries"
            )

    @property
    def bits_per_token(self) -> int:
        """D: bits per transformer token (a 2x2 pixel-unshuffle of the latent when patchified)."""
        return self.codebook_dim * (4 if self.spatial_patchify else 1)

    @property
    def stride(self) -> int:
        """Pixels per transformer token along one side."""
        return self.patch_size * (2 if self.spatial_patchify else 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Where the T5 encoder comes from: a hub id or local directory, or the project's bundled demo."""

    source: str
    max_length: int = 512

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("text encoder source must be a non-empty path or hub id")
        if not 1 <= self.max_length <= 4096:
            raise ValueError(f"max_length must be in [1, 4096], got {self.max_length}")


@dataclass(frozen=True)
class ModelPreset:
    name: str
    transformer: InfinityConfig
    vae: BSQVAEConfig
    text: TextEncoderConfig
    default_pn: str = "1M"

    def __post_init__(self) -> None:
        if self.transformer.bits != self.vae.bits_per_token:
            raise ValueError(
                f"transformer bits {self.transformer.bits} != VAE bits per token {self.vae.bits_per_token}"
            )
        if self.transformer.text_channels % 128:
            raise ValueError(f"text_channels {self.transformer.text_channels} must be a multiple of 128")
        if self.default_pn not in PN_NUM_SCALES:
            raise ValueError(f"default_pn must be one of {sorted(PN_NUM_SCALES)}, got {self.default_pn!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """Per-image sampling settings (upstream `gen_one_img` defaults: top_k 900, top_p 0.97)."""

    cfg: float = 3.0
    tau: float = 0.5
    top_k: int = 900
    top_p: float = 0.97
    seed: int = 0
    h_div_w: float = 1.0
    pn: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.cfg <= 50:
            raise ValueError(f"cfg must be in [0, 50], got {self.cfg}")
        if not 0 < self.tau <= 10:
            raise ValueError(f"tau must be in (0, 10], got {self.tau}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if not 1 / 3.5 <= self.h_div_w <= 3.5:
            raise ValueError(f"h_div_w must be in [1/3, 3], got {self.h_div_w}")
        if self.pn is not None and self.pn not in PN_NUM_SCALES:
            raise ValueError(f"pn must be one of {sorted(PN_NUM_SCALES)}, got {self.pn!r}")


_VAE_D32 = BSQVAEConfig(codebook_dim=32, patch_size=16, ch_mult=(1, 2, 4, 4, 4))
_VAE_D56 = BSQVAEConfig(codebook_dim=14, patch_size=8, ch_mult=(1, 2, 4, 4), spatial_patchify=True)
_FLAN_T5_XL = TextEncoderConfig(source="google/flan-t5-xl")

PRESETS: dict[str, ModelPreset] = {
    "infinity-2b": ModelPreset(
        "infinity-2b", InfinityConfig(depth=32, width=2048, heads=16, bits=32), _VAE_D32, _FLAN_T5_XL
    ),
    "infinity-8b": ModelPreset(
        "infinity-8b", InfinityConfig(depth=40, width=3584, heads=28, bits=56), _VAE_D56, _FLAN_T5_XL
    ),
    # Tiny models for tests: the real architecture at toy width, 0.06M schedule (7 scales, 16x16 last grid).
    "tiny": ModelPreset(
        "tiny",
        InfinityConfig(depth=2, width=64, heads=2, bits=8, block_chunks=2, text_channels=128, text_maxlen=32),
        BSQVAEConfig(codebook_dim=8, patch_size=4, ch_mult=(1, 1, 2), base_ch=16, num_res_blocks=1),
        TextEncoderConfig(source="bundled:demo-t5", max_length=32),
        default_pn="0.06M",
    ),
    # The bundled demo model (64x64 images of the procedural world, trained by `scalestyle train`).
    "demo": ModelPreset(
        "demo",
        InfinityConfig(
            depth=4, width=256, heads=4, bits=16, block_chunks=2, text_channels=128, text_maxlen=32
        ),
        BSQVAEConfig(codebook_dim=16, patch_size=4, ch_mult=(1, 2, 4), base_ch=16, num_res_blocks=1),
        TextEncoderConfig(source="bundled:demo-t5", max_length=32),
        default_pn="0.06M",
    ),
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
