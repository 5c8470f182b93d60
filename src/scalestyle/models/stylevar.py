"""StyleVAR (Jing et al., 2026, arXiv 2604.21052): reference-based style transfer on VAR-d20.

Follows Senfier-LiqiJing/StyleVAR: `models/style_var.py::StyleVAR` (conditioning, teacher-forced forward
and ``autoregressive_infer``), `models/style_basic_var.py` (``CrossAttention``, ``AdaLNCrossAttn``,
``AdaLNBeforeHead``) and `models/quant.py::msBllist_to_BlCvae` (the guide latents), as
`models/__init__.py::build_vae_stylevar` builds them (research note wave2_methods.md §1).

The blocks are VAR's AdaLN blocks whose self-attention is replaced by a blend of two attentions that read
the image being generated (the *target*) from the tokens of two guide images::

    A(g) = proj(softmax(norm(Wq_g N(g) + bq) norm(Wk_t N(x))^T e^{scale_mul} + mask) (Wv_t N(x) + bv))
    x += alpha_k gamma1 A(style_k) + (1 - alpha_k) gamma1 A(content_k),   N(z) = LN(z)(1 + s1) + b1

The guide of an image at scale k is the VQ-VAE's cumulative latent ``f_hat`` after scales 0..k
(one scale ahead of the target's input), area-resized to that scale's grid, through the shared
``word_embed`` and the same level and position embeddings as the target; it is the same in every block.
Two ResNet-18 trunks (``children()[:-1]`` of torchvision's, key names alike) give global vectors through
the shared ``feat_emb``: the content's is the start token, the style's the AdaLN condition of every block
and the head. There is no class embedding.

The model is a :class:`scalestyle.scale_model.ScaleModel`: :func:`scalestyle.sampling.run_scales` with
:class:`scalestyle.models.vqvae.IndexCodec` samples it. The authors sample without CFG; here the
unconditional rows of CFG (``cfg > 0``, VAR's linear ramp) take the content image as their own style
reference (:meth:`StyleVAR.null_condition`), which no released checkpoint was trained for.

Two deliberate float details keep exact parity with the authors' code: the cached (sampling) path mixes
with ``1 - alpha`` rounded once from the Python double, as their scalar ``alpha`` does, while the
teacher-forced path computes ``1 - alpha`` in float32 from their float32 alpha table. Their KV cache
appends the target keys once per guide call, twice per block (history keys counted twice while
sampling, unlike in training): ``StyleVARConfig.double_append`` reproduces that; the default appends once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from scalestyle.attention import (
    MAX_LOG_SCALE,
    AttendFn,
    AttnSite,
    BatchLayout,
    ControlSlot,
    KVCache,
    scaled_sdpa,
    sdpa,
)
from scalestyle.config import SamplingConfig, StyleVARConfig
from scalestyle.models.var import FFN, HeadNorm, block_causal_bias, layer_norm
from scalestyle.models.vqvae import VQVAE, next_scale_input
from scalestyle.schedules import Schedule, var_schedule

# the authors' style-strength knob: every alpha shifted by half the strength, then clamped
STRENGTH_SHIFT = 0.5
ALPHA_MIN, ALPHA_MAX = 0.01, 0.99


# ---------------------------------------------------------------------------------------------------------
# ResNet-18 trunk (torchvision's resnet18 without its fc, as `nn.Sequential(*children()[:-1])`)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3x3 convs with batch norm, a 1x1 projection on a shape change."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x_BCHW)))
        out = self.bn2(self.conv2(out))
        identity = x_BCHW if self.downsample is None else self.downsample(x_BCHW)
        return self.relu(out + identity)


def resnet18_trunk(width: int) -> nn.Sequential:
    """Children 0-8 of torchvision's ``resnet18`` (conv1, bn1, relu, maxpool, layer1-4, avgpool), so the
    keys are ``0.weight``, ``1.running_mean``, ``4.0.conv1.weight``, ``5.0.downsample.0.weight``, ..."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    c_in = width
    for stage in range(4):
        c_out, stride = width * 2**stage, 1 if stage == 0 else 2
        layers.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
        c_in = c_out
    layers.append(nn.AdaptiveAvgPool2d((1, 1)))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------------------
# Conditions


