"""Issue 13: batch outputs that never go stale or collide, one-line errors, bounded inputs, no silent loss,
and the exact T5 path of the official presets."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalestyle.cli import build_parser, main
from scalestyle.config import TextEncoderConfig, parse_int_list
from scalestyle.metadata import read_png_metadata
from scalestyle.records import folder_lock
from tests.helpers import WORDS


def ref_image(path: Path, seed: int = 0, size: int = 80) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("scalestyle: error: ") and "Traceback" not in err[0]
    return err[0]


def stylize(model: Path, *args: str) -> int:
    return main(["stylize", "--model", str(model), "--quiet", *args])


# -- integer lists ------------------------------------------------------------------------------------------


def test_one_integer_list_parser_takes_ranges_and_lists_and_refuses_repeats() -> None:
    assert parse_int_list("4-7", "steps") == (4, 5, 6, 7) == parse_int_list("4,5,6,7", "steps")
    assert parse_int_list("0,2-3", "seeds") == (0, 2, 3)
    for bad, message in (
        ("2,2", "more than once"),
        ("1-3,3", "more than once"),
        ("", "empty"),
        (" , ", "empty"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_int_list(bad, "steps")
    args = build_parser().parse_args(["stylize", "--key-steps", "2-3", "--fine-steps", "4-7"])
    assert args.key_steps == (2, 3) and args.fine_steps == (4, 5, 6, 7)


@pytest.mark.parametrize("argv", [["--key-steps", "2,2"], ["--fine-steps", "4,5,4"], ["--fine-steps", ""]])
def test_bad_step_lists_are_one_line_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stylize", "--text-only", "--prompt", "a star", *argv]) == 2
    assert argv[0] in one_line(capsys)


# -- help ---------------------------------------------------------------------------------------------------


def _subparsers(parser: object) -> list[object]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += [sub, *_subparsers(sub)]
    return found


def test_help_gives_every_flag_a_text_and_its_default() -> None:
    import argparse

    for sub in _subparsers(build_parser()):
        assert isinstance(sub, argparse.ArgumentParser)
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{sub.prog} {action.option_strings or action.dest} has no help"
            shown = action.default is not None and action.default is not False and action.default != []
            if action.option_strings and shown:
                assert "default" in sub._get_formatter()._get_help_string(action), (sub.prog, action.dest)
        if "--seed" in text:
            assert "(default: 0)" in text


def test_help_loads_no_torch() -> None:
    """Every parser's help in a fresh interpreter: torch (over a second to import) must stay unloaded, so
    that ``scalestyle --help`` and each subcommand's answer at once."""
    import subprocess
    import sys

    walk = (
        "import argparse, sys\n"
        "from scalestyle.cli import build_parser\n"
        "def walk(p):\n"
        "    for a in p._actions:\n"
        "        if isinstance(a, argparse._SubParsersAction):\n"
        "            for sub in a.choices.values():\n"
        "                yield sub\n"
        "                yield from walk(sub)\n"
        "helps = [sub.format_help() for sub in walk(build_parser())]\n"
        "print(len(helps), sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", walk], capture_output=True, text=True, check=True).stdout
    count, loaded = out.split(" ", 1)
    assert int(count) == len(_subparsers(build_parser())) and loaded.strip() == "[]"


# -- batch runs ---------------------------------------------------------------------------------------------


def test_batch_reuses_only_images_made_with_the_same_settings(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    base = ["--style", str(ref_image(tmp_path / "r.png")), "--prompt", "a star", "--out-dir", str(out)]
    assert stylize(tiny_model_dir, *base, "--style-prompt", "neon style") == 0
    (png,) = out.glob("*.png")
    before = png.read_bytes()
    assert stylize(tiny_model_dir, *base, "--style-prompt", "blueprint style") == 2
    line = one_line(capsys)
    assert "style_prompt: 'neon style' -> 'blueprint style'" in line and "--overwrite" in line
    assert png.read_bytes() == before  # refused: nothing touched
    assert stylize(tiny_model_dir, *base, "--style-prompt", "neon style", "--cfg", "2") == 2
    assert "sampling.cfg: 3.0 -> 2.0" in one_line(capsys)
    assert stylize(tiny_model_dir, *base, "--style-prompt", "blueprint style", "--overwrite") == 0
    meta = read_png_metadata(png)
    assert meta["style_prompt"] == "blueprint style"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["file"] for r in rows} == {png.name} and rows[-1]["settings"][
        "style_prompt"
    ] == "blueprint style"


