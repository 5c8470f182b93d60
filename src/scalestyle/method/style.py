"""Training-free style personalization on a scale-wise AR model: three paths, Feature Initialization, Key
Stage Attention Sharing (KSAS) and Adaptive Query Sharing (AQS).

Three paths run in one batch, each with its own caption: content ("<content>"), style ("<style>", teacher-
forced with the reference image's own bits so its q, k, v are the reference's) and generation
("<content> in <style>"). Feature Initialization gives the generation path the reference's bits at the
first scales; at the key stages its self-attention takes the content path's queries over the content and
style keys with its own and the style values; at the fine stages its queries blend with the content
queries by their cosine similarity. Settled readings of the paper (``shared/research/method_notes.md``):

- Steps: convention "B" (default) takes the paper's steps as upstream's 0-based loop index, the start
  token being step 0, so S_key = {2, 3} and S_fine = {4..7} are scale indices {2, 3} and {4..7}; convention
  "A" numbers all scales from 1 (S_key = scale indices {1, 2}). B is the default on evidence: the step
  injection analysis finds the content decided at the 4x4 grid, which is the paper's "step 2" only under
  B, and B gives twice A's style accuracy on the demo (``docs/analysis.md``, the demo's model card).
  ``fine_steps=None`` (default) is the paper's {4..7} cut to the steps the schedule has, so the demo's
  7-scale schedule runs {4, 5, 6}; an explicit tuple must fit the schedule.
- Feature Initialization replaces the generation path's *inputs* at steps <= min(S_key): the input of
  scale j is made from the bits of scales < j, so the bits of scales before the first key scale are the
  reference's (one scale under A, two under B). ``init_scales`` overrides the count.
- KSAS is implemented as written (q from content, keys [K_con; K_sty], values [V_gen; V_sty]); each
  source is a setting.
- AQS alpha is per token and head by default, unclamped; granularity and clamp are settings.
- CFG: unconditional rows share like conditional ones, pairing uncond rows with uncond rows, so that the
  guidance direction isolates the caption's effect under the same attention edit ("plain" leaves them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from PIL import Image

from scalestyle.config import SamplingConfig
from scalestyle.images import load_image
from scalestyle.method.rules import CosBlend, From, Rule, RuleController
from scalestyle.models.var import VAR, ClassLabels
from scalestyle.pipeline import GenerationOutput, Pipeline
from scalestyle.sampling import PathPlan, ScaleEvent
from scalestyle.schedules import Schedule

PATHS = ("con", "sty", "gen")
PAPER_FINE_STEPS = (4, 5, 6, 7)


@dataclass(frozen=True)
class StyleConfig:
    key_steps: tuple[int, ...] = (2, 3)
    fine_steps: tuple[int, ...] | None = None
    convention: Literal["A", "B"] = "B"
    init: bool = True
    ksas: bool = True
    aqs: bool = True
    init_scales: int | None = None
    ksas_q: str = "con"
    ksas_k: tuple[str, ...] = ("con", "sty")
    ksas_v: tuple[str, ...] = ("gen", "sty")
    aqs_granularity: Literal["token", "head", "layer"] = "token"
    aqs_clamp_min: float | None = None
    cfg_rows: Literal["share", "plain"] = "share"
    prune: bool = True

    def __post_init__(self) -> None:
        if self.convention not in ("A", "B"):
            raise ValueError(f"convention must be 'A' or 'B', got {self.convention!r}")
        lowest = 1 if self.convention == "A" else 0
        for name in ("key_steps", "fine_steps"):
            steps = getattr(self, name) or ()
            if any(s < lowest + 1 for s in steps):
                raise ValueError(
                    f"{name} {steps}: steps must be >= {lowest + 1} (the start token has no image)"
                )
        for name in ("ksas_q", *(f"ksas_{x}" for x in "kv")):
            value = getattr(self, name)
            for p in (value,) if isinstance(value, str) else value:
                if p not in PATHS:
                    raise ValueError(f"{name}: path {p!r} is not one of {PATHS}")
        if self.init_scales is not None and self.init_scales < 0:
            raise ValueError(f"init_scales must be >= 0, got {self.init_scales}")

    @classmethod
    def ablation(cls, name: str) -> StyleConfig:
        """Table 2 of the paper: (a) baseline, (b) +Init, (c) +Init+KSAS, (d) full (+AQS)."""
        table = {
            "a": cls(init=False, ksas=False, aqs=False),
            "b": cls(init=True, ksas=False, aqs=False),
            "c": cls(init=True, ksas=True, aqs=False),
            "d": cls(),
        }
        if name not in table:
            raise ValueError(f"ablation must be one of {sorted(table)}, got {name!r}")
        return table[name]

    def to_scale(self, step: int) -> int:
        return step - 1 if self.convention == "A" else step

    def key_scales(self, schedule: Schedule) -> frozenset[int]:
        return self._scales(self.key_steps, schedule, "key_steps")

    def fine_scales(self, schedule: Schedule) -> frozenset[int]:
        if self.fine_steps is None:
            return frozenset(s for s in map(self.to_scale, PAPER_FINE_STEPS) if s < schedule.num_scales)
        return self._scales(self.fine_steps, schedule, "fine_steps")

    def _scales(self, steps: Sequence[int], schedule: Schedule, name: str) -> frozenset[int]:
        scales = frozenset(self.to_scale(s) for s in steps)
        if scales and max(scales) >= schedule.num_scales:
            raise ValueError(
                f"{name} {tuple(steps)} reach beyond the schedule's {schedule.num_scales} scales "
                f"(convention {self.convention})"
            )
        return scales

    def num_init_scales(self, schedule: Schedule) -> int:
        if not self.init:
            return 0
        if self.init_scales is not None:
            if self.init_scales > schedule.num_scales:
                raise ValueError(
                    f"init_scales {self.init_scales} > the schedule's {schedule.num_scales} scales"
                )
            return self.init_scales
        key = self.key_scales(schedule)
        return min(key) if key else 0

    def rules(self, schedule: Schedule) -> list[Rule]:
        rules = []
        if self.ksas and self.key_steps:
            rules.append(
                Rule(
                    self.key_scales(schedule),
                    "gen",
                    From(self.ksas_q),
                    tuple(From(p) for p in self.ksas_k),
                    tuple(From(p) for p in self.ksas_v),
                    cfg_rows=self.cfg_rows,
                    name="ksas",
                )
            )
        if self.aqs and self.fine_scales(schedule):
            q = CosBlend("gen", "con", self.aqs_granularity, self.aqs_clamp_min)
            rules.append(
                Rule(
                    self.fine_scales(schedule),
                    "gen",
                    q,
                    (From("gen"),),
                    (From("gen"),),
                    cfg_rows=self.cfg_rows,
                    name="aqs",
                )
            )
        return rules


@dataclass(frozen=True)
class StylePrompts:
    content: str
    style: str
    generation: str


DEFAULT_STYLE_PROMPT = "style"
"""The style prompt when none is given (a reference image must then carry the style): the one word every
style caption shares, so the style path reads "style" and the generation path "<prompt> in style". On the
demo it transfers the style better than the reference's own style words (21.4% style accuracy against 17.0%,
content 50.0% against 52.7%, 112 images each; an empty caption gives 15.2% and 50.0%):
``tools/style_prompt_default.py``, ``docs/robustness.md``."""


def make_prompts(
    prompt: str, style_prompt: str | None, *, content_prompt: str | None, gen_prompt: str | None
) -> StylePrompts:
    """The three paths' captions; ``style_prompt`` None is :data:`DEFAULT_STYLE_PROMPT`."""
    if not prompt.strip():
        raise ValueError("prompt must be non-empty text")
    if style_prompt is None:
        style_prompt = DEFAULT_STYLE_PROMPT
    if not style_prompt.strip():
        raise ValueError("style_prompt must be non-empty text (e.g. 'watercolor painting style') or None")
    return StylePrompts(content_prompt or prompt, style_prompt, gen_prompt or f"{prompt} in {style_prompt}")


