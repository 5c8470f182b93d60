from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from scalestyle.cli import main
from scalestyle.config import SamplingConfig
from scalestyle.metadata import read_png_metadata
from scalestyle.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_model_dir, device="cpu")


def test_pipeline_same_seed_same_image(pipe: Pipeline) -> None:
    a = pipe("a star in neon style", sampling=SamplingConfig(seed=1))
    b = pipe("a star in neon style", sampling=SamplingConfig(seed=1))
    c = pipe("a star in neon style", sampling=SamplingConfig(seed=2))
    assert a.images[0].mode == "RGB" and a.images[0].size == (64, 64)
    assert torch.equal(a.summed_codes_BdHW, b.summed_codes_BdHW)
    assert not torch.equal(a.summed_codes_BdHW, c.summed_codes_BdHW)


def test_negative_prompt_changes_the_uncond_rows(pipe: Pipeline) -> None:
    a = pipe("a star", sampling=SamplingConfig(seed=1))
    b = pipe("a star", sampling=SamplingConfig(seed=1), negative_prompt="a circle")
    assert not torch.equal(a.summed_codes_BdHW, b.summed_codes_BdHW)


def test_generate_cli_writes_rgb_png_with_metadata(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "star.png"
    code = main(
        [
            "generate",
            "--prompt",
            "a star",
            "--out",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--seed",
            "7",
            "--cfg",
            "2.5",
            "--quiet",
        ]
    )
    assert code == 0
    with Image.open(out) as img:
        assert img.mode == "RGB"
    meta = read_png_metadata(out)
    assert meta["prompt"] == "a star" and meta["seed"] == "7" and meta["model"] == str(tiny_model_dir)
    assert json.loads(meta["settings"])["cfg"] == 2.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-preset"], "neither a model folder nor a preset"),
        (["--model", "infinity-2b"], "no weights for infinity-2b"),
        (["--prompt", "  "], "--prompt must be non-empty"),
        (["--out", "/nonexistent-dir/x.png"], "does not exist"),
        (["--out", "x.jpg"], ".png"),
        (["--aspect", "9:0"], "aspect"),
    ],
)
def test_generate_bad_inputs_exit_with_one_line(
    argv: list[str],
    message: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCALESTYLE_HOME", str(tmp_path / "home"))
    args = {"--prompt": "a star", "--out": str(tmp_path / "o.png"), "--model": str(tiny_model_dir)}
    for i in range(0, len(argv), 2):
        args[argv[i]] = argv[i + 1]
    code = main(["generate", *[x for kv in args.items() for x in kv], "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0]


def test_random_weights_tiny_preset(tmp_path: Path) -> None:
    out = tmp_path / "r.png"
    assert (
        main(
            [
                "generate",
                "--prompt",
                "a star",
                "--out",
                str(out),
                "--model",
                "tiny",
                "--random-weights",
                "--quiet",
            ]
        )
        == 0
    )
    assert "random weights" in read_png_metadata(out)["model"]


def test_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["bench", "--model", "tiny", "--random-weights", "--runs", "2", "--warmup", "0", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["seconds_per_image"] > 0 and report["tokens_per_second"] > 0
    assert report["size_hw"] == [64, 64] and report["machine"]["device"] == "cpu"


@pytest.mark.parametrize("damage", ["truncate", "foreign", "other_size"])
def test_broken_model_folder_gives_one_line(
    damage: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from safetensors.torch import save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    target = folder / "transformer.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "foreign":
        target.write_text("this is not a checkpoint\n")
    else:
        save_file({"head.weight": torch.zeros(3, 3)}, str(target))
    code = main(
        [
            "generate",
            "--prompt",
            "a star",
            "--out",
            str(tmp_path / "o.png"),
            "--model",
            str(folder),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "transformer.safetensors" in err[0]
