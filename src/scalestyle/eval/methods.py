"""The methods an evaluation compares, in one place: name -> :class:`Method`.

Every method is called as ``method(pipe, request)`` with a :class:`Request` (prompts, reference image,
seed, sampling, an optional per-scale callback) and returns one PIL image; the request's ``prompt`` is the
protocol's full generation prompt ("a star in crayon style"; FineStyle's "A cat, animals, in watercolor
painting style"), None meaning ``"<content_prompt> in <style_prompt>"``.

- ``plain``: the content prompt alone (what the model draws with no style asked for).
- ``prompt-only``: the generation prompt, the style given in words only, no reference image.
- ``stylealigned``: StyleAligned shared attention (Hertz, Voynov, Fruchter & Cohen-Or 2024, "Style
  Aligned Image Generation via Shared Attention", CVPR) carried over to next-scale prediction: at every
  scale and layer the generation path attends with its AdaIN-normalised queries over
  ``[AdaIN(K_gen); K_ref]`` and values ``[V_gen; V_ref]``, AdaIN taking the reference's per-channel mean
  and std over the sequence; the reference path is teacher-forced with the reference image's bits, as
  the style path of our method. AdaIN uses the biased std (over one token, the start scale, it is 0 and
  the normalised tensor is the reference's mean).
- ``a``..``d``: the ablations of our method (:meth:`StyleConfig.ablation`, the paper's Table 2); ``d``
  is the full method. (a) uses no reference at all and equals ``prompt-only``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from scalestyle.config import SamplingConfig
from scalestyle.method.rules import AdaIN, From, Rule, RuleController
from scalestyle.method.style import StyleConfig, StylePipeline
from scalestyle.pipeline import Pipeline
from scalestyle.sampling import PathPlan, ScaleEvent
from scalestyle.schedules import Schedule


@dataclass(frozen=True)
class Request:
    """What one image of an evaluation is made from."""

    content_prompt: str
    style_prompt: str
    ref_image: Image.Image | None
    seed: int
    sampling: SamplingConfig
    prompt: str | None = None
    on_scale: Callable[[ScaleEvent], None] | None = None
    # the reference's object mask where the protocol knows it (StyleAR's SE tokens read it)
    ref_mask: np.ndarray | None = field(default=None, compare=False)

    @property
    def generation_prompt(self) -> str:
        """``prompt`` when given, else ``"<content> in <style>"`` (as :class:`StylePipeline` forms its
        generation path's caption)."""
        return self.prompt or f"{self.content_prompt} in {self.style_prompt}"

    @property
    def seeded_sampling(self) -> SamplingConfig:
        """The sampling settings with this request's seed."""
        return replace(self.sampling, seed=self.seed)


MethodFn = Callable[[Pipeline, Request], Image.Image]


@dataclass(frozen=True)
class Method:
    """A named generation method. ``settings`` (JSON-able) go into the evaluation's config hash;
    ``reads_style`` False means the output does not depend on the style or reference (``plain``), so one
    image serves every style."""

    name: str
    run: MethodFn
    settings: Mapping[str, Any]
    reads_style: bool = True
    uses_reference: bool = True

    def __call__(self, pipe: Pipeline, request: Request) -> Image.Image:
        if self.uses_reference and request.ref_image is None:
            raise ValueError(f"method {self.name!r} needs a style reference image")
        return self.run(pipe, request)


def text_only(with_style: bool) -> MethodFn:
    """Plain generation: the content prompt alone (``with_style`` False) or the full generation prompt,
    the style in words only (True); no reference image either way."""

    def run(pipe: Pipeline, request: Request) -> Image.Image:
        text = request.generation_prompt if with_style else request.content_prompt
        return pipe(text, sampling=request.seeded_sampling, on_scale=request.on_scale).images[0]

    return run


def ours(style: StyleConfig) -> MethodFn:
    """Our method with ``style`` (an ablation or any other setting)."""

    def run(pipe: Pipeline, request: Request) -> Image.Image:
        out = StylePipeline(pipe)(
            request.content_prompt,
            request.ref_image,
            style_prompt=request.style_prompt,
            gen_prompt=request.prompt,
            style=style,
            sampling=request.seeded_sampling,
            on_scale=request.on_scale,
        )
        return out.images[0]

    return run


@dataclass(frozen=True)
class StyleAlignedConfig:
    """StyleAligned shared attention as rules. ``adain_queries``/``adain_keys``: normalise the generation
    path's queries/keys to the reference's statistics (the paper's full method does both);
    ``scales``: where to share (None: every scale); ``cfg_rows``: as :class:`Rule`."""

    adain_queries: bool = True
    adain_keys: bool = True
    scales: tuple[int, ...] | None = None
    cfg_rows: Literal["share", "plain"] = "share"
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.scales is not None and any(s < 0 for s in self.scales):
            raise ValueError(f"scales must be >= 0, got {self.scales}")
        if self.cfg_rows not in ("share", "plain"):
            raise ValueError(f"cfg_rows must be 'share' or 'plain', got {self.cfg_rows!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")

    def rules(self, schedule: Schedule) -> list[Rule]:
        scales = set(range(schedule.num_scales)) if self.scales is None else set(self.scales)
        if scales and max(scales) >= schedule.num_scales:
            raise ValueError(f"scales {sorted(scales)} reach beyond the schedule's {schedule.num_scales}")
        if not scales:
            return []
        norm = AdaIN("gen", "sty", self.eps)
        return [
            Rule(
                frozenset(scales),
                "gen",
                norm if self.adain_queries else From("gen"),
                (norm if self.adain_keys else From("gen"), From("sty")),
                (From("gen"), From("sty")),
                cfg_rows=self.cfg_rows,
                name="stylealigned",
            )
        ]


def stylealigned(config: StyleAlignedConfig | None = None) -> MethodFn:
    """The StyleAligned baseline: a "sty" path teacher-forced with the reference's bits under the style
    prompt, and the "gen" path under the generation prompt sharing its attention."""
    cfg = config or StyleAlignedConfig()

    @torch.inference_mode()
    def run(pipe: Pipeline, request: Request) -> Image.Image:
        if request.ref_image is None:
            raise ValueError("stylealigned needs a style reference image")
        sampling = request.seeded_sampling
        schedule = pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn)
        ref_bits = pipe.reference_tokens(request.ref_image, schedule)
        text = pipe.encode_text([request.style_prompt, request.generation_prompt])
        plans = [PathPlan("sty", text.rows([0]), given_tokens=ref_bits), PathPlan("gen", text.rows([1]))]
        controller = RuleController(cfg.rules(schedule))
        summed = pipe.run_paths(plans, sampling, schedule, controller, request.on_scale)["gen"]
        return pipe.decode(summed)[0]

    return run