def test_jobs_never_share_a_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    refs = [ref_image(tmp_path / "a" / "ref.png", 0), ref_image(tmp_path / "b" / "ref.png", 1)]
    long = "a star " + "x" * 60
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"A star!\na star\n{long}1\n{long}2\n")
    args = ["--style", str(refs[0]), "--style", str(refs[1]), "--prompts", str(prompts)]
    assert stylize(tiny_model_dir, *args, "--out-dir", str(tmp_path / "out")) == 0
    pngs = sorted((tmp_path / "out").glob("*.png"))
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(pngs) == 8 == len({r["file"] for r in rows}) == len({r["job"] for r in rows})
    assert {(r["prompt"], r["style_file"]) for r in rows} == {
        (p, str(r)) for r in refs for p in ("A star!", "a star", f"{long}1", f"{long}2")
    }


def test_temporary_files_of_a_killed_run_are_removed(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".x.png.999999999.tmp"  # no such pid
    dead.write_bytes(b"partial")
    mine = out / f".y.png.{os.getpid()}.tmp"  # a live writer's file is kept
    mine.write_bytes(b"partial")
    ref = str(ref_image(tmp_path / "r.png"))
    assert stylize(tiny_model_dir, "--style", ref, "--prompt", "a star", "--out-dir", str(out)) == 0
    assert not dead.exists() and mine.exists()


def test_a_second_writer_on_one_folder_is_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["evaluate", "--protocol", "procedural", "--model", str(tiny_model_dir), "--methods", "plain"]
    argv += ["--contents", "star", "--styles", "crayon", "--out", str(out), "--quiet", "--no-ssim"]
    with folder_lock(out):
        assert main(argv) == 2
        assert f"pid {os.getpid()}" in one_line(capsys)
        assert not (out / "rows.jsonl").exists()
    assert main(argv) == 0  # the lock goes with its holder


# -- one line, never a traceback ----------------------------------------------------------------------------


def _readonly_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return folder
    # root writes through permission bits: a read-only filesystem refuses everyone
    for candidate in (Path("/sys/kernel"), Path("/proc/sys")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            return candidate
    pytest.skip("no read-only folder available")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("out-is-folder", "is a folder"),
        ("out-exists", "--overwrite"),
        ("out-and-out-dir", "not both"),
        ("out-dir-is-file", "is a file"),
        ("out-dir-readonly", "cannot write into"),
        ("bogus-device", "not a device name"),
        ("cfg", "cfg must be in [0, 50]"),
        ("seed", "seed must be in"),
        ("tau", "tau must be in"),
        ("aspect", "aspect"),
    ],
)
def test_bad_outputs_devices_and_numbers_fail_in_one_line_before_loading(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a model folder that does not exist: every check must come before the model is looked at
    ref = str(ref_image(tmp_path / "r.png"))
    argv = ["stylize", "--model", str(tmp_path / "no-model"), "--style", ref, "--prompt", "a star"]
    out = tmp_path / "o.png"
    extra = {
        "out-is-folder": ["--out", str(tmp_path)],
        "out-exists": ["--out", str(ref)],
        "out-and-out-dir": ["--out", str(out), "--out-dir", str(tmp_path / "d")],
        "out-dir-is-file": ["--out-dir", ref],
        "out-dir-readonly": ["--out-dir", str(_readonly_dir(tmp_path) / "sub")],
        "bogus-device": ["--out", str(out), "--device", "gpu7"],
        "cfg": ["--out", str(out), "--cfg", "-1"],
        "seed": ["--out", str(out), "--seed", "-1"],
        "tau": ["--out", str(out), "--tau", "0"],
        "aspect": ["--out", str(out), "--aspect", "9:1"],
    }[case]
    assert main([*argv, *extra]) == 2
    assert message in one_line(capsys)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", "--prompt", "a star", "--out", str(tmp_path / "o.png"), "--device", "cuda"]
    assert main(argv) == 2
    assert "CUDA is not available" in one_line(capsys)


def test_bench_batch_zero_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", "tiny", "--random-weights", "--batch", "0"]) == 2
    line = one_line(capsys)
    assert "--batch" in line and "prompt" not in line


def test_bench_random_weights_says_what_it_builds(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--model", "tiny", "--random-weights", "--runs", "1", "--warmup", "0"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "building tiny with random weights" in err and "parameters" in err and "MiB" in err


def test_a_malicious_pickle_is_one_line_and_never_runs(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "text_encoder" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"shared.weight": Payload()}, folder / "text_encoder" / "pytorch_model.bin")
    argv = ["generate", "--model", str(folder), "--prompt", "a star", "--out", str(tmp_path / "o.png")]
    assert main([*argv, "--quiet"]) == 2
    line = one_line(capsys)
    assert "pytorch_model.bin" in line and "posix.system" in line
    assert "weights_only=False" not in line and "weights_only` set to `False" not in line
    assert not marker.exists()


def test_fewer_cfg_uncond_rows_say_what_the_rest_are() -> None:
    from scalestyle.weights import adapt_infinity_state

    own = {"cfg_uncond": torch.zeros(8, 4)}
    ckpt = {"cfg_uncond": torch.ones(5, 4)}
    with pytest.warns(UserWarning, match=r"rows 5\.\.7.*upstream's initial rows"):
        out = adapt_infinity_state(own, ckpt)["cfg_uncond"]
    expected = torch.empty(8, 4)
    torch.nn.init.trunc_normal_(expected, std=1.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:5], ckpt["cfg_uncond"]) and torch.equal(out[5:], (expected / 2)[5:])


