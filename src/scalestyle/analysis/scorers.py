"""Scorers: how similar each image is to a text, higher meaning more similar.

A scorer is any ``Callable[[list[Image], list[str]], list[float]]`` (one score per image, image i judged
against text i); NaN means "this scorer cannot judge that text" (a world classifier given a prompt that
names no world content). The analyses take a name -> scorer mapping, so any metric plugs in unchanged;
:func:`clip_scorer` adapts CLIP-T from :mod:`scalestyle.metrics`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier, judge_batch

Scorer = Callable[[list[Image.Image], list[str]], list[float]]

# longest names first, so that "lightning bolt" wins over any shorter name inside it
_CONTENTS = sorted(world.CONTENTS, key=len, reverse=True)
_STYLES = sorted(world.STYLES, key=len, reverse=True)


def world_labels(prompt: str) -> tuple[str | None, str | None]:
    """(content, style) named by a procedural-world prompt such as "a star in neon style"; None where the
    prompt names none."""
    text = prompt.lower()
    content = next((c for c in _CONTENTS if re.search(rf"\b{re.escape(c)}\b", text)), None)
    style = next((s for s in _STYLES if re.search(rf"\b{re.escape(s)} style\b", text)), None)
    return content, style


def classifier_scorer(classifier: WorldClassifier, kind: Literal["content", "style"]) -> Scorer:
    """The probability the world classifier gives to the content (or style) the text names."""
    if kind not in ("content", "style"):
        raise ValueError(f"kind must be 'content' or 'style', got {kind!r}")
    which = 0 if kind == "content" else 1

    @torch.no_grad()
    def score(images: list[Image.Image], texts: list[str]) -> list[float]:
        _check_batch(images, texts)
        # the same resize as the world evaluation's judges (PIL bicubic to the classifiers' 64x64)
        batch = judge_batch(images)
        param = next(classifier.parameters())
        probs = classifier(batch.to(param.device, param.dtype)).float().softmax(1).cpu()
        out = []
        for i, text in enumerate(texts):
            label = world_labels(text)[which]
            out.append(
                float(probs[i, classifier.labels.index(label)]) if label in classifier.labels else math.nan
            )
        return out

    return score


def world_scorers(model_dir: str | Path) -> dict[str, Scorer]:
    """``p_content`` and ``p_style`` from the classifiers a demo model folder carries (none if absent)."""
    folder = Path(model_dir)
    out: dict[str, Scorer] = {}
    for kind in ("content", "style"):
        path = folder / f"{kind}_classifier.safetensors"
        if path.is_file():
            out[f"p_{kind}"] = classifier_scorer(WorldClassifier.load(path), kind)
    return out


def clip_scorer(source: str | Path, *, device: str | torch.device | None = None) -> Scorer:
    """CLIP-T, the cosine of CLIP image and text embeddings (:class:`scalestyle.metrics.CLIPScorer`), from
    a local CLIP folder (model, tokenizer, image processor) or a hub id."""
    from scalestyle.metrics import CLIPScorer, pil_to_batch

    clip = CLIPScorer.from_pretrained(source, device=device)

    def score(images: list[Image.Image], texts: list[str]) -> list[float]:
        _check_batch(images, texts)
        # CLIP's own processor resizes every image; the common size only makes them one batch tensor
        w, h = images[0].size
        return [float(x) for x in clip.clip_t(pil_to_batch(images, size_hw=(h, w)), texts)]

    return score


def score_all(
    scorers: Mapping[str, Scorer], images: list[Image.Image], texts: list[str]
) -> list[dict[str, float | None]]:
    """Every scorer on every image; NaN becomes None (JSON has no NaN)."""
    out: list[dict[str, float | None]] = [{} for _ in images]
    for name, scorer in scorers.items():
        values = scorer(images, texts)
        if len(values) != len(images):
            raise ValueError(f"scorer {name!r} returned {len(values)} scores for {len(images)} images")
        for row, value in zip(out, values, strict=True):
            row[name] = None if value is None or math.isnan(float(value)) else float(value)
    return out


def _check_batch(images: list[Image.Image], texts: list[str]) -> None:
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")


def analysis_scorers(
    model_dir: str | Path | None, *, clip: str | Path | None = None, device: str | torch.device | None = None
) -> dict[str, Scorer]:
    """The scorers an analysis run gets: the world classifiers of ``model_dir`` (None: none) and CLIP-T
    from ``clip`` (a local folder or hub id; None: none)."""
    scorers: dict[str, Scorer] = {}
    if model_dir is not None and Path(model_dir).is_dir():
        scorers.update(world_scorers(model_dir))
    if clip is not None:
        scorers["clip"] = clip_scorer(clip, device=device)
    return scorers
