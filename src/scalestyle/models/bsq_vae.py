"""The BSQ multi-scale VAE of Infinity: a convolutional autoencoder with binary spherical quantization.

Follows `infinity/models/bsq_vae/flux_vqgan.py` (``AutoEncoder``, ``Encoder``, ``Decoder``, ``ResnetBlock``)
and `infinity/models/bsq_vae/multiscale_bsq.py` (``MultiScaleBSQ``, ``BSQ``) of FoundationVision/Infinity with
the options of `vae.py::vae_model` (2D convs, no attention blocks, ``new_quant``, no projections). Spec
sections 1.8 (steps 5-7) and 2 of `infinity_spec.md` describe the same thing in words.

Parameter names and shapes equal the official state dict: every conv and norm is wrapped
(``.conv.weight``, ``.norm.weight``) and the quantizer's only state, ``quantizer.lfq.mask``, also appears
as ``quantize.lfq.mask`` because upstream registers the same module under both names.

Three module-level functions are shared by the inference loop and by teacher forcing
(:meth:`BSQVAE.encode_multiscale`), so bits from encoding an image reproduce the codes that sampling those
bits would produce: :func:`bits_to_codes`, :func:`upsample_codes` and :func:`next_scale_input`. They repeat
upstream's tensor layouts on purpose (channel-last views into ``F.interpolate``, the L2 norm over a
contiguous or strided channel axis) because the float results differ at the 1e-7 level otherwise, and one
flipped bit cascades through generation.

With ``spatial_patchify`` (the 8B VAE) the VAE works at twice the token grid, (2h, 2w), and a token's 4d
bits are the 2x2 ``pixel_unshuffle`` of the latent: bit j is channel ``j // 4`` at sub-pixel
``((j % 4) // 2, j % 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from scalestyle.config import VAE_NORMS, BSQVAEConfig, SamplingConfig
from scalestyle.scale_model import Draw
from scalestyle.schedules import Schedule

# ---------------------------------------------------------------------------------------------------------
# Building blocks (flux_vqgan.py)


def group_norm_groups(channels: int) -> int:
    """Groups of the GroupNorm over ``channels``.

    Upstream uses 32 groups, or 24 when ``channels % 32 != 0``, and fails otherwise. Every official config
    has multiples of 32 channels. For our small configs (e.g. 16 channels) we fall back to the largest
    power of two below 32 that divides ``channels``, so the official models are unaffected.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    for groups in (32, 24, 16, 8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


class RMSNorm2d(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight + bias`` with the mean over ``groups`` channel groups.

    ``spatial`` False takes the mean over each pixel's channels only (``groups`` must be 1): ProGAN's
    PixelNorm with an affine. True takes it over the group's channels and all pixels: GroupNorm without
    the mean subtraction. Neither subtracts a mean, so a constant map stays constant (GroupNorm divides
    its near-zero variance and amplifies the border effects of the convs' zero padding into a spot). The
    pixel variant also has no spatial statistics, so one strong spot cannot rescale the rest of the image,
    which is how StyleGAN's generator sneaked signal past GroupNorm (the droplet). Parameters are named
    and shaped like GroupNorm's, so checkpoints keep their keys. Computed in float32 like GroupNorm under
    autocast.
    """

    def __init__(self, channels: int, groups: int, *, spatial: bool, eps: float = 1e-6) -> None:
        super().__init__()
        if channels % groups or (groups != 1 and not spatial):
            raise ValueError(f"groups {groups} must divide channels {channels} (1 without spatial)")
        self.groups, self.spatial, self.eps = groups, spatial, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = x_BCHW.float()
        if self.spatial:
            B, C = x.shape[:2]
            ms = x.reshape(B, self.groups, -1).square().mean(-1)  # (B, G)
            ms = ms.repeat_interleave(C // self.groups, dim=1)[:, :, None, None]
        else:
            ms = x.square().mean(1, keepdim=True)
        y = x * torch.rsqrt(ms + self.eps)
        y = y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]
        return y.to(x_BCHW.dtype)


class Norm(nn.Module):
    """The blocks' normalization, wrapped as upstream's ``Normalize``, hence keys ``<name>.norm.weight``.

    ``kind`` is :attr:`BSQVAEConfig.norm`: ``"group"`` is upstream's GroupNorm (eps 1e-6, affine),
    ``"pixel"`` and ``"group_rms"`` are :class:`RMSNorm2d` without and with spatial statistics.
    """

    def __init__(self, channels: int, kind: str = "group") -> None:
        super().__init__()
        self.norm: nn.Module
        if kind == "group":
            self.norm = nn.GroupNorm(group_norm_groups(channels), channels, eps=1e-6, affine=True)
        elif kind == "pixel":
            self.norm = RMSNorm2d(channels, 1, spatial=False)
        elif kind == "group_rms":
            self.norm = RMSNorm2d(channels, group_norm_groups(channels), spatial=True)
        else:
            raise ValueError(f"norm must be one of {VAE_NORMS}, got {kind!r}")

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.norm(x_BCHW)


class Conv(nn.Module):
    """A 2D conv wrapped as upstream's ``Conv``, hence keys ``<name>.conv.weight``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(x_BCHW)


def swish(x: torch.Tensor) -> torch.Tensor:
    # written out rather than F.silu to match upstream's float result exactly
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """``x' + conv2(swish(norm2(conv1(swish(norm1(x))))))`` with x' a 1x1 projection when widths differ."""

    def __init__(self, c_in: int, c_out: int, norm: str = "group") -> None:
        super().__init__()
        self.norm1 = Norm(c_in, norm)
        self.conv1 = Conv(c_in, c_out, 3, padding=1)
        self.norm2 = Norm(c_out, norm)
        self.conv2 = Conv(c_out, c_out, 3, padding=1)
        # only registered when needed: the state dict has no nin_shortcut for same-width blocks
        self.nin_shortcut = Conv(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x_BCHW)))
        h = self.conv2(swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x_BCHW = self.nin_shortcut(x_BCHW)
        return x_BCHW + h


class Downsample(nn.Module):
    """Halve H and W: zero-pad right and bottom by one, then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        # torch convs pad symmetrically; upstream pads asymmetrically by hand
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks) and optionally ``downsample`` or ``upsample``.

    Upstream also registers an empty ``attn`` list here; it holds no state and is left out.
    """

    def __init__(self, blocks: list[ResnetBlock], resample: Downsample | Upsample | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if isinstance(resample, Downsample):
            self.downsample = resample
        elif isinstance(resample, Upsample):
            self.upsample = resample

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x_BCHW = block(x_BCHW)
        resample = self._modules.get("downsample") or self._modules.get("upsample")
        return x_BCHW if resample is None else resample(x_BCHW)


class _Mid(nn.Module):
    def __init__(self, channels: int, norm: str = "group") -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, norm)
        self.block_2 = ResnetBlock(channels, channels, norm)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x_BCHW))


