from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalestyle.cli import main
from scalestyle.metadata import read_png_metadata


def ref_image(path: Path, mode: str = "RGB", size: int = 80, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def stylize(model: Path, *args: str) -> int:
    return main(["stylize", "--model", str(model), "--style-prompt", "neon style", "--quiet", *args])


def test_stylize_writes_png_with_method_metadata(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    assert (
        stylize(
            tiny_model_dir,
            "--style",
            str(ref_image(tmp_path / "r.png")),
            "--prompt",
            "a star",
            "--out",
            str(out),
            "--ablation",
            "c",
        )
        == 0
    )
    meta = read_png_metadata(out)
    assert meta["prompt"] == "a star in neon style" and '"aqs": false' in meta["style"]


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK"])
def test_odd_but_valid_images_are_converted(mode: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    ref = ref_image(tmp_path / ("r.png" if mode != "CMYK" else "r.jpg"), mode)
    assert (
        stylize(tiny_model_dir, "--style", str(ref), "--prompt", "a star", "--out", str(tmp_path / "o.png"))
        == 0
    )


def test_batch_is_resumable(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a star\na fish\n")
    refs = [str(ref_image(tmp_path / f"s{i}.png", seed=i)) for i in range(2)]
    args = [
        "--style",
        refs[0],
        "--style",
        refs[1],
        "--prompts",
        str(prompts),
        "--out-dir",
        str(tmp_path / "out"),
    ]
    assert stylize(tiny_model_dir, *args) == 0
    made = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert len(made) == 4
    first = {p: (tmp_path / "out" / p).stat().st_mtime_ns for p in made}
    main(["stylize", "--model", str(tiny_model_dir), "--style-prompt", "neon style", *args])
    assert "skipped 4 already done" in capsys.readouterr().err
    assert {p: (tmp_path / "out" / p).stat().st_mtime_ns for p in made} == first


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("unreadable", "not a readable image"),
        ("tiny", "smaller than the minimum side"),
        ("missing", "no such file"),
        ("stage", "reach beyond the schedule"),
        ("no-style", "--style"),
    ],
)
def test_bad_inputs_give_one_line(
    setup: str, message: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = ref_image(tmp_path / "r.png")
    args = ["--prompt", "a star", "--out", str(tmp_path / "o.png")]
    if setup == "unreadable":
        ref.write_bytes(b"not an image")
    elif setup == "tiny":
        ref_image(ref, size=8)
    elif setup == "missing":
        ref = tmp_path / "nope.png"
    elif setup == "stage":
        args += ["--fine-steps", "4,5,6,7,8,9"]
    style = [] if setup == "no-style" else ["--style", str(ref)]
    assert stylize(tiny_model_dir, *style, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
