from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scalestyle.config import get_preset
from scalestyle.data import procedural as world
from scalestyle.models.infinity import Infinity
from scalestyle.models.random_text import RandomTextEncoder
from scalestyle.models.text_encoder import PackedText
from scalestyle.schedules import get_schedule
from scalestyle.train.demo import world_batch, world_vocabulary
from scalestyle.train.transformer import (
    BitObjective,
    BitwiseSelfCorrection,
    TransformerTrainConfig,
    encode_batch,
    scale_loss_weights,
    train_transformer,
)
from scalestyle.train.vae import VAEObjective, VAETrainConfig, train_vae
from tests.helpers import tiny_vae

SCHEDULE = get_schedule(1.0, "0.06M")
PRESET = get_preset("tiny")


def images(step: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
    return world_batch(step, batch_size, g)[0]


def fit(
    objective: torch.nn.Module, inputs: tuple[object, ...], steps: int = 12, lr: float = 3e-3
) -> list[float]:
    opt = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = objective(*inputs)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def teacher_batch(rows: int) -> tuple[Infinity, torch.Tensor, torch.Tensor, PackedText]:
    """A freshly initialised tiny transformer and ``rows`` captioned world images as (inputs, bits, text)."""
    model = Infinity(PRESET.transformer)
    model.init_weights(torch.Generator().manual_seed(0))
    img, captions = world_batch(0, rows, torch.Generator().manual_seed(0), (0.6, 0.2, 0.2))
    inputs, bits = encode_batch(tiny_vae(), img, SCHEDULE)
    return model, inputs, bits, RandomTextEncoder(PRESET.transformer.text_channels, 32).encode(captions)


def test_vae_steps_reduce_the_loss_on_a_tiny_batch() -> None:
    objective = VAEObjective(tiny_vae(), SCHEDULE.grids, VAETrainConfig())
    losses = fit(objective, (images(0, 4, torch.Generator().manual_seed(0)),))
    assert losses[-1] < 0.8 * losses[0]


def test_transformer_steps_reduce_the_bit_loss_on_a_tiny_batch() -> None:
    model, inputs, bits, text = teacher_batch(4)
    losses = fit(
        BitObjective(model, SCHEDULE), (inputs, bits, text, torch.tensor([False, True, False, False]))
    )
    assert losses[-1] < 0.95 * losses[0]


def test_scale_weightings_sum_to_one_and_spread_the_loss_as_documented() -> None:
    counts, offsets = SCHEDULE.tokens_per_scale, SCHEDULE.offsets()

    def per_scale(weighting: str) -> list[float]:
        w = scale_loss_weights(SCHEDULE, weighting)
        assert w.shape == (SCHEDULE.total_tokens,) and abs(float(w.sum()) - 1) < 1e-6
        return [float(w[o : o + n].sum()) for o, n in zip(offsets, counts, strict=True)]

    total = SCHEDULE.total_tokens
    assert per_scale("token") == pytest.approx([n / total for n in counts])
    assert per_scale("scale") == pytest.approx([1 / len(counts)] * len(counts))
    sqrt = per_scale("sqrt")  # token weight ~ 1/side, so a scale's share ~ its side
    assert sqrt == pytest.approx([s / sum(n**0.5 for n in counts) for s in (n**0.5 for n in counts)])
    with pytest.raises(ValueError, match="scale_weighting"):
        TransformerTrainConfig(scale_weighting="area")


def test_token_weighting_is_the_plain_mean_and_scale_weighting_differs() -> None:
    model, inputs, bits, text = teacher_batch(2)
    drop = torch.tensor([False, False])
    with torch.no_grad():
        logits = model(inputs, model.condition([text]), SCHEDULE)
        plain = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), bits.flatten())
        token = BitObjective(model, SCHEDULE, "token")(inputs, bits, text, drop)["loss"]
        scale = BitObjective(model, SCHEDULE, "scale")(inputs, bits, text, drop)["loss"]
    torch.testing.assert_close(token, plain, atol=1e-6, rtol=1e-5)
    assert abs(float(scale - token)) > 1e-4


