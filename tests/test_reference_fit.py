"""The reference fit: the shipped references lie in the demo's world, images unlike it do not."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalestyle.cli import main
from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier
from scalestyle.eval.reference_fit import FILE_NAME, ReferenceFit, fit_reference_fit
from scalestyle.pipeline import bundled_demo_dir, bundled_references_dir

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def shipped() -> ReferenceFit:
    fit = ReferenceFit.for_model(bundled_demo_dir())
    assert fit is not None
    return fit


def noise_image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_every_shipped_reference_is_in_the_world_and_nearest_its_own_style(shipped: ReferenceFit) -> None:
    files = sorted(bundled_references_dir().glob("*.png"))
    assert [f.stem.replace("_", " ") for f in files] == sorted(world.HELD_OUT_STYLES)
    for f in files:
        verdict = shipped.check(Image.open(f))
        assert not verdict.outside and verdict.held_out
        assert verdict.nearest_style == f.stem.replace("_", " ")


def test_images_unlike_the_world_are_outside(shipped: ReferenceFit) -> None:
    for image in (noise_image(), Image.new("RGB", (64, 64), (128, 128, 128))):
        verdict = shipped.check(image)
        assert verdict.outside and "far outside" in verdict.message("x.png")


def test_fit_threshold_is_the_largest_eval_render_distance_and_survives_save(tmp_path: Path) -> None:
    judge = WorldClassifier.load(bundled_demo_dir() / "style_classifier.safetensors")
    fit = fit_reference_fit(judge, per_style=2)
    seed0 = world.SPLIT_SEEDS["eval"][0]
    evals = [
        world.render(world.CONTENTS[k], style, seed0 + s * 2 + k).image
        for s, style in enumerate(world.STYLES)
        for k in range(2)
    ]
    dist, _ = fit.distances(evals)
    assert fit.threshold == pytest.approx(float(dist.max()))
    assert fit.means_SF.shape == (len(world.STYLES), 2 * 4 * judge.width)
    fit.save(tmp_path / FILE_NAME)
    again = ReferenceFit.load(tmp_path / FILE_NAME, judge)
    assert again.threshold == fit.threshold
    assert torch.equal(again.distances([noise_image(1)])[0], fit.distances([noise_image(1)])[0])


def test_bad_settings_and_mismatched_judges_are_refused(tmp_path: Path) -> None:
    judge = WorldClassifier.load(bundled_demo_dir() / "style_classifier.safetensors")
    with pytest.raises(ValueError, match="per_style"):
        fit_reference_fit(judge, per_style=1)
    with pytest.raises(ValueError, match="style judge"):
        fit_reference_fit(WorldClassifier(("a", "b")), per_style=2)
    assert ReferenceFit.for_model(tmp_path) is None
    (tmp_path / FILE_NAME).write_bytes((bundled_demo_dir() / FILE_NAME).read_bytes())
    (WorldClassifier(("a", "b"))).save(tmp_path / "style_classifier.safetensors")
    with pytest.raises(ValueError, match="other styles"):
        ReferenceFit.for_model(tmp_path)


def test_stylize_says_when_a_reference_is_outside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    noise = tmp_path / "photo.png"
    noise_image().save(noise)
    assert (
        main(["stylize", "--style", str(noise), "--prompt", "a house", "--out", str(tmp_path / "o.png")]) == 0
    )
    assert f"{noise} is far outside the demo model's world" in capsys.readouterr().err
    # --quiet keeps stderr empty, the note included
    assert (
        main(
            [
                "stylize",
                "--style",
                str(noise),
                "--prompt",
                "a house",
                "--quiet",
                "--out",
                str(tmp_path / "p.png"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().err == ""


def test_the_quick_start_stylize_runs_from_the_repository_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    quick = re.search(r"## Quick start.*?```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert quick is not None
    command = shlex.split(quick.group(1).splitlines()[0].split("&&", 1)[1])
    assert command[0] == "scalestyle" and command[1] == "stylize"
    monkeypatch.chdir(README.parent)
    out = command.index("--out") + 1
    command[out] = str(tmp_path / command[out])
    assert main(command[1:]) == 0
    assert Path(command[out]).is_file()
    ref = command[command.index("--style") + 1]
    assert (
        f"{ref} is in the demo model's world: nearest style 'cyanotype' (held out" in capsys.readouterr().err
    )