class StylePipeline:
    """Style personalization with a loaded :class:`Pipeline` (same model, same sampling settings).

    On a text model the three paths take captions (content, style, "<content> in <style>"); on a
    class-conditional model (VAR) the content and generation paths take ``class_label`` and the style
    path ``style_class`` (None: the null class, i.e. no claim about what the reference shows), the style
    path being teacher-forced with the reference's codebook indices as it is with its bits on Infinity."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | None = None,
        style_image: Image.Image | str | os.PathLike[str] | None = None,
        *,
        style_prompt: str | None = None,
        content_prompt: str | None = None,
        gen_prompt: str | None = None,
        class_label: int | None = None,
        style_class: int | None = None,
        style: StyleConfig | None = None,
        sampling: SamplingConfig | None = None,
        on_scale: Callable[[ScaleEvent], None] | None = None,
    ) -> GenerationOutput:
        style = style or StyleConfig()
        sampling = sampling or SamplingConfig()
        if isinstance(style_image, str | os.PathLike):
            style_image = load_image(style_image)
        elif style_image is not None and not isinstance(style_image, Image.Image):
            raise TypeError(
                f"style_image must be a PIL image, a path or None, got {type(style_image).__name__}"
            )
        if style_image is None and style.init:
            # text-only style-aligned mode: there are no reference features to initialise from
            style = replace(style, init=False)
        if self.pipe.conditioning == "class":
            if prompt is not None or style_prompt is not None or content_prompt or gen_prompt:
                raise ValueError(
                    f"{self.pipe.model_name} is class-conditional: give class_label, not prompts"
                )
            if class_label is None:
                raise ValueError(f"{self.pipe.model_name} is class-conditional: give class_label")
            conds: tuple[Any, Any, Any]
            conds, meta = self._class_paths(class_label, style_class)
        else:
            if class_label is not None or style_class is not None:
                raise ValueError(
                    f"{self.pipe.model_name} is a text-to-image model: give prompts, not class labels"
                )
            if prompt is None:
                raise ValueError("a text model needs the prompt")
            if style_prompt is None and style_image is None:
                raise ValueError("without a style image, give the style in words (style_prompt)")
            prompts = make_prompts(prompt, style_prompt, content_prompt=content_prompt, gen_prompt=gen_prompt)
            text = self.pipe.encode_text([prompts.content, prompts.style, prompts.generation])
            conds = (text.rows([0]), text.rows([1]), text.rows([2]))
            meta = {
                "prompt": prompts.generation,
                "content_prompt": prompts.content,
                "style_prompt": prompts.style,
            }
        schedule = self.pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn)
        controller = RuleController(style.rules(schedule))
        ref_tokens: tuple[torch.Tensor, ...] = ()
        if style_image is not None:
            ref_tokens = self.pipe.reference_tokens(style_image, schedule)
        n_init = style.num_init_scales(schedule)

        plans = [PathPlan("con", conds[0]), PathPlan("sty", conds[1], given_tokens=ref_tokens)]
        if style.prune:
            # a path no rule reads after some scale stops running there; one never read never runs
            plans = [
                replace(p, last_scale=controller.last_scale_read(p.name))
                for p in plans
                if controller.last_scale_read(p.name) is not None
            ]
        plans.append(PathPlan("gen", conds[2], given_tokens=ref_tokens[:n_init]))
        summed = self.pipe.run_paths(plans, sampling, schedule, controller, on_scale)["gen"]
        images = self.pipe.decode(summed)
        meta = {
            **meta,
            "style_image": bool(style_image is not None),
            "seed": sampling.seed,
            "model": self.pipe.model_name,
            "settings": self.pipe.settings(sampling, schedule),
            "style": asdict(style),
        }
        return GenerationOutput(images, summed, [meta])

    def _class_paths(
        self, class_label: int, style_class: int | None
    ) -> tuple[tuple[ClassLabels, ClassLabels, ClassLabels], dict[str, Any]]:
        content = self.pipe.class_labels([class_label])
        if style_class is not None:
            sty = self.pipe.class_labels([style_class])
        else:
            assert isinstance(self.pipe.transformer, VAR)  # conditioning "class"
            sty = self.pipe.transformer.null_condition(content)
        return (content, sty, content), {"class_label": class_label, "style_class": style_class}
