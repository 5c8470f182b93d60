"""The StyleAR adapter shipped for the demo model: it loads by name and stylizes through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalestyle.cli import main
from scalestyle.locate import BUNDLED_STYLEAR, adapter_folder, bundled_stylear_dir
from scalestyle.metadata import read_png_metadata
from scalestyle.models.stylear import CONFIG_FILE, WEIGHTS_FILE, StyleARAdapter
from scalestyle.pipeline import bundled_references_dir

MAX_FILE_BYTES = 16 * 1024 * 1024  # the limit on a shipped file


def test_the_shipped_adapter_loads_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = bundled_stylear_dir()
    for name in (CONFIG_FILE, WEIGHTS_FILE, "MODEL_CARD.md"):
        assert (folder / name).is_file() and (folder / name).stat().st_size < MAX_FILE_BYTES
    assert adapter_folder(BUNDLED_STYLEAR) == folder
    adapter = StyleARAdapter.load(folder)
    assert adapter.lora and adapter.cfg.encoder == "vae"  # the demo reads references with its own VAE
    # a folder the user made under that name wins over the package's
    monkeypatch.chdir(tmp_path)
    (tmp_path / BUNDLED_STYLEAR).mkdir()
    assert adapter_folder(BUNDLED_STYLEAR) == Path(BUNDLED_STYLEAR)


def test_stylize_with_the_shipped_adapter_on_the_demo(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    ref = next(iter(sorted(bundled_references_dir().glob("*.png"))))
    argv = ["stylize", "--method", "stylear", "--adapter", BUNDLED_STYLEAR, "--style", str(ref)]
    assert main([*argv, "--prompt", "a star", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    meta = read_png_metadata(out)
    assert meta["method"] == "stylear" and meta["style_file"] == str(ref)