# -- bounded inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_large_references_are_downscaled_on_open(suffix: str, tmp_path: Path) -> None:
    from scalestyle.images import load_image

    path = tmp_path / f"big{suffix}"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 600, 3), dtype=np.uint8)).save(path)
    img = load_image(path, max_side=100)
    assert img.size == (100, 50) and img.mode == "RGB"
    assert load_image(path, max_side=None).size == (600, 300)


# -- silent input loss ------------------------------------------------------------------------------------


def test_unknown_and_truncated_words_are_named(tiny_model_dir: Path) -> None:
    from scalestyle.models.text_encoder import CaptionWarning, TextEncoder

    encoder = TextEncoder.from_pretrained(tiny_model_dir / "text_encoder", max_length=6)
    with pytest.warns(CaptionWarning, match=r"\['zebra', 'purple'\].*reads 5 tokens"):
        encoder.encode(["a zebra purple star"])
    with pytest.warns(CaptionWarning, match=r"cut at 6 of its 9 tokens, dropping 'of circle cat'.*reads 6"):
        encoder.encode(["a star in neon style of circle cat"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["a star in neon style"])


def test_cli_warnings_are_one_line(
    tiny_model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--model", str(tiny_model_dir), "--prompt", "a zebra star", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "o.png")]) == 0
    assert capfd.readouterr().err.strip().splitlines() == [
        "scalestyle: warning: caption 'a zebra star': unknown to the vocabulary (read as <unk>): ['zebra']; "
        "the encoder reads 4 tokens"
    ]
    # past max_length: our one line, not also transformers' own notice (logged to fd 2: capfd)
    assert main([*argv[:3], "--prompt", "a star " * 20, "--quiet", "--out", str(tmp_path / "p.png")]) == 0
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert line.startswith("scalestyle: warning: ") and "cut at 32 of its 41 tokens" in line


def test_style_pipeline_takes_paths_and_names_other_types(tiny_model_dir: Path, tmp_path: Path) -> None:
    from scalestyle.config import SamplingConfig
    from scalestyle.method.style import StylePipeline
    from scalestyle.pipeline import Pipeline

    styler = StylePipeline(Pipeline.load(tiny_model_dir, device="cpu"))
    ref = ref_image(tmp_path / "r.png")
    sampling = SamplingConfig(seed=3)
    by_path = styler("a star", str(ref), style_prompt="neon style", sampling=sampling)
    by_image = styler("a star", Image.open(ref).convert("RGB"), style_prompt="neon style", sampling=sampling)
    assert torch.equal(by_path.summed_codes_BdHW, by_image.summed_codes_BdHW)
    with pytest.raises(TypeError, match="got int"):
        styler("a star", 7, style_prompt="neon style")  # type: ignore[arg-type]


def test_stylize_without_a_style_prompt(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    ref = str(ref_image(tmp_path / "r.png"))
    assert stylize(tiny_model_dir, "--style", ref, "--prompt", "a star", "--out", str(out)) == 0
    meta = read_png_metadata(out)
    assert meta["prompt"] == "a star in style" and meta["style_prompt"] == "style"


def test_offline_download_leaves_no_model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from scalestyle.weights import WeightsError, download

    def offline(**kwargs: object) -> None:
        raise OSError("could not connect")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    dest = tmp_path / "home" / "infinity-2b"
    with pytest.raises(WeightsError, match="could not reach the hub"):
        download("infinity-2b", dest)
    assert not dest.exists() and list((tmp_path / "home").iterdir()) == []


def test_adain_of_one_token_is_the_reference_mean() -> None:
    from scalestyle.method.rules import AdaIN, resolve

    x = torch.randn(2, 2, 1, 4)  # rows: gen, sty; one token
    out = resolve(AdaIN("gen", "sty"), x, {"gen": slice(0, 1), "sty": slice(1, 2)})
    assert torch.isfinite(out).all() and torch.allclose(out, x[1:2])
    many = torch.randn(2, 2, 5, 4)
    got = resolve(AdaIN("gen", "sty", eps=0.0), many, {"gen": slice(0, 1), "sty": slice(1, 2)})
    assert torch.allclose(got.std(dim=-2, unbiased=False), many[1:].std(dim=-2, unbiased=False), atol=1e-5)


# -- the exact T5 path ------------------------------------------------------------------------------------


def _upstream_encode(
    model: torch.nn.Module, tokenizer: object, prompts: list[str]
) -> tuple[torch.Tensor, list[int]]:
    """`tools/run_infinity.py::encode_prompt` as upstream writes it (fp16 T5, 512-token padding)."""
    tokens = tokenizer(
        text=prompts, max_length=512, padding="max_length", truncation=True, return_tensors="pt"
    )  # type: ignore[operator]
    mask = tokens.attention_mask
    feats = model(input_ids=tokens.input_ids, attention_mask=mask)["last_hidden_state"].float()
    lens = mask.sum(dim=-1).tolist()
    return torch.cat([f[:n] for f, n in zip(feats, lens, strict=True)]), lens


def test_official_text_setting_reproduces_upstream_features(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    from scalestyle.config import get_preset
    from scalestyle.models.demo_text import build_demo_text_encoder
    from scalestyle.models.text_encoder import TextEncoder

    folder = build_demo_text_encoder(WORDS, tmp_path / "t5", max_length=512)
    official = get_preset("infinity-2b").text
    assert (official.padding, official.dtype, official.max_length) == ("max_length", "float16", 512)
    prompts = ["a star in neon style", "a cat", "the photo of a circle in blueprint style"]
    model = T5EncoderModel.from_pretrained(folder, dtype=torch.float16)
    tokenizer = AutoTokenizer.from_pretrained(folder, legacy=True)
    with torch.inference_mode():
        want, lens = _upstream_encode(model, tokenizer, prompts)
    ours = TextEncoder.from_config(official, source=folder)
    got = ours.encode(prompts)
    assert got.lens == tuple(lens) and torch.equal(got.feats_NE, want)  # bit for bit
    longest = TextEncoder.from_config(TextEncoderConfig(str(folder), 512, "longest", "float16")).encode(
        prompts
    )
    assert longest.lens == got.lens
    assert torch.allclose(longest.feats_NE, want, rtol=0, atol=2e-2)  # fp16 rounding only
