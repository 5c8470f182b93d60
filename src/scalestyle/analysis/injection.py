"""Prompt injection at one step, and query/key/value injection, as multi-path runs over the control seam.

These are the two analyses of the paper's Section 4 ("which steps decide content and style", and "which of
Q, K, V carries content and which style"). Nothing here touches the model: every variant is one path of
a :meth:`~scalestyle.pipeline.Pipeline.run_paths` batch, and the edits are controllers installed on
``model.control``.

What "prompt B at step s" means here. The caption reaches Infinity in two ways: (1) the pooled condition
vector, which is the start token (scale 0's input) and, through the shared AdaLN, the per-row
shift/scale/gate tables of every block and of the head; (2) cross-attention of the image tokens to the
caption tokens, in every block at every scale. Two modes:

- ``"cross"`` (default): path ``a`` (prompt A) and path ``b`` (prompt B) run in one batch; at scale s only,
  every block's cross-attention of the injected path reads B's caption: its own image queries attend to
  B's caption keys and values (with B's key mask). Everything else at s stays A's: the AdaLN and head
  tables, the start token, and the self-attention history in the KV cache. This is a text swap in
  cross-attention alone, the part of the prompt a controller can reach.
- ``"handoff"``: the token map of step s is drawn from the model fully conditioned on B (start token,
  AdaLN, head, cross-attention) given A's token maps of the steps before s, i.e. r_s ~ p(r_s | r_<s of A,
  B); then A's conditioning continues from there. Implemented with given bits (teacher forcing), no
  controller: a path with caption B is given A's bits before s and samples s, then a path with caption A
  is given A's bits before s and that sample at s. Unlike "cross", the history B sees at step s is
  recomputed under B's conditioning (same tokens, B's AdaLN). Costs three runs instead of one (plain A,
  the B probes, the continuations).

In both modes every path has its own generator seeded alike, so an injected path draws the same noise as
plain A at every scale, and its bits before s are plain A's bits exactly.

Steps are scale indices (0-based, 0 = the start token) in this module; the experiments map them to the
paper's step numbers with a convention (see :mod:`scalestyle.method.style`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from scalestyle.attention import AttentionController
from scalestyle.config import SamplingConfig
from scalestyle.method.rules import From, Rule, RuleController
from scalestyle.pipeline import Pipeline
from scalestyle.sampling import PathPlan, ScaleEvent

CfgRows = Literal["share", "plain"]
InjectionMode = Literal["cross", "handoff"]
Component = Literal["q", "k", "v"]
COMPONENTS: tuple[Component, ...] = ("q", "k", "v")
MODES: tuple[str, ...] = ("cross", "handoff")


def cross_swap(
    scales: frozenset[int],
    target: str,
    source: str,
    cfg_rows: CfgRows = "share",
    layers: frozenset[int] | None = None,
) -> Rule:
    """At ``scales`` (0-based), the ``target`` path's cross-attention reads the ``source`` path's caption:
    the target's image queries attend to the source's caption keys and values under the source's key
    mask. ``cfg_rows``: "share" swaps the unconditional rows alike (target's CFG rows read the source's
    CFG caption), "plain" leaves them alone."""
    if target == source:
        raise ValueError(f"a cross swap needs two different paths, got {target!r} twice")
    return Rule(
        scales,
        target,
        From(target),
        (From(source),),
        (From(source),),
        cfg_rows=cfg_rows,
        layers=layers,
        name=f"cross-swap {source}->{target}",
        kind="cross",
    )


def injected_path(scale: int) -> str:
    """Name of the path that gets prompt B at ``scale``."""
    return f"a@{scale}"


@dataclass(frozen=True)
class QKVInjection:
    """Regenerate A with its self-attention ``component`` taken from B's at ``scales`` (every layer); the
    other two components stay the regenerated path's own."""

    component: Component
    scales: frozenset[int]

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ValueError(f"component must be one of {COMPONENTS}, got {self.component!r}")
        if not self.scales or min(self.scales) < 0:
            raise ValueError(f"scales must be a non-empty set of indices >= 0, got {sorted(self.scales)}")

    @property
    def path(self) -> str:
        return f"a+{self.component}b@{scales_label(self.scales)}"

    def rule(self, cfg_rows: CfgRows = "share") -> Rule:
        own, other = From(self.path), From("b")
        return Rule(
            self.scales,
            self.path,
            other if self.component == "q" else own,
            (other if self.component == "k" else own,),
            (other if self.component == "v" else own,),
            cfg_rows=cfg_rows,
            name=f"{self.component}-injection",
        )