@dataclass(frozen=True)
class TransferInputs:
    """The raw condition of StyleVAR: per row a content and a style image in [-1, 1] (for the ResNet
    trunks), their guide latents per scale (:func:`guide_latents`, ``(B, pn_k^2, Cvae)`` each) and the
    style strength in [-1, 1] (0: the model's alphas unchanged)."""

    content_B3PP: torch.Tensor
    style_B3PP: torch.Tensor
    content_guides: tuple[torch.Tensor, ...]
    style_guides: tuple[torch.Tensor, ...]
    strength_B: torch.Tensor

    def __post_init__(self) -> None:
        B = self.content_B3PP.shape[0]
        if self.content_B3PP.ndim != 4 or self.style_B3PP.shape != self.content_B3PP.shape:
            raise ValueError(
                f"content and style images must be (B, 3, H, W) alike, got {tuple(self.content_B3PP.shape)} "
                f"and {tuple(self.style_B3PP.shape)}"
            )
        if len(self.content_guides) != len(self.style_guides) or not self.content_guides:
            raise ValueError("content and style need guide latents for the same scales")
        for c, s in zip(self.content_guides, self.style_guides, strict=True):
            if c.shape != s.shape or c.ndim != 3 or c.shape[0] != B:
                raise ValueError(f"guide latents must be (B={B}, l, Cvae) alike, got {tuple(c.shape)}")
        if self.strength_B.shape != (B,):
            raise ValueError(f"strength_B must be ({B},), got {tuple(self.strength_B.shape)}")
        bad = self.strength_B[(self.strength_B < -1) | (self.strength_B > 1)]
        if bad.numel():
            raise ValueError(f"style strength must be in [-1, 1], got {float(bad[0])}")

    @property
    def batch(self) -> int:
        return self.content_B3PP.shape[0]

    def rows(self, index: torch.Tensor) -> TransferInputs:
        i = index.to(self.content_B3PP.device)
        return TransferInputs(
            self.content_B3PP[i],
            self.style_B3PP[i],
            tuple(g[i] for g in self.content_guides),
            tuple(g[i] for g in self.style_guides),
            self.strength_B[i.to(self.strength_B.device)],
        )

    def to(self, device: torch.device | str) -> TransferInputs:
        return TransferInputs(
            self.content_B3PP.to(device),
            self.style_B3PP.to(device),
            tuple(g.to(device) for g in self.content_guides),
            tuple(g.to(device) for g in self.style_guides),
            self.strength_B,
        )

    @staticmethod
    def concat(parts: Sequence[TransferInputs]) -> TransferInputs:
        if not parts:
            raise ValueError("need at least one set of transfer inputs")
        if len(parts) == 1:
            # as they are: a copy would make the guides contiguous, and at B = 1 the embedding matmul over
            # upstream's transposed view rounds differently from one over contiguous rows
            return parts[0]
        scales = len(parts[0].content_guides)
        return TransferInputs(
            torch.cat([p.content_B3PP for p in parts]),
            torch.cat([p.style_B3PP for p in parts]),
            tuple(torch.cat([p.content_guides[k] for p in parts]) for k in range(scales)),
            tuple(torch.cat([p.style_guides[k] for p in parts]) for k in range(scales)),
            torch.cat([p.strength_B for p in parts]),
        )

    @staticmethod
    def encode(
        vqvae: VQVAE,
        content_B3PP: torch.Tensor,
        style_B3PP: torch.Tensor,
        schedule: Schedule,
        strength: float = 0.0,
    ) -> TransferInputs:
        """Both images' guide latents through ``vqvae`` (images in [-1, 1] at the schedule's size)."""
        return TransferInputs(
            content_B3PP,
            style_B3PP,
            guide_latents(vqvae, content_B3PP, schedule),
            guide_latents(vqvae, style_B3PP, schedule),
            torch.full((content_B3PP.shape[0],), float(strength), dtype=torch.float64),
        )


def guide_latents(vqvae: VQVAE, img_B3PP: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, ...]:
    """Per scale k the cumulative ``f_hat`` of scales 0..k area-resized to grid k, ``(B, pn_k^2, Cvae)``
    (upstream ``img_to_idxBl`` then ``msBllist_to_BlCv_list``)."""
    f_hat: torch.Tensor | None = None
    guides = []
    for si, idx_Bhw in enumerate(vqvae.encode_indices(img_B3PP, schedule)):
        f_hat = vqvae.quantize.add_scale(f_hat, vqvae.quantize.codes(idx_Bhw), si, schedule)
        guides.append(next_scale_input(f_hat, schedule.grids[si]))
    return tuple(guides)


