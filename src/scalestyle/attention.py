"""Attention with a KV cache and the one control seam of scalestyle.

Self-attention follows `infinity/models/basic.py::SelfAttention` (cosine attention with a learned
per-head scale, RoPE-2D after normalisation, softmax scale 1); cross-attention and the attentive text pool
follow `basic.py::CrossAttention`, whose flash-attn varlen kernel sees bf16 inputs and returns bf16 even
in fp32 runs: we mirror that rounding, because removing it flips sampled bits (spec §1.11 item 4).

The control seam: every attention call hands its final q, k, v (normalised, RoPE applied, joined with
the cache) to the installed controller together with an explicit :class:`AttnSite` (layer, scale, self or
cross, the batch layout naming which rows belong to which path and which are CFG rows, and in the
teacher-forced forward the scale of every query token) and the kernel, through :meth:`ControlSlot.attend`,
the one place that dispatches. With no controller installed the kernel is called directly. Controllers
never write into the KV cache: the cache always holds the keys and values the model itself computed. A
controller that is an ``nn.Module`` (a trained adapter) is registered on the model while installed, so its
weights follow ``state_dict``, ``.to()`` and dtype casts.

VAR's self-attention (`models/basic_var.py::SelfAttention`) is the same module without RoPE; with
``attn_l2_norm=False`` it is plain attention at scale ``0.25 / sqrt(c)`` and has no learned scale.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# upstream clamps the learned log-scale at log(100) evaluated in float32
MAX_LOG_SCALE = 4.605170249938965

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class BatchLayout:
    """Row layout of a batch: for each path ``rows_per_path`` conditional rows, paths in order; with CFG the
    unconditional rows of every path follow in the same order (upstream appends uncond rows after cond)."""

    paths: tuple[str, ...] = ("gen",)
    rows_per_path: int = 1
    cfg: bool = False

    def __post_init__(self) -> None:
        if not self.paths or len(set(self.paths)) != len(self.paths):
            raise ValueError(f"paths must be non-empty and unique, got {self.paths}")
        if self.rows_per_path < 1:
            raise ValueError(f"rows_per_path must be >= 1, got {self.rows_per_path}")

    @property
    def batch(self) -> int:
        return len(self.paths) * self.rows_per_path * (2 if self.cfg else 1)

    def rows(self, path: str, *, uncond: bool = False) -> slice:
        """The rows of ``path`` (its conditional rows, or with ``uncond`` its CFG rows)."""
        if path not in self.paths:
            raise ValueError(f"path {path!r} is not in this batch (paths {self.paths})")
        if uncond and not self.cfg:
            raise ValueError("this batch has no unconditional rows (cfg is off)")
        start = (self.paths.index(path) + (len(self.paths) if uncond else 0)) * self.rows_per_path
        return slice(start, start + self.rows_per_path)

    def groups(self) -> Iterator[tuple[str, bool, slice]]:
        """Every (path, uncond, rows) block of the batch, in row order."""
        for uncond in (False, True) if self.cfg else (False,):
            for path in self.paths:
                yield path, uncond, self.rows(path, uncond=uncond)

    def keep(self, paths: Sequence[str]) -> tuple[BatchLayout, torch.Tensor]:
        """The layout restricted to ``paths`` (kept in this layout's order) and the row index that selects
        the kept rows of a tensor laid out as ``self``."""
        kept = tuple(p for p in self.paths if p in paths)
        new = BatchLayout(kept, self.rows_per_path, self.cfg)
        index = [i for p, u, _ in new.groups() for i in range(*self.rows(p, uncond=u).indices(self.batch))]
        return new, torch.tensor(index, dtype=torch.long)


@dataclass(frozen=True)
class AttnSite:
    """Where an attention call happens. ``scale`` is the 0-based scale index (0 = the start token), or
    None in the teacher-forced forward over all scales at once, where ``query_scales_L`` gives the scale
    of every query token instead (so a rule or an adapter can act per scale in training too).

    ``kind``: ``"self"`` (image tokens attend to image tokens), ``"cross"`` (image tokens attend to caption
    tokens), or StyleVAR's two guided calls, ``"style_guide"`` and ``"content_guide"``: the queries come from
    that guide image's tokens, the keys and values from the image being generated."""

    layer: int
    scale: int | None
    kind: Literal["self", "cross", "style_guide", "content_guide"]
    layout: BatchLayout
    query_scales_L: torch.Tensor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.scale is None) == (self.query_scales_L is None):
            raise ValueError("an attention site names either its scale or the scale of each query token")


