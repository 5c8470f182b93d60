"""Attention rules as data, and the controller that applies them at the control seam.

A :class:`Rule` says, for the self-attention (or the cross-attention) of some scales, where the target
path's query, keys and values come from: each is built from the rows of named paths by pure q/k/v
operations (take a path's tensor, blend two by their cosine similarity, AdaIN-normalise one to another's
statistics), and keys and values may concatenate several sources along the sequence. The training-free
style method (Key Stage Attention Sharing, Adaptive Query Sharing), StyleAligned-style sharing and the
injection analyses (Q/K/V injection; a path's cross-attention reading another path's caption) are each a
few rules. Rows pair by position: row i of one path with row i of another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from scalestyle.attention import AttendFn, AttnSite, BatchLayout


@dataclass(frozen=True)
class From:
    """The tensor of ``path`` itself."""

    path: str


@dataclass(frozen=True)
class CosBlend:
    """``a * X_base + (1 - a) * X_other`` with ``a = cos(X_base, X_other)`` (Adaptive Query Sharing).

    ``granularity``: one alpha per token and head ("token"), per head ("head": cosine of the flattened
    (L, c) tensors) or per layer ("layer": over all heads and tokens). ``clamp_min`` bounds alpha from
    below (None: a negative cosine extrapolates away from the other query, as the formula reads).
    """

    base: str
    other: str
    granularity: Literal["token", "head", "layer"] = "token"
    clamp_min: float | None = None


@dataclass(frozen=True)
class AdaIN:
    """``source`` normalised to the per-channel mean and std of ``reference`` over the sequence (the
    StyleAligned query/key normalisation)."""

    source: str
    reference: str
    eps: float = 1e-5


Source = From | CosBlend | AdaIN


def _all_paths(sources: Iterable[Source]) -> set[str]:
    out: set[str] = set()
    for s in sources:
        if isinstance(s, From):
            out.add(s.path)
        elif isinstance(s, CosBlend):
            out |= {s.base, s.other}
        else:
            out |= {s.source, s.reference}
    return out


@dataclass(frozen=True)
class Rule:
    """Replace the target path's self-attention at ``scales`` (0-based) by attention with the given
    query, keys (concatenated) and values (concatenated). ``cfg_rows``: "share" applies the same rule
    within the unconditional rows (pairing uncond rows with uncond rows), "plain" leaves them alone.

    ``kind="cross"`` rewrites the cross-attention instead: keys and values are caption tokens padded to
    the batch's longest caption, so they may only be taken whole from paths (:class:`From`), the same
    paths for keys and values, each under its own rows' key mask."""

    scales: frozenset[int]
    target: str
    q: Source
    k: tuple[Source, ...]
    v: tuple[Source, ...]
    cfg_rows: Literal["share", "plain"] = "share"
    layers: frozenset[int] | None = None
    name: str = field(default="rule", compare=False)
    kind: Literal["self", "cross"] = "self"

    def __post_init__(self) -> None:
        if not self.k or len(self.k) != len(self.v):
            raise ValueError(f"rule {self.name}: keys and values need the same, non-zero number of sources")
        if any(s < 0 for s in self.scales):
            raise ValueError(f"rule {self.name}: scales must be >= 0, got {sorted(self.scales)}")
        if self.cfg_rows not in ("share", "plain"):
            raise ValueError(f"rule {self.name}: cfg_rows must be 'share' or 'plain', got {self.cfg_rows!r}")
        if self.kind not in ("self", "cross"):
            raise ValueError(f"rule {self.name}: kind must be 'self' or 'cross', got {self.kind!r}")
        if self.kind == "cross" and (
            not all(isinstance(x, From) for x in (*self.k, *self.v)) or self.k != self.v
        ):
            raise ValueError(
                f"rule {self.name}: a cross-attention rule takes keys and values whole from the same paths"
            )

    def paths_read(self) -> set[str]:
        return _all_paths((self.q, *self.k, *self.v))

    def applies(self, site: AttnSite) -> bool:
        return (
            site.kind == self.kind
            and site.scale in self.scales
            and (self.layers is None or site.layer in self.layers)
            and self.target in site.layout.paths
        )


