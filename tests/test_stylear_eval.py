"""StyleAR adapters in the evaluation (issue 16): --stylear NAME=DIR[:no-se], rows with config, seed and
commit, SE from the world's masks, resumption."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from scalestyle.config import SamplingConfig
from scalestyle.eval import protocols
from scalestyle.eval.evaluate import Scorers, run_evaluation
from scalestyle.eval.methods import Method, Request
from scalestyle.eval.stylear_methods import (
    StyleARSpec,
    adapter_digest,
    parse_stylear_spec,
    select_methods,
)
from scalestyle.models.stylear import StyleARAdapter, StyleARConfig
from scalestyle.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_model_dir, device="cpu")


def save_adapter(folder: Path, seed: int = 0) -> Path:
    cfg = StyleARConfig(
        text_width=128, encoder="vae", encoder_width=8, encoder_source=None, num_queries=4, depth=1, heads=2,
        dim_head=8, width=32,
    )  # fmt: skip
    adapter = StyleARAdapter(cfg)
    adapter.resampler.init_weights(torch.Generator().manual_seed(seed))
    return adapter.save(folder)


def test_specs_parse_and_refuse_bad_values(tmp_path: Path) -> None:
    folder = save_adapter(tmp_path / "a")
    assert parse_stylear_spec(f"sar={folder}") == StyleARSpec("sar", folder, True)
    assert not parse_stylear_spec(f"sar-plain={folder}:no-se").se
    for bad, match in (
        (str(folder), "NAME=DIR"),
        (f"=x{folder}", "NAME=DIR"),
        (f"d={folder}", "built-in"),
        (f"x={tmp_path / 'none'}", "not a StyleAR adapter"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_stylear_spec(bad)
    spec = parse_stylear_spec(f"sar={folder}")
    assert list(select_methods(None, [spec], default="prompt-only,d")) == ["prompt-only", "d", "sar"]
    assert list(select_methods("sar,ours", [spec])) == ["sar", "d"]
    with pytest.raises(ValueError, match="unknown method"):
        select_methods("sar,nope", [spec])
    with pytest.raises(ValueError, match="must differ"):
        select_methods(None, [spec, spec])


def test_procedural_cases_pass_the_worlds_reference_mask() -> None:
    case = protocols.procedural_cases(["star"], ["crayon"], [0])[0]
    mask = case.reference_mask()
    assert mask is not None and mask.dtype == bool and mask.shape == np.asarray(case.reference()).shape[:2]
    assert 0 < mask.mean() < 1


@pytest.mark.slow  # three StyleAR images and a prompt-only one on the tiny model, then a resumed run
def test_stylear_rows_in_the_procedural_protocol(pipe: Pipeline, tmp_path: Path) -> None:
    folder = save_adapter(tmp_path / "adapter")
    specs = [parse_stylear_spec(f"sar={folder}"), parse_stylear_spec(f"sar-no-se={folder}:no-se")]
    methods = select_methods("prompt-only,sar,sar-no-se", specs)
    seen: list[Request] = []
    spy = methods["sar"]
    methods["sar"] = Method(
        spy.name, lambda p, r: (seen.append(r), spy.run(p, r))[1], spy.settings, spy.reads_style
    )
    cases = protocols.procedural_cases(["star"], ["crayon"], [0])
    sampling = SamplingConfig(seed=0, top_k=0)
    out = tmp_path / "run"
    result = run_evaluation(pipe, cases, out, methods=methods, sampling=sampling, scorers=Scorers(ssim=False))
    assert result.computed == 3
    rows = {r["method"]: r for r in result.rows}
    assert rows.keys() == {"prompt-only", "sar", "sar-no-se"}
    for name, se in (("sar", True), ("sar-no-se", False)):
        settings = rows[name]["config"]["settings"]
        assert settings["kind"] == "stylear" and settings["se"] is se
        assert (
            settings["adapter_sha256"] == adapter_digest(folder) and settings["adapter"]["num_queries"] == 4
        )
        assert rows[name]["seed"] == 0 and "commit" in rows[name] and rows[name]["config_hash"]
    assert rows["sar"]["config_hash"] != rows["sar-no-se"]["config_hash"]
    assert seen and seen[0].ref_mask is not None
    assert np.array_equal(seen[0].ref_mask, cases[0].reference_mask())
    from PIL import Image

    def pixels(name: str) -> np.ndarray:
        with Image.open(out / rows[name]["image"]) as img:
            return np.asarray(img.convert("RGB"))

    assert not np.array_equal(pixels("sar"), pixels("sar-no-se"))  # SE tokens change the image
    again = run_evaluation(
        pipe, cases, out, methods=select_methods("prompt-only,sar,sar-no-se", specs), sampling=sampling,
        scorers=Scorers(ssim=False),
    )  # fmt: skip
    assert again.computed == 0 and again.skipped == 3
    save_adapter(folder, seed=1)  # retrained under the same name: its old rows are not mixed in
    with pytest.raises(ValueError, match="other settings"):
        run_evaluation(
            pipe, cases, out, methods=select_methods("sar", [replace(specs[0])]), sampling=sampling,
            scorers=Scorers(ssim=False),
        )  # fmt: skip


def test_evaluate_cli_refuses_stylear_with_transfer_and_bad_specs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scalestyle.cli import main

    folder = save_adapter(tmp_path / "a")
    base = ["evaluate", "--out", str(tmp_path / "run"), "--quiet"]
    assert main([*base, "--protocol", "transfer", "--stylear", f"sar={folder}"]) != 0
    assert "--stylear is for" in capsys.readouterr().err
    assert main([*base, "--protocol", "procedural", "--stylear", f"sar={tmp_path}"]) != 0
    assert "not a StyleAR adapter" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # one StyleAR image through `scalestyle evaluate` on the tiny model
def test_evaluate_cli_runs_a_stylear_method(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    from scalestyle.cli import main

    folder = save_adapter(tmp_path / "a")
    argv = ["evaluate", "--protocol", "procedural", "--model", str(tiny_model_dir), "--quiet"]
    argv += [
        "--stylear",
        f"sar={folder}:no-se",
        "--methods",
        "sar",
        "--contents",
        "star",
        "--styles",
        "crayon",
    ]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["sar"] and rows[0]["config"]["settings"]["se"] is False
    assert "sar" in (tmp_path / "run" / "summary.md").read_text()