class AttentionController(Protocol):
    """Receives the final q, k, v of one attention call and returns its output ``o_BHLc``.

    ``bias`` is the additive mask the kernel would use (None: every key visible). Call ``attend`` to run the
    kernel on whatever q, k, v (and rows) the rule wants; ``attend(q, k, v, bias)`` is the identity rule.
    """

    def __call__(
        self,
        site: AttnSite,
        q_BHLc: torch.Tensor,
        k_BHKc: torch.Tensor,
        v_BHKc: torch.Tensor,
        bias: torch.Tensor | None,
        attend: AttendFn,
    ) -> torch.Tensor: ...


CONTROLLER_NAME = "controller"


class ControlSlot:
    """Holds the installed controller of one model; installing is a context manager that always restores.

    A controller that is an ``nn.Module`` is registered on ``host`` as its child ``controller`` while it
    is installed. The slot keeps only a weak reference to its host: the host owns the slot."""

    def __init__(self, host: nn.Module) -> None:
        self._host = weakref.ref(host)
        self.controller: AttentionController | None = None

    @contextmanager
    def install(self, controller: AttentionController | None) -> Iterator[None]:
        previous = self.controller
        self._set(controller)
        try:
            yield
        finally:
            self._set(previous)

    def _set(self, controller: AttentionController | None) -> None:
        host = self._host()
        if host is None:
            raise RuntimeError("the model owning this control slot no longer exists")
        if CONTROLLER_NAME in host._modules:
            del host._modules[CONTROLLER_NAME]
        if isinstance(controller, nn.Module):
            host.add_module(CONTROLLER_NAME, controller)
        self.controller = controller

    def attend(
        self,
        site: AttnSite,
        q_BHLc: torch.Tensor,
        k_BHKc: torch.Tensor,
        v_BHKc: torch.Tensor,
        bias: torch.Tensor | None,
        kernel: AttendFn,
    ) -> torch.Tensor:
        """The one dispatch of every attention call: the kernel itself, or the installed controller."""
        if self.controller is None:
            return kernel(q_BHLc, k_BHKc, v_BHKc, bias)
        return self.controller(site, q_BHLc, k_BHKc, v_BHKc, bias, kernel)