class Encoder(nn.Module):
    """Image (B, 3, P, P) to latent (B, d, P/patch, P/patch)."""

    def __init__(self, cfg: BSQVAEConfig) -> None:
        super().__init__()
        ch, mult = cfg.base_ch, cfg.ch_mult
        num_down = len(mult) - 1  # == log2(patch_size), checked by the config
        self.conv_in = Conv(3, ch, 3, padding=1)
        levels = []
        c_in = ch
        for i, m in enumerate(mult):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(c_in, ch * m, cfg.norm))
                c_in = ch * m
            levels.append(_Level(blocks, Downsample(c_in) if i < num_down else None))
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(c_in, cfg.norm)
        self.norm_out = Norm(c_in, cfg.norm)
        self.conv_out = Conv(c_in, cfg.codebook_dim, 3, padding=1)

    def forward(self, img_B3PP: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3PP)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, d, H, W) to image (B, 3, H*patch, W*patch), not clamped.

    ``up[i]`` is level i (widths ``base_ch * ch_mult[i]``) and runs from the deepest level to level 0; every
    level except 0 ends with an Upsample. Each level has ``num_res_blocks + 1`` blocks.
    """

    def __init__(self, cfg: BSQVAEConfig) -> None:
        super().__init__()
        ch, mult = cfg.base_ch, cfg.ch_mult
        c_in = ch * mult[-1]
        norm = cfg.decoder_norm or cfg.norm
        self.conv_in = Conv(cfg.codebook_dim, c_in, 3, padding=1)
        self.mid = _Mid(c_in, norm)
        levels: list[_Level] = []
        for i in reversed(range(len(mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(c_in, ch * mult[i], norm))
                c_in = ch * mult[i]
            levels.insert(0, _Level(blocks, Upsample(c_in) if i >= 1 else None))
        self.up = nn.ModuleList(levels)
        self.norm_out = Norm(c_in, norm)
        self.conv_out = Conv(c_in, 3, 3, padding=1)

    def forward(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BdHW))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------------------
# Codes from bits, and the two resizes of the scale-wise loop (shared by inference and teacher forcing)


def code_scale(d: int) -> float:
    """s = 1/sqrt(d): each code coordinate is +-s, so a code has unit L2 norm (up to rounding)."""
    return 1.0 / math.sqrt(d)


def bits_to_codes(bits_BhwD: torch.Tensor, patchify: bool) -> torch.Tensor:
    """Codes (B, d, h, w) of bits (B, h, w, D), or (B, d, 2h, 2w) with ``patchify`` (D = 4d).

    ``code = bit*s*2 - s`` with s = 1/sqrt(d), then L2-normalised over d (eps 1e-12), as upstream's
    ``BSQ.indices_to_codes(label_type='bit_label')``. Bits may be bool or integer 0/1.

    The result is a channel-last view exactly like upstream's, because the norm and the later interpolation
    may round differently on other layouts.
    """
    if bits_BhwD.ndim != 4:
        raise ValueError(f"bits must be (B, h, w, D), got shape {tuple(bits_BhwD.shape)}")
    if patchify:
        if bits_BhwD.shape[-1] % 4:
            raise ValueError(f"patchified bits need D % 4 == 0, got D = {bits_BhwD.shape[-1]}")
        bits_BHWd = rearrange(bits_BhwD, "b h w (d i j) -> b (h i) (w j) d", i=2, j=2)
    else:
        bits_BHWd = bits_BhwD
    # int64 like upstream's sampled bits (bool would give the same values); upstream's codes are contiguous
    # channel-last whatever the bits' layout, and the norm reduces over that contiguous axis
    bits_BHWd = bits_BHWd.long().contiguous()
    s = code_scale(bits_BHWd.shape[-1])
    codes_BHWd = F.normalize(bits_BHWd * s * 2 - s, dim=-1)
    return rearrange(codes_BHWd, "b h w d -> b d h w")


def _resize(x_BdHW: torch.Tensor, size_hw: tuple[int, int], mode: str) -> torch.Tensor:
    # upstream interpolates 5-D (B, d, 1, h, w) tensors; 'trilinear' with T 1 -> 1 is bilinear in (h, w),
    # 'area' is adaptive average pooling. The 5-D call keeps upstream's exact float evaluation.
    if mode == "trilinear":
        out = F.interpolate(x_BdHW.unsqueeze(2), size=(1, *size_hw), mode=mode, align_corners=False)
    else:
        out = F.interpolate(x_BdHW.unsqueeze(2), size=(1, *size_hw), mode=mode)
    return out.squeeze(2)


def _check_hw(name: str, size_hw: Sequence[int]) -> tuple[int, int]:
    if len(size_hw) != 2 or min(size_hw) < 1:
        raise ValueError(f"{name} must be (h, w) with h, w >= 1, got {tuple(size_hw)}")
    return int(size_hw[0]), int(size_hw[1])


def upsample_codes(codes_Bdhw: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (B, d, h, w) -> (B, d, *size_hw): 5-D trilinear, align_corners False, as upstream."""
    if codes_Bdhw.ndim != 4:
        raise ValueError(f"codes must be (B, d, h, w), got shape {tuple(codes_Bdhw.shape)}")
    return _resize(codes_Bdhw, _check_hw("size_hw", size_hw), "trilinear")