@dataclass(frozen=True)
class TransferCondition:
    """What the blocks and the head need, computed once per row: the start token ``sos_BC`` (content),
    the AdaLN condition ``cond_BC`` (style), each block's six AdaLN rows and the head's two, the guide
    latents per scale, and the per-scale mixing weights ``alpha_BS`` and ``one_minus_alpha_BS`` (the latter
    rounded once from the double ``1 - alpha``, as the authors' scalar mixing while sampling)."""

    sos_BC: torch.Tensor
    cond_BC: torch.Tensor
    ada_B16C: tuple[torch.Tensor, ...]
    head_ss_B12C: torch.Tensor
    content_guides: tuple[torch.Tensor, ...]
    style_guides: tuple[torch.Tensor, ...]
    alpha_BS: torch.Tensor
    one_minus_alpha_BS: torch.Tensor

    def rows(self, index: torch.Tensor) -> TransferCondition:
        return TransferCondition(
            self.sos_BC[index],
            self.cond_BC[index],
            tuple(a[index] for a in self.ada_B16C),
            self.head_ss_B12C[index],
            tuple(g[index] for g in self.content_guides),
            tuple(g[index] for g in self.style_guides),
            self.alpha_BS[index],
            self.one_minus_alpha_BS[index],
        )


def effective_alphas(alphas: Sequence[float], strength: float) -> list[float]:
    """The authors' ``style_strength`` shift: every alpha moved by ``0.5 * strength`` and clamped to
    [0.01, 0.99]; strength 0 leaves them as they are (unclamped, as upstream)."""
    if strength == 0:
        return [float(a) for a in alphas]
    shift = strength * STRENGTH_SHIFT
    return [max(ALPHA_MIN, min(ALPHA_MAX, a + shift)) for a in alphas]


# ---------------------------------------------------------------------------------------------------------
# Blocks

GuideKind = Literal["style_guide", "content_guide"]


