"""`scalestyle train stylear` and `scalestyle stylize --method stylear` on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalestyle.cli import main
from scalestyle.data import procedural as world
from scalestyle.metadata import read_png_metadata
from scalestyle.models.stylear import StyleARAdapter
from scalestyle.stylear_cli import parse_mix, parse_weighted_style


def test_style_weights_and_mix_parse_and_refuse_bad_values() -> None:
    assert parse_weighted_style("a.png") == ("a.png", 1.0)
    assert parse_weighted_style("a.png:0.7") == ("a.png", 0.7)
    assert parse_weighted_style("C:/refs/a.png") == ("C:/refs/a.png", 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        parse_weighted_style("a.png:-1")
    assert parse_mix("1:3") == (1, 3) and parse_mix("1:0") == (1, 0)
    for bad in ("0:0", "3", "a:b", "-1:2"):
        with pytest.raises(ValueError, match="--mix"):
            parse_mix(bad)


@pytest.mark.slow  # trains two steps and generates through the CLI
def test_train_then_stylize_through_the_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter_dir = tmp_path / "adapter"
    train = [
        "train",
        "stylear",
        "--quick",
        "--quiet",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(adapter_dir),
    ]
    train += ["--work-dir", str(tmp_path / "work"), "--queries", "4", "--depth", "1", "--width", "32"]
    train += ["--heads", "2", "--lora-rank", "2"]
    assert main(train) == 0
    adapter = StyleARAdapter.load(adapter_dir)
    assert adapter.cfg.num_queries == 4 and adapter.cfg.encoder == "vae" and adapter.lora
    a, b = world.render("star", "neon", 0), world.render("fish", "graffiti", 1)
    a.image.save(tmp_path / "a.png")
    b.image.save(tmp_path / "b.png")
    Image.fromarray(np.asarray(a.mask, dtype=np.uint8) * 255).save(tmp_path / "mask.png")
    a_png, b_png = str(tmp_path / "a.png"), str(tmp_path / "b.png")

    def stylize(*flags: str) -> int:
        base = [
            "stylize",
            "--method",
            "stylear",
            "--adapter",
            str(adapter_dir),
            "--model",
            str(tiny_model_dir),
        ]
        return main([*base, "--prompt", "a star", "--quiet", *flags])

    out = tmp_path / "out.png"
    assert stylize("--style", f"{a_png}:0.7", "--style", f"{b_png}:0.3", "--out", str(out)) == 0
    rows = json.loads(read_png_metadata(out)["style_images"])
    assert read_png_metadata(out)["method"] == "stylear" and [r["weight"] for r in rows] == [0.7, 0.3]
    masked = tmp_path / "masked.png"
    assert stylize("--style", a_png, "--style-mask", str(tmp_path / "mask.png"), "--out", str(masked)) == 0
    assert json.loads(read_png_metadata(masked)["style_images"])[0]["mask"] is True
    # a missing adapter is one line, before any model loads
    assert (
        stylize("--style", a_png, "--adapter", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")) != 0
    )
