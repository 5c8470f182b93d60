"""StyleAR DPO (issue 16): the loss at policy == reference, pair ordering, log-likelihoods, resumption."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier
from scalestyle.models.stylear import StyleARAdapter, StyleARConfig, VAEImageEncoder
from scalestyle.pipeline import Pipeline
from scalestyle.train.stylear_dpo import (
    ContentJudgeReward,
    PreferenceItem,
    StyleARDPOConfig,
    WorldPreferences,
    dpo_loss,
    preference_pairs,
    scale_logps_BS,
    teacher_inputs,
    train_stylear_dpo,
)
from scalestyle.train.transformer import bit_ce, encode_batch


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_model_dir, device="cpu")


def trained_adapter(pipe: Pipeline, lora_rank: int = 2, seed: int = 0) -> StyleARAdapter:
    """A tiny adapter whose LoRA is not the identity (lora_B drawn), as after `train stylear`."""
    cfg = StyleARConfig(
        text_width=128, encoder="vae", encoder_width=8, encoder_source=None, num_queries=4, depth=1, heads=2,
        dim_head=8, width=32, lora_rank=lora_rank,
    )  # fmt: skip
    adapter = StyleARAdapter(cfg)
    adapter.resampler.init_weights(torch.Generator().manual_seed(seed))
    with adapter.lora_applied(pipe.transformer, seed=seed):
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.data.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return adapter.eval()


def test_dpo_loss_at_policy_equal_reference_is_log2_with_zero_margin() -> None:
    logp = torch.tensor([-120.0, -80.5, -3.0], requires_grad=True)
    rej = torch.tensor([-100.0, -90.0, -7.0], requires_grad=True)
    beta = 0.1
    loss, margin = dpo_loss(logp, rej, logp.detach(), rej.detach(), beta)
    assert torch.equal(margin, torch.zeros(3))  # the implicit reward margin: zero
    assert torch.allclose(loss, torch.full((3,), math.log(2)), atol=0, rtol=1e-7)
    loss.sum().backward()
    # d(-log sigmoid(m))/dm = -sigmoid(-m) = -1/2 at m = 0; dm/d pi_w = beta, dm/d pi_l = -beta
    assert torch.allclose(logp.grad, torch.full((3,), -beta / 2))
    assert torch.allclose(rej.grad, torch.full((3,), beta / 2))
    m = torch.tensor(0.0, requires_grad=True)
    loss_m, _ = dpo_loss(m, torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), 1.0)
    loss_m.backward()
    assert m.grad == pytest.approx(-0.5)
    # a positive margin lowers the loss below log 2, a negative one raises it
    up, _ = dpo_loss(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), 1.0)
    down, _ = dpo_loss(torch.tensor(-1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), 1.0)
    assert float(up) == pytest.approx(math.log1p(math.exp(-1))) and float(down) > math.log(2) > float(up)


def test_pairs_follow_the_reward() -> None:
    rewards = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [0.7, 0.2, 0.69]])
    pairs = preference_pairs(rewards)
    assert pairs.chosen_P.tolist() == [1, 0, 0] and pairs.rejected_P.tolist() == [0, 0, 1]
    assert pairs.valid_P.tolist() == [True, False, True]  # equal rewards: no preference
    assert preference_pairs(rewards, min_gap=0.6).valid_P.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="samples >= 2"):
        preference_pairs(torch.zeros(3, 1))


def test_teacher_inputs_of_bits_are_the_vae_encodings_and_logps_match_the_ce(pipe: Pipeline) -> None:
    schedule = pipe.schedule_for()
    img = world.to_tensor(world.render("star", "neon", 0).image)[None]
    enc = pipe.vae.encode_multiscale(img, schedule.grids)
    inputs, bits = encode_batch(pipe.vae, img, schedule)
    assert torch.equal(teacher_inputs(enc.bits, schedule, pipe.vae.cfg.spatial_patchify), inputs)
    logits = torch.randn(
        1, schedule.total_tokens, 2 * bits.shape[-1], generator=torch.Generator().manual_seed(0)
    )
    logps = scale_logps_BS(logits, bits, schedule)
    ce_BL, _ = bit_ce(logits, bits)
    assert logps.shape == (1, schedule.num_scales)
    assert torch.allclose(logps.sum(), -ce_BL.sum() * bits.shape[-1], rtol=1e-5)


def test_content_judge_reward_is_the_probability_of_the_prompts_content() -> None:
    torch.manual_seed(0)
    judge = WorldClassifier(world.CONTENTS).eval()
    ref = world.render("heart", "neon", 1).image
    images = [world.render("star", "neon", 0).image, world.render("fish", "plain", 0).image]
    items = [PreferenceItem("a star in style", "a star", ref, "star"), PreferenceItem("x", "x", ref, "fish")]
    rewards = ContentJudgeReward(judge)(images, items)
    batch = torch.stack([world.to_tensor(im.resize((64, 64))) for im in images])
    probs = judge(batch).softmax(1)
    expected = torch.stack([probs[0, world.CONTENTS.index("star")], probs[1, world.CONTENTS.index("fish")]])
    assert torch.allclose(rewards, expected.detach())
    with pytest.raises(ValueError, match="world contents"):
        ContentJudgeReward(judge)(images[:1], [PreferenceItem("a cat", "a cat", ref)])


def test_config_validation_names_value_and_range() -> None:
    StyleARDPOConfig()
    for bad, match in (
        ({"samples": 1}, r"samples must be in \[2, 256\], got 1"),
        ({"beta": 0.0}, r"beta must be in \(0.0, 10000.0\], got 0.0"),
        ({"beta": math.nan}, "beta must be in"),
        ({"lr": 2.0}, r"lr must be in \(0.0, 1.0\], got 2.0"),
        ({"pairs": 0}, r"pairs must be in \[1, 4096\], got 0"),
        ({"min_gap": -1.0}, r"min_gap must be in \[0.0"),
        ({"reduce": "max"}, "reduce must be one of"),
        ({"sampling": SamplingConfig(h_div_w=2.0)}, "default schedule"),
    ):
        with pytest.raises(ValueError, match=match):
            StyleARDPOConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="training styles"):
        WorldPreferences(styles=(world.HELD_OUT_STYLES[0],))


@dataclass
class Counting:
    """World items that raise after ``fail_after`` draws (a killed run)."""

    fail_after: int | None = None
    draws: int = 0

    def draw(self, n: int, g: torch.Generator) -> list[PreferenceItem]:
        self.draws += 1
        if self.fail_after is not None and self.draws > self.fail_after:
            raise KeyboardInterrupt("killed")
        return WorldPreferences().draw(n, g)


def brightness(images: list[Image.Image], items: list[PreferenceItem]) -> torch.Tensor:
    return torch.tensor([float(world.to_tensor(im).mean()) for im in images])


FAST = SamplingConfig(cfg=3.0, top_k=0)


def test_refuses_an_adapter_without_anything_to_train(pipe: Pipeline, tmp_path: Path) -> None:
    encoder = VAEImageEncoder(pipe.vae, 64)
    bare = trained_adapter(pipe, lora_rank=0)
    with pytest.raises(ValueError, match="train_resampler"):
        train_stylear_dpo(
            pipe, bare, encoder, StyleARDPOConfig(steps=1), Counting(), brightness, tmp_path, progress=False
        )


@pytest.mark.slow  # six DPO steps on the tiny model, about 30 s on a loaded 2-core CPU
def test_resume_equals_uninterrupted_and_the_first_loss_is_log2(pipe: Pipeline, tmp_path: Path) -> None:
    cfg = StyleARDPOConfig(
        steps=3, pairs=2, samples=2, beta=0.5, lr=1e-2, warmup=1, log_every=1, ckpt_every=2, sampling=FAST,
        train_resampler=True,
    )  # fmt: skip
    encoder = VAEImageEncoder(pipe.vae, 64)
    ref = trained_adapter(pipe)
    lora_before = {k: v.clone() for k, v in ref.lora.items()}

    def run(source: Counting, work: str, adapter: StyleARAdapter = ref) -> StyleARAdapter:
        return train_stylear_dpo(
            pipe, adapter, encoder, cfg, source, brightness, tmp_path / work, progress=False
        )

    whole = run(Counting(), "whole")
    assert all(torch.equal(v, ref.lora[k]) for k, v in lora_before.items())  # the reference is untouched
    with pytest.raises(KeyboardInterrupt):
        run(Counting(fail_after=2), "cut")  # killed drawing step 3's items, after step 2's checkpoint
    resumed = run(Counting(), "cut")
    assert whole.lora.keys() == resumed.lora.keys() == ref.lora.keys()
    assert any(not torch.equal(v, ref.lora[k]) for k, v in whole.lora.items())  # it trained
    assert all(torch.equal(v, resumed.lora[k]) for k, v in whole.lora.items())
    for k, v in whole.resampler.state_dict().items():
        assert torch.equal(v, resumed.resampler.state_dict()[k]), k
    rows = [
        json.loads(line) for line in (tmp_path / "whole" / "stylear_dpo_log.jsonl").read_text().splitlines()
    ]
    assert rows[0]["loss"] == round(math.log(2), 5) and rows[0]["margin"] == 0.0  # policy == reference
    assert all(r["reward_chosen"] >= r["reward_rejected"] for r in rows)
    cut = (tmp_path / "cut" / "stylear_dpo_log.jsonl").read_text().splitlines()
    assert len(cut) == 3  # steps 1, 2, then 3 after the resume
    out = whole.save(tmp_path / "dpo_adapter")
    again = StyleARAdapter.load(out)
    assert again.cfg == ref.cfg and all(torch.equal(v, again.lora[k]) for k, v in whole.lora.items())
    with pytest.raises(ValueError, match="another adapter"):
        run(Counting(), "cut", trained_adapter(pipe, seed=5))


def test_cli_refuses_bad_combinations_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scalestyle.cli import main

    base = ["train", "stylear-dpo", "--adapter", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert main([*base, "--prompts-file", "p.txt"]) != 0
    assert "go together" in capsys.readouterr().err
    assert main([*base, "--reward", "clip"]) != 0
    assert "needs --clip" in capsys.readouterr().err
    assert main([*base, "--beta", "0"]) != 0
    assert "beta must be in" in capsys.readouterr().err
    assert main(base) != 0
    assert "is not a StyleAR adapter" in capsys.readouterr().err


@pytest.mark.slow  # trains a 2-step adapter, then 2 DPO steps, through the CLI (about 20 s)
def test_train_stylear_then_dpo_through_the_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from scalestyle.cli import main
    from scalestyle.pipeline import bundled_demo_dir

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.copy(bundled_demo_dir() / "content_classifier.safetensors", model)  # the world reward's judge
    first = ["train", "stylear", "--quick", "--quiet", "--model", str(model), "--out", str(tmp_path / "a")]
    first += ["--work-dir", str(tmp_path / "w1"), "--queries", "4", "--depth", "1", "--width", "32"]
    assert main([*first, "--heads", "2", "--lora-rank", "2"]) == 0
    dpo = [
        "train",
        "stylear-dpo",
        "--quick",
        "--quiet",
        "--model",
        str(model),
        "--adapter",
        str(tmp_path / "a"),
    ]
    assert main([*dpo, "--out", str(tmp_path / "b"), "--work-dir", str(tmp_path / "w2"), "--cfg", "2"]) == 0
    before, after = StyleARAdapter.load(tmp_path / "a"), StyleARAdapter.load(tmp_path / "b")
    assert before.cfg == after.cfg and before.lora.keys() == after.lora.keys()
    assert any(not torch.equal(v, after.lora[k]) for k, v in before.lora.items())
    rows = (tmp_path / "w2" / "stylear_dpo_log.jsonl").read_text().splitlines()
    assert len(rows) == 2 and json.loads(rows[0])["loss"] == round(math.log(2), 5)
