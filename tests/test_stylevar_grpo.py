"""StyleVAR GRPO: LoRA through peft, the PANW-weighted clipped loss with k3 KL, the KL skip, advantages,
the iterative merge, exact resumption, the rewards, and a behaviour check on a colour reward."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from scalestyle.data import procedural as world
from scalestyle.eval.world import Judges
from scalestyle.hub_layouts import VQVAE_FILE
from scalestyle.models.stylevar import StyleVAR, TransferInputs
from scalestyle.models.vqvae import VQVAE
from scalestyle.stylevar_weights import load_stylevar_weights
from scalestyle.train.rewards import DreamSimReward, PerceptualTargetReward, WorldJudgeReward
from scalestyle.train.stylevar import panw_weights_L
from scalestyle.train.stylevar_grpo import (
    CHECKPOINT,
    LORA_TARGETS,
    GRPOConfig,
    GRPOTrainer,
    adapters_disabled,
    add_lora,
    group_advantages_GB,
    grpo_terms_B,
    lora_layers,
    lora_parameters,
    merge_lora,
    plain_state_dict,
    rollout_backward,
    rollout_seed,
    sample_rollout,
    token_logprobs_BL,
    train_stylevar_grpo,
)
from scalestyle.transfer import TransferPipeline
from scalestyle.weights import LAYOUT_FILE
from tests.test_stylevar import PRESET, images, tiny_model, tiny_vqvae

DEMO = Path(__file__).resolve().parents[1] / "src" / "scalestyle" / "assets" / "demo"
TINY = GRPOConfig(
    steps=4,
    batch_size=2,
    group_size=3,
    lora_rank=4,
    lora_alpha=8,
    top_k=30,
    lr=1e-3,
    seed=5,
    ckpt_every=1,
)


def batch(seed: int = 0, rows: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target, content = images(rows, seed)
    return target, content, images(rows, seed + 100)[0]


def logits_of(model: StyleVAR, vqvae: VQVAE) -> torch.Tensor:
    target, content, style = batch()
    with torch.no_grad():
        raw = TransferInputs.encode(vqvae, content, style, model.schedule)
        inputs = vqvae.teacher_inputs(vqvae.encode_indices(target, model.schedule), model.schedule)
        return model(inputs, model.condition([raw]), model.schedule)


@torch.no_grad()
def randomize_b_(model: StyleVAR, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def red_reward(
    pred: torch.Tensor, target: torch.Tensor, content: torch.Tensor, style: torch.Tensor
) -> torch.Tensor:
    """Prefers red: the red channel's mean over the green and blue ones'."""
    return pred[:, 0].mean(dim=(1, 2)) - pred[:, 1:].mean(dim=(1, 2, 3))


def test_config_errors_name_value_and_range() -> None:
    with pytest.raises(ValueError, match=r"group_size must be >= 2 .*got 1"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match=r"clip_eps must be in \(0, 1\), got 1.5"):
        GRPOConfig(clip_eps=1.5)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0"):
        GRPOConfig(top_p=0)
    model = tiny_model()
    add_lora(model, TINY)
    with pytest.raises(ValueError, match=r"top_k must be in \[0, 64\] .*got 900"):
        GRPOTrainer(model, tiny_vqvae(), GRPOConfig())


def test_rollout_seeds_are_the_authors() -> None:
    assert rollout_seed(42, 0, 16, 0) == (42 * 1_000_003) % 2**31
    assert rollout_seed(42, 3, 16, 5) == (42 * 1_000_003 + 3 * 16 + 5) % 2**31


def test_lora_with_zero_b_equals_the_base_model_and_freezes_the_rest() -> None:
    model, vqvae = tiny_model(), tiny_vqvae()
    before = logits_of(model, vqvae)
    params = add_lora(model, TINY)
    names = sorted(lora_layers(model))
    assert len(names) == len(LORA_TARGETS) * PRESET.transformer.depth
    assert "blocks.1.attn.mat_qkv_guide" in names and "blocks.0.ffn.fc2" in names
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params} and len(params) == 2 * len(names)
    assert isinstance(model, StyleVAR)
    # the projections wrapped by peft add their bias after the matmul: equal up to float rounding
    torch.testing.assert_close(logits_of(model, vqvae), before, rtol=1e-5, atol=1e-5)
    randomize_b_(model, 1)
    assert not torch.allclose(logits_of(model, vqvae), before, atol=1e-3)
    with adapters_disabled(model):
        torch.testing.assert_close(logits_of(model, vqvae), before, rtol=1e-5, atol=1e-5)


def test_merge_leaves_outputs_unchanged_and_reinitialises_the_adapters() -> None:
    model, vqvae = tiny_model(), tiny_vqvae()
    add_lora(model, TINY)
    randomize_b_(model, 2)
    policy = logits_of(model, vqvae)
    a_before = [p.clone() for n, p in model.named_parameters() if ".lora_A." in n]
    merge_lora(model, seed=7)
    torch.testing.assert_close(logits_of(model, vqvae), policy, rtol=1e-4, atol=1e-4)
    # folded in: the reference (adapters off) is now the merged policy
    with adapters_disabled(model):
        torch.testing.assert_close(logits_of(model, vqvae), policy, rtol=1e-4, atol=1e-4)
    assert all(not p.any() for n, p in model.named_parameters() if ".lora_B." in n)
    a_after = [p for n, p in model.named_parameters() if ".lora_A." in n]
    assert all(not torch.equal(x, y) for x, y in zip(a_before, a_after, strict=True))
    # the plain state dict (what the released GRPO file holds) loads strictly into a plain StyleVAR
    plain = StyleVAR(PRESET.transformer).eval()
    randomize_b_(model, 3)
    policy = logits_of(model, vqvae)
    load_stylevar_weights(plain, plain_state_dict(model), source="merged")
    torch.testing.assert_close(logits_of(plain, vqvae), policy, rtol=1e-4, atol=1e-4)


def test_panw_weights_in_the_loss_sum_to_one_per_image_and_kl_is_zero_at_the_reference() -> None:
    schedule = tiny_model().schedule
    w_L = panw_weights_L(schedule).float()
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, schedule.total_tokens, generator=g) * 4
    new = logp.clone().requires_grad_(True)
    adv_B = torch.tensor([1.5, -0.5, 0.0])
    policy_B, kl_B = grpo_terms_B(new, logp, logp, adv_B, w_L, TINY)
    torch.testing.assert_close(policy_B, -adv_B)  # -A * sum(w) with sum(w) = 1 per image
    assert torch.equal(kl_B, torch.zeros(3))
    policy_B.sum().backward()
    assert new.grad is not None
    torch.testing.assert_close(new.grad, -adv_B[:, None] * w_L[None])
    # a policy off the reference pays a positive KL
    _, kl_off = grpo_terms_B(logp + 0.3, logp + 0.3, logp, adv_B, w_L, TINY)
    assert (kl_off > 0).all()


def test_advantages_are_zero_mean_per_group_with_a_std_floor() -> None:
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(5, 3, generator=g)
    adv = group_advantages_GB(rewards)
    torch.testing.assert_close(adv.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv.std(0), torch.ones(3), atol=1e-5, rtol=0)
    assert torch.equal(group_advantages_GB(torch.full((4, 2), 3.0)), torch.zeros(4, 2))
    close = torch.tensor([[1.0], [1.0 + 1e-4], [1.0 - 1e-4]])
    torch.testing.assert_close(group_advantages_GB(close), (close - 1.0) / (0.01 + 1e-8), rtol=1e-3, atol=0)


def test_a_rollout_over_the_kl_skip_contributes_no_gradient() -> None:
    L = 30
    w_L = panw_weights_L(tiny_model().schedule).float()
    old = -torch.rand(2, L)
    adv = torch.tensor([1.0, -1.0])
    spiky = old.clone().requires_grad_(True)
    out = rollout_backward(spiky, old, old - 20, adv, w_L, TINY)
    assert not out.applied and out.raw_kl > TINY.kl_skip and spiky.grad is None
    calm = old.clone().requires_grad_(True)
    out = rollout_backward(calm, old, old, adv, w_L, TINY)
    assert out.applied and calm.grad is not None and calm.grad.abs().sum() > 0

    # in a step: once the policy has moved, a threshold below its KL skips every rollout, no update
    model, vqvae = tiny_model(), tiny_vqvae()
    add_lora(model, TINY)
    trainer = GRPOTrainer(model, vqvae, TINY)
    trainer.step(0, batch(), red_reward)
    trainer.cfg = GRPOConfig(**{**TINY.__dict__, "kl_skip": 1e-12})
    before = [p.clone() for p in lora_parameters(model)]
    stats = trainer.step(1, batch(), red_reward)
    assert stats.skipped == TINY.group_size and stats.kl == 0
    assert all(torch.equal(a, b) for a, b in zip(before, lora_parameters(model), strict=True))


def test_old_log_probs_equal_new_ones_and_rollouts_are_seeded() -> None:
    model, vqvae = tiny_model(), tiny_vqvae()
    add_lora(model, TINY)
    _, content, style = batch()
    with torch.no_grad():
        raw = TransferInputs.encode(vqvae, content, style, model.schedule)
    a = sample_rollout(model, vqvae, raw, TINY.sampling(11))
    b = sample_rollout(model, vqvae, raw, TINY.sampling(11))
    c = sample_rollout(model, vqvae, raw, TINY.sampling(12))
    assert torch.equal(a.target_BL, b.target_BL) and not torch.equal(a.target_BL, c.target_BL)
    assert a.images_B3PP.shape == (2, 3, PRESET.image_size, PRESET.image_size)
    with torch.no_grad():
        old = token_logprobs_BL(model, a.inputs_BLD, a.target_BL, raw)
    new = token_logprobs_BL(model, a.inputs_BLD, a.target_BL, raw)
    assert torch.equal(old, new.detach()) and new.requires_grad and (old < 0).all()


class TinyTriplets:
    def __init__(self, n: int) -> None:
        self.items = [tuple(x[0] for x in batch(i, rows=1)) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        target, content, style = self.items[index]
        return target, content, style


def sft_folder(path: Path) -> Path:
    """A released-layout SFT folder holding a loud tiny model (its gates far from zero)."""
    path.mkdir()
    torch.save({"model": tiny_model(4).state_dict()}, path / "StyleVAR_SFT.pth")
    torch.save(tiny_vqvae(4).state_dict(), path / VQVAE_FILE)
    layout = {"preset": "stylevar-tiny", "checkpoints": {"sft": "StyleVAR_SFT.pth"}, "vae": VQVAE_FILE}
    (path / LAYOUT_FILE).write_text(json.dumps(layout))
    return path


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    init = sft_folder(tmp_path / "sft")
    data = TinyTriplets(4)
    # merge rules that fire from the first step: the resumed run must restore and recreate AdamW alike
    cfg = GRPOConfig(
        **{**TINY.__dict__, "steps": 2, "group_size": 2, "merge_cooldown": 1, "merge_min_gain": 0.0}
        | {"merge_patience": 0}
    )
    whole = train_stylevar_grpo(
        tmp_path / "out_a", tmp_path / "a", cfg, data, init=init, reward=red_reward, progress=False
    )
    half = GRPOConfig(**{**cfg.__dict__, "steps": 1})
    train_stylevar_grpo(
        tmp_path / "x", tmp_path / "b", half, data, init=init, reward=red_reward, progress=False
    )
    resumed = train_stylevar_grpo(
        tmp_path / "out_b", tmp_path / "b", cfg, data, init=init, reward=red_reward, progress=False
    )
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"] == 2
    peak_a, peak_b = a["tracker"].pop("peak_lora"), b["tracker"].pop("peak_lora")
    assert a["tracker"] == b["tracker"] and (peak_a is None) == (peak_b is None)
    assert peak_a is None or all(torch.equal(peak_a[k], peak_b[k]) for k in peak_a)
    assert a["tracker"]["merges"] >= 1
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert str(a["optimizer"]) == str(b["optimizer"])
    rows = [json.loads(line) for line in (tmp_path / "b" / "grpo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["merge"] == "peak"
    # the merged folder opens in the transfer pipeline, and both runs wrote the same weights
    pipe_a, pipe_b = TransferPipeline.load(whole, device="cpu"), TransferPipeline.load(resumed, device="cpu")
    sa, sb = pipe_a.pipe.transformer.state_dict(), pipe_b.pipe.transformer.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def patch_red(
    pred: torch.Tensor, target: torch.Tensor, content: torch.Tensor, style: torch.Tensor
) -> torch.Tensor:
    """Prefers red in the top-left 16 x 16 pixels: a random VQ-VAE's whole-image colour barely varies
    between samples (pixel noise averages out), one token's footprint does."""
    return red_reward(pred[:, :, :16, :16], target, content, style)


