"""`scalestyle teacher`, `scalestyle train subject` and the subject `--adapter` of generate and stylize, on
the tiny model through the real main()."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from scalestyle.cli import main
from scalestyle.data import procedural as world
from scalestyle.metadata import read_png_metadata
from scalestyle.models.stylear import StyleARAdapter, StyleARConfig
from scalestyle.models.subject import SubjectAdapter


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(teacher folder, a subject adapter trained two steps from it)."""
    root = tmp_path_factory.mktemp("subject_cli")
    teacher = root / "teacher"
    flags = ["--per-style", "1", "--class-per-style", "1", "--styles", "plain,neon", "--quiet"]
    assert main(["teacher", "--world-subject", "hexstar", "--out", str(teacher), *flags]) == 0
    adapter = root / "adapter"
    train = [
        "train",
        "subject",
        "--images",
        str(teacher / "images"),
        "--class-images",
        str(teacher / "class"),
    ]
    train += ["--token", "sks", "--class-word", "star", "--out", str(adapter), "--rank", "2", "--quick"]
    train += ["--model", str(tiny_model_dir), "--work-dir", str(root / "work"), "--quiet"]
    assert main(train) == 0
    return teacher, adapter


@pytest.mark.slow  # the fixture trains two steps through the CLI
def test_teacher_writes_captioned_subject_masks_and_class(trained: tuple[Path, Path]) -> None:
    teacher, _ = trained
    rows = [json.loads(x) for x in (teacher / "images" / "metadata.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a {subject} in plain style", "a {subject} in neon style"]
    assert sorted(p.name for p in (teacher / "masks").iterdir()) == sorted(r["file_name"] for r in rows)
    assert "a star in neon style" in (teacher / "class" / "metadata.jsonl").read_text()


@pytest.mark.slow  # trains (fixture) and generates three images through the CLI
def test_train_writes_an_adapter_that_generate_and_stylize_load(
    trained: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, adapter_dir = trained
    adapter = SubjectAdapter.load(adapter_dir)
    assert adapter.cfg.phrase == "sks star" and adapter.cfg.lora_rank == 2 and adapter.lora
    # the tiny vocabulary cannot spell "sks": --add-token auto made it a token of its own
    assert adapter.cfg.add_token and adapter.tokens_NE is not None
    second = SubjectAdapter(replace(adapter.cfg, token="zwx"), adapter.lora, adapter.tokens_NE + 1)
    second_dir = second.save(tmp_path / "second")
    model = ["--model", str(tiny_model_dir), "--quiet"]
    out = tmp_path / "g.png"
    two = ["--adapter", str(adapter_dir), "--adapter", str(second_dir)]
    assert main(["generate", "--prompt", "a sks star", *two, "--out", str(out), *model]) == 0
    capsys.readouterr()
    same = ["--adapter", str(adapter_dir), "--adapter", str(adapter_dir)]
    assert main(["generate", "--prompt", "a sks star", *same, "--out", str(tmp_path / "x.png"), *model]) != 0
    assert "two subject adapters add the identifier 'sks'" in capsys.readouterr().err
    assert str(adapter_dir.resolve()) in read_png_metadata(out)["model"]
    ref = str(teacher / "class" / "neon_000.png")
    out2 = tmp_path / "s.png"
    stylize = ["stylize", "--prompt", "a sks star", "--style", ref, "--adapter", str(adapter_dir)]
    assert main([*stylize, "--out", str(out2), *model]) == 0
    # StyleAR with the subject adapter folded under it
    stylear = tmp_path / "stylear"
    cfg = StyleARConfig(
        text_width=128, encoder="vae", encoder_width=8, encoder_source=None, num_queries=2, depth=1, heads=2,
        dim_head=8, width=16,
    )  # fmt: skip
    StyleARAdapter(cfg).save(stylear)
    out3 = tmp_path / "a.png"
    both = [*stylize, "--method", "stylear", "--adapter", str(stylear), "--out", str(out3), *model]
    assert main(both) == 0 and read_png_metadata(out3)["method"] == "stylear"


def test_adapter_and_teacher_errors_are_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stylear = tmp_path / "stylear"
    (stylear).mkdir()
    (stylear / "config.json").write_text('{"stylear": {}}')
    out = str(tmp_path / "x.png")
    model = ["--model", str(tiny_model_dir), "--quiet"]
    assert main(["generate", "--prompt", "a star", "--adapter", str(stylear), "--out", out, *model]) == 2
    assert "is a StyleAR adapter" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a star", "--adapter", str(tmp_path), "--out", out, *model]) == 2
    assert "no adapter there" in capsys.readouterr().err
    bad_rank = ["train", "subject", "--images", str(tmp_path), "--class-word", "star", "--out", out]
    assert main([*bad_rank, "--rank", "0"]) == 2
    assert "lora_rank must be in [1, 1024], got 0" in capsys.readouterr().err
    two = [*bad_rank, "--images", str(tmp_path), "--token", "<sks>"]  # two folders, one token and class
    assert main(two) == 2
    assert "one --token, --class-word (and --class-images if any) per --images" in capsys.readouterr().err
    assert main([*two, "--token", "<SKS>", "--class-word", "tree"]) == 2
    assert "each subject needs its own token" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("{subject} on a beach\n")
    (tmp_path / "subj").mkdir()
    world.render_subject("cactus", "plain", 0).image.save(tmp_path / "subj" / "a.png")
    teacher = ["teacher", "--subject-images", str(tmp_path / "subj"), "--prompts", str(prompts)]
    rc = main([*teacher, "--class-word", "dog", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert (
        rc == 2
        and len(err.splitlines()) == 1
        and ("scalestyle[teacher]" in err or "no teacher weights" in err)
    )
    assert not (tmp_path / "t").exists()
