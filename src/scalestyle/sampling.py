"""The next-scale sampling loop, for one or several paths in one batch, for any backbone.

Follows `Infinity.autoregressive_infer_cfg` and VAR's `autoregressive_infer_cfg` (spec §1.8, §5.4): the
condition is computed once, the start token runs first, then per scale the blocks run over the cached
history, the model mixes conditional and unconditional logits (:meth:`ScaleModel.guide`), the codec draws
the tokens with one ``multinomial`` call per scale from a seeded generator, adds their codes to the running
latent and resizes it into the next scale's input (:class:`~scalestyle.scale_model.TokenCodec`). A plain
generation is the single path ``"gen"`` and reproduces upstream's RNG stream exactly.

Several paths (the style method's content, style and generation paths) run as one batch: each path has
its own condition, its own generator (seeded alike, so pruning a path never shifts another's noise), may
take given tokens instead of sampling at some scales (teacher forcing, Feature Initialization) and may stop
running after a scale (path pruning). Conditions are opaque here: the loop only concatenates them in the
batch layout's row order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scalestyle.attention import BatchLayout
from scalestyle.config import SamplingConfig
from scalestyle.scale_model import Condition, Draw, ScaleModel, TokenCodec
from scalestyle.schedules import Schedule


@dataclass(frozen=True)
class PathPlan:
    """One path of a batch. ``cond`` is its raw condition (captions, class labels: whatever the model
    takes); ``given_tokens[k]`` (a token grid, ``bits_BhwD`` or ``idx_Bhw``) replaces sampling at scale k
    where not None; ``uncond`` is the CFG rows' condition (None: the model's null condition); the path
    runs for scales ``<= last_scale`` (None: all)."""

    name: str
    cond: Any
    given_tokens: tuple[torch.Tensor | None, ...] = ()
    uncond: Any | None = None
    last_scale: int | None = None


@dataclass(frozen=True)
class ScaleEvent:
    """Reported after every scale: which paths ran, and the tokens each drew or was given."""

    scale: int
    layout: BatchLayout
    tokens: dict[str, torch.Tensor]


def run_scales(
    model: ScaleModel,
    codec: TokenCodec,
    paths: Sequence[PathPlan],
    schedule: Schedule,
    sampling: SamplingConfig,
    *,
    on_scale: Callable[[ScaleEvent], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Generate every path; returns each path's summed latent codes at the tokenizer's resolution.

    The caller installs any attention controller on ``model.control`` around this call
    (:meth:`scalestyle.pipeline.Pipeline.run_paths` does).
    """
    if not paths:
        raise ValueError("at least one path is needed")
    rows = paths[0].cond.batch
    if any(p.cond.batch != rows for p in paths):
        raise ValueError(f"every path needs the same number of rows, got {[p.cond.batch for p in paths]}")
    S = schedule.num_scales
    for p in paths:
        if len(p.given_tokens) > S:
            raise ValueError(
                f"path {p.name!r} gives tokens for {len(p.given_tokens)} scales; the schedule has {S}"
            )
        if p.last_scale is not None and not 0 <= p.last_scale < S:
            raise ValueError(f"path {p.name!r}: last_scale {p.last_scale} outside [0, {S - 1}]")
    by_name = {p.name: p for p in paths}
    layout = BatchLayout(tuple(by_name), rows, model.uses_uncond(sampling))
    device = model.device

    raws = [_condition_of(by_name[name], uncond, model) for name, uncond, _ in layout.groups()]
    cond: Condition = model.condition(raws)
    positions = model.positions(schedule, device)
    cache = model.new_cache()
    generators = {name: torch.Generator(device).manual_seed(sampling.seed) for name in by_name}

    summed: dict[str, torch.Tensor] = {}
    x_BLC = model.start_tokens(cond)
    for si, hw in enumerate(schedule.grids):
        hidden_BLC = model.forward_scale(
            x_BLC, cond, scale=si, schedule=schedule, positions=positions, cache=cache, layout=layout
        )
        tokens: dict[str, torch.Tensor] = {}
        for name in layout.paths:
            plan = by_name[name]
            logits = _guided_logits(model, hidden_BLC, cond, layout, name, si, schedule, sampling)
            # the generator advances even where tokens are given, keeping the noise of later scales aligned
            # with a run that sampled here (upstream draws bits even where gt_leak overrides them)
            draw = codec.sample(
                logits, hw, scale=si, schedule=schedule, sampling=sampling, generator=generators[name]
            )
            given = plan.given_tokens[si] if si < len(plan.given_tokens) else None
            if given is not None:
                expected = codec.token_shape(rows, hw)
                if tuple(given.shape) != expected:
                    raise ValueError(
                        f"path {name!r} scale {si}: given tokens {tuple(given.shape)}, expected {expected}"
                    )
                draw = Draw(given.to(device=device, dtype=draw.tokens.dtype))
            tokens[name] = draw.tokens
            summed[name] = codec.accumulate(summed.get(name), draw, scale=si, schedule=schedule)
        if on_scale is not None:
            on_scale(ScaleEvent(si, layout, tokens))
        if si == S - 1:
            break
        running = [n for n in layout.paths if _runs_after(by_name[n], si)]
        if not running:
            break
        if len(running) < len(layout.paths):
            layout, keep = layout.keep(running)
            keep = keep.to(device)
            cache.select_rows(keep)
            cond = cond.rows(keep)
        next_hw = schedule.grids[si + 1]
        # each path's rows are embedded once and repeated for its CFG rows, as upstream does: embedding the
        # concatenation instead rounds differently for a single row (VAR at batch size 1)
        embedded = {n: model.embed(codec.next_input(summed[n], next_hw)) for n in layout.paths}
        x_BLC = torch.cat([embedded[name] for name, _, _ in layout.groups()])
    return summed


def _condition_of(plan: PathPlan, uncond: bool, model: ScaleModel) -> Any:
    if not uncond:
        return plan.cond
    return model.null_condition(plan.cond) if plan.uncond is None else plan.uncond


def _runs_after(plan: PathPlan, scale: int) -> bool:
    return plan.last_scale is None or plan.last_scale > scale


def _guided_logits(
    model: ScaleModel,
    hidden_BLC: torch.Tensor,
    cond: Condition,
    layout: BatchLayout,
    name: str,
    scale: int,
    schedule: Schedule,
    sampling: SamplingConfig,
) -> torch.Tensor:
    """One path's logits, CFG-mixed by the model's rule when the batch has unconditional rows. The head
    runs once over the path's conditional and unconditional rows together, as upstream's does."""
    index = torch.arange(layout.batch, device=hidden_BLC.device)
    sel = index[layout.rows(name)]
    if layout.cfg:
        sel = torch.cat((sel, index[layout.rows(name, uncond=True)]))
    logits = model.logits(hidden_BLC[sel], cond.rows(sel))
    n = layout.rows_per_path
    uncond = logits[n:] if layout.cfg else None
    return model.guide(logits[:n], uncond, scale=scale, schedule=schedule, sampling=sampling)
