"""The class-conditional VAR transformer (Tian et al., 2024, "Visual Autoregressive Modeling: Scalable Image
Generation via Next-Scale Prediction").

Follows `models/var.py::VAR` and `models/basic_var.py` (``AdaLNSelfAttn``, ``AdaLNBeforeHead``, ``FFN``) of
FoundationVision/VAR as `models/__init__.py::build_vae_var` builds them (spec §5): a class embedding whose
row ``num_classes`` is the CFG null class, learned absolute positions plus a level embedding, AdaLN blocks
(per-block ``ada_lin``, or with ``shared_aln`` one ``shared_ada_lin`` plus a per-block ``ada_gss``), plain
self-attention without RoPE (cosine with a learned per-head scale under ``attn_l2_norm``), GELU-tanh FFN, and
an AdaLN head over the codebook. Parameter and buffer names equal the official state dict.

The model implements :class:`scalestyle.scale_model.ScaleModel`, so :func:`scalestyle.sampling.run_scales`
drives it with :class:`scalestyle.models.vqvae.IndexCodec`. Its guidance is upstream's linear ramp
``t = cfg * si / (S - 1)``, ``(1 + t) l_cond - t l_uncond``; at ``cfg = 0`` that is exactly the conditional
logits, so no unconditional rows are computed then. VAR has no temperature: ``SamplingConfig.tau`` is
unused. Floats are added in upstream's order: ``(class + pos_start) + (lvl + pos)`` for the start token and
``word_embed(x) + (lvl + pos)`` later, in the cached and the teacher-forced forward alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from scalestyle.attention import BatchLayout, ControlSlot, KVCache, SelfAttention
from scalestyle.config import SamplingConfig, VARConfig
from scalestyle.schedules import Schedule, var_schedule


@dataclass(frozen=True)
class ClassLabels:
    """The raw condition of VAR: one ImageNet class per row (``num_classes`` is the null class)."""

    labels_B: torch.Tensor

    def __post_init__(self) -> None:
        t = self.labels_B
        if t.ndim != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"labels must be a 1-D integer tensor, got {t.dtype} of shape {tuple(t.shape)}")

    @staticmethod
    def of(labels: int | Sequence[int]) -> ClassLabels:
        values = [labels] if isinstance(labels, int) else list(labels)
        return ClassLabels(torch.tensor(values, dtype=torch.long))

    @property
    def batch(self) -> int:
        return self.labels_B.shape[0]

    def rows(self, index: torch.Tensor) -> ClassLabels:
        return ClassLabels(self.labels_B[index.to(self.labels_B.device)])

    def to(self, device: torch.device | str) -> ClassLabels:
        return ClassLabels(self.labels_B.to(device))

    @staticmethod
    def concat(parts: Sequence[ClassLabels]) -> ClassLabels:
        if not parts:
            raise ValueError("need at least one set of labels")
        return ClassLabels(torch.cat([p.labels_B for p in parts]))


@dataclass(frozen=True)
class ClassCondition:
    """What the blocks and the head need from a batch's labels, computed once per image: the class
    embedding, each block's six AdaLN rows ``ada_B16C`` (gamma1, gamma2, scale1, scale2, shift1, shift2) and
    the head's two."""

    cond_BC: torch.Tensor
    ada_B16C: tuple[torch.Tensor, ...]
    head_ss_B12C: torch.Tensor

    def rows(self, index: torch.Tensor) -> ClassCondition:
        return ClassCondition(
            self.cond_BC[index], tuple(a[index] for a in self.ada_B16C), self.head_ss_B12C[index]
        )


def layer_norm(x_BLC: torch.Tensor, eps: float) -> torch.Tensor:
    """Upstream's ``ln_wo_grad``: LayerNorm without affine parameters."""
    return F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=eps)


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x_BLC), approximate="tanh"))


class AdaLNSelfAttn(nn.Module):
    """``x += attn(LN(x)(1 + s1) + b1) g1``, then ``x += FFN(LN(x)(1 + s2) + b2) g2``."""

    def __init__(self, cfg: VARConfig, layer: int, slot: ControlSlot) -> None:
        super().__init__()
        C = cfg.width
        self.eps = cfg.norm_eps
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, C))
        self.attn = SelfAttention(C, cfg.heads, layer, slot, l2_norm=cfg.attn_l2_norm)
        self.ffn = FFN(C, cfg.mlp_hidden)
        if not cfg.shared_aln:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def adaln(self, cond_BC: torch.Tensor, shared_B16C: torch.Tensor | None) -> torch.Tensor:
        """This block's six AdaLN rows (B, 1, 6, C) for the condition."""
        if shared_B16C is not None:
            return self.ada_gss + shared_B16C
        return rearrange(self.ada_lin(cond_BC), "b (six c) -> b 1 six c", six=6)

    def forward(
        self,
        x_BLC: torch.Tensor,
        ada_B16C: torch.Tensor,
        *,
        scale: int | None,
        layout: BatchLayout,
        cache: KVCache | None,
        bias: torch.Tensor | None,
        query_scales_L: torch.Tensor | None = None,
    ) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada_B16C.unbind(2)
        h = layer_norm(x_BLC, self.eps).mul(scale1.add(1)).add(shift1)
        h = self.attn(
            h, None, scale=scale, layout=layout, cache=cache, bias=bias, query_scales_L=query_scales_L
        )
        x_BLC = x_BLC + h.mul(gamma1)
        h = layer_norm(x_BLC, self.eps).mul(scale2.add(1)).add(shift2)
        return x_BLC + self.ffn(h).mul(gamma2)