@pytest.mark.slow
def test_a_colour_reward_moves_the_samples_toward_it() -> None:
    model, vqvae = tiny_model(6), tiny_vqvae(6)
    cfg = GRPOConfig(
        steps=20, batch_size=2, group_size=8, lora_rank=8, lora_alpha=16, top_k=0, top_p=1.0, lr=1e-2,
        kl_beta=0.01, iterative_merge=False, seed=1,
    )  # fmt: skip
    add_lora(model, cfg)
    trainer = GRPOTrainer(model, vqvae, cfg)
    target, content, style = batch(9)
    with torch.no_grad():
        raw = TransferInputs.encode(vqvae, content, style, model.schedule)

    def redness() -> float:
        rollouts = [sample_rollout(model, vqvae, raw, cfg.sampling(s)) for s in range(1000, 1016)]
        return sum(float(patch_red(r.images_B3PP, target, content, style).mean()) for r in rollouts) / 16

    start = redness()
    for step in range(cfg.steps):
        trainer.step(step, (target, content, style), patch_red)
    # 16 held-out seeds x 2 rows: the mean's standard error is about 0.015 (one sample's std ~0.09)
    end = redness()
    assert end > start + 0.03, (start, end)


def test_dreamsim_reward_is_minus_five_distances_at_224_and_names_its_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[torch.Tensor] = []

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append(a)
        return (a - b).abs().mean(dim=(1, 2, 3))

    target, content, style = batch()
    reward = DreamSimReward(distance)
    r = reward(target, target, content, style)
    assert torch.equal(r, torch.zeros(2)) and seen[0].shape == (2, 3, 224, 224)
    assert seen[0].min() >= 0 and seen[0].max() <= 1
    assert (reward(content, target, content, style) < 0).all()
    monkeypatch.setitem(sys.modules, "dreamsim", None)
    with pytest.raises(ImportError, match="`dreamsim` package"):
        DreamSimReward.from_pretrained()


