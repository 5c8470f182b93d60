from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scalestyle.data import procedural as world
from scalestyle.eval.evaluate import classifier_gram
from scalestyle.eval.transfer_eval import (
    ROWS_FILE,
    FnMethod,
    TransferCase,
    TransferScorers,
    copy_content,
    pipeline_method,
    run_transfer_evaluation,
    world_transfer_cases,
)
from scalestyle.eval.world import Judges
from scalestyle.locate import model_folder
from scalestyle.transfer import TRANSFER_SAMPLING, TransferPipeline


@pytest.fixture(scope="module")
def judges() -> Judges:
    return Judges.load(model_folder(None))


def true_target(case: TransferCase) -> Image.Image:
    assert case.target is not None
    return case.target.copy()


def oracle() -> FnMethod:
    """The true target: what a perfect transfer draws."""
    return FnMethod("oracle", {"kind": "oracle"}, true_target)


def test_world_cases_pair_content_and_target_pixel_for_pixel() -> None:
    cases = world_transfer_cases(["star", "fish"], seeds=(0, 1))
    assert len(cases) == 2 * len(world.HELD_OUT_STYLES) * 2
    assert {c.style for c in cases} == set(world.HELD_OUT_STYLES)
    for case in cases[:4]:
        assert case.target is not None and case.ref_content not in (None, case.content)
        # same content and pose: the neutral content image's object sits where the target's does
        pose = world.EVAL_SEEDS[500_000_000 + case.seed]
        a = world.render(case.content, world.NEUTRAL_STYLE, pose).mask
        b = world.render(case.content, case.style, pose).mask
        assert np.array_equal(a, b)
        assert np.asarray(case.content_image).tobytes() != np.asarray(case.target).tobytes()
    with pytest.raises(ValueError, match="content images' own style"):
        world_transfer_cases(["star"], [world.NEUTRAL_STYLE])


@pytest.mark.slow  # several seconds of generation and scoring on 2 cores
def test_metrics_rank_the_true_target_above_the_copied_content(tmp_path: Path, judges: Judges) -> None:
    cases = world_transfer_cases(["star", "house"], seeds=(0,))
    scorers = TransferScorers(judges=judges, gram=classifier_gram(judges))
    result = run_transfer_evaluation(cases, [copy_content(), oracle()], tmp_path / "run", scorers=scorers)
    rows = {m: [r for r in result.rows if r["method"] == m] for m in ("copy-content", "oracle")}
    mean = {
        m: {k: np.mean([float(r[k]) for r in rs]) for k in rs[0] if k in _NUMERIC} for m, rs in rows.items()
    }
    assert mean["oracle"]["l1_target"] == 0 and mean["oracle"]["ssim_target"] == pytest.approx(1, abs=1e-4)
    assert mean["copy-content"]["l1_target"] > 0.05
    # the world's judges: the target shows the held-out style, the copied content never does
    assert mean["oracle"]["style_correct"] > mean["copy-content"]["style_correct"] + 0.3
    assert mean["copy-content"]["content_correct"] >= 0.75
    assert mean["oracle"]["gram_style"] < mean["copy-content"]["gram_style"]
    assert mean["copy-content"]["content_loss"] == 0
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "l1_target" in summary and "oracle" in summary
    assert (tmp_path / "run" / "sheets").is_dir()


_NUMERIC = ("l1_target", "ssim_target", "style_correct", "content_correct", "gram_style", "content_loss")


def test_resume_reuses_rows_and_refuses_other_settings(tmp_path: Path) -> None:
    cases = world_transfer_cases(["star", "fish"], world.HELD_OUT_STYLES[:1])
    calls: list[str] = []

    def counted(case: TransferCase) -> Image.Image:
        calls.append(case.content)
        return case.content_image

    method = FnMethod("counted", {"v": 1}, counted)
    first = run_transfer_evaluation(cases, [method], tmp_path, max_images=1)
    assert first.stopped and first.computed == 1 and len(first.rows) == 1
    second = run_transfer_evaluation(cases, [method], tmp_path)
    assert second.computed == 1 and len(second.rows) == 2 and len(calls) == 2
    rows = [json.loads(line) for line in (tmp_path / ROWS_FILE).read_text().splitlines()]
    assert all(r["config"] == {"v": 1} and r["commit"] and r["seed"] == 0 for r in rows)
    with pytest.raises(ValueError, match="v: 1 -> 2"):
        run_transfer_evaluation(cases, [replace(method, settings={"v": 2})], tmp_path)