class HeadNorm(nn.Module):
    """Upstream ``AdaLNBeforeHead``: only its ``ada_lin`` holds weights."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))


class VAR(nn.Module):
    lvl_1L: torch.Tensor
    attn_bias_for_masking: torch.Tensor

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, L, first = cfg.width, cfg.num_tokens, cfg.patch_nums[0] ** 2
        self.schedule = var_schedule(cfg.patch_nums)
        self.control = ControlSlot(host=self)
        self.word_embed = nn.Linear(cfg.z_channels, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, first, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        if cfg.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.blocks = nn.ModuleList(AdaLNSelfAttn(cfg, i, self.control) for i in range(cfg.depth))
        # persistent like upstream's (the official files hold them); from Python ints so that building on
        # the meta device needs no data-dependent kernel
        levels = [si for si, pn in enumerate(cfg.patch_nums) for _ in range(pn * pn)]
        self.register_buffer("lvl_1L", torch.tensor([levels], dtype=torch.long))
        self.register_buffer("attn_bias_for_masking", block_causal_bias(self.lvl_1L[0]))
        self.head_nm = HeadNorm(C)
        self.head = nn.Linear(C, cfg.vocab_size)

    @property
    def device(self) -> torch.device:
        return self.pos_start.device

    @property
    def block_list(self) -> list[AdaLNSelfAttn]:
        return [block for block in self.blocks if isinstance(block, AdaLNSelfAttn)]

    def _check_schedule(self, schedule: Schedule) -> None:
        if schedule.grids != self.schedule.grids:
            raise ValueError(
                f"this VAR runs the grids {self.schedule.grids} of its patch_nums, got {schedule.grids}"
            )

    # ---- conditions ----------------------------------------------------------------------------------
    def null_condition(self, raw: ClassLabels) -> ClassLabels:
        """CFG rows: the null class for every row."""
        return ClassLabels(torch.full_like(raw.labels_B, self.cfg.num_classes))

    def condition(self, raws: Sequence[ClassLabels]) -> ClassCondition:
        labels = ClassLabels.concat(raws).labels_B.to(self.device)
        bad = labels[(labels < 0) | (labels > self.cfg.num_classes)]
        if bad.numel():
            raise ValueError(
                f"class label {int(bad[0])} is outside [0, {self.cfg.num_classes}] "
                f"({self.cfg.num_classes} is the null class)"
            )
        cond_BC = self.class_emb(labels)
        shared = (
            rearrange(self.shared_ada_lin(cond_BC), "b (six c) -> b 1 six c", six=6)
            if self.cfg.shared_aln
            else None
        )
        ada = tuple(block.adaln(cond_BC, shared) for block in self.block_list)
        head_ss = rearrange(self.head_nm.ada_lin(cond_BC), "b (two c) -> b 1 two c", two=2)
        return ClassCondition(cond_BC, ada, head_ss)

    def uses_uncond(self, sampling: SamplingConfig) -> bool:
        """Unconditional rows are needed unless ``cfg == 0``, where the ramp leaves the conditional logits."""
        return sampling.cfg != 0

    # ---- image tokens --------------------------------------------------------------------------------
    def positions(self, schedule: Schedule, device: torch.device) -> torch.Tensor:
        """``lvl_embed(lvl_1L) + pos_1LC`` (1, L, C), upstream's ``lvl_pos``."""
        self._check_schedule(schedule)
        return (self.lvl_embed(self.lvl_1L) + self.pos_1LC).to(device)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.depth)

    def start_tokens(self, cond: ClassCondition) -> torch.Tensor:
        """``class_emb + pos_start`` (B, first_l, C); the positions follow in :meth:`forward_scale`."""
        B, first = cond.cond_BC.shape[0], self.pos_start.shape[1]
        return rearrange(cond.cond_BC, "b c -> b 1 c").expand(B, first, -1) + self.pos_start.expand(B, -1, -1)

    def embed(self, inputs_BLD: torch.Tensor) -> torch.Tensor:
        return self.word_embed(inputs_BLD.float())

    def forward_scale(
        self,
        x_BLC: torch.Tensor,
        cond: ClassCondition,
        *,
        scale: int,
        schedule: Schedule,
        positions: torch.Tensor,
        cache: KVCache,
        layout: BatchLayout,
    ) -> torch.Tensor:
        """Run all blocks on the tokens of one scale, attending to the cached earlier scales."""
        start = schedule.offsets()[scale]
        stop = start + schedule.tokens_per_scale[scale]
        if x_BLC.shape[1] != stop - start:
            raise ValueError(f"scale {scale} has {stop - start} tokens, got {x_BLC.shape[1]}")
        x_BLC = x_BLC + positions[:, start:stop]
        for block, ada in zip(self.blocks, cond.ada_B16C, strict=True):
            x_BLC = block(x_BLC, ada, scale=scale, layout=layout, cache=cache, bias=None)
        return x_BLC

    def logits(self, hidden_BLC: torch.Tensor, cond: ClassCondition) -> torch.Tensor:
        """Codebook logits (B, L, V), in fp32 as upstream's ``get_logits``."""
        with torch.autocast(hidden_BLC.device.type, enabled=False):
            scale, shift = cond.head_ss_B12C.float().unbind(2)
            h = layer_norm(hidden_BLC.float(), self.cfg.norm_eps).mul(scale.add(1)).add(shift)
            return self.head(h).float()

    def guide(
        self,
        logits_cond_BLV: torch.Tensor,
        logits_uncond_BLV: torch.Tensor | None,
        *,
        scale: int,
        schedule: Schedule,
        sampling: SamplingConfig,
    ) -> torch.Tensor:
        """Upstream's linear CFG ramp: ``t = cfg * (si / (S - 1))``, ``(1 + t) l_c - t l_u``."""
        t = sampling.cfg * (scale / (schedule.num_scales - 1))
        if logits_uncond_BLV is None:
            if t != 0:
                raise ValueError(f"scale {scale} needs unconditional logits (cfg {sampling.cfg})")
            return logits_cond_BLV
        return (1 + t) * logits_cond_BLV - t * logits_uncond_BLV

    def forward(
        self,
        inputs_BLD: torch.Tensor,
        cond: ClassCondition,
        schedule: Schedule,
        layout: BatchLayout | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) of every scale at once under the block-causal mask.

        ``inputs_BLD`` are the inputs of scales 1..S-1 concatenated (:meth:`VQVAE.teacher_inputs`); scale 0
        is the start token. Class dropout for CFG training is the caller's (null labels in ``cond``).
        """
        self._check_schedule(schedule)
        B = cond.cond_BC.shape[0]
        layout = layout or BatchLayout(("gen",), B)
        x_BLC = torch.cat((self.start_tokens(cond), self.embed(inputs_BLD)), dim=1)
        if x_BLC.shape[1] != schedule.total_tokens:
            raise ValueError(f"schedule has {schedule.total_tokens} tokens, inputs give {x_BLC.shape[1]}")
        x_BLC = x_BLC + self.positions(schedule, x_BLC.device)
        level_L = self.lvl_1L[0]
        for block, ada in zip(self.blocks, cond.ada_B16C, strict=True):
            x_BLC = block(
                x_BLC,
                ada,
                scale=None,
                layout=layout,
                cache=None,
                bias=self.attn_bias_for_masking,
                query_scales_L=level_L,
            )
        return self.logits(x_BLC, cond)

    # ---- initialisation ------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(
        self,
        generator: torch.Generator,
        init_adaln: float = 0.5,
        init_adaln_gamma: float = 1e-5,
        init_head: float = 0.02,
    ) -> None:
        """Random initialisation for training from scratch or timing, after upstream `VAR.init_weights`
        (with ``init_std = sqrt(1 / C / 3)``): small normal linears and embeddings, zero biases, the
        attention and FFN outputs scaled by ``1 / sqrt(2 depth)``, AdaLN gates near zero, a small head."""
        C, std = self.cfg.width, math.sqrt(1 / self.cfg.width / 3)

        def normal_(t: torch.Tensor, s: float) -> None:
            t.copy_(torch.randn(t.shape, generator=generator).clamp_(-2, 2) * s)

        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                normal_(module.weight, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
        for p in (self.pos_start, self.pos_1LC):
            normal_(p, std)
        self.head.weight.mul_(init_head)
        head_ada = self.head_nm.ada_lin[1]
        assert isinstance(head_ada, nn.Linear)
        head_ada.weight.mul_(init_adaln)
        for block in self.block_list:
            block.attn.proj.weight.div_(math.sqrt(2 * self.cfg.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * self.cfg.depth))
            if self.cfg.shared_aln:
                normal_(block.ada_gss, 1 / math.sqrt(C))
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                ada = block.ada_lin[1]
                assert isinstance(ada, nn.Linear)
                ada.weight[2 * C :].mul_(init_adaln)
                ada.weight[: 2 * C].mul_(init_adaln_gamma)


def block_causal_bias(level_L: torch.Tensor) -> torch.Tensor:
    """Additive mask (1, 1, L, L): a token of scale i sees every token of scales <= i (upstream's
    ``attn_bias_for_masking``)."""
    visible = level_L[None, :] <= level_L[:, None]
    return rearrange(torch.where(visible, 0.0, -math.inf), "l k -> 1 1 l k")