ABLATIONS = ("a", "b", "c", "d")


def _registry() -> dict[str, Method]:
    table = {
        "plain": Method(
            "plain", text_only(False), {"kind": "plain"}, reads_style=False, uses_reference=False
        ),
        "prompt-only": Method("prompt-only", text_only(True), {"kind": "prompt-only"}, uses_reference=False),
        "stylealigned": Method(
            "stylealigned",
            stylealigned(),
            {"kind": "stylealigned", **asdict(StyleAlignedConfig())},
        ),
    }
    for name in ABLATIONS:
        style = StyleConfig.ablation(name)
        table[name] = Method(
            name,
            ours(style),
            {"kind": "ours", "ablation": name, **asdict(style)},
            # (a) reads no reference (no init, no sharing): it is the generation prompt alone
            uses_reference=name != "a",
        )
    return table


METHODS: Mapping[str, Method] = _registry()
"""Every method by name: plain, prompt-only, stylealigned, a, b, c, d (= ours)."""

DEFAULT_METHODS: tuple[str, ...] = tuple(METHODS)


def get_methods(names: str | tuple[str, ...] | list[str]) -> dict[str, Method]:
    """Methods by name ("plain,d" or a sequence); "ours" is accepted for "d"."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [n.strip() for n in names]
    items = ["d" if n == "ours" else n for n in items if n]
    if not items:
        raise ValueError(f"no method given; choose from {list(METHODS)}")
    unknown = [n for n in items if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)} (or 'ours' for 'd')")
    return {n: METHODS[n] for n in dict.fromkeys(items)}
