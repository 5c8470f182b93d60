from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalestyle.attention import AttnSite, BatchLayout, sdpa
from scalestyle.config import SamplingConfig
from scalestyle.method.rules import CosBlend, From, Rule, RuleController
from scalestyle.method.style import StyleConfig, StylePipeline
from scalestyle.pipeline import Pipeline
from scalestyle.sampling import ScaleEvent
from scalestyle.schedules import get_schedule


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


@pytest.fixture(scope="module")
def style_pipe(tiny_model_dir: Path) -> StylePipeline:
    return StylePipeline(Pipeline.load(tiny_model_dir, device="cpu"))


@pytest.fixture(scope="module")
def reference() -> Image.Image:
    rng = np.random.default_rng(0)
    stripes = (np.indices((64, 64))[1] // 4 % 2) * 200
    img = np.stack([stripes, rng.integers(0, 255, (64, 64)), 255 - stripes], -1).astype(np.uint8)
    return Image.fromarray(img)


def run(
    pipe: StylePipeline, ref: Image.Image | None, style: StyleConfig, seed: int = 0, **kw: object
) -> torch.Tensor:
    out = pipe(
        "a star", ref, style_prompt="neon style", style=style, sampling=SamplingConfig(seed=seed), **kw
    )  # type: ignore[arg-type]
    return out.summed_codes_BdHW


LAYOUT = BatchLayout(("con", "sty", "gen"), 2, cfg=True)


def qkv(lq: int = 4, lk: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (LAYOUT.batch, 2, lq, 8)
    return (
        torch.randn(shape, generator=g),
        torch.randn((*shape[:2], lk, 8), generator=g),
        torch.randn((*shape[:2], lk, 8), generator=g),
    )


def test_ksas_rule_follows_its_formula_in_both_cfg_halves() -> None:
    rule = Rule(frozenset({1}), "gen", From("con"), (From("con"), From("sty")), (From("gen"), From("sty")))
    q, k, v = qkv()
    out = RuleController([rule])(AttnSite(0, 1, "self", LAYOUT), q, k, v, None, sdpa)
    for uncond in (False, True):
        r = {p: LAYOUT.rows(p, uncond=uncond) for p in LAYOUT.paths}
        want = naive_attention(
            q[r["con"]], torch.cat((k[r["con"]], k[r["sty"]]), 2), torch.cat((v[r["gen"]], v[r["sty"]]), 2)
        )
        torch.testing.assert_close(out[r["gen"]], want, atol=1e-5, rtol=0)
        for p in ("con", "sty"):  # the other paths attend as usual
            torch.testing.assert_close(
                out[r[p]], naive_attention(q[r[p]], k[r[p]], v[r[p]]), atol=1e-5, rtol=0
            )


def test_aqs_blends_queries_by_their_cosine_per_token_and_head() -> None:
    rule = Rule(frozenset({3}), "gen", CosBlend("gen", "con"), (From("gen"),), (From("gen"),))
    q, k, v = qkv()
    out = RuleController([rule])(AttnSite(1, 3, "self", LAYOUT), q, k, v, None, sdpa)
    g, c = q[LAYOUT.rows("gen")], q[LAYOUT.rows("con")]
    alpha = (g * c).sum(-1, keepdim=True) / (g.norm(dim=-1, keepdim=True) * c.norm(dim=-1, keepdim=True))
    want = naive_attention(alpha * g + (1 - alpha) * c, k[LAYOUT.rows("gen")], v[LAYOUT.rows("gen")])
    torch.testing.assert_close(out[LAYOUT.rows("gen")], want, atol=1e-5, rtol=0)


def test_rules_leave_other_scales_cross_attention_and_plain_cfg_rows_alone() -> None:
    rule = Rule(frozenset({1}), "gen", From("con"), (From("con"),), (From("gen"),), cfg_rows="plain")
    q, k, v = qkv()
    ctrl = RuleController([rule])
    for site in (AttnSite(0, 2, "self", LAYOUT), AttnSite(0, 1, "cross", LAYOUT)):
        assert torch.equal(ctrl(site, q, k, v, None, sdpa), sdpa(q, k, v, None))
    out = ctrl(AttnSite(0, 1, "self", LAYOUT), q, k, v, None, sdpa)
    unc = LAYOUT.rows("gen", uncond=True)
    assert torch.equal(out[unc], sdpa(q, k, v, None)[unc])


def test_identity_controller_gives_the_bit_identical_image(style_pipe: StylePipeline) -> None:
    pipe = style_pipe.pipe
    plain = pipe("a star in neon style", sampling=SamplingConfig(seed=3)).summed_codes_BdHW
    identity = Rule(frozenset(range(7)), "gen", From("gen"), (From("gen"),), (From("gen"),))
    with pipe.transformer.control.install(RuleController([identity])):
        controlled = pipe("a star in neon style", sampling=SamplingConfig(seed=3)).summed_codes_BdHW
    assert torch.equal(plain, controlled)
    assert pipe.transformer.control.controller is None  # restored


def test_control_slot_restores_after_an_error(style_pipe: StylePipeline) -> None:
    slot = style_pipe.pipe.transformer.control
    with pytest.raises(RuntimeError), slot.install(RuleController([])):
        raise RuntimeError("boom")
    assert slot.controller is None


def test_baseline_ablation_equals_plain_generation_of_the_generation_prompt(
    style_pipe: StylePipeline, reference: Image.Image
) -> None:
    plain = style_pipe.pipe("a star in neon style", sampling=SamplingConfig(seed=5)).summed_codes_BdHW
    assert torch.equal(run(style_pipe, reference, StyleConfig.ablation("a"), seed=5), plain)


def test_each_mechanism_changes_the_output(style_pipe: StylePipeline, reference: Image.Image) -> None:
    outs = {name: run(style_pipe, reference, StyleConfig.ablation(name)) for name in "abcd"}
    for x, y in ("ab", "bc", "cd"):
        assert not torch.equal(outs[x], outs[y]), f"ablation {y} did not change the image of {x}"


def test_ablation_flags_select_exactly_their_rules() -> None:
    s = get_schedule(1.0, "0.06M")
    names = {a: [r.name for r in StyleConfig.ablation(a).rules(s)] for a in "abcd"}
    assert names == {"a": [], "b": [], "c": ["ksas"], "d": ["ksas", "aqs"]}
    inits = {a: StyleConfig.ablation(a).num_init_scales(s) for a in "abcd"}
    assert inits == {"a": 0, "b": 2, "c": 2, "d": 2}
    a = StyleConfig(convention="A")
    assert a.num_init_scales(s) == 1 and a.key_scales(s) == {1, 2} and a.fine_scales(s) == {3, 4, 5, 6}
    # the default B: the paper's fine steps 4..7, cut to the demo's 7 scales; all of them at 1024²
    assert StyleConfig().key_scales(s) == {2, 3} and StyleConfig().fine_scales(s) == {4, 5, 6}
    assert StyleConfig().fine_scales(get_schedule(1.0, "1M")) == {4, 5, 6, 7}
    with pytest.raises(ValueError, match="fine_steps"):  # an explicit stage must fit the schedule
        StyleConfig(fine_steps=(4, 5, 6, 7)).fine_scales(s)


def test_feature_init_gives_the_generation_path_the_reference_bits(
    style_pipe: StylePipeline, reference: Image.Image
) -> None:
    events: list[ScaleEvent] = []
    run(style_pipe, reference, StyleConfig(convention="B", fine_steps=(4, 5, 6)), on_scale=events.append)
    ref = style_pipe.pipe.reference_tokens(reference, get_schedule(1.0, "0.06M"))
    for si in range(2):
        assert torch.equal(events[si].tokens["gen"], ref[si]) and torch.equal(
            events[si].tokens["sty"], ref[si]
        )
    assert not torch.equal(events[2].tokens["gen"], ref[2])


def test_pruning_is_bit_identical_and_drops_paths(style_pipe: StylePipeline, reference: Image.Image) -> None:
    events: list[ScaleEvent] = []
    pruned = run(style_pipe, reference, StyleConfig(), seed=2, on_scale=events.append)
    unpruned = run(style_pipe, reference, StyleConfig(prune=False), seed=2)
    assert torch.equal(pruned, unpruned)
    # style is read up to the last key scale (3), content up to the last fine scale (6 = last)
    assert [e.layout.paths for e in events[:4]] == [("con", "sty", "gen")] * 4
    assert events[4].layout.paths == ("con", "gen")


def test_same_seed_same_image_and_text_only_mode(style_pipe: StylePipeline, reference: Image.Image) -> None:
    assert torch.equal(
        run(style_pipe, reference, StyleConfig(), seed=4), run(style_pipe, reference, StyleConfig(), seed=4)
    )
    text_only = run(style_pipe, None, StyleConfig(), seed=4)
    assert not torch.equal(text_only, run(style_pipe, reference, StyleConfig(), seed=4))


@pytest.mark.parametrize(
    "cfg",
    [
        {"key_steps": (0,)},
        {"key_steps": (1,), "convention": "A"},
        {"fine_steps": (9,)},
        {"convention": "C"},
        {"ksas_k": ("content",)},
    ],
)
def test_bad_stage_settings_raise(
    cfg: dict[str, object], style_pipe: StylePipeline, reference: Image.Image
) -> None:
    with pytest.raises(ValueError):
        style = replace(StyleConfig(), **cfg)  # type: ignore[arg-type]
        run(style_pipe, reference, style)


def test_step_numbering_of_both_conventions() -> None:
    assert StyleConfig(convention="A").to_scale(2) == 1 and StyleConfig().to_scale(2) == 2
    assert math.isclose(len(get_schedule(1.0, "0.06M").grids), 7)
