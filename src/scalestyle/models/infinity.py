"""The Infinity bitwise scale-wise transformer (Han et al., 2024, "Infinity: Scaling Bitwise AutoRegressive
Modeling for High-Resolution Image Synthesis").

Follows `infinity/models/infinity.py::Infinity` and `basic.py::CrossAttnBlock` of FoundationVision/Infinity
with the official inference flags (shared AdaLN plus per-block ``ada_gss``, cosine self-attention, RoPE-2D
normalised by the template's last grid, GELU-tanh FFN, level embedding before the first block, bitwise
head). Parameter names and shapes equal the official state dict (spec §1.2), so the released weights load
as they are. Sampling lives in :mod:`scalestyle.sampling`; this file only computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from scalestyle.attention import (
    BatchLayout,
    ControlSlot,
    CrossAttention,
    KVCache,
    PoolAttention,
    SelfAttention,
    TextMemory,
    rope_angles,
)
from scalestyle.config import InfinityConfig, SamplingConfig
from scalestyle.models.text_encoder import PackedText
from scalestyle.schedules import Schedule, rope_positions


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free LayerNorm in fp32 (upstream's fused adaptive norm computes the statistics in fp32)."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps)


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


@dataclass(frozen=True)
class TextCondition:
    """Everything the blocks and the head need from the captions of a batch, computed once per image."""

    cond_BC: torch.Tensor
    gss_B16C: torch.Tensor
    head_ss_B12C: torch.Tensor
    memory: TextMemory

    def rows(self, index: torch.Tensor) -> TextCondition:
        return TextCondition(
            self.cond_BC[index], self.gss_B16C[index], self.head_ss_B12C[index], self.memory.rows(index)
        )


class CrossAttnBlock(nn.Module):
    """AdaLN self-attention, cross-attention to the caption, AdaLN FFN (upstream fused-norm path)."""

    def __init__(self, cfg: InfinityConfig, layer: int, slot: ControlSlot) -> None:
        super().__init__()
        self.eps = cfg.norm_eps
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, cfg.width))
        self.sa = SelfAttention(cfg.width, cfg.heads, layer, slot)
        self.ca = CrossAttention(cfg.width, cfg.heads, layer, slot)
        self.ffn = FFN(cfg.width, cfg.mlp_hidden)
        self.ca_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)

    def forward(
        self,
        x_BLC: torch.Tensor,
        text: TextCondition,
        rope_cos_sin: tuple[torch.Tensor, torch.Tensor],
        *,
        scale: int | None,
        layout: BatchLayout,
        cache: KVCache | None,
        bias: torch.Tensor | None,
        query_scales_L: torch.Tensor | None = None,
    ) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + text.gss_B16C).unbind(2)
        h = layer_norm(x_BLC, self.eps) * (1 + scale1) + shift1
        h = self.sa(
            h.to(x_BLC.dtype),
            rope_cos_sin,
            scale=scale,
            layout=layout,
            cache=cache,
            bias=bias,
            query_scales_L=query_scales_L,
        )
        x_BLC = x_BLC + h * gamma1
        ca = self.ca(
            self.ca_norm(x_BLC), text.memory, scale=scale, layout=layout, query_scales_L=query_scales_L
        )
        x_BLC = x_BLC + ca
        h = layer_norm(x_BLC, self.eps) * (1 + scale2) + shift2
        return x_BLC + self.ffn(h.to(x_BLC.dtype)) * gamma2


class BlockChunk(nn.Module):
    """Upstream groups blocks in chunks (``block_chunks.{k}.module.{j}``); kept for checkpoint key names."""

    def __init__(self, blocks: Sequence[CrossAttnBlock]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class HeadNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))


class Infinity(nn.Module):
    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, E = cfg.width, cfg.text_channels
        self.control = ControlSlot(self)
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, E))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.text_norm = RMSNorm(E)
        self.text_proj_for_sos = nn.ModuleDict({"ca": PoolAttention(E, C)})
        self.text_proj_for_ca = nn.Sequential(nn.Linear(E, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        self.word_embed = nn.Linear(cfg.bits, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        per_chunk = cfg.depth // cfg.block_chunks
        blocks = [CrossAttnBlock(cfg, i, self.control) for i in range(cfg.depth)]
        self.block_chunks = nn.ModuleList(
            BlockChunk(blocks[k * per_chunk : (k + 1) * per_chunk]) for k in range(cfg.block_chunks)
        )
        self.head_nm = HeadNorm(C)
        self.head = nn.Linear(C, 2 * cfg.bits)

    @property
    def blocks(self) -> list[CrossAttnBlock]:
        return [block for chunk in self.block_chunks for block in chunk.module]  # type: ignore[union-attr]

    @property
    def device(self) -> torch.device:
        return self.pos_start.device

    # ---- text ----------------------------------------------------------------------------------------
    def uncond_text(self, lens: Sequence[int]) -> PackedText:
        """CFG rows: the learned empty caption, truncated to each caption's own length (upstream)."""
        if max(lens) > self.cfg.text_maxlen:
            raise ValueError(f"caption length {max(lens)} exceeds text_maxlen {self.cfg.text_maxlen}")
        return PackedText(torch.cat([self.cfg_uncond[:n] for n in lens]), tuple(lens))

    def null_condition(self, raw: PackedText) -> PackedText:
        return self.uncond_text(raw.lens)

    def uses_uncond(self, sampling: SamplingConfig) -> bool:
        # cfg 1 mixes to the conditional logits alone (upstream still computes the rows; the draw is equal)
        return sampling.cfg != 1.0

    def condition(self, texts: Sequence[PackedText]) -> TextCondition:
        """The captions of every row (``texts`` concatenated in row order), computed once per image."""
        text = PackedText.concat(texts).to(self.device)
        kv_NE = self.text_norm(text.feats_NE.float())
        cond_BC = self.text_proj_for_sos["ca"](kv_NE, text.lens)
        memory = TextMemory.packed(self.text_proj_for_ca(kv_NE), text.lens)
        with torch.autocast(cond_BC.device.type, enabled=False):
            cond32 = cond_BC.float()
            gss = rearrange(self.shared_ada_lin(cond32), "b (six c) -> b 1 six c", six=6)
            head_ss = rearrange(self.head_nm.ada_lin(cond32), "b (two c) -> b 1 two c", two=2)
        return TextCondition(cond_BC, gss, head_ss, memory)

    # ---- image tokens --------------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.depth)

    def positions(self, schedule: Schedule, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope_table(schedule, device)

    def rope_table(self, schedule: Schedule, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (L, c/2) for every token of the schedule (the template's 1M table, sliced)."""
        y_L, x_L = rope_positions(schedule.template)
        angles = rope_angles(
            y_L[: schedule.total_tokens], x_L[: schedule.total_tokens], self.cfg.head_dim, self.cfg.rope_theta
        ).to(device)
        return angles.cos(), angles.sin()

    def start_tokens(self, text: TextCondition) -> torch.Tensor:
        """Scale 0: the condition vector plus ``pos_start``, one token per row."""
        return rearrange(text.cond_BC, "b c -> b 1 c") + self.pos_start

    def embed(self, inputs_BLD: torch.Tensor) -> torch.Tensor:
        return self.word_embed(inputs_BLD.to(self.word_embed.weight.dtype))

    def forward_scale(
        self,
        x_BLC: torch.Tensor,
        text: TextCondition,
        *,
        scale: int,
        schedule: Schedule,
        positions: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache,
        layout: BatchLayout,
    ) -> torch.Tensor:
        """Run all blocks on the tokens of one scale, attending to the cached earlier scales; ``positions``
        is :meth:`rope_table` of the schedule."""
        start = schedule.offsets()[scale]
        stop = start + schedule.tokens_per_scale[scale]
        if x_BLC.shape[1] != stop - start:
            raise ValueError(f"scale {scale} has {stop - start} tokens, got {x_BLC.shape[1]}")
        cos_sin = (positions[0][start:stop], positions[1][start:stop])
        x_BLC = x_BLC + self.lvl_embed.weight[scale]
        for block in self.blocks:
            x_BLC = block(x_BLC, text, cos_sin, scale=scale, layout=layout, cache=cache, bias=None)
        return x_BLC

    def logits(self, x_BLC: torch.Tensor, text: TextCondition) -> torch.Tensor:
        """Bit logits (B, L, 2D): entries 2j and 2j+1 are the logits of bit j being 0 and 1. fp32."""
        with torch.autocast(x_BLC.device.type, enabled=False):
            scale, shift = text.head_ss_B12C.unbind(2)
            h = layer_norm(x_BLC, self.cfg.norm_eps) * (1 + scale) + shift
            return self.head(h)

    def guide(
        self,
        logits_cond_BLV: torch.Tensor,
        logits_uncond_BLV: torch.Tensor | None,
        *,
        scale: int,
        schedule: Schedule,
        sampling: SamplingConfig,
    ) -> torch.Tensor:
        """Upstream's constant CFG on tau-scaled logits: ``cfg * l_c / tau + (1 - cfg) * l_u / tau``."""
        cond = logits_cond_BLV / sampling.tau
        if logits_uncond_BLV is None:
            return cond
        return sampling.cfg * cond + (1 - sampling.cfg) * (logits_uncond_BLV / sampling.tau)

    def forward(
        self,
        inputs_BLD: torch.Tensor,
        text: TextCondition,
        schedule: Schedule,
        layout: BatchLayout | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits of every scale at once under the block-causal mask.

        ``inputs_BLD`` are the transformer inputs of scales 1..S-1 concatenated (the VAE's
        ``MultiScaleEncoding.inputs``); scale 0 is the start token. Returns logits (B, L, 2D).
        """
        B = text.cond_BC.shape[0]
        layout = layout or BatchLayout(("gen",), B)
        x_BLC = torch.cat((self.start_tokens(text), self.embed(inputs_BLD)), dim=1)
        if x_BLC.shape[1] != schedule.total_tokens:
            raise ValueError(f"schedule has {schedule.total_tokens} tokens, inputs give {x_BLC.shape[1]}")
        level_L = torch.repeat_interleave(
            torch.arange(schedule.num_scales, device=x_BLC.device),
            torch.tensor(schedule.tokens_per_scale, device=x_BLC.device),
        )
        x_BLC = x_BLC + self.lvl_embed(level_L)
        bias = block_causal_bias(level_L)
        rope = self.rope_table(schedule, x_BLC.device)
        for block in self.blocks:
            x_BLC = block(
                x_BLC, text, rope, scale=None, layout=layout, cache=None, bias=bias, query_scales_L=level_L
            )
        return self.logits(x_BLC, text)

    # ---- initialisation ------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(
        self, generator: torch.Generator, init_head: float = 0.02, init_gamma: float = 1e-5
    ) -> None:
        """Random initialisation for training from scratch, after upstream `Infinity.init_weights`: small
        truncated-normal linears, residual gates (gamma rows of the AdaLN) near zero, a small head."""
        C, std = self.cfg.width, math.sqrt(1 / self.cfg.width / 3)

        def normal_(t: torch.Tensor, s: float) -> None:
            t.copy_(torch.randn(t.shape, generator=generator).clamp_(-2, 2) * s)

        for module in self.modules():
            if isinstance(module, nn.Linear):
                normal_(module.weight, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                normal_(module.weight, std)
        pool = self.text_proj_for_sos["ca"]
        assert isinstance(pool, PoolAttention)
        for p in (self.pos_start, pool.mat_q):
            normal_(p, std)
        # upstream's own empty-caption init: trunc_normal(std 1.2, +-2) / sqrt(text_channels)
        normal_(self.cfg_uncond, 1.2 / math.sqrt(self.cfg.text_channels))
        self.text_norm.weight.fill_(1.0)
        self.head.weight.mul_(init_head)
        ada = self.shared_ada_lin[1]
        assert isinstance(ada, nn.Linear)
        ada.weight.mul_(0.5)
        ada.weight.view(6, C, C)[:2].mul_(init_gamma / 0.5)
        for block in self.blocks:
            normal_(block.ada_gss, 1 / math.sqrt(C))
            block.ada_gss[:, :, :2].mul_(init_gamma)
            block.sa.scale_mul_1H11.fill_(math.log(4.0))
            for proj in (block.sa.proj, block.ca.proj, block.ffn.fc2):
                proj.weight.div_(math.sqrt(2 * self.cfg.depth))


class RMSNorm(nn.Module):
    """RMSNorm over raw text features, in fp32 (upstream `basic.py::rms_norm_impl` fallback)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


def block_causal_bias(level_L: torch.Tensor) -> torch.Tensor:
    """Additive mask (1, 1, L, L): a token of scale i sees every token of scales <= i."""
    visible = level_L[None, :] <= level_L[:, None]
    bias = torch.zeros(visible.shape, device=level_L.device).masked_fill(~visible, -math.inf)
    return rearrange(bias, "l k -> 1 1 l k")
