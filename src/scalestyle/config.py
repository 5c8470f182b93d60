"""Model configurations and their presets, all in one place.

Sizes of the official models follow `tools/run_infinity.py` of FoundationVision/Infinity (see the spec,
section 1.1 and 2.1), those of VAR `models/__init__.py::build_vae_var` of FoundationVision/VAR (spec §5.1).
Sampling settings live in :class:`SamplingConfig`, never in model constructors.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from scalestyle.schedules import PN_NUM_SCALES


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def parse_int_list(text: str, name: str, *, minimum: int = 0) -> tuple[int, ...]:
    """``"4,5,6"``, ``"4-7"`` or ``"0,2-4"`` -> the integers named, in the given order: the one reader of
    every integer-list setting (steps, seeds). Empty lists, repeats, backward ranges and values below
    ``minimum`` are errors naming ``name`` (a repeat is a typo, never a request to run a step twice)."""
    values: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            span = range(int(lo), int(hi) + 1) if sep else range(int(lo), int(lo) + 1)
        except ValueError:
            raise ValueError(f"{name} must look like 2,3 or 4-7 (integers), got {text!r}") from None
        if not span:
            raise ValueError(f"{name}: range {part!r} runs backwards")
        values += span
    if not values:
        raise ValueError(f"{name} is empty: give integers like 2,3 or 4-7")
    low = min(values)
    if low < minimum:
        raise ValueError(f"{name} {text!r}: {low} is below the minimum {minimum}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{name} {text!r} names {', '.join(map(str, repeated))} more than once")
    return tuple(values)


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


VAE_NORMS = ("group", "pixel", "group_rms")


@dataclass(frozen=True)
class BSQVAEConfig:
    """The BSQ multi-scale VAE (upstream `bsq_vae/flux_vqgan.py` with `MultiScaleBSQ`).

    ``norm`` is the normalization of every encoder and decoder block: ``"group"`` is upstream's GroupNorm
    (the official VAEs); ``"pixel"`` (RMS over the channels of each pixel) and ``"group_rms"`` (GroupNorm
    without the mean subtraction) avoid the "droplet" of a GroupNorm decoder (StyleGAN2, Karras et al.
    2020), see :class:`scalestyle.models.bsq_vae.Norm`. ``decoder_norm`` overrides it for the decoder alone
    (None: ``norm``): a new decoder can then be trained on a frozen encoder, whose codes, and every
    transformer trained on them, stay as they were.
    """

    codebook_dim: int
    patch_size: int
    ch_mult: tuple[int, ...]
    base_ch: int = 128
    num_res_blocks: int = 2
    spatial_patchify: bool = False
    norm: str = "group"
    decoder_norm: str | None = None

    def __post_init__(self) -> None:
        if self.norm not in VAE_NORMS:
            raise ValueError(f"norm must be one of {VAE_NORMS}, got {self.norm!r}")
        if self.decoder_norm is not None and self.decoder_norm not in VAE_NORMS:
            raise ValueError(f"decoder_norm must be None or one of {VAE_NORMS}, got {self.decoder_norm!r}")
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
class VARConfig:
    """The class-conditional VAR transformer (upstream `models/var.py::VAR` as `build_vae_var` builds it:
    ``heads = depth``, ``width = 64 * depth``). ``vocab_size`` = V and ``z_channels`` = Cvae come from its
    VQ-VAE; ``patch_nums`` are the side lengths of the square token grids, scale 0 first."""

    depth: int
    width: int
    heads: int
    patch_nums: tuple[int, ...]
    vocab_size: int = 4096
    z_channels: int = 32
    num_classes: int = 1000
    shared_aln: bool = False
    attn_l2_norm: bool = True
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("depth", "width", "heads", "vocab_size", "z_channels", "num_classes"):
            _check_positive(name, getattr(self, name))
        _check_positive("mlp_ratio", self.mlp_ratio)
        if not 0 < self.norm_eps < 1:
            raise ValueError(f"norm_eps must be in (0, 1), got {self.norm_eps}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        _check_patch_nums(self.patch_nums)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        # upstream basic_var.py::AdaLNSelfAttn: round(C * mlp_ratio)
        return round(self.width * self.mlp_ratio)

    @property
    def num_tokens(self) -> int:
        """L: tokens of all scales together (680 for the 256px schedule)."""
        return sum(pn * pn for pn in self.patch_nums)


# StyleVAR's per-scale alpha (coarse to fine) in the authors' builder and at inference
# (`models/__init__.py::build_vae_stylevar` of Senfier-LiqiJing/StyleVAR)
STYLEVAR_ALPHAS = (0.2, 0.3, 0.4, 0.4, 0.5, 0.5, 0.6, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class StyleVARConfig:
    """The StyleVAR transformer (`models/style_var.py::StyleVAR` of Senfier-LiqiJing/StyleVAR as
    `build_vae_stylevar` builds it: VAR's sizes, ``heads = depth``, ``width = 64 * depth``), whose blocks
    attend from the content and style guides to the image being generated.

    ``alphas`` is the style share of each scale's blended attention (coarse to fine); ``resnet_width`` the
    first stage width of the two ResNet-18 trunks (64 for ResNet-18; their global vector has 8x as many
    channels). ``double_append`` reproduces the authors' KV cache, which stores the target keys twice per
    block while sampling (both guide calls append them); the default appends them once, as training sees
    them."""

    depth: int
    width: int
    heads: int
    patch_nums: tuple[int, ...]
    alphas: tuple[float, ...]
    vocab_size: int = 4096
    z_channels: int = 32
    resnet_width: int = 64
    attn_l2_norm: bool = True
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    double_append: bool = False

    def __post_init__(self) -> None:
        for name in ("depth", "width", "heads", "vocab_size", "z_channels", "resnet_width"):
            _check_positive(name, getattr(self, name))
        _check_positive("mlp_ratio", self.mlp_ratio)
        if not 0 < self.norm_eps < 1:
            raise ValueError(f"norm_eps must be in (0, 1), got {self.norm_eps}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        _check_patch_nums(self.patch_nums)
        if len(self.alphas) != len(self.patch_nums):
            raise ValueError(
                f"alphas {self.alphas} must give one value per scale ({len(self.patch_nums)} scales)"
            )
        if any(not 0 <= a <= 1 for a in self.alphas):
            raise ValueError(f"alphas must each be in [0, 1], got {self.alphas}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        # upstream style_basic_var.py::AdaLNCrossAttn: round(C * mlp_ratio), as VAR
        return round(self.width * self.mlp_ratio)

    @property
    def num_tokens(self) -> int:
        """L: tokens of all scales together (680 for the 256px schedule)."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def global_dim(self) -> int:
        """Channels of a ResNet-18 trunk's pooled vector (512 at ``resnet_width`` 64)."""
        return 8 * self.resnet_width


def _check_patch_nums(patch_nums: tuple[int, ...]) -> None:
    # two scales at least: upstream's CFG ramp and phi selection divide by (number of scales - 1)
    if len(patch_nums) < 2 or any(pn < 1 for pn in patch_nums):
        raise ValueError(f"patch_nums must be >= 2 grid sides, each >= 1, got {patch_nums}")
    if any(b <= a for a, b in itertools.pairwise(patch_nums)):
        raise ValueError(f"patch_nums must increase strictly, got {patch_nums}")


@dataclass(frozen=True)
class VQVAEConfig:
    """VAR's multi-scale VQ-VAE (upstream `models/vqvae.py::VQVAE`, LDM vq-f16 layout). ``num_scales`` is
    the row count of the ``quantize.ema_vocab_hit_SV`` training statistic only; the grids to quantize
    over are given per call."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    num_scales: int = 10
    # upstream's GroupNorm, or the demo's PixelNorm ("pixel"; docs/demo_v2.md section 1: no droplet)
    norm: str = "group"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "z_channels", "ch", "num_res_blocks", "num_scales"):
            _check_positive(name, getattr(self, name))
        if self.norm not in ("group", "pixel"):
            raise ValueError(f"norm must be one of ('group', 'pixel'), got {self.norm!r}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be non-empty positive multipliers, got {self.ch_mult}")
        if self.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm of 32 groups), got {self.ch}")
        if not 0 < self.quant_resi <= 1:
            raise ValueError(f"quant_resi must be in (0, 1], got {self.quant_resi}")
        if self.share_quant_resi < 2:
            raise ValueError(
                f"share_quant_resi must be >= 2 (partially shared phi convs), got {self.share_quant_resi}"
            )

    @property
    def downsample(self) -> int:
        """Pixels per token along one side (16 for the official VQ-VAE)."""
        return 2 ** (len(self.ch_mult) - 1)


TEXT_PADDINGS = ("longest", "max_length")
TEXT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class TextEncoderConfig:
    """Where the T5 encoder comes from (a hub id or local directory, or the project's bundled demo) and how
    it runs. ``padding="max_length"`` with ``dtype="float16"`` is upstream's `tools/run_infinity.py` exactly
    (every caption padded to ``max_length``, fp16 weights); ``"longest"`` in fp32 gives the same features up
    to float rounding at a fraction of the work (see :mod:`scalestyle.models.text_encoder`)."""

    source: str
    max_length: int = 512
    padding: str = "longest"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("text encoder source must be a non-empty path or hub id")
        if not 1 <= self.max_length <= 4096:
            raise ValueError(f"max_length must be in [1, 4096], got {self.max_length}")
        if self.padding not in TEXT_PADDINGS:
            raise ValueError(f"padding must be one of {TEXT_PADDINGS}, got {self.padding!r}")
        if self.dtype not in TEXT_DTYPES:
            raise ValueError(f"dtype must be one of {TEXT_DTYPES}, got {self.dtype!r}")


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
class VARPreset:
    """A VAR model: the transformer and its VQ-VAE (class-conditional, so no text encoder)."""

    name: str
    transformer: VARConfig
    vae: VQVAEConfig

    def __post_init__(self) -> None:
        t, v = self.transformer, self.vae
        if (t.vocab_size, t.z_channels) != (v.vocab_size, v.z_channels):
            raise ValueError(
                f"transformer (V {t.vocab_size}, Cvae {t.z_channels}) does not fit its VQ-VAE "
                f"(V {v.vocab_size}, Cvae {v.z_channels})"
            )

    @property
    def image_size(self) -> int:
        """Pixels along one side of the generated images."""
        return self.transformer.patch_nums[-1] * self.vae.downsample


@dataclass(frozen=True)
class SamplingConfig:
    """Per-image sampling settings, written once for every caller (upstream Infinity `gen_one_img`
    defaults: cfg 3, tau 0.5, top_k 900, top_p 0.97). ``cfg`` is each model's own guidance rule (Infinity:
    constant, 1 = off; VAR: a linear ramp from 0 to ``cfg``, 0 = off); ``tau`` is Infinity's temperature
    (VAR has none); ``more_smooth`` is VAR's Gumbel smoothing of the codes (visual only; Infinity has
    none); ``h_div_w`` and ``pn`` pick Infinity's schedule (VAR's is fixed by the model)."""

    cfg: float = 3.0
    tau: float = 0.5
    top_k: int = 900
    top_p: float = 0.97
    seed: int = 0
    h_div_w: float = 1.0
    pn: str | None = None
    more_smooth: bool = False

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
            raise ValueError(f"h_div_w must be in [1/3.5, 3.5], got {self.h_div_w}")
        if self.pn is not None and self.pn not in PN_NUM_SCALES:
            raise ValueError(f"pn must be one of {sorted(PN_NUM_SCALES)}, got {self.pn!r}")


# StyleVAR's inference sampling (the authors' scripts/run_eval.sh, eval/infer_grpo.py): no CFG, top-k 900,
# top-p 0.96
TRANSFER_SAMPLING = SamplingConfig(cfg=0.0, top_k=900, top_p=0.96, seed=0)


_VAE_D32 = BSQVAEConfig(codebook_dim=32, patch_size=16, ch_mult=(1, 2, 4, 4, 4))
_VAE_D56 = BSQVAEConfig(codebook_dim=14, patch_size=8, ch_mult=(1, 2, 4, 4), spatial_patchify=True)
# upstream's text path exactly: 512-token padding, fp16 weights (tools/run_infinity.py::load_tokenizer)
_FLAN_T5_XL = TextEncoderConfig(source="google/flan-t5-xl", padding="max_length", dtype="float16")
_VAR_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
_VAR_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
# The demo VQ-VAE: downsample 8, so 64 px gives an 8x8 latent under the first 7 scales of VAR's 256px
# schedule (L = 155 tokens, against 680 for 16x16 under all 10): one VAR step costs 0.7 CPU-seconds at
# batch 16 instead of 4 (measured on the 2-core sandbox), which is what lets the demo's three stages train
# within one session. V 1024 so that the authors' top-k 900 stays within the codebook. VAR-d4 (VAR's rule:
# heads = depth, width = 64 depth) is under 11 MiB in fp16 and its StyleVAR with ResNet trunks of width 16
# under 16 MiB.
_DEMO_PATCH_NUMS = _VAR_256[:7]
_DEMO_VQVAE = VQVAEConfig(
    vocab_size=1024,
    z_channels=16,
    ch=32,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    norm="pixel",
    num_scales=len(_DEMO_PATCH_NUMS),
)
# STYLEVAR_ALPHAS resampled to the demo's 7 scales (linearly at evenly spaced positions, first and last
# kept): the style guide's share still rises from 0.2 at the coarsest scale to 0.8 at the finest.
DEMO_STYLEVAR_ALPHAS = (0.2, 0.35, 0.4, 0.5, 0.6, 0.65, 0.8)


def _var_preset(name: str, depth: int, patch_nums: tuple[int, ...], *, shared_aln: bool) -> VARPreset:
    cfg = VARConfig(depth=depth, width=64 * depth, heads=depth, patch_nums=patch_nums, shared_aln=shared_aln)
    return VARPreset(name, cfg, VQVAEConfig())


PRESETS: dict[str, ModelPreset | VARPreset] = {
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
    # VAR (`models/__init__.py::build_vae_var`): heads = depth, width = 64 * depth, one VQ-VAE for all.
    "var-d16": _var_preset("var-d16", 16, _VAR_256, shared_aln=False),
    "var-d20": _var_preset("var-d20", 20, _VAR_256, shared_aln=False),
    "var-d24": _var_preset("var-d24", 24, _VAR_256, shared_aln=False),
    "var-d30": _var_preset("var-d30", 30, _VAR_256, shared_aln=False),
    "var-d36": _var_preset("var-d36", 36, _VAR_512, shared_aln=True),
    # Tiny VAR for tests (spec §5.5): the official layout at depth 2, V 64, Cvae 8, ch 32, 64x64 images.
    "var-tiny": VARPreset(
        "var-tiny",
        VARConfig(depth=2, width=128, heads=2, patch_nums=(1, 2, 3, 4), vocab_size=64, z_channels=8),
        VQVAEConfig(vocab_size=64, z_channels=8, ch=32, num_scales=4),
    ),
    # The demo VAR (issue 15, `scalestyle.train.demo_stylevar`), the base of the demo StyleVAR: 64x64
    # images of the procedural world, one class per content.
    "var-demo": VARPreset(
        "var-demo",
        VARConfig(
            depth=4,
            width=256,
            heads=4,
            patch_nums=_DEMO_PATCH_NUMS,
            vocab_size=_DEMO_VQVAE.vocab_size,
            z_channels=_DEMO_VQVAE.z_channels,
            num_classes=16,  # len(procedural.CONTENTS), checked by the tests
        ),
        _DEMO_VQVAE,
    ),
}

Preset = TypeVar("Preset", ModelPreset, VARPreset)


@overload
def get_preset(name: str) -> ModelPreset: ...
@overload
def get_preset(name: str, kind: type[Preset]) -> Preset: ...
def get_preset(name: str, kind: type[Any] = ModelPreset) -> ModelPreset | VARPreset:
    """The preset ``name`` of family ``kind`` (Infinity's :class:`ModelPreset` unless told otherwise)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
    if not isinstance(preset, kind):
        family = "a VAR" if isinstance(preset, VARPreset) else "an Infinity"
        wanted = sorted(k for k, v in PRESETS.items() if isinstance(v, kind))
        raise ValueError(f"model preset {name!r} is {family} preset; choose one of {wanted} here")
    return preset


@dataclass(frozen=True)
class StyleVARPreset:
    """A StyleVAR model: the transformer and the VQ-VAE that tokenizes its target and guide images."""

    name: str
    transformer: StyleVARConfig
    vae: VQVAEConfig

    def __post_init__(self) -> None:
        t, v = self.transformer, self.vae
        if (t.vocab_size, t.z_channels) != (v.vocab_size, v.z_channels):
            raise ValueError(
                f"transformer (V {t.vocab_size}, Cvae {t.z_channels}) does not fit its VQ-VAE "
                f"(V {v.vocab_size}, Cvae {v.z_channels})"
            )

    @property
    def image_size(self) -> int:
        """Pixels along one side of the content, style and generated images."""
        return self.transformer.patch_nums[-1] * self.vae.downsample


# A table of its own: StyleVAR takes two images, not a caption or a class, so no text or class pipeline
# may pick one of these up from PRESETS.
STYLEVAR_PRESETS: dict[str, StyleVARPreset] = {
    # `build_vae_stylevar` defaults: VAR-d20 with the official VQ-VAE, two ResNet-18 trunks
    "stylevar-d20": StyleVARPreset(
        "stylevar-d20",
        StyleVARConfig(depth=20, width=1280, heads=20, patch_nums=_VAR_256, alphas=STYLEVAR_ALPHAS),
        VQVAEConfig(),
    ),
    # The demo StyleVAR (issue 15): var-demo's transformer and VQ-VAE, ResNet trunks of width 16.
    "stylevar-demo": StyleVARPreset(
        "stylevar-demo",
        StyleVARConfig(
            depth=4,
            width=256,
            heads=4,
            patch_nums=_DEMO_PATCH_NUMS,
            alphas=DEMO_STYLEVAR_ALPHAS,
            vocab_size=_DEMO_VQVAE.vocab_size,
            z_channels=_DEMO_VQVAE.z_channels,
            resnet_width=16,
        ),
        _DEMO_VQVAE,
    ),
    # Tiny StyleVAR for tests: var-tiny's sizes, ResNet trunks of width 8 (a 64-d global vector).
    "stylevar-tiny": StyleVARPreset(
        "stylevar-tiny",
        StyleVARConfig(
            depth=2,
            width=128,
            heads=2,
            patch_nums=(1, 2, 3, 4),
            alphas=(0.2, 0.4, 0.6, 0.8),
            vocab_size=64,
            z_channels=8,
            resnet_width=8,
        ),
        VQVAEConfig(vocab_size=64, z_channels=8, ch=32, num_scales=4),
    ),
}


def get_stylevar_preset(name: str) -> StyleVARPreset:
    try:
        return STYLEVAR_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown StyleVAR preset {name!r}; choose one of {sorted(STYLEVAR_PRESETS)}"
        ) from None