@pytest.mark.slow  # several seconds of generation and scoring on 2 cores
def test_stylevar_pipeline_method_is_seeded() -> None:
    pipe = TransferPipeline.random("stylevar-tiny", device="cpu")
    case = world_transfer_cases(["star"], seeds=(0,))[0]
    sampling = replace(TRANSFER_SAMPLING, top_k=0)  # the tiny codebook has 64 entries
    method = pipeline_method("stylevar", pipe, model_name=pipe.pipe.model_name, sampling=sampling)
    a, b = method(case), method(replace(case, seed=1))
    assert a.mode == "RGB" and a.size == (pipe.size, pipe.size)
    assert np.asarray(a).tobytes() == np.asarray(method(case)).tobytes()
    assert np.asarray(a).tobytes() != np.asarray(b).tobytes()


@pytest.mark.slow  # several seconds of generation and scoring on 2 cores
def test_cli_evaluate_transfer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scalestyle.cli import main

    style = world.HELD_OUT_STYLES[0]
    base = ["evaluate", "--protocol", "transfer", "--contents", "star", "--styles", style, "--quiet"]
    assert main([*base, "--out", str(tmp_path / "bad"), "--methods", "adain"]) == 2
    assert "unknown transfer method" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "bad"), "--stylevar", "x"]) == 2
    assert "NAME=DIR" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "run"), "--methods", "copy-content,ours"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / ROWS_FILE).read_text().splitlines()]
    assert [r["method"] for r in rows] == ["copy-content", "ours"]
    ours = rows[1]
    assert ours["config"]["kind"] == "training-free" and ours["content_prompt"] == "a star"
    assert {"content_correct", "style_correct", "l1_target", "gram_style"} <= ours.keys()
    with Image.open(tmp_path / "run" / ours["image"]) as img:
        assert img.mode == "RGB" and "settings" in img.info
    # a StyleVAR method's strength and style CFG reach its sampling and its recorded config
    knob = "sv=stylevar-demo:strength=-0.5:cfg=0:top_k=1:top_p=0.5"
    assert main([*base, "--out", str(tmp_path / "sv"), "--stylevar", knob, "--methods", "sv"]) == 0
    (sv,) = [json.loads(line) for line in (tmp_path / "sv" / ROWS_FILE).read_text().splitlines()]
    assert sv["config"]["strength"] == -0.5 and sv["config"]["sampling"]["cfg"] == 0.0
    assert sv["config"]["sampling"]["top_k"] == 1 and sv["config"]["sampling"]["top_p"] == 0.5
    too_many = "sv=stylevar-demo:top_k=5000"
    assert main([*base, "--out", str(tmp_path / "k"), "--stylevar", too_many, "--methods", "sv"]) == 2
    # the AdaIN baseline joins the same folder as one more method
    from scalestyle.adain_weights import save_adain_dir
    from tests.test_adain import tiny_adain

    adain_dir = save_adain_dir(tmp_path / "adain", tiny_adain(), extra={"name": "tiny-adain"})
    argv = [*base, "--out", str(tmp_path / "run"), "--adain", str(adain_dir)]
    assert main([*argv, "--methods", "copy-content,ours,adain"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / ROWS_FILE).read_text().splitlines()]
    assert [r["method"] for r in rows] == ["copy-content", "ours", "adain"]
    assert rows[2]["config"]["model"] == "tiny-adain" and rows[2]["l1_target"] > 0


def test_stylevar_spec_options(tmp_path: Path) -> None:
    from scalestyle.cli import CliError, StyleVARSpec, _stylevar_spec

    folder = tmp_path / "a:b"  # a ':' inside the folder's own path stays part of it
    folder.mkdir()
    assert _stylevar_spec(f"sv={folder}") == StyleVARSpec("sv", folder)
    spec = _stylevar_spec(f"sv={folder}:double-append:strength=0.5:cfg=1.5")
    assert spec == StyleVARSpec("sv", folder, "double-append", 0.5, 1.5)
    assert _stylevar_spec(f"sv={folder}:cfg=0:grpo") == StyleVARSpec("sv", folder, "grpo", 0.0, 0.0)
    spec = _stylevar_spec(f"sv={folder}:top_k=10:top_p=0.9:strength=-1")
    assert spec == StyleVARSpec("sv", folder, None, -1.0, None, 10, 0.9)
    for bad, match in [
        (f"sv={folder}:strength=2", r"strength must be in \[-1, 1\], got 2"),
        (f"sv={folder}:cfg=-1", "cfg must be >= 0"),
        (f"sv={folder}:strength=x", "strength wants a number"),
        (f"sv={folder}:top_k=0", "top_k must be a whole number >= 1, got 0"),
        (f"sv={folder}:top_k=2.5", "top_k must be a whole number >= 1, got 2.5"),
        (f"sv={folder}:top_p=0", r"top_p must be in \(0, 1\], got 0"),
        (f"sv={folder}:sft:grpo", "no folder"),
    ]:
        with pytest.raises(CliError, match=match):
            _stylevar_spec(bad)
