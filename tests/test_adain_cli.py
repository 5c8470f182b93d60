"""The AdaIN commands of scalestyle.adain_cli (``transfer --method adain``, ``train adain``), through the
`scalestyle` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from scalestyle.adain_weights import save_adain_dir
from scalestyle.cli import main
from scalestyle.metadata import read_png_metadata
from tests.test_adain import picture, tiny_adain


def run(argv: list[str]) -> int:
    return main(argv)


def _cli_images(tmp_path: Path) -> list[str]:
    picture(24, 20, 0).save(tmp_path / "c.png")
    picture(20, 20, 1).save(tmp_path / "s.png")
    return ["--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png"), "--quiet"]


def test_cli_transfers_with_adain(tmp_path: Path) -> None:
    folder = save_adain_dir(tmp_path / "tiny", tiny_adain(), extra={"name": "tiny-adain"})
    out = tmp_path / "o.png"
    args = ["transfer", "--method", "adain", "--model", str(folder), *_cli_images(tmp_path)]
    args += ["--out", str(out)]
    assert run(args) == 0
    meta = read_png_metadata(out)
    assert json.loads(meta["settings"])["method"] == "adain" and meta["model"] == "tiny-adain"
    with Image.open(out) as img:
        assert img.size == (24, 20) and img.mode == "RGB"
    assert run([*args, "--overwrite", "--strength", "0.5"]) == 2  # AdaIN has nothing past alpha 1
    assert run([*args, "--overwrite", "--size", "32"]) == 0
    with Image.open(out) as img:
        assert img.size == (38, 32)
    # the StyleVAR path refuses AdaIN's flag before any model loads (there is no StyleVAR folder here)
    assert run(["transfer", *_cli_images(tmp_path), "--out", str(out), "--overwrite", "--size", "32"]) == 2


@pytest.mark.slow  # accelerate's import alone takes seconds on 2 busy cores
def test_cli_trains_an_adain_that_transfers(tmp_path: Path) -> None:
    model_dir = tmp_path / "trained"
    train = ["train", "adain", "--quick", "--quiet", "--out", str(model_dir)]
    train += ["--work-dir", str(tmp_path / "w")]
    assert run(train) == 0
    assert json.loads((model_dir / "config.json").read_text())["adain"]["widths"] == [4, 4, 8, 8]
    out = tmp_path / "o.png"
    args = ["transfer", "--method", "adain", "--model", str(model_dir), *_cli_images(tmp_path)]
    args += ["--out", str(out)]
    assert run(args) == 0 and out.is_file()
