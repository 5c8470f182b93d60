"""The StyleVAR shipped for the demo world: it loads by name, fits the file budget and transfers."""

from __future__ import annotations

from pathlib import Path

from scalestyle.cli import main
from scalestyle.data import procedural as world
from scalestyle.locate import BUNDLED_STYLEVAR, bundled_stylevar_dir, model_folder
from scalestyle.metadata import read_png_metadata

MAX_FILE_BYTES = 16 * 1024 * 1024  # the limit on a shipped file


def test_the_shipped_stylevar_resolves_by_name_within_the_budget() -> None:
    folder = bundled_stylevar_dir()
    assert model_folder(BUNDLED_STYLEVAR) == folder and (folder / "MODEL_CARD.md").is_file()
    assert all(f.stat().st_size < MAX_FILE_BYTES for f in folder.iterdir())


def test_transfer_with_the_shipped_stylevar(tmp_path: Path) -> None:
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    world.render("heart", "plain", 0).image.save(content)
    world.render("circle", "cyanotype", 1).image.save(style)
    out = tmp_path / "o.png"
    argv = ["transfer", "--model", BUNDLED_STYLEVAR, "--content", str(content), "--style", str(style)]
    assert main([*argv, "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    meta = read_png_metadata(out)
    assert "stylevar-demo" in meta["model"]