def scales_label(scales: Iterable[int]) -> str:
    """ "3" or "1-4" or "1,3,5-6": a compact name for a set of indices."""
    items = sorted(set(scales))
    parts: list[str] = []
    start = prev = items[0] if items else 0
    for x in [*items[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(parts) if items else ""


def _check_scales(scales: Iterable[int], num_scales: int, what: str) -> None:
    bad = sorted(s for s in scales if not 0 <= s < num_scales)
    if bad:
        raise ValueError(
            f"{what}: scale(s) {bad} outside [0, {num_scales - 1}] of the {num_scales}-scale schedule"
        )


def _run(
    pipe: Pipeline,
    plans: Sequence[PathPlan],
    sampling: SamplingConfig,
    controller: AttentionController | None,
    on_scale: Callable[[ScaleEvent], None] | None,
) -> dict[str, torch.Tensor]:
    schedule = pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn)
    return pipe.run_paths(plans, sampling, schedule, controller, on_scale)


def _bits_recorder(
    store: dict[str, list[torch.Tensor]], on_scale: Callable[[ScaleEvent], None] | None
) -> Callable[[ScaleEvent], None]:
    def record(event: ScaleEvent) -> None:
        for name, bits in event.tokens.items():
            store.setdefault(name, []).append(bits)
        if on_scale is not None:
            on_scale(event)

    return record


@torch.inference_mode()
def generate_step_injection(
    pipe: Pipeline,
    prompt_a: str,
    prompt_b: str,
    scales: Sequence[int],
    *,
    sampling: SamplingConfig,
    mode: InjectionMode = "cross",
    cfg_rows: CfgRows = "share",
    include_a: bool = True,
    include_b: bool = True,
    on_scale: Callable[[ScaleEvent], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Summed codes (1, d, Hl, Wl) of plain A (``"a"``, with ``include_a``), plain B (``"b"``, with
    ``include_b``) and of A with prompt B at each of ``scales`` alone (``injected_path(s)``), all with the
    seed of ``sampling``. See the module docstring for the two ``mode`` readings of "prompt B at s".
    ``cfg_rows`` applies to "cross"; in "handoff" the draw at s uses B's own CFG rows, as a plain run of B
    would."""
    if not prompt_a.strip() or not prompt_b.strip():
        raise ValueError("prompt A and prompt B must be non-empty text")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    schedule = pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn)
    scales = sorted(set(scales))
    _check_scales(scales, schedule.num_scales, "step injection")
    text = pipe.encode_text([prompt_a, prompt_b])
    text_a, text_b = text.rows([0]), text.rows([1])
    if mode == "cross":
        controller = RuleController(
            [cross_swap(frozenset({s}), injected_path(s), "b", cfg_rows) for s in scales]
        )
        plans = [PathPlan("a", text_a)] if include_a else []
        if include_b or scales:
            # B is only read up to the last injected scale unless its own image is wanted
            plans.append(
                PathPlan("b", text_b, last_scale=None if include_b else controller.last_scale_read("b"))
            )
        plans += [PathPlan(injected_path(s), text_a) for s in scales]
        return _run(pipe, plans, sampling, controller, on_scale) if plans else {}

    # handoff: A's bits first (plain A), then B's draw at each s given A's bits before s, then A
    # continuing from that draw. Every run keeps one path to the last scale: run_scales stops at the end
    # of the schedule, not when the last path is pruned.
    bits: dict[str, list[torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    if include_a or scales:
        out = _run(pipe, [PathPlan("a", text_a)], sampling, None, _bits_recorder(bits, on_scale))
        if not include_a:
            out.pop("a")
    a_bits = bits.get("a", [])
    probes = [PathPlan(f"b@{s}", text_b, given_tokens=tuple(a_bits[:s]), last_scale=s) for s in scales]
    if include_b:
        probes.append(PathPlan("b", text_b))
    elif probes:
        probes[-1] = replace(probes[-1], last_scale=None)
    if probes:
        done = _run(pipe, probes, sampling, None, _bits_recorder(bits, on_scale))
        if include_b:
            out["b"] = done["b"]
    if not scales:
        return out
    injected = [
        PathPlan(injected_path(s), text_a, given_tokens=(*a_bits[:s], bits[f"b@{s}"][s])) for s in scales
    ]
    out.update(_run(pipe, injected, sampling, None, on_scale))
    return out


@torch.inference_mode()
def generate_qkv_injection(
    pipe: Pipeline,
    prompt_a: str,
    prompt_b: str,
    injections: Sequence[QKVInjection],
    *,
    sampling: SamplingConfig,
    cfg_rows: CfgRows = "share",
    include_a: bool = True,
    include_b: bool = True,
    on_scale: Callable[[ScaleEvent], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Summed codes of plain A (``"a"``), plain B (``"b"``) and of A regenerated with B's self-attention
    queries, keys or values at the injections' scales (path ``injection.path``), one batch."""
    if not prompt_a.strip() or not prompt_b.strip():
        raise ValueError("prompt A and prompt B must be non-empty text")
    schedule = pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn)
    for inj in injections:
        _check_scales(inj.scales, schedule.num_scales, f"{inj.component} injection")
    names = [inj.path for inj in injections]
    if len(set(names)) != len(names):
        raise ValueError(f"injections repeat: {names}")
    controller = RuleController([inj.rule(cfg_rows) for inj in injections])
    text = pipe.encode_text([prompt_a, prompt_b])
    plans = [PathPlan("a", text.rows([0]))] if include_a else []
    if include_b or injections:
        plans.append(
            PathPlan("b", text.rows([1]), last_scale=None if include_b else controller.last_scale_read("b"))
        )
    plans += [PathPlan(name, text.rows([0])) for name in names]
    return _run(pipe, plans, sampling, controller, on_scale) if plans else {}
