"""VAR's multi-scale VQ-VAE (``vae_ch160v4096z32``) and its index codec.

Follows FoundationVision/VAR: `models/basic_vae.py` (``Encoder``, ``Decoder``, ``ResnetBlock``, ``AttnBlock``
in the LDM vq-f16 layout: attention after every res block of the deepest level and in the middle),
`models/quant.py` (``VectorQuantizer2`` without z-norm, ``Phi`` and ``PhiPartiallyShared``) and
`models/vqvae.py::VQVAE` (3x3 ``quant_conv``/``post_quant_conv``); spec §5.1-5.4. Parameter names equal the
official state dict (plain names, no wrappers).

:class:`IndexCodec` is the tokenizer side of the next-scale loop (:class:`scalestyle.scale_model.TokenCodec`):
tokens are codebook indices, scale k adds ``phi_k(bicubic(e[idx]))`` to the running latent ``f_hat`` and the
next input is the area resize of ``f_hat``. The same two steps build the teacher-forcing inputs
(upstream ``idxBl_to_var_input``) and decode indices, so teacher forcing sees what sampling those indices
gives. The tensor layouts repeat upstream's on purpose (the channel-last view of ``e[idx]`` into the
bicubic resize, the transposed view of the area resize): other layouts round differently at the 1e-7
level, and one flipped index cascades through generation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from scalestyle.config import SamplingConfig, VQVAEConfig
from scalestyle.models.bsq_vae import RMSNorm2d
from scalestyle.scale_model import Draw
from scalestyle.schedules import Schedule

# ---------------------------------------------------------------------------------------------------------
# Building blocks (basic_vae.py)


def make_norm(channels: int, kind: str) -> nn.Module:
    """:attr:`VQVAEConfig.norm`: ``"group"`` is upstream's GroupNorm(32); ``"pixel"`` the demo's PixelNorm
    with an affine (:class:`scalestyle.models.bsq_vae.RMSNorm2d`, no spatial statistics, hence no droplet:
    docs/demo_v2.md section 1), with GroupNorm's parameter names and shapes."""
    if kind == "pixel":
        return RMSNorm2d(channels, 1, spatial=False)
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """``x' + conv2(SiLU(GN(conv1(SiLU(GN(x))))))``, x' a 1x1 projection when the widths differ."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__()
        self.norm1 = make_norm(c_in, norm)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = make_norm(c_out, norm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        # upstream's same-width shortcut is an Identity: no keys
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x_BCHW if self.nin_shortcut is None else self.nin_shortcut(x_BCHW)) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention, q/k/v from one 1x1 conv, softmax(q^T k / sqrt(C))."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.channels = channels
        self.norm = make_norm(channels, norm)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        H = x_BCHW.shape[2]
        q, k, v = rearrange(self.qkv(self.norm(x_BCHW)), "b (three c) h w -> three b c (h w)", three=3)
        # upstream's two bmm calls on these contiguous layouts (the float order of the scores matters)
        q_BLC = rearrange(q, "b c l -> b l c").contiguous()
        w_BLL = torch.bmm(q_BLC, k.contiguous()) * self.channels**-0.5
        w_BLL = w_BLL.softmax(dim=2)
        h_BCL = torch.bmm(v.contiguous(), rearrange(w_BLL, "b q k -> b k q").contiguous())
        return x_BCHW + self.proj_out(rearrange(h_BCL, "b c (h w) -> b c h w", h=H))


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a 3x3 stride-2 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """One resolution: ``block`` (res blocks), ``attn`` (an AttnBlock after each, or none), a resample."""

    def __init__(
        self, blocks: list[ResnetBlock], attn: bool, resample: Downsample | Upsample | None, norm: str
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = (
            nn.ModuleList(AttnBlock(b.conv2.out_channels, norm) for b in blocks) if attn else nn.ModuleList()
        )
        if isinstance(resample, Downsample):
            self.downsample = resample
        elif isinstance(resample, Upsample):
            self.upsample = resample

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x_BCHW = block(x_BCHW)
            if len(self.attn):
                x_BCHW = self.attn[i](x_BCHW)
        resample = self._modules.get("downsample") or self._modules.get("upsample")
        return x_BCHW if resample is None else resample(x_BCHW)


class Mid(nn.Module):
    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, norm)
        self.attn_1 = AttnBlock(channels, norm)
        self.block_2 = ResnetBlock(channels, channels, norm)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x_BCHW)))


class Encoder(nn.Module):
    """Image (B, 3, P, P) in [-1, 1] to features (B, Cvae, P/16, P/16)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        levels, c_in = [], ch
        for i, m in enumerate(mult):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(c_in, ch * m, cfg.norm))
                c_in = ch * m
            last = i == len(mult) - 1
            levels.append(Level(blocks, last, None if last else Downsample(c_in), cfg.norm))
        self.down = nn.ModuleList(levels)
        self.mid = Mid(c_in, cfg.norm)
        self.norm_out = make_norm(c_in, cfg.norm)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, padding=1)

    def forward(self, img_B3PP: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3PP)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Features (B, Cvae, H, W) to an image (B, 3, 16H, 16W), not clamped. ``up[i]`` is level i; they run from
    the deepest level (with attention) to level 0, each with ``num_res_blocks + 1`` blocks."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        c_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = Mid(c_in, cfg.norm)
        levels: list[Level] = []
        for i in reversed(range(len(mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(c_in, ch * mult[i], cfg.norm))
                c_in = ch * mult[i]
            resample = Upsample(c_in) if i > 0 else None
            levels.insert(0, Level(blocks, i == len(mult) - 1, resample, cfg.norm))
        self.up = nn.ModuleList(levels)
        self.norm_out = make_norm(c_in, cfg.norm)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, f_BdHW: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(f_BdHW))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------------------
# Quantizer (quant.py)


def token_grid(codes_BLd: torch.Tensor, h: int) -> torch.Tensor:
    """(B, h*w, d) -> (B, d, h, w) as upstream's ``transpose(1, 2).reshape``: a transpose, then a split of
    the token axis. A single rearrange gives the same values with another batch stride, which at B = 1
    changes the float result of the bicubic resize and the phi conv that follow."""
    return rearrange(rearrange(codes_BLd, "b l d -> b d l"), "b d (h w) -> b d h w", h=h)


class Phi(nn.Conv2d):
    """``phi(h) = (1 - r) h + r conv3x3(h)``, r = ``quant_resi``."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = ratio

    def forward(self, h_BdHW: torch.Tensor) -> torch.Tensor:
        return h_BdHW.mul(1 - self.ratio) + super().forward(h_BdHW).mul(self.ratio)


class PhiPartiallyShared(nn.Module):
    """K phi convs shared by all scales: scale si of SN takes the one whose tick is nearest si/(SN-1)."""

    def __init__(self, channels: int, ratio: float, count: int) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(channels, ratio) for _ in range(count))
        # numpy float64 as upstream: for SN = 10, si = 2 and 7 are ties that its rounding decides
        K = count
        self.ticks = (
            np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)
        )

    def index(self, scale: int, num_scales: int) -> int:
        return int(np.argmin(np.abs(self.ticks - scale / (num_scales - 1))))

    def phi(self, scale: int, num_scales: int) -> Phi:
        phi = self.qresi_ls[self.index(scale, num_scales)]
        assert isinstance(phi, Phi)
        return phi


class VectorQuantizer(nn.Module):
    """Upstream ``VectorQuantizer2``: the codebook ``embedding`` (V, Cvae), the phi convs, and the training
    statistic ``ema_vocab_hit_SV`` (unused here, kept for the state dict)."""

    ema_vocab_hit_SV: torch.Tensor

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.quant_resi = PhiPartiallyShared(cfg.z_channels, cfg.quant_resi, cfg.share_quant_resi)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(cfg.num_scales, cfg.vocab_size))
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)

    def codes(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """``e[idx]`` as (B, Cvae, h, w), laid out like upstream's ``transpose(1, 2).view``."""
        return token_grid(self.embedding(rearrange(idx_Bhw, "b h w -> b (h w)")), idx_Bhw.shape[1])

    def add_scale(
        self, f_hat_BdHW: torch.Tensor | None, h_Bdhw: torch.Tensor, scale: int, schedule: Schedule
    ) -> torch.Tensor:
        """``f_hat + phi_k(bicubic(h))`` (the last scale: ``phi_k(h)``, already at full size); ``f_hat``
        None is upstream's zero start (upstream `get_next_autoregressive_input`, `embed_to_fhat`)."""
        S, last = schedule.num_scales, schedule.last_grid
        if scale < S - 1:
            h_Bdhw = F.interpolate(h_Bdhw, size=last, mode="bicubic")
        h_BdHW = self.quant_resi.phi(scale, S)(h_Bdhw)
        if f_hat_BdHW is None:
            f_hat_BdHW = h_BdHW.new_zeros(h_BdHW.shape)
        return f_hat_BdHW + h_BdHW

    def quantize(
        self, f_BdHW: torch.Tensor, grids: Sequence[tuple[int, int]]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(idx_Bhw per scale, f_hat_BdHW): residual quantization (upstream ``f_to_idxBl_or_fhat``).

        Per scale: area-resize the residual to the grid (not at the last one), nearest codebook entry by
        ``|z|^2 + |e|^2 - 2 z.e`` (one ``addmm``, as upstream), ``h = phi(bicubic(e[idx]))``, then
        ``f_hat += h`` and ``rest -= h``.
        """
        B, _, H, W = f_BdHW.shape
        if tuple(grids[-1]) != (H, W):
            raise ValueError(f"the last grid {tuple(grids[-1])} must equal the feature size {(H, W)}")
        S = len(grids)
        e_VC = self.embedding.weight.detach()
        rest = f_BdHW.detach().clone()
        f_hat = torch.zeros_like(rest)
        indices = []
        for si, hw in enumerate(grids):
            z = rest if si == S - 1 else F.interpolate(rest, size=hw, mode="area")
            z_NC = rearrange(z, "b c h w -> (b h w) c")
            d_NV = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(e_VC.square(), dim=1)
            d_NV.addmm_(z_NC, e_VC.T, alpha=-2, beta=1)
            idx_Bhw = rearrange(torch.argmin(d_NV, dim=1), "(b h w) -> b h w", b=B, h=hw[0])
            h = rearrange(self.embedding(idx_Bhw), "b h w c -> b c h w")
            if si < S - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic")
            h = self.quant_resi.phi(si, S)(h.contiguous())
            f_hat = f_hat + h
            rest = rest - h
            indices.append(idx_Bhw)
        return indices, f_hat


# ---------------------------------------------------------------------------------------------------------
# The autoencoder


class VQVAE(nn.Module):
    """Encoder, decoder, multi-scale quantizer and the two 3x3 convs around it (upstream ``VQVAE``)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)

    def encode_features(self, img_B3PP: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(img))`` (B, Cvae, P/16, P/16) for images in [-1, 1]."""
        if img_B3PP.ndim != 4 or img_B3PP.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(img_B3PP.shape)}")
        s = self.cfg.downsample
        if img_B3PP.shape[-2] % s or img_B3PP.shape[-1] % s:
            raise ValueError(f"image size {tuple(img_B3PP.shape[-2:])} must be a multiple of {s}")
        return self.quant_conv(self.encoder(img_B3PP))

    def encode_indices(self, img_B3PP: torch.Tensor, schedule: Schedule) -> list[torch.Tensor]:
        """``idx_Bhw`` of every scale (upstream ``img_to_idxBl``)."""
        return self.quantize.quantize(self.encode_features(img_B3PP), schedule.grids)[0]

    def reconstruct(self, img_B3PP: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """Images through all scales of the quantizer, in [-1, 1] (``img_to_reconstructed_img(last_one)``)."""
        return self.decode_fhat(self.quantize.quantize(self.encode_features(img_B3PP), schedule.grids)[1])

    def decode_fhat(self, f_hat_BdHW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from the summed latent (upstream ``fhat_to_img``)."""
        if f_hat_BdHW.ndim != 4 or f_hat_BdHW.shape[1] != self.cfg.z_channels:
            raise ValueError(f"f_hat must be (B, {self.cfg.z_channels}, H, W), got {tuple(f_hat_BdHW.shape)}")
        return self.decoder(self.post_quant_conv(f_hat_BdHW)).clamp(-1, 1)

    def indices_to_fhat(self, indices: Sequence[torch.Tensor], schedule: Schedule) -> torch.Tensor:
        """The summed latent of per-scale ``idx_Bhw`` (upstream ``embed_to_fhat(all_to_max_scale=True)``)."""
        _check_indices(indices, schedule)
        f_hat: torch.Tensor | None = None
        for si, idx_Bhw in enumerate(indices):
            f_hat = self.quantize.add_scale(f_hat, self.quantize.codes(idx_Bhw), si, schedule)
        assert f_hat is not None  # _check_indices: one per scale
        return f_hat

    def decode_indices(self, indices: Sequence[torch.Tensor], schedule: Schedule) -> torch.Tensor:
        """Images in [-1, 1] from per-scale indices (upstream ``idxBl_to_img(same_shape=True, last_one)``)."""
        return self.decode_fhat(self.indices_to_fhat(indices, schedule))

    def teacher_inputs(self, indices: Sequence[torch.Tensor], schedule: Schedule) -> torch.Tensor:
        """The transformer inputs ``x_BLd`` of scales 1..S-1 concatenated (upstream
        ``idxBl_to_var_input``): the area resize of ``f_hat`` after each scale, as the inference loop's."""
        _check_indices(indices, schedule)
        f_hat: torch.Tensor | None = None
        inputs = []
        for si, idx_Bhw in enumerate(indices[:-1]):
            f_hat = self.quantize.add_scale(f_hat, self.quantize.codes(idx_Bhw), si, schedule)
            inputs.append(next_scale_input(f_hat, schedule.grids[si + 1]))
        return torch.cat(inputs, dim=1)


def _check_indices(indices: Sequence[torch.Tensor], schedule: Schedule) -> None:
    got = [tuple(i.shape[1:]) for i in indices]
    if got != list(schedule.grids):
        raise ValueError(f"indices of grids {got} do not match the schedule's {list(schedule.grids)}")


def next_scale_input(f_hat_BdHW: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``x_BLd`` of grid ``hw``: the area resize of ``f_hat``, as upstream's transposed view."""
    return rearrange(F.interpolate(f_hat_BdHW, size=hw, mode="area"), "b c h w -> b (h w) c")


# ---------------------------------------------------------------------------------------------------------
# Sampling indices (models/helpers.py, VAR.autoregressive_infer_cfg)


def filter_top_k_top_p(logits_BLV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with the entries top-k and top-p drop set to -inf (upstream ``sample_with_top_k_top_p_``,
    out of place). top-k keeps logits >= the k-th largest (ties all stay; k must be <= V); top-p drops the
    least likely entries whose cumulative probability is <= 1 - top_p, never the most likely one."""
    V = logits_BLV.shape[-1]
    if not 0 <= top_k <= V:
        raise ValueError(f"top_k must be in [0, {V}] (the codebook size; 0 disables it), got {top_k}")
    if top_k > 0:
        kth = logits_BLV.topk(top_k, dim=-1, largest=True, sorted=False).values.amin(dim=-1, keepdim=True)
        logits_BLV = logits_BLV.masked_fill(logits_BLV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BLV.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits_BLV = logits_BLV.masked_fill(remove.scatter(-1, sorted_idx, remove), -torch.inf)
    return logits_BLV


def gumbel_softmax(logits_BLV: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Soft Gumbel-softmax weights, noise from ``generator`` (upstream ``gumbel_softmax_with_rng``)."""
    noise = torch.empty_like(logits_BLV, memory_format=torch.legacy_contiguous_format)
    gumbels = -noise.exponential_(generator=generator).log()
    return ((logits_BLV + gumbels) / tau).softmax(dim=-1)


class IndexCodec:
    """Codebook indices <-> latent codes of a :class:`VQVAE` for the next-scale loop (a
    :class:`scalestyle.scale_model.TokenCodec`). Tokens are ``idx_Bhw`` (int64); the running latent is
    ``f_hat_BdHW`` at the last grid."""

    def __init__(self, vqvae: VQVAE) -> None:
        self.quantizer = vqvae.quantize

    def token_shape(self, rows: int, hw: tuple[int, int]) -> tuple[int, ...]:
        return (rows, *hw)

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
        """One multinomial draw per token after top-k/top-p. With ``sampling.more_smooth`` the codes are
        Gumbel-softmax mixtures of the codebook over the filtered, sharpened logits (drawn on the same
        generator after the multinomial, so the indices are those of a plain run)."""
        B = logits_BLV.shape[0]
        logits = filter_top_k_top_p(logits_BLV.float(), sampling.top_k, sampling.top_p)
        probs_NV = rearrange(logits.softmax(dim=-1), "b l v -> (b l) v")
        idx_N1 = torch.multinomial(probs_NV, num_samples=1, replacement=True, generator=generator)
        idx_Bhw = rearrange(idx_N1, "(b h w) 1 -> b h w", b=B, h=hw[0])
        if not sampling.more_smooth:
            return Draw(idx_Bhw)
        ratio = scale / (schedule.num_scales - 1)
        tau = max(0.27 * (1 - ratio * 0.95), 0.005)  # upstream's schedule, after MaskGIT
        soft_BLV = gumbel_softmax(logits.mul(1 + ratio), tau, generator)
        codes_BLd = soft_BLV @ self.quantizer.embedding.weight.unsqueeze(0)
        return Draw(idx_Bhw, token_grid(codes_BLd, hw[0]))

    def accumulate(
        self, summed: torch.Tensor | None, draw: Draw, *, scale: int, schedule: Schedule
    ) -> torch.Tensor:
        h_Bdhw = draw.codes if draw.codes is not None else self.quantizer.codes(draw.tokens)
        return self.quantizer.add_scale(summed, h_Bdhw, scale, schedule)

    def next_input(self, summed: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return next_scale_input(summed, hw)
