from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier
from scalestyle.eval.world import Judges, evaluate_world, reference_for, summarize
from scalestyle.pipeline import Pipeline


def test_reference_shows_another_content_in_the_asked_style() -> None:
    for content in world.CONTENTS[:5]:
        ref_content, img = reference_for(content, "crayon", 3)
        assert ref_content != content and img.size == (64, 64)


def test_world_evaluation_rows_and_summary(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    judges = Judges(WorldClassifier(world.CONTENTS).eval(), WorldClassifier(world.STYLES).eval())
    rows = evaluate_world(
        Pipeline.load(tiny_model_dir, device="cpu"),
        judges,
        contents=["star", "fish"],
        train_styles=["neon"],
        held_out_styles=["crayon"],
    )
    assert [r.method for r in rows] == ["plain"] * 2 + ["prompt-only", "stylize"] * 2
    summary = summarize(rows)
    assert set(summary) == {"plain", "prompt-only", "stylize"}
    assert "leakage" in summary["stylize"] and "leakage" not in summary["plain"]
    for s in summary.values():
        assert 0 <= s["content_acc"] <= 1 and 0 <= s["p_style"] <= 1


@pytest.mark.parametrize("width", [32, 8])
def test_classifier_round_trip(tmp_path: Path, width: int) -> None:
    clf = WorldClassifier(("a", "b", "c"), width=width).eval()
    clf.save(tmp_path / "c.safetensors")
    again = WorldClassifier.load(tmp_path / "c.safetensors")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert again.labels == ("a", "b", "c") and again.width == width and torch.equal(clf(x), again(x))
    with pytest.raises(ValueError, match="at least 2"):
        WorldClassifier(("a",))
