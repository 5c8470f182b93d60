"""Subject fidelity with CLIP and DINO weights (proxy-tuning, issue 18): DreamBooth's all-pairs CLIP-I and
DINO, CLIP-T without the identifier, and `scalestyle subject-eval` on tiny in-process models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalestyle.cli import main
from scalestyle.data import procedural as world
from scalestyle.eval.subject import (
    embedding_fidelity,
    per_image_fidelity,
    strip_identifiers,
    subject_self_similarity,
)
from scalestyle.metadata import read_png_metadata
from scalestyle.metrics import CLIPScorer, DINOScorer, pil_to_batch
from scalestyle.pipeline import Pipeline
from tests.test_metrics import save_tiny_clip, save_tiny_dino
from tests.test_subject import trained_like


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip")
    save_tiny_clip(path)
    return path


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dino")
    save_tiny_dino(path)
    return path


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> CLIPScorer:
    return CLIPScorer.from_pretrained(clip_dir, device="cpu")


@pytest.fixture(scope="module")
def dino(dino_dir: Path) -> DINOScorer:
    return DINOScorer.from_pretrained(dino_dir, device="cpu")


def subject_set(n: int = 3, size: int = 64) -> list[Image.Image]:
    return [world.render_subject("hexstar", world.NEUTRAL_STYLE, i, size).image for i in range(n)]


def others(n: int = 3, size: int = 48) -> list[Image.Image]:
    g = np.random.default_rng(0)
    return [Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_strip_identifiers_removes_whole_words_only() -> None:
    assert strip_identifiers("a <sks> dog on a beach", ["<sks>"]) == "a dog on a beach"
    assert strip_identifiers("a photo of SKS dog, in neon", ["sks"]) == "a photo of dog, in neon"
    assert strip_identifiers("sks asks <zwx>, a tree", ["sks", "<zwx>"]) == "asks, a tree"
    assert strip_identifiers("a dog", []) == "a dog"


def test_clip_i_and_dino_are_the_all_pairs_mean(clip: CLIPScorer, dino: DINOScorer) -> None:
    subject, images = subject_set(), others(2)
    got = per_image_fidelity(images, ["a cat", "a dog"], subject, clip=clip, dino=dino)
    img, refs = pil_to_batch(images), pil_to_batch(subject)
    for key, pair in (("clip_i", clip.clip_i), ("dino", dino.similarity)):
        # the row-wise scorer against each subject image in turn, averaged
        expected = torch.stack([pair(img, refs[j : j + 1]) for j in range(len(subject))]).mean(0)
        torch.testing.assert_close(torch.tensor(got[key]), expected, atol=1e-5, rtol=0)


def test_subject_images_score_higher_against_themselves(clip: CLIPScorer, dino: DINOScorer) -> None:
    subject = subject_set()
    prompts = ["a photo of a cat"] * 3
    own = embedding_fidelity(subject, prompts, subject, clip=clip, dino=dino)
    other = embedding_fidelity(others(), prompts, subject, clip=clip, dino=dino)
    assert own["n"] == other["n"] == 3
    assert own["clip_i"] > other["clip_i"]
    assert own["dino"] > other["dino"]
    # the real-images row leaves each image's cosine of 1 with itself out
    real = subject_self_similarity(subject, clip=clip, dino=dino)
    assert real["clip_i"] < own["clip_i"] and real["dino"] < own["dino"]
    assert subject_self_similarity(subject[:1], clip=clip, dino=None) == {"n": 1}


def test_clip_t_reads_the_prompt_without_the_identifier(clip: CLIPScorer) -> None:
    images = others(2)
    got = embedding_fidelity(
        images, ["a <sks> dog in neon style"] * 2, subject_set(), clip=clip, dino=None, identifiers=["<sks>"]
    )
    assert set(got) == {"n", "clip_i", "clip_t"}
    stripped = float(clip.clip_t(pil_to_batch(images), ["a dog in neon style"]).mean())
    kept = float(clip.clip_t(pil_to_batch(images), ["a <sks> dog in neon style"]).mean())
    assert got["clip_t"] == pytest.approx(stripped, abs=1e-6)
    assert abs(kept - stripped) > 1e-4  # the tokenizer reads <sks> as <unk>: keeping it would show


@pytest.fixture(scope="module")
def eval_inputs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("subject_eval")
    adapter = trained_like(Pipeline.load(tiny_model_dir, device="cpu"), seed=3)
    adapter.lora = {
        k: v * 10 for k, v in adapter.lora.items()
    }  # strong enough to redraw the tiny model's images
    adapter.save(root / "adapter")
    (root / "subject").mkdir()
    for i, image in enumerate(subject_set(2)):
        image.save(root / "subject" / f"{i}.png")
    (root / "one_prompt.txt").write_text("a {subject} in neon style\n")
    (root / "prompts.txt").write_text("a {subject} in neon style\n\nthe {subject}\n")
    teacher = root / "teacher" / "images"
    teacher.mkdir(parents=True)
    rows = []
    for i, image in enumerate(subject_set(2, 48)):
        image.save(teacher / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": "a {subject} in neon style"}) + "\n")
    (teacher / "metadata.jsonl").write_text("".join(rows))
    return {"root": root, "model": tiny_model_dir}


def cli_args(
    inputs: dict[str, Path], out: Path, *extra: str, prompts: str = "one_prompt.txt", quiet: bool = True
) -> list[str]:
    root = inputs["root"]
    return [
        "subject-eval",
        "--adapter", str(root / "adapter"),
        "--subject-images", str(root / "subject"),
        "--prompts", str(root / prompts),
        "--model", str(inputs["model"]),
        "--out", str(out),
        "--device", "cpu",
        *(["--quiet"] if quiet else []),
        *extra,
    ]  # fmt: skip


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_scores_base_student_and_teacher(
    eval_inputs: dict[str, Path], clip_dir: Path, dino_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["--clip", str(clip_dir), "--dino", str(dino_dir), "--seeds", "3"]
    args += ["--teacher-images", str(eval_inputs["root"] / "teacher")]
    assert main(cli_args(eval_inputs, out, *args)) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["system"]: r for r in results["rows"]}
    assert list(rows) == ["real", "teacher", "base", "student"]
    assert rows["real"]["n"] == 2 and rows["real"]["clip_t"] is None
    assert rows["teacher"]["n"] == 2 and rows["base"]["n"] == rows["student"]["n"] == 1
    for system in ("teacher", "base", "student"):
        assert all(-1 <= rows[system][k] <= 1 for k in ("clip_i", "dino", "clip_t"))
    assert results["seeds"] == [3] and results["config"]["phrase"] == "sks star"
    assert results["commit"] and "torch" in results["machine"]
    (student,) = results["images"]["student"]
    assert student["prompt"] == "a sks star in neon style" and student["file"] == "student/p00_s3.png"
    meta = read_png_metadata(out / student["file"])
    assert meta["system"] == "student" and meta["clip_prompt"] == "a star in neon style"
    assert meta["seed"] == "3" and json.loads(meta["settings"])["seed"] == 3
    # the adapter is in the student's weights and out of the base's: same prompt and seed, other image
    assert not np.array_equal(pixels(out / "base/p00_s3.png"), pixels(out / student["file"]))


@pytest.mark.slow
def test_cli_every_prompt_at_every_seed(
    eval_inputs: dict[str, Path], clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = cli_args(
        eval_inputs, out, "--clip", str(clip_dir), "--seeds", "0,1", prompts="prompts.txt", quiet=False
    )
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "student   4" in err and str(out / "results.json") in err
    results = json.loads((out / "results.json").read_text())
    rows = {r["system"]: r for r in results["rows"]}
    assert list(rows) == ["real", "base", "student"]  # no teacher given
    assert rows["base"]["n"] == rows["student"]["n"] == 4 and rows["base"]["dino"] is None
    files = sorted(p.name for p in (out / "student").iterdir())
    assert files == ["p00_s0.png", "p00_s1.png", "p01_s0.png", "p01_s1.png"]
    # the seed reaches the sampler: one prompt at two seeds gives two images
    assert not np.array_equal(pixels(out / "base/p00_s0.png"), pixels(out / "base/p00_s1.png"))
    # a second run into the same folder is refused rather than mixing two runs' images
    assert main(cli_args(eval_inputs, out, "--clip", str(clip_dir))) != 0


def test_missing_weights_is_one_line_before_anything_loads(
    eval_inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(cli_args(eval_inputs, out, "--clip", str(tmp_path / "no_clip"))) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--clip" in err and "no_clip" in err and "does not exist" in err
    assert not (out / "results.json").exists()
    assert main(cli_args(eval_inputs, out)) != 0
    assert "give --clip and/or --dino" in capsys.readouterr().err
    assert main(cli_args(eval_inputs, out, "--dino", "someone/not-cached-dino")) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the Hugging Face cache" in err


def test_a_hub_id_loads_from_the_hf_cache_without_the_network(
    dino_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import huggingface_hub.constants

    from scalestyle.subject_cli import _local_scorer

    repo = tmp_path / "hub" / "models--someone--tiny-dino"
    shutil.copytree(dino_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    scorer = _local_scorer(DINOScorer, "someone/tiny-dino", "--dino", "cpu")
    images = pil_to_batch(others(1))
    reference = DINOScorer.from_pretrained(dino_dir, device="cpu")
    torch.testing.assert_close(scorer.embed(images), reference.embed(images))