def next_scale_input(summed_BdHW: torch.Tensor, grid_hw: tuple[int, int], patchify: bool) -> torch.Tensor:
    """The transformer input x_BLD (L = h*w, row-major) of the next scale, from the summed codes so far.

    Trilinear resize to the token grid (at VAE resolution (2h, 2w) with ``patchify``, then a 2x2
    pixel_unshuffle so D = 4d in the bit order of :func:`bits_to_codes`).
    """
    if summed_BdHW.ndim != 4:
        raise ValueError(f"summed codes must be (B, d, H, W), got shape {tuple(summed_BdHW.shape)}")
    h, w = _check_hw("grid_hw", grid_hw)
    if patchify:
        x_BdHW = _resize(summed_BdHW, (2 * h, 2 * w), "trilinear")
        return rearrange(x_BdHW, "b d (h i) (w j) -> b (h w) (d i j)", i=2, j=2)
    return rearrange(_resize(summed_BdHW, (h, w), "trilinear"), "b d h w -> b (h w) d")


def sum_codes(bits: Sequence[torch.Tensor], patchify: bool) -> torch.Tensor:
    """Summed codes (B, d, Hl, Wl) of per-scale bits, computed as the inference loop does.

    Every scale but the last is upsampled to the last scale's size; the last one is added as it is.
    """
    if not bits:
        raise ValueError("need the bits of at least one scale")
    factor = 2 if patchify else 1
    size_hw = (bits[-1].shape[1] * factor, bits[-1].shape[2] * factor)
    summed_BdHW: torch.Tensor | None = None
    for k, bits_BhwD in enumerate(bits):
        codes = bits_to_codes(bits_BhwD, patchify)
        if k < len(bits) - 1:
            codes = upsample_codes(codes, size_hw)
        summed_BdHW = codes if summed_BdHW is None else summed_BdHW + codes
    assert summed_BdHW is not None  # bits is non-empty
    return summed_BdHW


