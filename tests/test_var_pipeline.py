"""VAR through the one Pipeline and the training-free style method on a class-conditional model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalestyle.cli import main
from scalestyle.config import SamplingConfig
from scalestyle.metadata import read_png_metadata
from scalestyle.method.rules import RuleController
from scalestyle.method.style import StyleConfig, StylePipeline
from scalestyle.pipeline import Pipeline
from scalestyle.sampling import PathPlan, ScaleEvent

# var-tiny has V = 64: top-k must not exceed it (upstream's rule)
SAMPLING = SamplingConfig(cfg=1.5, top_k=20, top_p=0.95, seed=3)


@pytest.fixture(scope="module")
def var_pipe() -> Pipeline:
    return Pipeline.load("var-tiny", random_weights=True, device="cpu", seed=1)


@pytest.fixture(scope="module")
def reference() -> Image.Image:
    rng = np.random.default_rng(0)
    stripes = (np.indices((64, 64))[1] // 8 % 2) * 220
    return Image.fromarray(
        np.stack([stripes, rng.integers(0, 255, (64, 64)), 255 - stripes], -1).astype(np.uint8)
    )


def test_class_labels_generate_seeded_rgb_images_with_their_metadata(var_pipe: Pipeline) -> None:
    a = var_pipe(class_label=[207, 1], sampling=SAMPLING)
    assert [im.mode for im in a.images] == ["RGB", "RGB"] and a.images[0].size == (64, 64)
    assert torch.equal(
        a.summed_codes_BdHW, var_pipe(class_label=[207, 1], sampling=SAMPLING).summed_codes_BdHW
    )
    other = var_pipe(class_label=[207, 1], sampling=SamplingConfig(cfg=1.5, top_k=20, top_p=0.95, seed=4))
    assert not torch.equal(a.summed_codes_BdHW, other.summed_codes_BdHW)
    assert a.metadata[1]["class_label"] == 1 and a.metadata[1]["settings"]["size_hw"] == [64, 64]
    assert var_pipe.conditioning == "class"


def test_captions_and_labels_go_to_their_own_family(var_pipe: Pipeline) -> None:
    with pytest.raises(ValueError, match="class-conditional"):
        var_pipe("a cat", sampling=SAMPLING)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        var_pipe(class_label=1000, sampling=SAMPLING)
    with pytest.raises(ValueError, match="aspect ratio"):
        var_pipe(class_label=3, sampling=SamplingConfig(top_k=20, h_div_w=2.0))
    text_pipe = Pipeline.load("tiny", random_weights=True, device="cpu")
    with pytest.raises(ValueError, match="text-to-image"):
        text_pipe(class_label=3)


def test_identity_controller_on_var_is_bit_identical(var_pipe: Pipeline) -> None:
    schedule = var_pipe.schedule_for()
    plan = PathPlan("gen", var_pipe.class_labels([5, 9]))
    plain = var_pipe.run_paths([plan], SAMPLING, schedule)["gen"]
    controlled = var_pipe.run_paths([plan], SAMPLING, schedule, RuleController([]))["gen"]
    assert torch.equal(plain, controlled)


def test_style_method_on_var_teacher_forces_the_reference(var_pipe: Pipeline, reference: Image.Image) -> None:
    styler = StylePipeline(var_pipe)
    schedule = var_pipe.schedule_for()
    ref = var_pipe.reference_tokens(reference, schedule)
    events: list[ScaleEvent] = []
    # the tiny schedule has 4 scales: key stage at step 2, fine stage at step 3 (convention B)
    style = StyleConfig(key_steps=(2,), fine_steps=(3,))
    out = styler(style_image=reference, class_label=7, style=style, sampling=SAMPLING, on_scale=events.append)
    n_init = style.num_init_scales(schedule)
    for si in range(n_init):
        assert torch.equal(events[si].tokens["gen"], ref[si])
    for event in events:
        if "sty" in event.tokens:
            assert torch.equal(event.tokens["sty"], ref[event.scale])
    plain = var_pipe(class_label=7, sampling=SAMPLING)
    assert not torch.equal(out.summed_codes_BdHW, plain.summed_codes_BdHW)
    assert out.metadata[0]["class_label"] == 7 and out.metadata[0]["style_class"] is None
    # (a) reads no reference: with init off and no sharing it is plain generation of the class
    baseline = styler(
        style_image=reference, class_label=7, style=StyleConfig.ablation("a"), sampling=SAMPLING
    )
    assert torch.equal(baseline.summed_codes_BdHW, plain.summed_codes_BdHW)
    with pytest.raises(ValueError, match="class-conditional"):
        styler("a house", reference, style_prompt="neon style", class_label=7, sampling=SAMPLING)


def test_a_var_model_folder_loads_strictly_and_generates_as_the_model_it_was_saved_from(
    var_pipe: Pipeline, tmp_path: Path
) -> None:
    torch.save(var_pipe.transformer.state_dict(), tmp_path / "t.pth")
    torch.save(var_pipe.vae.state_dict(), tmp_path / "v.pth")
    layout = {"format_version": 1, "preset": "var-tiny", "transformer": "t.pth", "vae": "v.pth"}
    (tmp_path / "scalestyle_model.json").write_text(json.dumps(layout))
    loaded = Pipeline.load(tmp_path, device="cpu")
    got = loaded(class_label=[3], sampling=SAMPLING).summed_codes_BdHW
    assert torch.equal(got, var_pipe(class_label=[3], sampling=SAMPLING).summed_codes_BdHW)


def test_generate_cli_writes_one_png_per_class_label(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    argv = [
        "generate",
        "--model",
        "var-tiny",
        "--random-weights",
        "--top-k",
        "20",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main([*argv, "--class-label", "207", "--class-label", "3"]) == 0
    first, second = read_png_metadata(out), read_png_metadata(tmp_path / "x-1.png")
    assert (first["class_label"], second["class_label"]) == ("207", "3")  # PNG text chunks
    assert Image.open(out).mode == "RGB"


@pytest.mark.parametrize(
    ("model", "flags", "message"),
    [
        ("var-tiny", ["--prompt", "a cat"], "class-conditional"),
        ("tiny", ["--class-label", "3"], "text-to-image"),
        ("var-tiny", ["--class-label", "3", "--top-k", "900"], "top_k must be in [0, 64]"),
    ],
)
def test_generate_cli_family_mismatch_is_one_line(
    model: str, flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--model", model, "--random-weights", "--quiet", "--out", str(tmp_path / "o.png")]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o.png").exists()
