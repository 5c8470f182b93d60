"""The one-session demo refresh (issue 14): a decoder-only norm, decoder-only VAE training on a frozen
encoder, and the refresh recipe end to end on the tiny preset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from scalestyle.config import TextEncoderConfig, get_preset
from scalestyle.models.bsq_vae import BSQVAE, RMSNorm2d
from scalestyle.models.demo_text import build_demo_text_encoder
from scalestyle.pipeline import Pipeline
from scalestyle.schedules import get_schedule
from scalestyle.train.demo import world_vocabulary
from scalestyle.train.demo_refresh import COPIED_FILES, DemoRefreshConfig, refresh_demo, refresh_transformer
from scalestyle.train.vae import VAETrainConfig, train_vae
from scalestyle.weights import (
    preset_from_dict,
    preset_to_dict,
    read_model_config,
    read_state_dict,
    save_model_dir,
)
from tests.helpers import tiny_transformer, tiny_vae

TINY_VAE = get_preset("tiny").vae


def test_decoder_norm_changes_only_the_decoder_and_keeps_the_keys() -> None:
    torch.manual_seed(0)
    base = BSQVAE(TINY_VAE)
    mixed = BSQVAE(replace(TINY_VAE, decoder_norm="pixel"))
    mixed.load_state_dict(base.state_dict(), strict=True)
    assert any(isinstance(m, RMSNorm2d) for m in mixed.decoder.modules())
    assert not any(isinstance(m, RMSNorm2d) for m in mixed.encoder.modules())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(mixed.encode_latent(x), base.encode_latent(x))
        z = base.encode_latent(x)
        assert not torch.allclose(mixed.decoder(z), base.decoder(z))
    with pytest.raises(ValueError, match=r"decoder_norm must be None or one of .*'batch'"):
        replace(TINY_VAE, decoder_norm="batch")


def test_decoder_norm_round_trips_through_the_config_and_defaults_to_none() -> None:
    preset = get_preset("tiny")
    mixed = replace(preset, vae=replace(preset.vae, decoder_norm="pixel"))
    data = json.loads(json.dumps(preset_to_dict(mixed)))
    assert preset_from_dict(data, "config.json") == mixed
    data["vae"]["decoder_norm"] = None
    assert preset_from_dict(data, "config.json").vae.decoder_norm is None
    del data["vae"]["decoder_norm"]  # folders written before the setting
    assert preset_from_dict(data, "config.json") == preset


def _images(step: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(batch_size, 3, 32, 32, generator=g) * 2 - 1


def test_decoder_part_trains_the_decoder_on_a_frozen_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = BSQVAE(TINY_VAE)
    cfg = VAETrainConfig(steps=3, batch_size=2, lr=1e-2, part="decoder", amp=False, log_every=1)
    grids = get_schedule(1.0, "0.06M").grids[:3]
    with pytest.raises(ValueError, match="init"):
        train_vae(TINY_VAE, cfg, _images, grids, tmp_path / "none", progress=False)
    vae = train_vae(
        TINY_VAE,
        cfg,
        _images,
        grids,
        tmp_path / "run",
        init=lambda v: v.load_state_dict(base.state_dict()),
        progress=False,
    )
    for name, p in base.state_dict().items():
        same = torch.equal(vae.state_dict()[name], p)
        assert same != name.startswith("decoder."), name
    with pytest.raises(ValueError, match=r"part must be one of .*'encoder'"):
        VAETrainConfig(part="encoder")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-shaped model folder of the tiny preset with random weights and stand-in judge files."""
    root = tmp_path_factory.mktemp("base")
    preset = get_preset("tiny")
    build_demo_text_encoder(
        world_vocabulary(), root / "text_encoder", d_model=preset.transformer.text_channels
    )
    for i, name in enumerate(COPIED_FILES):
        (root / name).write_bytes(bytes([i]) * 8)
    preset = replace(preset, text=TextEncoderConfig("text_encoder", 32))
    return save_model_dir(root, preset=preset, transformer=tiny_transformer(), vae=tiny_vae())


def test_refresh_keeps_the_codes_judges_and_text_and_swaps_the_decoder(
    tiny_base: Path, tmp_path: Path
) -> None:
    out = refresh_demo(
        tiny_base, tmp_path / "out", tmp_path / "work", DemoRefreshConfig.quick(), progress=False
    )
    decoder_only = replace(DemoRefreshConfig.quick(), transformer=None)
    kept = refresh_demo(tiny_base, tmp_path / "kept", tmp_path / "w2", decoder_only, progress=False)
    before = read_state_dict(tiny_base / "transformer.safetensors")
    after = read_state_dict(kept / "transformer.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(after[k], before[k].half()) for k in before)  # shipped in fp16
    assert not (tmp_path / "w2" / "transformer").exists()
    preset = read_model_config(out)
    assert preset.vae.decoder_norm == "pixel" and preset.vae.norm == read_model_config(tiny_base).vae.norm
    for name in COPIED_FILES:
        assert (out / name).read_bytes() == (tiny_base / name).read_bytes()
    assert json.loads((out / "config.json").read_text())["extra"]["refresh"]["trained_by"].endswith("refresh")
    old, new = Pipeline.load(tiny_base, device="cpu"), Pipeline.load(out, device="cpu")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    grids = get_schedule(1.0, preset.default_pn).grids
    assert isinstance(old.vae, BSQVAE) and isinstance(new.vae, BSQVAE)
    a, b = old.vae.encode_multiscale(x, grids), new.vae.encode_multiscale(x, grids)
    assert all(torch.equal(p, q) for p, q in zip(a.bits, b.bits, strict=True))
    assert not torch.equal(new.transformer.head.weight, old.transformer.head.weight)
    image = new("a circle in neon", sampling=None).images[0]
    assert image.mode == "RGB"


def test_the_transformer_stage_resumes_and_a_finished_stage_is_skipped(
    tiny_base: Path, tmp_path: Path
) -> None:
    cfg = DemoRefreshConfig.quick()
    one = replace(cfg, transformer=replace(cfg.transformer, steps=1))
    refresh_transformer(tiny_base, tmp_path / "split", one, progress=False)
    resumed = refresh_transformer(tiny_base, tmp_path / "split", cfg, progress=False)
    straight = refresh_transformer(tiny_base, tmp_path / "straight", cfg, progress=False)
    for (name, p), q in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    log = (tmp_path / "split" / "transformer" / "transformer_log.jsonl").read_text().splitlines()
    again = refresh_transformer(tiny_base, tmp_path / "split", cfg, progress=False)
    assert (tmp_path / "split" / "transformer" / "transformer_log.jsonl").read_text().splitlines() == log
    assert torch.equal(again.head.weight, resumed.head.weight)