def test_prefix_rows_average_each_scale_over_the_rows_that_trained_it() -> None:
    model, inputs, bits, text = teacher_batch(4)
    drop = torch.tensor([False, True, False, False])
    objective = BitObjective(model, SCHEDULE, "scale", prefix_scales=3, full_rows=1)
    with torch.no_grad():
        got = objective(inputs, bits, text, drop)["loss"]
        # block-causal: the short forward's logits are the long forward's first scales, so one long
        # forward over every row gives the per-token losses to average by hand
        cond = model.condition([text.rows([0]), model.uncond_text((text.lens[1],)), text.rows([2, 3])])
        logits = model(inputs, cond, SCHEDULE).reshape(4, SCHEDULE.total_tokens, -1, 2)
        ce_BL = torch.nn.functional.cross_entropy(logits.permute(0, 3, 1, 2), bits, reduction="none").mean(-1)
    weights, n_short = scale_loss_weights(SCHEDULE, "scale"), sum(SCHEDULE.tokens_per_scale[:3])
    rows = torch.tensor([4.0] * n_short + [1.0] * (SCHEDULE.total_tokens - n_short))
    want = (ce_BL[0] * weights / rows).sum() + (ce_BL[1:, :n_short] * (weights / rows)[:n_short]).sum()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # every row full: the plain weighted mean, whatever prefix_scales says
        assert torch.allclose(
            BitObjective(model, SCHEDULE, "scale", prefix_scales=3, full_rows=4)(inputs, bits, text, drop)[
                "loss"
            ],
            BitObjective(model, SCHEDULE, "scale")(inputs, bits, text, drop)["loss"],
        )
    with pytest.raises(ValueError, match="prefix_scales"):
        BitObjective(model, SCHEDULE, prefix_scales=SCHEDULE.num_scales, full_rows=1)
    with pytest.raises(ValueError, match="full_rows"):
        TransformerTrainConfig(batch_size=8, prefix_scales=4, full_rows=9)
    with pytest.raises(ValueError, match="go together"):
        TransformerTrainConfig(prefix_scales=4)


def test_bitwise_self_correction_flips_at_the_drawn_rates_and_only_early_scales() -> None:
    bsc = BitwiseSelfCorrection.draw(64, 0.3, 2, torch.Generator().manual_seed(0))
    rates = bsc.rate_B
    assert rates.min() >= 0 and rates.max() <= 0.3 and torch.allclose(rates * 100, (rates * 100).round())
    bits = torch.randint(0, 2, (64, 8, 8, 16))
    out = bsc(1, bits)
    changed = (out != bits).float().mean(dim=(1, 2, 3))
    assert torch.allclose(changed, rates, atol=0.09) and set(out.unique().tolist()) <= {0, 1}
    assert torch.equal(bsc(2, bits), bits)  # scales >= bsc_scales are never flipped
    again = BitwiseSelfCorrection.draw(64, 0.3, 2, torch.Generator().manual_seed(0))
    assert torch.equal(again(1, bits), out)  # the same generator flips the same bits
    with pytest.raises(ValueError, match="bsc_strength"):
        TransformerTrainConfig(bsc_strength=0.7)


def test_transformer_trains_with_bitwise_self_correction(tmp_path: Path) -> None:
    cfg = TransformerTrainConfig(steps=2, batch_size=2, log_every=1, ckpt_every=2, bsc_strength=0.3)
    text = RandomTextEncoder(PRESET.transformer.text_channels, 32)
    train_transformer(
        PRESET.transformer,
        cfg,
        tiny_vae(),
        text.encode,
        lambda s, b, g: world_batch(s, b, g, (0.6, 0.2, 0.2)),
        SCHEDULE,
        tmp_path,
        progress=False,
    )
    assert (tmp_path / "transformer.ckpt").is_file()


class Interrupt(Exception):
    pass