class GuidedAttention(nn.Module):
    """Upstream ``CrossAttention``: queries from a guide (``mat_qkv_guide``), keys and values from the
    target (``mat_qkv_target``), shared ``proj``; cosine attention with a per-head learned scale.

    Each projection computes all three of q, k, v as upstream does (only the guide's q and the target's k,
    v are used): a narrower matmul could round differently."""

    zero_k_bias_guide: torch.Tensor
    zero_k_bias_target: torch.Tensor

    def __init__(self, cfg: StyleVARConfig, layer: int, slot: ControlSlot) -> None:
        super().__init__()
        C = cfg.width
        self.heads, self.layer, self.slot = cfg.heads, layer, slot
        self.double_append = cfg.double_append
        self.l2_norm = cfg.attn_l2_norm
        if self.l2_norm:
            # upstream initialises the learned log-scale to log(4) and clamps it at log(100)
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, cfg.heads, 1, 1), 4.0).log())
        self.mat_qkv_guide = nn.Linear(C, 3 * C, bias=False)
        self.mat_qkv_target = nn.Linear(C, 3 * C, bias=False)
        self.q_bias_guide = nn.Parameter(torch.zeros(C))
        self.v_bias_guide = nn.Parameter(torch.zeros(C))
        self.q_bias_target = nn.Parameter(torch.zeros(C))
        self.v_bias_target = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias_guide", torch.zeros(C))
        self.register_buffer("zero_k_bias_target", torch.zeros(C))
        self.proj = nn.Linear(C, C)
        # as VAR's: cosine attention at softmax scale 1, or plain attention at 0.25 / sqrt(c)
        self.kernel: AttendFn = sdpa if self.l2_norm else scaled_sdpa(0.25 / math.sqrt(cfg.head_dim))

    def _heads(self, x_BLC: torch.Tensor, linear: nn.Module, bias: torch.Tensor) -> list[torch.Tensor]:
        # an adapter wrapping the projection (peft's LoRA in GRPO) runs its own forward, which reads the
        # adapter's weights as well; its bias then comes after the matmul instead of fused into it
        qkv = F.linear(x_BLC, linear.weight, bias) if isinstance(linear, nn.Linear) else linear(x_BLC) + bias
        return list(rearrange(qkv, "b l (three h c) -> three b h l c", three=3, h=self.heads).unbind(0))

    def forward(
        self,
        style_BLC: torch.Tensor,
        content_BLC: torch.Tensor,
        target_BLC: torch.Tensor,
        *,
        scale: int | None,
        layout: BatchLayout,
        cache: KVCache | None,
        bias: torch.Tensor | None,
        query_scales_L: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A(style), A(content)), each ``(B, L, C)`` after ``proj``."""
        guide_bias = torch.cat((self.q_bias_guide, self.zero_k_bias_guide, self.v_bias_guide))
        _, k, v = self._heads(
            target_BLC,
            self.mat_qkv_target,
            torch.cat((self.q_bias_target, self.zero_k_bias_target, self.v_bias_target)),
        )
        scale_mul = self.scale_mul_1H11.clamp(max=MAX_LOG_SCALE).exp() if self.l2_norm else None
        if scale_mul is not None:
            k = F.normalize(k, dim=-1)
        outputs = []
        calls: tuple[tuple[torch.Tensor, GuideKind], ...] = (
            (style_BLC, "style_guide"),
            (content_BLC, "content_guide"),
        )
        k_all, v_all = k, v
        for guide_BLC, kind in calls:
            q = self._heads(guide_BLC, self.mat_qkv_guide, guide_bias)[0]
            if scale_mul is not None:
                q = F.normalize(q, dim=-1).mul(scale_mul)
            if cache is not None and (kind == "style_guide" or self.double_append):
                # the authors' cache appends on both calls; the correct one once per block (the style call)
                k_all, v_all = cache.append(self.layer, k, v)
            site = AttnSite(self.layer, scale, kind, layout, query_scales_L)
            o = self.slot.attend(site, q.to(v_all.dtype), k_all.to(v_all.dtype), v_all, bias, self.kernel)
            outputs.append(self.proj(rearrange(o, "b h l c -> b l (h c)")))
        return outputs[0], outputs[1]


class AdaLNGuidedBlock(nn.Module):
    """Upstream ``AdaLNCrossAttn``: ``x += alpha g1 A(N(style)) + (1 - alpha) g1 A(N(content))`` with the
    target ``N(x)`` as keys and values, then ``x += g2 FFN(LN(x)(1 + s2) + b2)``."""

    def __init__(self, cfg: StyleVARConfig, layer: int, slot: ControlSlot) -> None:
        super().__init__()
        C = cfg.width
        self.eps = cfg.norm_eps
        self.attn = GuidedAttention(cfg, layer, slot)
        self.ffn = FFN(C, cfg.mlp_hidden)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def adaln(self, cond_BC: torch.Tensor) -> torch.Tensor:
        """This block's six AdaLN rows (B, 1, 6, C)."""
        return rearrange(self.ada_lin(cond_BC), "b (six c) -> b 1 six c", six=6)

    def forward(
        self,
        x_BLC: torch.Tensor,
        style_BLC: torch.Tensor,
        content_BLC: torch.Tensor,
        ada_B16C: torch.Tensor,
        alpha_BL1: torch.Tensor,
        one_minus_alpha_BL1: torch.Tensor,
        *,
        scale: int | None,
        layout: BatchLayout,
        cache: KVCache | None,
        bias: torch.Tensor | None,
        query_scales_L: torch.Tensor | None = None,
    ) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada_B16C.unbind(2)

        def modulated(t_BLC: torch.Tensor) -> torch.Tensor:
            return layer_norm(t_BLC, self.eps).mul(scale1.add(1)).add(shift1)

        a_style, a_content = self.attn(
            modulated(style_BLC),
            modulated(content_BLC),
            modulated(x_BLC),
            scale=scale,
            layout=layout,
            cache=cache,
            bias=bias,
            query_scales_L=query_scales_L,
        )
        # upstream's order: alpha * (A_s g1) + (1 - alpha) * (A_c g1)
        x_BLC = x_BLC + (alpha_BL1 * a_style.mul(gamma1) + one_minus_alpha_BL1 * a_content.mul(gamma1))
        h = layer_norm(x_BLC, self.eps).mul(scale2.add(1)).add(shift2)
        return x_BLC + self.ffn(h).mul(gamma2)