def test_perceptual_target_reward_is_highest_at_the_target() -> None:
    target, content, style = batch()
    reward = PerceptualTargetReward()
    torch.testing.assert_close(reward(target, target, content, style), torch.ones(2))
    noisy = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1)
    assert (reward(noisy, target, content, style) < reward(target, target, content, style)).all()


def test_world_judge_reward_prefers_the_true_target() -> None:
    trip = world.triplet(3)
    target, content, style = (world.to_tensor(s.image)[None] for s in (trip.target, trip.content, trip.style))
    reward = WorldJudgeReward(Judges.load(DEMO))
    scores = {name: float(reward(img, target, content, style)) for name, img in
              (("target", target), ("content", content), ("style", style))}  # fmt: skip
    assert scores["target"] > max(scores["content"], scores["style"]), scores
    assert 0 <= scores["target"] <= 2


def grpo_command(argv: list[str]) -> int:
    """``train stylevar-grpo`` through its parser as :mod:`scalestyle.cli` registers it."""
    import argparse

    from scalestyle.cli import _at_least
    from scalestyle.stylevar_grpo_cli import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="what"), argparse.HelpFormatter, _at_least)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_trains_on_the_world_and_writes_a_grpo_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["stylevar-grpo", "--quick", "--world", "--reward", "target", "--out", str(out)]
    assert grpo_command([*argv, "--work-dir", str(work), "--quiet", "--device", "cpu"]) == 0
    rows = (work / "grpo_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]
    assert TransferPipeline.load(out, device="cpu").pipe.model_name == f"{PRESET.name}-grpo"
    with pytest.raises(ValueError, match="give --init"):
        grpo_command(["stylevar-grpo", "--world", "--out", str(out)])
    # remixed looks: the target reward by default, the world's judges refused, --world required
    remix = ["stylevar-grpo", "--quick", "--world", "--world-remix", "0.5", "--out", str(tmp_path / "r")]
    capsys.readouterr()
    assert grpo_command([*remix, "--work-dir", str(tmp_path / "rw"), "--device", "cpu"]) == 0
    assert "(target reward, 2 steps)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="takes --reward target"):
        grpo_command([*remix, "--reward", "world"])
    with pytest.raises(ValueError, match="must be in"):
        grpo_command(["stylevar-grpo", "--quick", "--world", "--world-remix", "1", "--out", str(out)])
    monkeypatch.setitem(sys.modules, "dreamsim", None)  # never a download, installed or not
    with pytest.raises(ValueError, match="`dreamsim` package"):
        grpo_command(["stylevar-grpo", "--quick", "--world", "--reward", "dreamsim", "--out", str(out)])