class KVCache:
    """Keys and values of every self-attention layer for all tokens seen so far (all rows of the batch)."""

    def __init__(self, depth: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * depth
        self.v: list[torch.Tensor | None] = [None] * depth

    def append(
        self, layer: int, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        old_k, old_v = self.k[layer], self.v[layer]
        if old_k is not None and old_v is not None:
            k_BHLc, v_BHLc = torch.cat((old_k, k_BHLc), dim=2), torch.cat((old_v, v_BHLc), dim=2)
        self.k[layer], self.v[layer] = k_BHLc, v_BHLc
        return k_BHLc, v_BHLc

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in ``index`` (path pruning drops a path's rows mid-generation)."""
        for i, (k, v) in enumerate(zip(self.k, self.v, strict=True)):
            if k is not None and v is not None:
                self.k[i], self.v[i] = k[index.to(k.device)], v[index.to(v.device)]

    @property
    def length(self) -> int:
        k = self.k[0]
        return 0 if k is None else k.shape[2]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The self-attention kernel: softmax scale 1, since cosine attention carries its own per-head scale."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=None if bias is None else bias.to(q.dtype), scale=1.0
    )


def scaled_sdpa(scale: float) -> AttendFn:
    """The self-attention kernel of plain (not cosine) attention, softmax scale ``scale``."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if bias is None else bias.to(q.dtype), scale=scale
        )

    return attend


def bf16_rounded_attend(scale: float) -> AttendFn:
    """The cross-attention kernel: inputs and output rounded to bf16 as flash-attn varlen does upstream;
    the softmax itself accumulates in fp32, as flash-attn does."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (t.to(torch.bfloat16).float() for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        return o.to(torch.bfloat16).float()

    return attend


def rope_angles(y_L: torch.Tensor, x_L: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Angles (L, c/2) of RoPE-2D: the first c/4 pairs rotate by the row, the last c/4 by the column.

    Upstream `precompute_rope2d_freqs_grid`: inv_freq over ``half = c/2`` channels per axis, float32 outer
    products of integer positions.
    """
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    return torch.cat((torch.outer(y_L.float(), inv_freq), torch.outer(x_L.float(), inv_freq)), dim=1)


def apply_rope(t_BHLc: torch.Tensor, cos_L1: torch.Tensor, sin_L1: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (2j, 2j+1) in fp32: (a, b) -> (a cos - b sin, a sin + b cos)."""
    pairs = rearrange(t_BHLc.float(), "b h l (p two) -> b h l p two", two=2)
    a, b = pairs.unbind(-1)
    out = torch.stack((a * cos_L1 - b * sin_L1, a * sin_L1 + b * cos_L1), dim=-1)
    return rearrange(out, "b h l p two -> b h l (p two)")


class SelfAttention(nn.Module):
    """Cosine self-attention with per-head scale, RoPE-2D when given (keys as upstream `SelfAttention`).

    ``l2_norm=False`` is VAR's ``attn_l2_norm=False``: no normalisation, no learned scale, softmax scale
    ``0.25 / sqrt(c)``."""

    zero_k_bias: torch.Tensor

    def __init__(
        self, width: int, heads: int, layer: int, slot: ControlSlot, *, l2_norm: bool = True
    ) -> None:
        super().__init__()
        self.heads, self.head_dim, self.layer, self.slot = heads, width // heads, layer, slot
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.l2_norm = l2_norm
        self.kernel: AttendFn
        if l2_norm:
            # upstream initialises the learned log-scale to log(4) and clamps it at log(100) in float32
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
            self.kernel = sdpa
        else:
            self.kernel = scaled_sdpa(0.25 / math.sqrt(self.head_dim))
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x_BLC: torch.Tensor,
        rope_cos_sin: tuple[torch.Tensor, torch.Tensor] | None,
        *,
        scale: int | None,
        layout: BatchLayout,
        cache: KVCache | None = None,
        bias: torch.Tensor | None = None,
        query_scales_L: torch.Tensor | None = None,
    ) -> torch.Tensor:
        qkv_bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, qkv_bias)
        q, k, v = rearrange(qkv, "b l (three h c) -> three b h l c", three=3, h=self.heads).unbind(0)
        if self.l2_norm:
            log_scale = self.scale_mul_1H11.clamp(max=MAX_LOG_SCALE).exp()
            q = F.normalize(q, dim=-1, eps=1e-12).mul(log_scale)
            k = F.normalize(k, dim=-1, eps=1e-12)
        if rope_cos_sin is not None:
            cos, sin = rope_cos_sin
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)
        q, k, v = q.to(v.dtype), k.to(v.dtype), v
        site = AttnSite(self.layer, scale, "self", layout, query_scales_L)
        o = self.slot.attend(site, q, k, v, bias, self.kernel)
        return self.proj(rearrange(o, "b h l c -> b l (h c)"))


def key_mask(lens: Sequence[int], device: torch.device) -> torch.Tensor:
    """Additive key mask (B, 1, 1, T), T = max(lens): row b sees its first ``lens[b]`` keys only."""
    valid = torch.arange(max(lens), device=device)[None, :] < torch.tensor(list(lens), device=device)[:, None]
    bias = torch.zeros(valid.shape, dtype=torch.float32, device=device).masked_fill(~valid, -math.inf)
    return rearrange(bias, "b t -> b 1 1 t")


def pad_rows(feats_NC: torch.Tensor, lens: Sequence[int]) -> torch.Tensor:
    """Packed rows (N, C) -> zero-padded per row (B, max(lens), C)."""
    return nn.utils.rnn.pad_sequence(list(torch.split(feats_NC, list(lens))), batch_first=True)


