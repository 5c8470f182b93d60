"""The StyleAR trainer: binary-data mixing, gradients to resampler and LoRA, exact resumption."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from scalestyle.data import procedural as world
from scalestyle.models.stylear import StyleARAdapter, StyleARConfig, VAEImageEncoder
from scalestyle.pipeline import Pipeline
from scalestyle.train.stylear import (
    StyleARObjective,
    StyleARTrainConfig,
    WorldSource,
    encoder_features,
    mixed_batch,
    stylized_rows,
    train_stylear,
    world_sources,
)
from scalestyle.train.transformer import encode_batch


def adapter(lora_rank: int = 2) -> StyleARAdapter:
    cfg = StyleARConfig(
        text_width=128, encoder="vae", encoder_width=8, encoder_source=None, num_queries=4, depth=1, heads=2,
        dim_head=8, width=32, lora_rank=lora_rank,
    )  # fmt: skip
    return StyleARAdapter(cfg)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_model_dir, device="cpu")


@dataclass
class Labelled:
    """A source whose captions say which source they came from (a star or a circle); raises after
    ``fail_after`` draws."""

    label: str
    fail_after: int | None = None
    draws: int = 0

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        self.draws += 1
        if self.fail_after is not None and self.draws > self.fail_after:
            raise KeyboardInterrupt("killed")
        return torch.rand(n, 3, 64, 64, generator=g) * 2 - 1, [f"a {self.label} in style"] * n


def test_stylized_and_raw_rows_are_mixed_one_to_three_by_position() -> None:
    assert [stylized_rows(step, 6, (1, 3)) for step in range(4)] == [2, 1, 2, 1]
    assert sum(stylized_rows(step, 6, (1, 3)) for step in range(10)) == 15
    _, captions = mixed_batch(Labelled("star"), Labelled("circle"), 0, 8, (1, 3), torch.Generator())
    assert captions.count("a star in style") == 2 and captions.count("a circle in style") == 6
    _, alone = mixed_batch(Labelled("star"), None, 0, 8, (1, 3), torch.Generator())
    assert alone == ["a star in style"] * 8


def test_world_sources_hold_training_styles_only_and_captions_omit_the_style() -> None:
    stylized, raw = world_sources()
    assert (
        not set(stylized.styles) & set(world.HELD_OUT_STYLES) and world.NEUTRAL_STYLE not in stylized.styles
    )
    assert raw.styles == (world.NEUTRAL_STYLE,)
    img, captions = stylized.draw(3, torch.Generator().manual_seed(0))
    assert img.shape == (3, 3, 64, 64) and all(c.endswith(" in style") for c in captions)
    again, _ = stylized.draw(3, torch.Generator().manual_seed(0))
    assert torch.equal(img, again)
    with pytest.raises(ValueError, match="training styles"):
        WorldSource(("marble",))


def test_the_objective_trains_the_resampler_and_the_lora_only(pipe: Pipeline) -> None:
    a = adapter()
    a.resampler.init_weights(torch.Generator().manual_seed(0))
    transformer = pipe.transformer
    encoder = VAEImageEncoder(pipe.vae, 64)
    img, captions = world_sources()[0].draw(2, torch.Generator().manual_seed(1))
    inputs, bits = encode_batch(pipe.vae, img, pipe.schedule_for())
    with a.lora_applied(transformer):
        lora = {n: p for n, p in transformer.named_parameters() if "lora_B" in n}
        for p in lora.values():
            torch.nn.init.normal_(p, std=0.01)  # past lora_B = 0, the LoRA's A matrices get gradients too
        objective = StyleARObjective(transformer, a, pipe.schedule_for(), "scale")
        text = pipe.encode_text(captions)
        out = objective(inputs, bits, text, torch.tensor([False, True]), encoder_features(encoder, img))
        out["loss"].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in a.resampler.parameters())
        assert all(p.grad is not None for n, p in transformer.named_parameters() if ".lora_" in n)
        assert all(p.grad is None for n, p in transformer.named_parameters() if ".lora_" not in n)
    assert not any(p.requires_grad for p in transformer.parameters())


@pytest.mark.slow  # three short runs, about 6 s on a shared CPU
def test_resume_equals_uninterrupted(pipe: Pipeline, tmp_path: Path) -> None:
    cfg = StyleARTrainConfig(
        steps=4, batch_size=2, mix=(1, 1), lr=1e-2, warmup=1, ckpt_every=2, log_every=1, cond_drop=0.3
    )
    encoder = VAEImageEncoder(pipe.vae, 64)

    def run(stylized: Labelled, work: str) -> StyleARAdapter:
        return train_stylear(
            pipe, adapter(), encoder, cfg, stylized, Labelled("circle"), tmp_path / work, progress=False
        )

    whole = run(Labelled("star"), "whole")
    with pytest.raises(KeyboardInterrupt):
        run(Labelled("star", fail_after=2), "cut")  # killed drawing step 3's batch, after step 2's checkpoint
    resumed = run(Labelled("star"), "cut")
    fresh = adapter()
    fresh.resampler.init_weights(torch.Generator().manual_seed(0))
    assert not torch.equal(whole.resampler.latents, fresh.resampler.latents)  # it trained
    for k, v in whole.resampler.state_dict().items():
        assert torch.equal(v, resumed.resampler.state_dict()[k]), k
    assert whole.lora.keys() == resumed.lora.keys() and whole.lora
    assert all(torch.equal(v, resumed.lora[k]) for k, v in whole.lora.items())
    assert any(v.abs().sum() > 0 for k, v in whole.lora.items() if "lora_B" in k)
    rows = (tmp_path / "cut" / "stylear_log.jsonl").read_text().splitlines()
    assert len(rows) == 4  # steps 1, 2, then 3, 4 after the resume