class StyleVAR(nn.Module):
    """The StyleVAR transformer; parameter and buffer names equal the authors' state dict."""

    lvl_1L: torch.Tensor
    attn_bias_for_masking: torch.Tensor

    def __init__(self, cfg: StyleVARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, L, first = cfg.width, cfg.num_tokens, cfg.patch_nums[0] ** 2
        self.schedule = var_schedule(cfg.patch_nums)
        self.control = ControlSlot(host=self)
        self.style_encoder = resnet18_trunk(cfg.resnet_width)
        self.content_encoder = resnet18_trunk(cfg.resnet_width)
        self.feat_emb = nn.Linear(cfg.global_dim, C)
        self.word_embed = nn.Linear(cfg.z_channels, C)
        self.pos_start = nn.Parameter(torch.zeros(1, first, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        self.blocks = nn.ModuleList(AdaLNGuidedBlock(cfg, i, self.control) for i in range(cfg.depth))
        # persistent like upstream's (the released files hold them); from Python ints so that a build on
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
    def block_list(self) -> list[AdaLNGuidedBlock]:
        return [block for block in self.blocks if isinstance(block, AdaLNGuidedBlock)]

    def _check_schedule(self, schedule: Schedule) -> None:
        if schedule.grids != self.schedule.grids:
            raise ValueError(
                f"this StyleVAR runs the grids {self.schedule.grids} of its patch_nums, got {schedule.grids}"
            )

    # ---- conditions ----------------------------------------------------------------------------------
    def global_vectors(self, inputs: TransferInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(content, style) ResNet-18 vectors ``(B, global_dim)`` of the images (upstream feeds them the
        [-1, 1] images, not ImageNet-normalised ones)."""
        content = self.content_encoder(inputs.content_B3PP.to(self.device).float())
        style = self.style_encoder(inputs.style_B3PP.to(self.device).float())
        return rearrange(content, "b c 1 1 -> b c"), rearrange(style, "b c 1 1 -> b c")

    def null_condition(self, raw: TransferInputs) -> TransferInputs:
        """CFG rows: the content image as its own style reference (the authors train no null style)."""
        return TransferInputs(
            raw.content_B3PP, raw.content_B3PP, raw.content_guides, raw.content_guides, raw.strength_B
        )

    def condition(self, raws: Sequence[TransferInputs]) -> TransferCondition:
        inputs = TransferInputs.concat(raws).to(self.device)
        S = len(self.cfg.patch_nums)
        if len(inputs.content_guides) != S:
            raise ValueError(f"transfer inputs carry guides of {len(inputs.content_guides)} scales, need {S}")
        content_vec, style_vec = self.global_vectors(inputs)
        sos_BC, cond_BC = self.feat_emb(content_vec), self.feat_emb(style_vec)
        ada = tuple(block.adaln(cond_BC) for block in self.block_list)
        head_ss = rearrange(self.head_nm.ada_lin(cond_BC), "b (two c) -> b 1 two c", two=2)
        alphas = [effective_alphas(self.cfg.alphas, float(s)) for s in inputs.strength_B.tolist()]
        alpha_BS = torch.tensor(alphas, dtype=torch.float32, device=self.device)
        one_minus = torch.tensor([[1 - a for a in row] for row in alphas], dtype=torch.float32)
        return TransferCondition(
            sos_BC,
            cond_BC,
            ada,
            head_ss,
            inputs.content_guides,
            inputs.style_guides,
            alpha_BS,
            one_minus.to(self.device),
        )

    def uses_uncond(self, sampling: SamplingConfig) -> bool:
        """Unconditional rows only for ``cfg > 0``: the authors sample without CFG (``cfg = 0``)."""
        return sampling.cfg != 0

    # ---- image tokens --------------------------------------------------------------------------------
    def positions(self, schedule: Schedule, device: torch.device) -> torch.Tensor:
        """``lvl_embed(lvl_1L) + pos_1LC`` (1, L, C), upstream's ``lvl_pos``."""
        self._check_schedule(schedule)
        return (self.lvl_embed(self.lvl_1L) + self.pos_1LC).to(device)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.depth)

    def start_tokens(self, cond: TransferCondition) -> torch.Tensor:
        """``feat_emb(content) + pos_start`` (B, first_l, C); positions follow in :meth:`forward_scale`."""
        B, first = cond.sos_BC.shape[0], self.pos_start.shape[1]
        return rearrange(cond.sos_BC, "b c -> b 1 c").expand(B, first, -1) + self.pos_start.expand(B, -1, -1)

    def embed(self, inputs_BLD: torch.Tensor) -> torch.Tensor:
        return self.word_embed(inputs_BLD.float())

    def forward_scale(
        self,
        x_BLC: torch.Tensor,
        cond: TransferCondition,
        *,
        scale: int,
        schedule: Schedule,
        positions: torch.Tensor,
        cache: KVCache,
        layout: BatchLayout,
    ) -> torch.Tensor:
        """Run all blocks on the tokens of one scale, the guides of that scale as queries, attending to the
        cached target tokens of this and the earlier scales."""
        start = schedule.offsets()[scale]
        stop = start + schedule.tokens_per_scale[scale]
        if x_BLC.shape[1] != stop - start:
            raise ValueError(f"scale {scale} has {stop - start} tokens, got {x_BLC.shape[1]}")
        pos = positions[:, start:stop]
        x_BLC = x_BLC + pos
        # each scale's guides embedded on their own, as upstream's per-scale list
        style_BLC = self.word_embed(cond.style_guides[scale]) + pos
        content_BLC = self.word_embed(cond.content_guides[scale]) + pos
        alpha = rearrange(cond.alpha_BS[:, scale], "b -> b 1 1")
        one_minus = rearrange(cond.one_minus_alpha_BS[:, scale], "b -> b 1 1")
        for block, ada in zip(self.blocks, cond.ada_B16C, strict=True):
            x_BLC = block(
                x_BLC,
                style_BLC,
                content_BLC,
                ada,
                alpha,
                one_minus,
                scale=scale,
                layout=layout,
                cache=cache,
                bias=None,
            )
        return x_BLC

    def logits(self, hidden_BLC: torch.Tensor, cond: TransferCondition) -> torch.Tensor:
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
        """VAR's linear CFG ramp ``t = cfg * si / (S - 1)``; without unconditional rows the logits as they
        are (the authors' sampling)."""
        t = sampling.cfg * (scale / (schedule.num_scales - 1))
        if logits_uncond_BLV is None:
            if t != 0:
                raise ValueError(f"scale {scale} needs unconditional logits (cfg {sampling.cfg})")
            return logits_cond_BLV
        return (1 + t) * logits_cond_BLV - t * logits_uncond_BLV

    def forward(
        self,
        inputs_BLD: torch.Tensor,
        cond: TransferCondition,
        schedule: Schedule,
        layout: BatchLayout | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) of every scale at once under the block-causal mask: guide tokens
        of scale k see the target tokens of scales <= k.

        ``inputs_BLD`` are the target's inputs of scales 1..S-1 (:meth:`VQVAE.teacher_inputs`); scale 0 is
        the start token. ``1 - alpha`` is taken in float32 here, as upstream's alpha table.
        """
        self._check_schedule(schedule)
        B = cond.sos_BC.shape[0]
        layout = layout or BatchLayout(("gen",), B)
        x_BLC = torch.cat((self.start_tokens(cond), self.embed(inputs_BLD)), dim=1)
        if x_BLC.shape[1] != schedule.total_tokens:
            raise ValueError(f"schedule has {schedule.total_tokens} tokens, inputs give {x_BLC.shape[1]}")
        positions = self.positions(schedule, x_BLC.device)
        x_BLC = x_BLC + positions
        style_BLC = self.word_embed(torch.cat(cond.style_guides, dim=1)) + positions
        content_BLC = self.word_embed(torch.cat(cond.content_guides, dim=1)) + positions
        level_L = self.lvl_1L[0]
        alpha = rearrange(cond.alpha_BS[:, level_L], "b l -> b l 1")
        for block, ada in zip(self.blocks, cond.ada_B16C, strict=True):
            x_BLC = block(
                x_BLC,
                style_BLC,
                content_BLC,
                ada,
                alpha,
                1 - alpha,
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
        conv_std: float = 0.02,
    ) -> None:
        """Random initialisation after upstream `StyleVAR.init_weights` (``init_std = sqrt(1 / C / 3)``):
        small normal linears and embeddings with zero biases, normal convs (std 0.02), batch norms at
        1 and 0, attention and FFN outputs scaled by ``1 / sqrt(2 depth)``, AdaLN gates near zero."""
        C, std = self.cfg.width, math.sqrt(1 / self.cfg.width / 3)

        def normal_(t: torch.Tensor, s: float) -> None:
            t.copy_(torch.randn(t.shape, generator=generator).clamp_(-2, 2) * s)

        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                normal_(module.weight, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.Conv2d):
                normal_(module.weight, conv_std)
            if isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
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
            ada = block.ada_lin[1]
            assert isinstance(ada, nn.Linear)
            ada.weight[2 * C :].mul_(init_adaln)
            ada.weight[: 2 * C].mul_(init_adaln_gamma)
