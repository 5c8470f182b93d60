from __future__ import annotations

import torch

from scalestyle.config import SamplingConfig
from scalestyle.models.bsq_vae import BitwiseCodec, sample_bits
from scalestyle.models.random_text import RandomTextEncoder
from scalestyle.sampling import PathPlan, run_scales
from scalestyle.schedules import get_schedule
from tests.helpers import tiny_transformer, tiny_vae

SCHEDULE = get_schedule(1.0, "0.06M")
TEXT = RandomTextEncoder(128, 32)
CODEC = BitwiseCodec(8, patchify=False)


def generate(seed: int, prompts: list[str], **plan_kw: object) -> torch.Tensor:
    model = tiny_transformer()
    plan = PathPlan("gen", TEXT.encode(prompts), **plan_kw)  # type: ignore[arg-type]
    with torch.no_grad():
        return run_scales(model, CODEC, [plan], SCHEDULE, SamplingConfig(seed=seed))["gen"]


def test_same_seed_same_image_other_seed_other_image() -> None:
    a = generate(3, ["a star", "a cat in neon style"])
    assert torch.equal(a, generate(3, ["a star", "a cat in neon style"]))
    assert not torch.equal(a, generate(4, ["a star", "a cat in neon style"]))


def test_teacher_forced_bits_reproduce_the_encoded_summed_codes() -> None:
    vae = tiny_vae()
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        enc = vae.encode_multiscale(img, SCHEDULE.grids)
    summed = generate(0, ["a star"], given_tokens=enc.bits)
    torch.testing.assert_close(summed, enc.summed_codes_BdHW, atol=0, rtol=0)


def test_every_path_stopping_early_ends_the_run_with_the_same_first_scales() -> None:
    model = tiny_transformer()
    runs: dict[str, list[torch.Tensor]] = {"full": [], "stopped": []}
    for name, last in (("full", None), ("stopped", 2)):
        plan = PathPlan(name, TEXT.encode(["a star"]), last_scale=last)
        with torch.no_grad():
            out = run_scales(
                model,
                CODEC,
                [plan],
                SCHEDULE,
                SamplingConfig(seed=5),
                on_scale=lambda e, n=name: runs[n].append(e.tokens[n]),
            )
        assert out[name].shape[-2:] == (16, 16)
    assert len(runs["stopped"]) == 3 and len(runs["full"]) == SCHEDULE.num_scales
    for a, b in zip(runs["stopped"], runs["full"][:3], strict=False):
        assert torch.equal(a, b)


def test_top_p_forces_the_majority_bit() -> None:
    logits = torch.tensor([[[0.0, 5.0, 5.0, 0.0]]])  # bit 0 -> 1 with p 0.993, bit 1 -> 0 with p 0.993
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_bits(logits, top_k=900, top_p=0.97, generator=g) for _ in range(200)])
    assert (draws[..., 0] == 1).all() and (draws[..., 1] == 0).all()
    free = torch.stack([sample_bits(logits, top_k=0, top_p=1.0, generator=g) for _ in range(2000)])
    assert 0 < (free[..., 0] == 0).sum() < 60  # without top-p the minority bit appears about 0.7% of the time
