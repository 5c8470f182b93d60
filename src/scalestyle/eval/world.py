"""Ground-truth evaluation on the procedural world with the demo model's classifiers.

Plain generation: "a <content> in <style>" for training styles, judged by the content and style
classifiers. Stylization: held-out style reference images (another content, rendered in a held-out style
with evaluation seeds) and a content prompt; the output should show the prompt's content in the
reference's style. Content leakage is the share of outputs the content classifier reads as the
reference's content instead of the prompt's. The prompt-only baseline asks for the held-out style in words
("a star in crayon style") with no image: the style classifier shows how far words alone get.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier, judge_batch
from scalestyle.method.style import StyleConfig, StylePipeline
from scalestyle.pipeline import Pipeline


@dataclass(frozen=True)
class Judges:
    content: WorldClassifier
    style: WorldClassifier

    @classmethod
    def load(cls, model_dir: Path) -> Judges:
        return cls(
            WorldClassifier.load(model_dir / "content_classifier.safetensors"),
            WorldClassifier.load(model_dir / "style_classifier.safetensors"),
        )

    @torch.no_grad()
    def judge(self, images: Sequence[Image.Image]) -> tuple[list[str], list[str], torch.Tensor]:
        """(content labels, style labels, style probabilities (B, styles))."""
        batch = judge_batch(images)
        style_logits = self.style(batch)
        return (
            self.content.predict(batch),
            [self.style.labels[i] for i in style_logits.argmax(1)],
            style_logits.softmax(1),
        )


@dataclass(frozen=True)
class Row:
    method: str
    content: str
    style: str
    seed: int
    ref_content: str | None
    pred_content: str
    pred_style: str
    p_style: float
    seconds: float


def _cases(
    contents: Sequence[str], styles: Sequence[str], seeds: Sequence[int]
) -> Iterator[tuple[str, str, int]]:
    for style in styles:
        for content in contents:
            for seed in seeds:
                yield content, style, seed


def reference_sample(content: str, style: str, seed: int) -> world.Sample:
    """A held-out-style reference showing a different content than the prompt's, from evaluation seeds,
    with its object mask."""
    others = [c for c in world.CONTENTS if c != content]
    ref_content = others[(seed * 7 + len(content)) % len(others)]
    return world.render(ref_content, style, world.SPLIT_SEEDS["eval"][seed])


def reference_for(content: str, style: str, seed: int) -> tuple[str, Image.Image]:
    """The content and image of :func:`reference_sample`."""
    sample = reference_sample(content, style, seed)
    return sample.content, sample.image


def evaluate_world(
    pipe: Pipeline,
    judges: Judges,
    *,
    seeds: Sequence[int] = (0,),
    contents: Sequence[str] | None = None,
    train_styles: Sequence[str] | None = None,
    held_out_styles: Sequence[str] | None = None,
    style_config: StyleConfig | None = None,
    cfg: float = 3.0,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Plain generation on training styles, and prompt-only vs stylize on held-out styles."""
    rows: list[Row] = []
    styler = StylePipeline(pipe)

    def add(
        method: str,
        content: str,
        style: str,
        seed: int,
        image: Image.Image,
        t: float,
        ref_content: str | None = None,
    ) -> None:
        (pc,), (ps,), prob = judges.judge([image])
        row = Row(
            method, content, style, seed, ref_content, pc, ps, float(prob[0, world.STYLES.index(style)]), t
        )
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for content, style, seed in _cases(contents or world.CONTENTS, train_styles or world.TRAIN_STYLES, seeds):
        t = time.perf_counter()
        image = pipe(world.caption(content, style), sampling=SamplingConfig(cfg=cfg, seed=seed)).images[0]
        add("plain", content, style, seed, image, time.perf_counter() - t)
    for content, style, seed in _cases(
        contents or world.CONTENTS, held_out_styles or world.HELD_OUT_STYLES, seeds
    ):
        t = time.perf_counter()
        image = pipe(world.caption(content, style), sampling=SamplingConfig(cfg=cfg, seed=seed)).images[0]
        add("prompt-only", content, style, seed, image, time.perf_counter() - t)
        ref_content, ref = reference_for(content, style, seed)
        t = time.perf_counter()
        out = styler(
            world.content_caption(content),
            ref,
            style_prompt=world.style_caption(style),
            style=style_config,
            sampling=SamplingConfig(cfg=cfg, seed=seed),
        )
        add("stylize", content, style, seed, out.images[0], time.perf_counter() - t, ref_content)
    return rows


def summarize(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r.method for r in rows):
        rs = [r for r in rows if r.method == method]
        summary = {
            "n": float(len(rs)),
            "content_acc": statistics.fmean(r.pred_content == r.content for r in rs),
            "style_acc": statistics.fmean(r.pred_style == r.style for r in rs),
            "p_style": statistics.fmean(r.p_style for r in rs),
            "seconds_per_image": statistics.fmean(r.seconds for r in rs),
        }
        with_ref = [r for r in rs if r.ref_content is not None]
        if with_ref:
            summary["leakage"] = statistics.fmean(r.pred_content == r.ref_content for r in with_ref)
        out[method] = summary
    return out
