"""`scalestyle transfer` batches: folders of contents x styles, resumable, one PNG a job with metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalestyle.batch import MANIFEST_FILE, image_files, make_transfer_jobs
from scalestyle.cli import main
from scalestyle.metadata import read_png_metadata


def pictures(folder: Path, names: list[str], seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    return folder


def transfer(*args: str) -> int:
    model = ["--model", "stylevar-tiny", "--random-weights", "--top-k", "30", "--quiet"]
    return main(["transfer", *model, *args])


@pytest.mark.slow  # three StyleVAR images and two model builds: about 5 s on an idle 2-core CPU
def test_a_batch_makes_every_content_in_every_style_and_resumes(tmp_path: Path) -> None:
    contents = pictures(tmp_path / "contents", ["a.png", "b.jpg"], 0)
    (contents / "notes.txt").write_text("not an image")
    style = pictures(tmp_path / "styles", ["s.png"], 1) / "s.png"
    out = tmp_path / "out"
    assert transfer("--content", str(contents), "--style", str(style), "--out-dir", str(out)) == 0
    rows = [json.loads(line) for line in (out / MANIFEST_FILE).read_text().splitlines()]
    assert len(rows) == 2 and len({r["file"] for r in rows}) == 2
    assert {(Path(r["content_file"]).name, Path(r["style_file"]).name) for r in rows} == {
        ("a.png", "s.png"),
        ("b.jpg", "s.png"),
    }
    first = {r["file"]: (out / r["file"]).read_bytes() for r in rows}
    meta = read_png_metadata(out / rows[0]["file"])
    assert meta["content_file"] == rows[0]["content_file"] and meta["style_file"] == rows[0]["style_file"]
    # a killed run: the folder minus one image; the rerun makes exactly that one, the same bytes
    lost = rows[-1]["file"]
    (out / lost).unlink()
    assert transfer("--content", str(contents), "--style", str(style), "--out-dir", str(out)) == 0
    assert {f: (out / f).read_bytes() for f in first} == first
    # other settings refuse the folder, naming the setting, before a model loads
    assert (
        transfer(
            "--content", str(contents), "--style", str(style), "--strength", "0.5", "--out-dir", str(out)
        )
        == 2
    )


def test_one_output_file_needs_one_pair_and_flags_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contents = pictures(tmp_path / "c", ["a.png", "b.png"], 0)
    style = pictures(tmp_path / "s", ["s.png"], 1) / "s.png"
    assert transfer("--content", str(contents), "--style", str(style), "--out", str(tmp_path / "o.png")) == 2
    assert "2 images to make: give --out-dir" in capsys.readouterr().err
    assert (
        transfer(
            "--content",
            str(tmp_path / "missing.png"),
            "--style",
            str(style),
            "--out",
            str(tmp_path / "o.png"),
        )
        == 2
    )
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert transfer("--content", str(empty), "--style", str(style), "--out-dir", str(tmp_path / "x")) == 2
    assert "no images" in capsys.readouterr().err
    args = ["--content", str(contents / "a.png"), "--style", str(style)]
    assert transfer(*args, "--out", str(tmp_path / "o.png"), "--out-dir", str(tmp_path / "x")) == 2
    assert (
        main(["transfer", "--method", "adain", *args, "--double-append", "--out", str(tmp_path / "o.png")])
        == 2
    )
    assert "--double-append is a StyleVAR setting" in capsys.readouterr().err


def test_jobs_are_named_by_content_and_style_and_kept_once(tmp_path: Path) -> None:
    folder = pictures(tmp_path / "c", ["a.png"], 0)
    (folder / "copy.png").write_bytes((folder / "a.png").read_bytes())
    style = pictures(tmp_path / "s", ["star.png"], 1) / "star.png"
    jobs = make_transfer_jobs(image_files([folder], "--content"), [style], seed=3)
    assert len(jobs) == 1  # the same picture under two names is one job
    assert jobs[0].file_name.startswith("a__star__s3__")
    assert make_transfer_jobs([folder / "a.png"], [style], seed=4)[0].key != jobs[0].key