@pytest.mark.slow  # over 5 s on 2 cores: the CI's slow step
def test_vae_checkpoint_resumes_to_the_same_state(tmp_path: Path) -> None:
    cfg = VAETrainConfig(steps=4, batch_size=2, ckpt_every=2, log_every=1)
    full = train_vae(PRESET.vae, cfg, images, SCHEDULE.grids, tmp_path / "full", progress=False)

    def killed_at_3(step: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
        if step == 3:
            raise Interrupt
        return images(step, batch_size, g)

    with pytest.raises(Interrupt):
        train_vae(PRESET.vae, cfg, killed_at_3, SCHEDULE.grids, tmp_path / "resumed", progress=False)
    resumed = train_vae(PRESET.vae, cfg, images, SCHEDULE.grids, tmp_path / "resumed", progress=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.slow  # over 5 s on 2 cores: the CI's slow step
def test_transformer_checkpoint_resumes_to_the_same_state(tmp_path: Path) -> None:
    cfg = TransformerTrainConfig(steps=3, batch_size=2, ckpt_every=1, log_every=1)
    vae = tiny_vae()
    text = RandomTextEncoder(PRESET.transformer.text_channels, 32).encode

    def batches(step: int, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        return world_batch(step, batch_size, g, (0.6, 0.2, 0.2))

    full = train_transformer(
        PRESET.transformer, cfg, vae, text, batches, SCHEDULE, tmp_path / "a", progress=False
    )
    short = TransformerTrainConfig(steps=3, batch_size=2, ckpt_every=1, log_every=1)

    def killed(step: int, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        if step == 2:
            raise Interrupt
        return batches(step, batch_size, g)

    with pytest.raises(Interrupt):
        train_transformer(
            PRESET.transformer, short, vae, text, killed, SCHEDULE, tmp_path / "b", progress=False
        )
    resumed = train_transformer(
        PRESET.transformer, short, vae, text, batches, SCHEDULE, tmp_path / "b", progress=False
    )
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_world_batches_use_training_styles_and_every_caption_word_tokenizes() -> None:
    vocab = set(world_vocabulary())
    for step in range(3):
        _, captions = world_batch(step, 8, torch.Generator().manual_seed(step), (0.6, 0.2, 0.2))
        for c in captions:
            assert set(c.split()) <= vocab
            assert not any(s in c for s in world.HELD_OUT_STYLES)


def test_amp_none_decides_by_machine_once_and_an_explicit_setting_wins() -> None:
    from scalestyle.train.common import bf16_pays, use_amp

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_amp(True, cpu) is True and use_amp(False, cuda) is False
    assert use_amp(None, cuda) is True  # GPUs run bf16 natively
    assert use_amp(None, cpu) is bf16_pays("cpu") is use_amp(None, cpu)  # timed once per process
    assert bf16_pays.cache_info().hits >= 1
    assert TransformerTrainConfig().amp is None and VAETrainConfig().amp is None


@pytest.mark.parametrize(
    ("cls_path", "field", "value", "message"),
    [
        ("stylear.StyleARTrainConfig", "steps", 0, "steps must be >= 1, got 0"),
        ("stylear.StyleARTrainConfig", "lr", 1.0, "lr must be in (0, 1), got 1.0"),
        ("stylear.StyleARTrainConfig", "cond_drop", float("nan"), "cond_drop must be in [0, 1), got nan"),
        ("subject.SubjectTrainConfig", "batch_size", 5000, "batch_size must be in [1, 4096], got 5000"),
        ("subject.SubjectTrainConfig", "grad_clip", 0.0, "grad_clip must be > 0, got 0.0"),
        ("subject.SubjectTrainConfig", "prior_weight", -1.0, "prior_weight must be in [0, 100], got -1.0"),
    ],
)
def test_stylear_and_subject_configs_name_the_bad_value(
    cls_path: str, field: str, value: float, message: str
) -> None:
    import importlib

    module, name = cls_path.split(".")
    cls = getattr(importlib.import_module(f"scalestyle.train.{module}"), name)
    with pytest.raises(ValueError) as err:
        cls(**{field: value})
    assert str(err.value) == message


def test_shape_classifier_alone_equals_the_joint_content_classifier(tmp_path: Path) -> None:
    from scalestyle.train.classifiers import ClassifierTrainConfig, train_classifiers, train_shape_classifier

    cfg = ClassifierTrainConfig(steps=3, batch_size=4, log_every=1)
    content, style = train_classifiers(cfg, tmp_path / "joint", progress=False)
    alone = train_shape_classifier(cfg, tmp_path / "alone", progress=False)
    pairs = zip(content.state_dict().values(), alone.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert style.labels == world.STYLES and alone.labels == world.CONTENTS
    rows = (tmp_path / "alone" / "classifier_log.jsonl").read_text().splitlines()
    assert len(rows) == 3 and "style_loss" not in rows[0] and "content_loss" in rows[0]
