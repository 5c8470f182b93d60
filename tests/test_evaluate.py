from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from scalestyle.attention import AttnSite, BatchLayout, sdpa
from scalestyle.cli import main
from scalestyle.config import SamplingConfig, parse_int_list
from scalestyle.data import procedural as world
from scalestyle.eval import methods as methods_module
from scalestyle.eval import protocols
from scalestyle.eval.classifier import WorldClassifier
from scalestyle.eval.evaluate import ROWS_FILE, Scorers, classifier_gram, run_evaluation
from scalestyle.eval.methods import METHODS, Method, Request, StyleAlignedConfig, get_methods
from scalestyle.eval.report import summarize_rows, summary_csv, summary_markdown
from scalestyle.eval.world import Judges
from scalestyle.method.rules import RuleController
from scalestyle.pipeline import Pipeline
from scalestyle.schedules import get_schedule
from tests.conftest import SHARED

FINESTYLE = SHARED / "benchmarks" / "finestyle"


@pytest.fixture(scope="module")
def judged_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with random world classifiers beside it, as a demo model folder carries them."""
    folder = tmp_path_factory.mktemp("judged") / "model"
    shutil.copytree(tiny_model_dir, folder)
    torch.manual_seed(0)
    WorldClassifier(world.CONTENTS).save(folder / "content_classifier.safetensors")
    WorldClassifier(world.STYLES).save(folder / "style_classifier.safetensors")
    return folder


@pytest.fixture(scope="module")
def pipe(judged_model_dir: Path) -> Pipeline:
    return Pipeline.load(judged_model_dir, device="cpu")


@pytest.fixture(scope="module")
def scorers(judged_model_dir: Path) -> Scorers:
    judges = Judges.load(judged_model_dir)
    return Scorers(judges=judges, gram=classifier_gram(judges))


def counting(names: str, calls: list[str]) -> dict[str, Method]:
    """The named methods, each logging its calls (same settings, so the same config hash)."""

    def wrap(method: Method) -> Method:
        def run(pipe: Pipeline, request: Request) -> Image.Image:
            calls.append(method.name)
            return method.run(pipe, request)

        return replace(method, run=run)

    return {n: wrap(m) for n, m in get_methods(names).items()}


def read_rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / ROWS_FILE).read_text().splitlines()]


STABLE = ("finished", "seconds", "machine")  # what may differ between two runs of the same image


def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in STABLE} for r in rows]


def test_procedural_grid_rows_and_reports(pipe: Pipeline, scorers: Scorers, tmp_path: Path) -> None:
    cases = protocols.procedural_cases(["star", "fish"], ["crayon"], [0])
    result = run_evaluation(
        pipe, cases, tmp_path, methods="plain,prompt-only,stylealigned,d", scorers=scorers
    )
    rows = read_rows(tmp_path)
    assert rows == result.rows and result.computed == 8 and not result.stopped
    assert [(r["method"], r["content"]) for r in rows] == [
        (m, c) for c in ("star", "fish") for m in ("plain", "prompt-only", "stylealigned", "d")
    ]
    by = {(r["method"], r["content"]): r for r in rows}
    star_d = by["d", "star"]
    assert star_d["prompt"] == "a star in crayon style" and star_d["content_prompt"] == "a star"
    assert star_d["style_prompt"] == "crayon style" and star_d["style"] == "crayon" and star_d["seed"] == 0
    assert star_d["ref_content"] == protocols.reference_for("star", "crayon", 0)[0] != "star"
    assert star_d["device"] == "cpu" and star_d["commit"] and star_d["seconds"] > 0
    for r in rows:
        assert len(r["config_hash"]) == 64 and r["config"]["model"] == pipe.model_name
        assert isinstance(r["content_correct"], bool) and isinstance(r["style_correct"], bool)
        assert isinstance(r["leakage"], bool) and r["leakage"] == (r["pred_content"] == r["ref_content"])
        assert 0 <= r["p_style"] <= 1 and -1 <= r["ssim"] <= 1 and r["gram_style"] >= 0
        with Image.open(tmp_path / r["image"]) as img:
            assert img.size == (64, 64)
    # one hash per method, the same for every row of it, different between methods
    hashes = {r["method"]: r["config_hash"] for r in rows}
    assert len(set(hashes.values())) == 4
    assert all(r["config_hash"] == hashes[r["method"]] for r in rows)
    # plain ignores the style: its image lives outside the style folders
    assert by["plain", "star"]["image"] == "images/plain/star__s0.png"
    assert by["d", "star"]["image"] == "images/d/crayon/star__s0.png"
    for name in ("summary.md", "summary.csv", "sheets/crayon.png", "plot.png"):
        assert (tmp_path / name).is_file(), name
    with Image.open(tmp_path / "sheets" / "crayon.png") as sheet:
        assert sheet.width > 2 * 96 and sheet.height > 5 * 96  # reference row + 4 method rows


def test_resume_after_a_stop_regenerates_nothing(pipe: Pipeline, scorers: Scorers, tmp_path: Path) -> None:
    cases = protocols.procedural_cases(["star"], ["crayon", "marble"], [0])
    calls: list[str] = []
    first = run_evaluation(
        pipe, cases, tmp_path / "run", methods=counting("plain,d", calls), scorers=scorers, max_images=2
    )
    # plain: one image for both styles; the second style's plain row reuses it
    assert first.stopped and first.computed == 2 and calls == ["plain", "d"]
    assert [(r["method"], r["style"]) for r in first.rows] == [
        ("plain", "crayon"),
        ("d", "crayon"),
        ("plain", "marble"),
    ]
    calls.clear()
    second = run_evaluation(
        pipe, cases, tmp_path / "run", methods=counting("plain,d", calls), scorers=scorers
    )
    assert calls == ["d"] and second.skipped == 3 and second.computed == 1
    rows = read_rows(tmp_path / "run")
    assert len(rows) == len({(r["method"], r["style"]) for r in rows}) == 4
    assert rows[:3] == first.rows  # nothing written before is rewritten
    whole = run_evaluation(pipe, cases, tmp_path / "whole", methods="plain,d", scorers=scorers)
    assert stable(rows) == stable(whole.rows)
    for r in rows:
        a, b = Image.open(tmp_path / "run" / r["image"]), Image.open(tmp_path / "whole" / r["image"])
        assert a.tobytes() == b.tobytes()
    calls.clear()
    again = run_evaluation(pipe, cases, tmp_path / "run", methods=counting("plain,d", calls), scorers=scorers)
    assert calls == [] and again.skipped == 4 and len(read_rows(tmp_path / "run")) == 4


def test_torn_last_line_is_dropped_and_its_row_made_again(
    pipe: Pipeline, scorers: Scorers, tmp_path: Path
) -> None:
    cases = protocols.procedural_cases(["star"], ["crayon"], [0])
    full = run_evaluation(pipe, cases, tmp_path, methods="prompt-only,d", scorers=scorers).rows
    log = tmp_path / ROWS_FILE
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 40])  # a kill in the middle of the last row
    calls: list[str] = []
    again = run_evaluation(pipe, cases, tmp_path, methods=counting("prompt-only,d", calls), scorers=scorers)
    # the image was in place before its row: it is read back, not generated again
    assert calls == [] and again.reused == 1 and again.skipped == 1
    assert log.read_bytes().endswith(b"\n")
    assert stable(read_rows(tmp_path)) == stable(full)
    assert read_rows(tmp_path)[1]["seconds"] == pytest.approx(full[1]["seconds"])


def test_other_settings_in_the_same_folder_are_refused(pipe: Pipeline, tmp_path: Path) -> None:
    cases = protocols.procedural_cases(["star"], ["crayon"], [0])
    run_evaluation(pipe, cases, tmp_path, methods="prompt-only", scorers=Scorers(ssim=False))
    with pytest.raises(ValueError, match=r"prompt-only.*sampling\.cfg: 3\.0 -> 2\.0"):
        run_evaluation(pipe, cases, tmp_path, methods="prompt-only", sampling=SamplingConfig(cfg=2.0))
    # another method is a new set of rows, not a conflict
    run_evaluation(pipe, cases, tmp_path, methods="plain", sampling=SamplingConfig(cfg=2.0))


def _adain(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    # the biased std (over one token it is 0: the result is the reference's mean)
    sd_x, sd_r = x.std(-2, keepdim=True, unbiased=False), ref.std(-2, keepdim=True, unbiased=False)
    return (x - x.mean(-2, keepdim=True)) / (sd_x + 1e-5) * sd_r + ref.mean(-2, keepdim=True)


@pytest.mark.parametrize("scale", [0, 2])
def test_stylealigned_rule_normalises_queries_and_keys_and_shares_the_reference(scale: int) -> None:
    schedule = get_schedule(1.0, "0.06M")
    rules = StyleAlignedConfig().rules(schedule)
    assert {s for r in rules for s in r.scales} == set(range(schedule.num_scales))
    layout = BatchLayout(("sty", "gen"), 1, cfg=True)
    g = torch.Generator().manual_seed(0)
    lq = schedule.grids[scale][0] * schedule.grids[scale][1]
    lk = sum(h * w for h, w in schedule.grids[: scale + 1])  # the cache holds every scale so far
    q = torch.randn(layout.batch, 2, lq, 8, generator=g)
    k, v = (torch.randn(layout.batch, 2, lk, 8, generator=g) for _ in "kv")
    seen: list[tuple[torch.Tensor, ...]] = []

    def attend(*a: Any) -> torch.Tensor:
        seen.append(a[:3])
        return sdpa(*a)

    out = RuleController(rules)(AttnSite(1, scale, "self", layout), q, k, v, None, attend)
    assert len(seen) == 3  # the batch as is, then the generation rows of each CFG half
    for (sq, sk, sv), uncond in zip(seen[1:], (False, True), strict=True):
        r = {p: layout.rows(p, uncond=uncond) for p in layout.paths}
        torch.testing.assert_close(sq, _adain(q[r["gen"]], q[r["sty"]]))
        torch.testing.assert_close(sk, torch.cat((_adain(k[r["gen"]], k[r["sty"]]), k[r["sty"]]), 2))
        torch.testing.assert_close(sv, torch.cat((v[r["gen"]], v[r["sty"]]), 2))
        assert sk.shape[2] == 2 * lk
        torch.testing.assert_close(out[r["sty"]], sdpa(q[r["sty"]], k[r["sty"]], v[r["sty"]], None))
    assert torch.isfinite(out).all()


def test_stylealigned_shares_at_every_scale_and_layer(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    edited: set[tuple[int | None, int]] = set()

    class Recording(RuleController):
        def __call__(self, site: AttnSite, *args: Any) -> torch.Tensor:
            if any(r.applies(site) for r in self.rules):
                edited.add((site.scale, site.layer))
            return super().__call__(site, *args)

    monkeypatch.setattr(methods_module, "RuleController", Recording)
    ref = world.render("heart", "crayon", 1).image
    request = Request("a star", "crayon style", ref, 0, SamplingConfig())
    img = METHODS["stylealigned"](pipe, request)
    scales = pipe.schedule_for().num_scales
    assert edited == {(s, layer) for s in range(scales) for layer in range(pipe.transformer.cfg.depth)}
    assert img.size == (64, 64)
    again = METHODS["stylealigned"](pipe, request)
    plain = METHODS["prompt-only"](pipe, replace(request, ref_image=None))
    assert again.tobytes() == img.tobytes() != plain.tobytes()
    with pytest.raises(ValueError, match="needs a style reference"):
        METHODS["stylealigned"](pipe, replace(request, ref_image=None))


def test_method_registry() -> None:
    assert list(METHODS) == ["plain", "prompt-only", "stylealigned", "a", "b", "c", "d"]
    assert list(get_methods("ours, plain")) == ["d", "plain"]
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['dd'\]; choose from"):
        get_methods("dd")


def test_procedural_defaults_and_bad_values() -> None:
    cases = protocols.procedural_cases()
    assert len(cases) == len(protocols.PROCEDURAL_CONTENTS) * 7
    assert {c.style for c in cases} == set(world.HELD_OUT_STYLES)
    assert all(c.ref_content not in (None, c.content) for c in cases)
    with pytest.raises(ValueError, match=r"unknown held-out style\(s\) \['neon'\]; choose from \['crayon'"):
        protocols.procedural_cases(styles=["neon"])
    assert parse_int_list("0, 2-4,5", "seeds") == (0, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="seeds must look like"):
        parse_int_list("a", "seeds")


@pytest.fixture
def finestyle_lists() -> tuple[Path, Path]:
    if not (FINESTYLE / "prompts_190.csv").is_file():
        pytest.skip(f"FineStyle lists not found in {FINESTYLE}")
    return FINESTYLE / "prompts_190.csv", FINESTYLE / "styles_10.csv"


def test_finestyle_reads_the_lists_and_builds_prompts(
    finestyle_lists: tuple[Path, Path], tmp_path: Path
) -> None:
    assert protocols.finestyle_files(None, None) == finestyle_lists  # the default folder beside the repo
    prompts, styles = protocols.read_finestyle(*finestyle_lists)
    assert len(prompts) == 190 and len(styles) == 10
    with finestyle_lists[0].open() as f:
        first = next(csv.DictReader(f))
    assert prompts[0].content_id == first["content_id"]
    for sid in ("style_04", "style_05"):
        Image.new("RGB", (80, 60), "red").save(tmp_path / f"{sid}.png")
    cases = protocols.finestyle_cases(
        prompts, styles, tmp_path, contents=["parti_006"], style_ids=["style_04", "style_05"], seeds=[0, 1]
    )
    assert [(c.style, c.seed) for c in cases] == [
        ("style_04", 0),
        ("style_04", 1),
        ("style_05", 0),
        ("style_05", 1),
    ]
    crayon, oil = cases[0], cases[2]
    assert crayon.prompt == "A shiba inu, animals, in kid crayon drawing style"
    assert crayon.content_prompt == "a shiba inu" and crayon.style_prompt == "kid crayon drawing style"
    # the list's descriptor "oil painting style" already ends in "style"
    assert oil.prompt == "A shiba inu, animals, in oil painting style"
    assert oil.style_prompt == "oil painting style"
    assert crayon.reference().size == (80, 60)
    with pytest.raises(FileNotFoundError, match=r"style_06\.png"):
        protocols.finestyle_cases(prompts, styles, tmp_path, contents=["parti_006"])
    with pytest.raises(ValueError, match=r"unknown FineStyle style\(s\) \['style_99'\]"):
        protocols.finestyle_cases(prompts, styles, tmp_path, style_ids=["style_99"])


def test_finestyle_run_without_downloads(
    finestyle_lists: tuple[Path, Path], pipe: Pipeline, tmp_path: Path
) -> None:
    prompts, styles = protocols.read_finestyle(*finestyle_lists)
    refs = tmp_path / "refs"
    refs.mkdir()
    world.render("tree", "marble", 5, size=96).image.save(refs / "style_07.png")
    cases = protocols.finestyle_cases(prompts, styles, refs, contents=["a chair"], style_ids=["style_07"])
    result = run_evaluation(pipe, cases, tmp_path / "run", methods="prompt-only,d")
    assert [r["prompt"] for r in result.rows] == ["A chair, objects, in watercolor painting style"] * 2
    assert all(r["ref_file"] == str(refs / "style_07.png") and "ssim" in r for r in result.rows)
    assert "content_correct" not in result.rows[0]  # ground truth is the procedural world's only
    assert summary_csv(summarize_rows(result.rows)).splitlines()[0] == "method,images,ssim,seconds_per_image"
    assert not (tmp_path / "run" / "plot.png").exists()  # no fidelity metric without CLIP


def test_summary_table_columns() -> None:
    rows = [
        {
            "method": m,
            "seconds": s,
            "content_correct": c,
            "style_correct": True,
            "p_style": 0.5,
            "leakage": False,
        }
        for m, s, c in (("d", 1.0, True), ("d", 3.0, False), ("plain", 0.5, True))
    ]
    summary = summarize_rows(rows, ["plain", "d"])
    assert [s["method"] for s in summary] == ["plain", "d"]
    assert summary[1] == {
        "method": "d",
        "images": 2,
        "content_acc": 0.5,
        "style_acc": 1.0,
        "p_style": 0.5,
        "leakage": 0.0,
        "seconds_per_image": 2.0,
    }
    header = summary_csv(summary).splitlines()[0]
    assert header == "method,images,content_acc,style_acc,p_style,leakage,seconds_per_image"
    md = summary_markdown(summary).splitlines()
    assert (
        md[0]
        == "| method | images | content_acc ↑ | style_acc ↑ | p_style ↑ | leakage ↓ | seconds_per_image |"
    )
    assert md[3] == "| d | 2 | 0.500 | 1.000 | 0.500 | 0.000 | 2.000 |"


def test_cli_evaluate(judged_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def cli(*extra: str) -> int:
        base = ["evaluate", "--model", str(judged_model_dir), "--out", str(tmp_path / "run"), "--quiet"]
        return main([*base, *extra])

    assert (
        cli("--protocol", "procedural", "--contents", "star", "--styles", "tie dye", "--methods", "plain,a")
        == 0
    )
    rows = read_rows(tmp_path / "run")
    assert [(r["method"], r["style"]) for r in rows] == [("plain", "tie dye"), ("a", "tie dye")]
    assert "gram_style" in rows[0] and (tmp_path / "run" / "sheets" / "tie-dye.png").is_file()
    capsys.readouterr()
    assert cli("--protocol", "procedural", "--methods", "plain,nope") == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_finestyle_missing_style_image_names_the_file(
    finestyle_lists: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "evaluate",
            "--protocol",
            "finestyle",
            "--style-images",
            str(tmp_path),
            "--styles",
            "style_10",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "style_10.png") in err and err.count("\n") == 1


def test_stylear_reads_a_prompt_file_and_a_style_folder(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# StyleAR-style list\na dog\n\na red car  # inline comment\n")
    assert protocols.read_prompt_file(prompts) == ["a dog", "a red car"]
    styles = tmp_path / "styles"
    styles.mkdir()
    Image.new("RGB", (40, 30), "blue").save(styles / "oil_painting.png")
    Image.new("RGB", (40, 30), "red").save(styles / "s2.jpg")
    (styles / "notes.txt").write_text("not an image")
    (styles / "styles.csv").write_text("style_id,style_descriptor\ns2,glowing neon style\n")
    cases = protocols.stylear_cases(protocols.read_prompt_file(prompts), styles, seeds=[0, 3])
    assert [(c.style, c.content, c.seed) for c in cases] == [
        (s, p, seed) for s in ("oil_painting", "s2") for p in ("p00", "p01") for seed in (0, 3)
    ]
    oil, neon = cases[0], cases[-1]
    assert (oil.prompt, oil.content_prompt, oil.style_prompt) == (
        "a dog in oil painting style",
        "a dog",
        "oil painting style",
    )
    assert neon.prompt == "a red car in glowing neon style" and neon.reference().size == (40, 30)
    picked = protocols.stylear_cases(["a dog", "a cat"], styles, contents=["a cat"], style_ids=["s2"])
    assert [(c.content, c.content_prompt) for c in picked] == [("p01", "a cat")]
    with pytest.raises(ValueError, match=r"unknown prompt\(s\) \['p07'\]"):
        protocols.stylear_cases(["a dog"], styles, contents=["p07"])
    with pytest.raises(ValueError, match=r"unknown style\(s\) \['nope'\]"):
        protocols.stylear_cases(["a dog"], styles, style_ids=["nope"])
    prompts.write_text("a dog\na dog\n")
    with pytest.raises(ValueError, match="repeated prompt"):
        protocols.read_prompt_file(prompts)


def test_cli_stylear_run(judged_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    styles = tmp_path / "styles"
    styles.mkdir()
    world.render("tree", "marble", 5, size=96).image.save(styles / "marble.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a star\n")
    base = ["evaluate", "--model", str(judged_model_dir), "--out", str(tmp_path / "run"), "--quiet"]
    assert main([*base, "--protocol", "stylear", "--methods", "prompt-only"]) == 2
    assert "--prompts-file" in capsys.readouterr().err
    args = ["--protocol", "stylear", "--prompts-file", str(prompts), "--style-images", str(styles)]
    assert main([*base, *args, "--methods", "prompt-only,d"]) == 0
    rows = read_rows(tmp_path / "run")
    assert [(r["protocol"], r["method"], r["prompt"]) for r in rows] == [
        ("stylear", "prompt-only", "a star in marble style"),
        ("stylear", "d", "a star in marble style"),
    ]
    assert "content_correct" not in rows[0] and rows[1]["ref_file"] == str(styles / "marble.png")
