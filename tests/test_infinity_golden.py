"""Infinity's outputs are bit-identical across the backbone-agnostic refactor of the scale loop.

``data/infinity_golden.json`` holds digests of the summed codes and of the RGB pixels that the loop typed to
Infinity produced (commit 62d2923, torch 2.13 CPU, one thread) for plain generation with and without CFG
and with a negative prompt, the style method (ablations, both step conventions, text-only), the
StyleAligned baseline, both step-injection analyses and a tiny random-weight model. The same calls through
the generic loop must give the same digests. The image digests were re-recorded when the demo's decoder
was retrained with the pixel norm (train/demo_refresh.py): every codes digest stayed equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from scalestyle.analysis.injection import generate_step_injection
from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.eval.methods import METHODS, Request
from scalestyle.method.style import StyleConfig, StylePipeline
from scalestyle.pipeline import GenerationOutput, Pipeline

GOLDEN = json.loads((Path(__file__).parent / "data" / "infinity_golden.json").read_text())


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def _image_digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()[:16]


def _record(out: GenerationOutput) -> dict[str, Any]:
    return {"codes": _digest(out.summed_codes_BdHW), "images": [_image_digest(i) for i in out.images]}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo(one_thread: None) -> Pipeline:
    return Pipeline.load(device="cpu")


REF = world.render("house", "crayon", 7).image


def test_plain_generation_is_unchanged(demo: Pipeline) -> None:
    two = demo(
        [world.caption("star", "neon"), world.caption("heart", "blueprint")], sampling=SamplingConfig()
    )
    assert _record(two) == GOLDEN["plain_cfg3_two_rows"]
    no_cfg = demo(world.caption("fish", "neon"), sampling=SamplingConfig(seed=1, cfg=1.0))
    assert _record(no_cfg) == GOLDEN["plain_cfg1"]
    negative = demo(
        world.caption("star", "neon"),
        sampling=SamplingConfig(seed=2),
        negative_prompt=world.caption("heart", "neon"),
    )
    assert _record(negative) == GOLDEN["plain_negative"]


def test_style_method_is_unchanged(demo: Pipeline) -> None:
    styler = StylePipeline(demo)
    tree, crayon = world.content_caption("tree"), world.style_caption("crayon")
    assert _record(styler(tree, REF, style_prompt=crayon)) == GOLDEN["stylize_d"]
    b_a = StyleConfig(init=True, ksas=False, aqs=False, convention="A")
    assert (
        _record(styler(tree, REF, style_prompt=crayon, style=b_a, sampling=SamplingConfig(seed=1)))
        == (GOLDEN["stylize_b_A"])
    )
    text_only = styler(tree, None, style_prompt=world.style_caption("neon"), sampling=SamplingConfig(seed=3))
    assert _record(text_only) == GOLDEN["stylize_text_only"]


@pytest.mark.slow  # over 5 s on 2 cores: the CI's slow step
def test_baseline_and_analyses_are_unchanged(demo: Pipeline) -> None:
    request = Request(world.content_caption("tree"), world.style_caption("crayon"), REF, 4, SamplingConfig())
    assert [_image_digest(METHODS["stylealigned"](demo, request))] == GOLDEN["stylealigned"]["images"]
    a, b = world.caption("star", "neon"), world.caption("heart", "neon")
    for mode, scale in (("handoff", 2), ("cross", 3)):
        out = generate_step_injection(demo, a, b, [scale], sampling=SamplingConfig(seed=5), mode=mode)
        assert {k: _digest(v) for k, v in sorted(out.items())} == GOLDEN[mode]


def test_random_weight_model_is_unchanged(one_thread: None) -> None:
    tiny = Pipeline.load("tiny", random_weights=True, device="cpu", seed=3)
    out = tiny(["a star", "a cat in neon style"], sampling=SamplingConfig(seed=6, top_k=0, top_p=1.0))
    assert _record(out) == GOLDEN["tiny_random"]