def pad_packed(feats_NC: torch.Tensor, lens: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows -> (padded (B, T, C), additive key mask (B, 1, 1, T)) so that each row only sees its own
    tokens; equivalent to upstream's varlen kernel (``cu_seqlens_k``)."""
    return pad_rows(feats_NC, lens), key_mask(lens, feats_NC.device)


@dataclass(frozen=True)
class TextMemory:
    """Cross-attention memory of a batch: the projected text tokens packed, row b owning ``lens[b]``
    consecutive tokens (upstream's varlen layout), and the key mask of their padded form.

    Kept packed because every layer projects them to keys and values: a matmul over padded (B, T, C) rows
    rounds differently from upstream's over the packed (N, C) ones, and such an ulp now and then flips the
    bf16 rounding of the attention that follows (3e-3 logit differences on the tiny model).
    """

    kv_NC: torch.Tensor
    lens: tuple[int, ...]
    bias_B11T: torch.Tensor

    @staticmethod
    def packed(kv_NC: torch.Tensor, lens: Sequence[int]) -> TextMemory:
        if sum(lens) != kv_NC.shape[0]:
            raise ValueError(f"sum(lens) = {sum(lens)} != number of packed tokens {kv_NC.shape[0]}")
        return TextMemory(kv_NC, tuple(lens), key_mask(lens, kv_NC.device))

    def rows(self, index: torch.Tensor) -> TextMemory:
        picked = [int(i) for i in index.tolist()]
        parts = torch.split(self.kv_NC, list(self.lens))
        return TextMemory.packed(torch.cat([parts[i] for i in picked]), [self.lens[i] for i in picked])


class CrossAttention(nn.Module):
    """Image queries attend to their own caption's tokens (upstream `CrossAttention`, no RoPE, no qk-norm)."""

    zero_k_bias: torch.Tensor

    def __init__(self, width: int, heads: int, layer: int, slot: ControlSlot) -> None:
        super().__init__()
        self.heads, self.head_dim, self.layer, self.slot = heads, width // heads, layer, slot
        self.mat_q = nn.Linear(width, width)
        self.mat_kv = nn.Linear(width, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        x_BLC: torch.Tensor,
        memory: TextMemory,
        *,
        scale: int | None,
        layout: BatchLayout,
        query_scales_L: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = rearrange(self.mat_q(x_BLC), "b l (h c) -> b h l c", h=self.heads)
        kv = F.linear(memory.kv_NC, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        kv_BTC = pad_rows(kv, memory.lens)
        k, v = rearrange(kv_BTC, "b t (two h c) -> two b h t c", two=2, h=self.heads).unbind(0)
        attend = bf16_rounded_attend(1.0 / math.sqrt(self.head_dim))
        site = AttnSite(self.layer, scale, "cross", layout, query_scales_L)
        o = self.slot.attend(site, q, k, v, memory.bias_B11T, attend)
        return self.proj(rearrange(o, "b h l c -> b l (h c)").to(x_BLC.dtype))


def pool_heads(text_channels: int, width: int) -> int:
    """Heads of the attentive text pool. Upstream `TextAttentivePool` picks a nominal head size of 128 (64
    when the width exceeds 4096) and divides the *text* channels by it; the actual head dim is then
    ``width / heads``. So 16 heads for Flan-T5-XL's 2048 channels at 2B and 8B widths, 32 above 4096."""
    return text_channels // (64 if width > 4096 else 128)


class PoolAttention(nn.Module):
    """One learned query per caption pools its tokens into the condition vector (upstream
    `TextAttentivePool.ca` = `CrossAttention(for_attn_pool=True)`), with :func:`pool_heads` heads."""

    zero_k_bias: torch.Tensor

    def __init__(self, text_channels: int, width: int) -> None:
        super().__init__()
        self.heads = pool_heads(text_channels, width)
        self.head_dim = width // self.heads
        self.mat_q = nn.Parameter(torch.zeros(1, self.heads, self.head_dim))
        self.mat_kv = nn.Linear(text_channels, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, feats_NE: torch.Tensor, lens: Sequence[int]) -> torch.Tensor:
        kv = F.linear(feats_NE, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        kv_BTC, bias = pad_packed(kv, lens)
        k, v = rearrange(kv_BTC, "b t (two h c) -> two b h t c", two=2, h=self.heads).unbind(0)
        q = self.mat_q[:, :, None, :].expand(len(lens), -1, -1, -1)
        o = bf16_rounded_attend(1.0 / math.sqrt(self.head_dim))(q, k, v, bias)
        return self.proj(rearrange(o, "b h 1 c -> b (h c)").to(feats_NE.dtype))