def _cos_alpha(a: torch.Tensor, b: torch.Tensor, granularity: str) -> torch.Tensor:
    if granularity == "token":
        return F.cosine_similarity(a, b, dim=-1, eps=1e-8).unsqueeze(-1)
    dims = (-2, -1) if granularity == "head" else (-3, -2, -1)
    num = (a * b).sum(dim=dims, keepdim=True)
    den = a.pow(2).sum(dim=dims, keepdim=True).sqrt() * b.pow(2).sum(dim=dims, keepdim=True).sqrt()
    return num / den.clamp_min(1e-8)


def _adain(x: torch.Tensor, ref: torch.Tensor, eps: float) -> torch.Tensor:
    # the biased (population) std, as AdaIN and StyleAligned compute it: defined for one token too, where
    # the result is the reference's mean
    mu_x, sd_x = x.mean(dim=-2, keepdim=True), x.std(dim=-2, keepdim=True, unbiased=False)
    mu_r, sd_r = ref.mean(dim=-2, keepdim=True), ref.std(dim=-2, keepdim=True, unbiased=False)
    return (x - mu_x) / (sd_x + eps) * sd_r + mu_r


def resolve(source: Source, tensor: torch.Tensor, rows: dict[str, slice]) -> torch.Tensor:
    """Evaluate a source on one (B, H, L, c) tensor given each path's rows."""
    if isinstance(source, From):
        return tensor[rows[source.path]]
    if isinstance(source, CosBlend):
        base, other = tensor[rows[source.base]], tensor[rows[source.other]]
        alpha = _cos_alpha(base.float(), other.float(), source.granularity)
        if source.clamp_min is not None:
            alpha = alpha.clamp_min(source.clamp_min)
        return (alpha * base + (1 - alpha) * other).to(tensor.dtype)
    return _adain(tensor[rows[source.source]].float(), tensor[rows[source.reference]].float(), source.eps).to(
        tensor.dtype
    )


class RuleController:
    """Applies rules at the control seam; with no rule for a site it is the identity (one kernel call)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        for i, a in enumerate(self.rules):
            for b in self.rules[i + 1 :]:
                layers_meet = a.layers is None or b.layers is None or bool(a.layers & b.layers)
                if a.target == b.target and a.scales & b.scales and layers_meet:
                    raise ValueError(
                        f"rules {a.name} and {b.name} both rewrite path {a.target!r} "
                        f"at scales {sorted(a.scales & b.scales)}"
                    )

    def last_scale_read(self, path: str) -> int | None:
        """The last scale at which a rule reads ``path``; after it the path may stop running."""
        scales = [max(r.scales) for r in self.rules if r.scales and path in r.paths_read()]
        return max(scales) if scales else None

    def __call__(
        self,
        site: AttnSite,
        q_BHLc: torch.Tensor,
        k_BHKc: torch.Tensor,
        v_BHKc: torch.Tensor,
        bias: torch.Tensor | None,
        attend: AttendFn,
    ) -> torch.Tensor:
        active = [r for r in self.rules if r.applies(site)]
        if not active:
            return attend(q_BHLc, k_BHKc, v_BHKc, bias)
        if site.kind == "self" and bias is not None:
            raise ValueError("attention rules apply to scale-by-scale (cached) generation only")
        o = attend(q_BHLc, k_BHKc, v_BHKc, bias)
        for rule in active:
            for uncond in _halves(site.layout, rule):
                rows = {p: site.layout.rows(p, uncond=uncond) for p in site.layout.paths}
                missing = rule.paths_read() - set(rows)
                if missing:
                    raise ValueError(
                        f"rule {rule.name} at scale {site.scale} reads pruned path(s) {sorted(missing)}"
                    )
                q = resolve(rule.q, q_BHLc, rows)
                k = torch.cat([resolve(s, k_BHKc, rows) for s in rule.k], dim=2)
                v = torch.cat([resolve(s, v_BHKc, rows) for s in rule.v], dim=2)
                # a cross rule's keys are caption tokens: each source keeps its own rows' padding mask
                mask = None if bias is None else torch.cat([resolve(s, bias, rows) for s in rule.k], dim=-1)
                o[rows[rule.target]] = attend(q, k, v, mask)
        return o


def _halves(layout: BatchLayout, rule: Rule) -> tuple[bool, ...]:
    if layout.cfg and rule.cfg_rows == "share":
        return (False, True)
    return (False,)