def sample_bits(
    logits_BlV: torch.Tensor, *, top_k: int, top_p: float, generator: torch.Generator
) -> torch.Tensor:
    """Draw one bit per (token, bit) from logits (B, L, 2D); returns bits (B, L, D) as int64.

    Upstream `sample_with_top_k_top_p_also_inplace_modifying_logits_` on the (B, L*D, 2) view: top-k is
    clamped to the 2 choices, top-p drops the minority bit when its probability is <= 1 - top_p.
    """
    B, L, _ = logits_BlV.shape
    logits = rearrange(logits_BlV, "b l (d two) -> b (l d) two", two=2).clone()
    if top_k > 0:
        k = min(top_k, 2)
        kth = logits.topk(k, dim=-1, largest=True, sorted=False).values.amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits.masked_fill_(remove.scatter(-1, sorted_idx, remove), -torch.inf)
    draws = torch.multinomial(logits.softmax(dim=-1).view(-1, 2), 1, replacement=True, generator=generator)
    return rearrange(draws, "(b l d) 1 -> b l d", b=B, l=L)


class BitwiseCodec:
    """The token codec of BSQ (:class:`~scalestyle.scale_model.TokenCodec`): D bits per token, codes summed
    at VAE resolution, trilinear next-scale inputs (upstream `autoregressive_infer_cfg`, spec §1.8)."""

    def __init__(self, bits: int, patchify: bool) -> None:
        if bits < 1 or (patchify and bits % 4):
            raise ValueError(f"bits must be >= 1 (a multiple of 4 with patchify), got {bits}")
        self.bits, self.patchify = bits, patchify

    def token_shape(self, rows: int, hw: tuple[int, int]) -> tuple[int, ...]:
        return (rows, *hw, self.bits)

    def sample(
        self,
        logits_BLV: torch.Tensor,
        hw: tuple[int, int],
        *,
        scale: int,
        schedule: Schedule,
        sampling: SamplingConfig,
        generator: torch.Generator,
    ) -> Draw:
        bits_BLD = sample_bits(
            logits_BLV.float(), top_k=sampling.top_k, top_p=sampling.top_p, generator=generator
        )
        return Draw(rearrange(bits_BLD, "b (h w) d -> b h w d", h=hw[0], w=hw[1]))

    def accumulate(
        self, summed: torch.Tensor | None, draw: Draw, *, scale: int, schedule: Schedule
    ) -> torch.Tensor:
        codes = bits_to_codes(draw.tokens, self.patchify)
        if scale < schedule.num_scales - 1:
            factor = 2 if self.patchify else 1
            last_h, last_w = schedule.last_grid
            codes = upsample_codes(codes, (last_h * factor, last_w * factor))
        return codes if summed is None else summed + codes

    def next_input(self, summed: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return next_scale_input(summed, hw, self.patchify)


# ---------------------------------------------------------------------------------------------------------
# Quantizer (multiscale_bsq.py)


class BSQ(nn.Module):
    """Per-token binary spherical quantization over d channels (upstream ``BSQ`` with ``new_quant``).

    Holds the int64 buffer ``mask`` = 2^(d-1) .. 2^0 (upstream's bit weights for integer labels). It is a
    constant, so a state dict without it still loads: the pre-hook fills it in.
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d
        self.register_buffer("mask", self._make_mask(None))  # on the ambient device (meta included)
        self.register_load_state_dict_pre_hook(self._fill_mask)

    def _make_mask(self, device: torch.device | None) -> torch.Tensor:
        # from python ints: ``2 ** arange`` on the meta device would import torch's slow python meta kernels
        return torch.tensor([2**i for i in range(self.d - 1, -1, -1)], dtype=torch.int64, device=device)

    def _fill_mask(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        key = prefix + "mask"
        if key not in state_dict:
            state_dict[key] = self._make_mask(torch.device("cpu"))
        elif not torch.equal(state_dict[key].cpu(), self._make_mask(torch.device("cpu"))):
            raise ValueError(f"{key} must hold the powers of two 2^{self.d - 1} .. 2^0 for d = {self.d}")

    def forward(self, r_BdHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_BdHW, bits_BHWd): the quantized tokens (a channel-last view, like upstream) and their bits.

        ``u = r/|r|`` (eps 1e-12), ``q = u + (s*sign(u) - u)`` with the difference detached (straight-through;
        in float32 q can differ from +-s by an ulp, exactly as upstream), ``bits = q > 0`` as int64. A zero
        vector gives all-zero bits.
        """
        d, H = r_BdHW.shape[1], r_BdHW.shape[2]
        if d != self.d:
            raise ValueError(f"expected {self.d} latent channels, got {d}")
        # upstream packs to (B, H*W, d) contiguous before normalising over the contiguous channel axis
        u_BLd = F.normalize(rearrange(r_BdHW, "b d h w -> b (h w) d").contiguous(), dim=-1)
        s = code_scale(d)
        zhat_BLd = torch.where(u_BLd > 0, torch.ones_like(u_BLd), -torch.ones_like(u_BLd)) * s
        q_BLd = u_BLd + (zhat_BLd - u_BLd).detach()
        bits_BHWd = rearrange(q_BLd > 0, "b (h w) d -> b h w d", h=H).long()
        return rearrange(q_BLd, "b (h w) d -> b d h w", h=H), bits_BHWd


BitFlip = Callable[[int, torch.Tensor], torch.Tensor]
"""(scale index, bits_BhwD at VAE resolution) -> the same bits with some flipped."""


class MultiScaleBSQ(nn.Module):
    """Residual quantization over a schedule of grids (upstream ``MultiScaleBSQ.forward``, spec §2.3)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lfq = BSQ(d)

    def forward(
        self, z_BdHW: torch.Tensor, grids_hw: Sequence[tuple[int, int]]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(bits_BhwD per scale at VAE resolution, q_sum_BdHW).

        For each grid: area-resize the residual to it (not when it is the full size), quantize, trilinear-
        upsample the quantized tokens back to full size, subtract them from the residual (detached, so the
        straight-through gradient reaches z only through q_sum) and add them to q_sum.
        """
        bits, _, q_sum_BdHW = self.requantize(z_BdHW, grids_hw, None)
        return bits, q_sum_BdHW

    def requantize(
        self, z_BdHW: torch.Tensor, grids_hw: Sequence[tuple[int, int]], flip: BitFlip | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """(target bits, seen bits, q_sum) per scale; without ``flip`` the two bit lists are the same.

        Bitwise Self-Correction (Infinity, Han et al. 2025, upstream ``BitwiseSelfCorrection.flip_requant``):
        ``flip(k, bits)`` returns scale k's bits with some flipped, as a model's errors would be; the flipped
        ("seen") tokens are what the later scales' residual is taken against, so the later targets correct
        the error, while scale k's own target stays its true bits.
        """
        z_BdHW = z_BdHW.float()  # upstream quantizes in fp32 with autocast off
        size_hw = (z_BdHW.shape[-2], z_BdHW.shape[-1])
        residual_BdHW = z_BdHW.contiguous()
        q_sum_BdHW: torch.Tensor | None = None
        bits: list[torch.Tensor] = []
        seen: list[torch.Tensor] = []
        for k, hw in enumerate(grids_hw):
            full = tuple(hw) == size_hw
            r_Bdhw = residual_BdHW if full else _resize(residual_BdHW, hw, "area")
            q_Bdhw, bits_BhwD = self.lfq(r_Bdhw)
            bits.append(bits_BhwD)
            if flip is not None:
                seen_BhwD = flip(k, bits_BhwD)
                # a flipped bit is the opposite sign of the same code coordinate
                flipped_Bdhw = rearrange(seen_BhwD != bits_BhwD, "b h w d -> b d h w")
                q_Bdhw = torch.where(flipped_Bdhw, -q_Bdhw, q_Bdhw)
                seen.append(seen_BhwD)
            else:
                seen.append(bits_BhwD)
            q_BdHW = q_Bdhw if full else upsample_codes(q_Bdhw, size_hw).contiguous()
            residual_BdHW = residual_BdHW - q_BdHW.detach()
            q_sum_BdHW = q_BdHW if q_sum_BdHW is None else q_sum_BdHW + q_BdHW
        if q_sum_BdHW is None:
            raise ValueError("need at least one grid")
        return bits, seen, q_sum_BdHW


# ---------------------------------------------------------------------------------------------------------
# The autoencoder


@dataclass(frozen=True)
class MultiScaleEncoding:
    """An image as the transformer sees it (teacher forcing).

    bits: per scale, ``bits_BhwD`` as int64 0/1 (the dtype of sampled bits; usable as cross-entropy
        targets) on the token grid (h, w) with D bits per token (4d, pixel_unshuffle order, with patchify).
    inputs: the transformer inputs ``x_BLD`` (float32, L = h*w row-major) of scales 1..S-1, one fewer than
        ``bits``; ``inputs[k]`` is built from the bits of scales 0..k.
    summed_codes_BdHW: sum of all scales' codes at VAE resolution, what the inference loop decodes.
    """

    bits: tuple[torch.Tensor, ...]
    inputs: tuple[torch.Tensor, ...]
    summed_codes_BdHW: torch.Tensor


class BSQVAE(nn.Module):
    """Encoder, decoder and multi-scale BSQ quantizer (upstream ``AutoEncoder``)."""

    def __init__(self, cfg: BSQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = MultiScaleBSQ(cfg.codebook_dim)
        # upstream registers the quantizer twice; the alias adds the key quantize.lfq.mask to the state dict
        self.quantize = self.quantizer

    def encode_latent(self, img_B3PP: torch.Tensor) -> torch.Tensor:
        """Encoder output z (B, d, P/patch, P/patch) in float32 for images in [-1, 1]."""
        if img_B3PP.ndim != 4 or img_B3PP.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(img_B3PP.shape)}")
        p = self.cfg.patch_size
        if img_B3PP.shape[-2] % p or img_B3PP.shape[-1] % p:
            raise ValueError(
                f"image size {tuple(img_B3PP.shape[-2:])} must be a multiple of the VAE patch size {p}"
            )
        return self.encoder(img_B3PP).float()

    def decode(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H*patch, W*patch) in [-1, 1] from latents or summed codes."""
        if z_BdHW.ndim != 4 or z_BdHW.shape[1] != self.cfg.codebook_dim:
            raise ValueError(
                f"latents must be (B, {self.cfg.codebook_dim}, H, W), got shape {tuple(z_BdHW.shape)}"
            )
        return self.decoder(z_BdHW).clamp(-1, 1)

    def decode_bits(self, bits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Images from per-scale ``bits_BhwD`` on token grids (upstream ``decode_from_indices``)."""
        return self.decode(sum_codes(bits, self.cfg.spatial_patchify))

    def encode_multiscale(
        self, img_B3PP: torch.Tensor, grids: Sequence[tuple[int, int]], *, flip: BitFlip | None = None
    ) -> MultiScaleEncoding:
        """Bits, transformer inputs and summed codes of images over the token grids ``grids`` (spec §2.3).

        ``grids`` are the transformer's (``Schedule.grids``); the last must be the latent size divided by 2
        with patchify, or equal to it without. Inputs and summed codes are derived from the bits with the same
        functions as the inference loop, so teacher forcing sees exactly what sampling those bits would give
        (they differ from the quantizer's own sum by at most an ulp per scale). With ``flip`` (Bitwise
        Self-Correction, :meth:`MultiScaleBSQ.requantize`; bits at VAE resolution) the inputs and summed
        codes come from the flipped bits and ``bits`` are the corrected targets.
        """
        if not grids:
            raise ValueError("grids must list at least one (h, w)")
        patchify = self.cfg.spatial_patchify
        factor = 2 if patchify else 1
        grids_hw = [_check_hw("grid", g) for g in grids]
        z_BdHW = self.encode_latent(img_B3PP)
        latent_hw = (z_BdHW.shape[-2], z_BdHW.shape[-1])
        last_hw = (grids_hw[-1][0] * factor, grids_hw[-1][1] * factor)
        if last_hw != latent_hw:
            raise ValueError(
                f"last grid {grids_hw[-1]} (x{factor} = {last_hw}) must equal the latent size {latent_hw} "
                f"of a {tuple(img_B3PP.shape[-2:])} image"
            )
        vae_bits, vae_seen, _ = self.quantizer.requantize(
            z_BdHW, [(h * factor, w * factor) for h, w in grids_hw], flip
        )

        def tokens(per_scale: list[torch.Tensor]) -> list[torch.Tensor]:
            if not patchify:
                return per_scale
            unshuffle = "b (h i) (w j) d -> b h w (d i j)"
            return [rearrange(b, unshuffle, i=2, j=2).contiguous() for b in per_scale]

        bits = tokens(vae_bits)
        seen = bits if flip is None else tokens(vae_seen)
        inputs: list[torch.Tensor] = []
        summed_BdHW: torch.Tensor | None = None
        for k, bits_BhwD in enumerate(seen):
            codes = bits_to_codes(bits_BhwD, patchify)
            if k < len(bits) - 1:
                codes = upsample_codes(codes, latent_hw)
            summed_BdHW = codes if summed_BdHW is None else summed_BdHW + codes
            if k < len(bits) - 1:
                inputs.append(next_scale_input(summed_BdHW, grids_hw[k + 1], patchify))
        assert summed_BdHW is not None  # grids is non-empty
        return MultiScaleEncoding(tuple(bits), tuple(inputs), summed_BdHW)
