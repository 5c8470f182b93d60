"""The next-scale sampling loop, for one or several paths in one batch.

Follows `Infinity.autoregressive_infer_cfg` (spec §1.8): CFG mixes the tau-scaled logits of conditional and
unconditional rows, top-k/top-p act on each bit's two logits, one ``multinomial`` call per scale draws the
bits in (b, y, x, bit) order from a seeded generator, and the next scale's input is the trilinear resize
of the accumulated codes. A plain generation is the single path ``"gen"`` and reproduces upstream's RNG
stream exactly.

Several paths (the style method's content, style and generation paths) run as one batch: each path has
its own captions, its own generator (seeded alike, so pruning a path never shifts another's noise), may
take given bits instead of sampling at some scales (teacher forcing, Feature Initialization) and may stop
running after a scale (path pruning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange

from scalestyle.attention import BatchLayout, KVCache
from scalestyle.config import SamplingConfig
from scalestyle.models.bsq_vae import bits_to_codes, next_scale_input, upsample_codes
from scalestyle.models.infinity import Infinity, TextCondition
from scalestyle.models.text_encoder import PackedText
from scalestyle.schedules import Schedule


@dataclass(frozen=True)
class PathPlan:
    """One path of a batch. ``given_bits[k]`` (bits_BhwD) replaces sampling at scale k where not None;
    ``uncond`` are the CFG captions (None: the model's learned empty caption); the path runs for scales
    ``<= last_scale`` (None: all)."""

    name: str
    text: PackedText
    given_bits: tuple[torch.Tensor | None, ...] = ()
    uncond: PackedText | None = None
    last_scale: int | None = None


@dataclass(frozen=True)
class ScaleEvent:
    """Reported after every scale: which paths ran, and the bits each drew or was given."""

    scale: int
    layout: BatchLayout
    bits: dict[str, torch.Tensor]


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


def run_scales(
    model: Infinity,
    paths: Sequence[PathPlan],
    schedule: Schedule,
    sampling: SamplingConfig,
    *,
    patchify: bool,
    on_scale: Callable[[ScaleEvent], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Generate every path; returns each path's summed codes (B, d, Hl, Wl) at VAE resolution.

    The caller installs any attention controller on ``model.control`` around this call.
    """
    if not paths:
        raise ValueError("at least one path is needed")
    rows = paths[0].text.batch
    if any(p.text.batch != rows for p in paths):
        raise ValueError(f"every path needs the same number of rows, got {[p.text.batch for p in paths]}")
    S = schedule.num_scales
    for p in paths:
        if len(p.given_bits) > S:
            raise ValueError(
                f"path {p.name!r} gives bits for {len(p.given_bits)} scales; the schedule has {S}"
            )
        if p.last_scale is not None and not 0 <= p.last_scale < S:
            raise ValueError(f"path {p.name!r}: last_scale {p.last_scale} outside [0, {S - 1}]")
    by_name = {p.name: p for p in paths}
    use_cfg = sampling.cfg != 1.0
    layout = BatchLayout(tuple(by_name), rows, use_cfg)
    device = model.pos_start.device

    captions = [by_name[name].text for name, uncond, _ in layout.groups() if not uncond]
    if use_cfg:
        captions += [
            by_name[name].uncond or model.uncond_text(by_name[name].text.lens)
            for name, uncond, _ in layout.groups()
            if uncond
        ]
    text = model.condition(PackedText.concat(captions).to(device))
    rope = model.rope_table(schedule, device)
    cache = KVCache(model.cfg.depth)
    generators = {name: torch.Generator(device).manual_seed(sampling.seed) for name in by_name}

    last_h, last_w = schedule.last_grid
    factor = 2 if patchify else 1
    summed: dict[str, torch.Tensor] = {}
    x_BLC = model.start_tokens(text)
    for si, (h, w) in enumerate(schedule.grids):
        hidden_BLC = model.forward_scale(
            x_BLC, text, scale=si, schedule=schedule, rope=rope, cache=cache, layout=layout
        )
        bits: dict[str, torch.Tensor] = {}
        for name in layout.paths:
            plan = by_name[name]
            given = plan.given_bits[si] if si < len(plan.given_bits) else None
            if given is not None:
                # the generator still advances as if sampled, keeping the noise of later scales aligned
                # with a run that sampled here (upstream draws bits even where gt_leak overrides them)
                drawn = _draw(model, hidden_BLC, text, layout, name, sampling, generators[name])
                bits[name] = given.to(device=device, dtype=drawn.dtype)
                if bits[name].shape != (rows, h, w, model.cfg.bits):
                    raise ValueError(
                        f"path {name!r} scale {si}: given bits {tuple(given.shape)}, "
                        f"expected {(rows, h, w, model.cfg.bits)}"
                    )
            else:
                bits[name] = rearrange(
                    _draw(model, hidden_BLC, text, layout, name, sampling, generators[name]),
                    "b (h w) d -> b h w d",
                    h=h,
                    w=w,
                )
            codes = bits_to_codes(bits[name], patchify)
            if si < S - 1:
                codes = upsample_codes(codes, (last_h * factor, last_w * factor))
            summed[name] = summed[name] + codes if name in summed else codes
        if on_scale is not None:
            on_scale(ScaleEvent(si, layout, bits))
        if si == S - 1:
            break
        running = [n for n in layout.paths if _runs_after(by_name[n], si)]
        if not running:
            break
        if len(running) < len(layout.paths):
            layout, keep = layout.keep(running)
            keep = keep.to(device)
            cache.select_rows(keep)
            text = text.rows(keep)
        next_hw = schedule.grids[si + 1]
        inputs = {n: next_scale_input(summed[n], next_hw, patchify) for n in layout.paths}
        x_BLD = torch.cat([inputs[name] for name, _, _ in layout.groups()])
        x_BLC = model.embed(x_BLD.to(model.word_embed.weight.dtype))
    return summed


def _runs_after(plan: PathPlan, scale: int) -> bool:
    return plan.last_scale is None or plan.last_scale > scale


def _draw(
    model: Infinity,
    hidden_BLC: torch.Tensor,
    text: TextCondition,
    layout: BatchLayout,
    name: str,
    sampling: SamplingConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Logits of one path's rows (CFG-mixed when the batch has unconditional rows), then sampled bits."""
    cond = layout.rows(name)
    index = torch.arange(layout.batch, device=hidden_BLC.device)
    if layout.cfg:
        uncond = layout.rows(name, uncond=True)
        sel = torch.cat((index[cond], index[uncond]))
        logits = model.logits(hidden_BLC[sel], text.rows(sel)) / sampling.tau
        n = cond.stop - cond.start
        logits = sampling.cfg * logits[:n] + (1 - sampling.cfg) * logits[n:]
    else:
        sel = index[cond]
        logits = model.logits(hidden_BLC[sel], text.rows(sel)) / sampling.tau
    return sample_bits(logits.float(), top_k=sampling.top_k, top_p=sampling.top_p, generator=generator)
