"""The next demo's preset and recipe (issue 14), its VAE's norm through a model folder, and the background
driver's status reader."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from scalestyle.config import get_preset
from scalestyle.models.bsq_vae import BSQVAE, RMSNorm2d
from scalestyle.models.infinity import Infinity
from scalestyle.pipeline import Pipeline
from scalestyle.schedules import get_schedule
from scalestyle.train.demo import (
    DEMO_RECIPES,
    DEMO_V2,
    DemoTrainConfig,
    demo_preset,
    snapshot_demo,
    train_demo,
)
from scalestyle.weights import load_vae_weights, read_model_config, read_state_dict, save_model_dir
from tests.helpers import tiny_transformer

ROOT = Path(__file__).resolve().parents[1]


def test_v2_keeps_the_world_size_with_more_scales_and_fits_the_file_budget() -> None:
    schedule = get_schedule(1.0, DEMO_V2.default_pn)
    assert schedule.num_scales == 10  # the fine stage 4..7 leaves scales 8 and 9 free
    assert schedule.last_grid[0] * DEMO_V2.vae.stride == 64  # the judges' and the world's size
    assert DEMO_V2.vae.norm == "pixel"
    # built on the CPU: the meta device is ten times slower here (torch's python meta kernels)
    params = sum(p.numel() for p in Infinity(DEMO_V2.transformer).parameters())
    assert params * 2 <= 16 * 2**20  # shipped in fp16
    assert demo_preset("demo-v2") is DEMO_V2 and demo_preset("demo").name == "demo"


def test_v2_recipe_trains_a_prefix_of_the_schedule() -> None:
    cfg = DEMO_RECIPES["v2"]()
    assert cfg == DemoTrainConfig.v2() and cfg.preset == DEMO_V2.name
    t = cfg.transformer
    assert t.prefix_scales is not None and t.full_rows is not None
    assert t.prefix_scales < get_schedule(1.0, DEMO_V2.default_pn).num_scales
    assert t.full_rows < t.batch_size


def load_tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_driver_status_reads_steps_losses_and_the_latest_runs_rate(tmp_path: Path) -> None:
    tool = load_tool("train_demo")
    rows = [
        {"time_s": 10.0, "step": 25, "loss": 1.0},
        {"time_s": 20.0, "step": 50, "loss": 0.8},
        # resumed: the clock restarts, so only these two rows give the rate (2 s per step)
        {"time_s": 5.0, "step": 75, "loss": 0.7},
        {"time_s": 55.0, "step": 100, "loss": 0.6},
    ]
    (tmp_path / "vae_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = tool.status(tmp_path)
    assert "vae: step 100, 2.0 s/step lately" in text
    assert "'loss': 1.0" in text and "'loss': 0.6" in text
    assert "transformer: not started" in text and "classifiers: not done" in text


def test_a_pixel_norm_vae_comes_back_from_its_model_folder_with_its_norm(tmp_path: Path) -> None:
    preset = get_preset("tiny")
    preset = replace(preset, vae=replace(preset.vae, norm="pixel"))
    torch.manual_seed(0)
    vae = BSQVAE(preset.vae).eval()
    save_model_dir(tmp_path, preset=preset, transformer=tiny_transformer(), vae=vae)
    back = read_model_config(tmp_path)
    assert back == preset and back.vae.norm == "pixel"
    loaded = BSQVAE(back.vae).eval()
    load_vae_weights(loaded, read_state_dict(tmp_path / "vae.safetensors"), source=str(tmp_path))
    assert any(isinstance(m, RMSNorm2d) for m in loaded.modules())
    z = torch.randn(1, preset.vae.codebook_dim, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), vae.decode(z))


@pytest.mark.slow  # about 6 s: every stage of the recipe, a few steps each
def test_train_demo_end_to_end_and_a_snapshot_of_its_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = DemoTrainConfig.quick()
    work = tmp_path / "work"
    out = train_demo(tmp_path / "out", work, cfg, progress=False)
    snap = snapshot_demo(work, tmp_path / "snap", cfg)
    for name in ("transformer.safetensors", "vae.safetensors", "content_classifier.safetensors"):
        assert read_state_dict(snap / name).keys() == read_state_dict(out / name).keys()
        for k, v in read_state_dict(out / name).items():
            assert torch.equal(read_state_dict(snap / name)[k], v), (name, k)
    assert read_model_config(snap) == read_model_config(out)
    extra = json.loads((snap / "config.json").read_text())["extra"]["snapshot"]
    assert extra["steps"] == {"vae": 2, "transformer": 2} and extra["judges"] == str(work)
    Pipeline.load(snap, device="cpu")  # a loadable model folder
    tool = load_tool("eval_plain")
    assert tool.main([str(snap), "--styles", "neon"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 16 and 0 <= result["content_acc"] <= 1 and result["styles"] == ["neon"]
    # the plain row does not change when teacher-forced rows are added beside it
    assert tool.main([str(snap), "--styles", "neon", "--given-scales", "2"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced["content_acc"] == result["content_acc"] and forced["style_acc"] == result["style_acc"]
    assert forced["given_scales"]["2"]["n"] == 16
    # per content: one image each here, so each share is 0 or 1 and their mean is the plain accuracy
    assert tool.main([str(snap), "--styles", "neon", "--given-scales", "2", "--per-content"]) == 0
    shares = json.loads(capsys.readouterr().out)["per_content"]
    assert set(shares) == {"plain", "given-2"} and len(shares["plain"]) == 16
    assert set(shares["plain"].values()) <= {0.0, 1.0}
    assert sum(shares["plain"].values()) / 16 == pytest.approx(result["content_acc"])
    with pytest.raises(SystemExit):
        tool.main([str(snap), "--styles", "neon", "--given-scales", "99"])
    with pytest.raises(SystemExit):
        tool.main([str(snap), "--styles", "crayon"])  # a held-out style has no plain caption to check

    for f in work.glob("*_classifier.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no trained classifiers"):
        snapshot_demo(work, tmp_path / "snap2", cfg)
    snapshot_demo(work, tmp_path / "snap2", cfg, judges=out)
    assert json.loads((tmp_path / "snap2" / "config.json").read_text())["extra"]["snapshot"]["judges"] == str(
        out
    )
