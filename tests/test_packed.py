"""Packed checkpoints (`scalestyle.train.packed`): a long CPU run continued in a later session from git."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scalestyle.train.common import save_checkpoint
from scalestyle.train.packed import pack_checkpoint, pack_run, unpack_checkpoint, unpack_run
from scalestyle.train.transformer import TransformerTrainConfig


def trained(steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(
        [
            {"params": [model[0].weight, model[2].weight], "weight_decay": 0.05},
            {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
        betas=(0.9, 0.97),
    )
    for i in range(steps):
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(i))
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def shared_buffer(model: torch.nn.Module) -> None:
    """One buffer under two names, as BSQVAE's quantizer has: packing must not trip over shared memory."""
    model.register_buffer("mask", torch.arange(4.0))
    model[0].register_buffer("mask", model.mask)


def test_pack_round_trip_keeps_the_model_exact_and_the_moments_to_bf16(tmp_path: Path) -> None:
    model, opt = trained(5)
    cfg = TransformerTrainConfig(steps=7, batch_size=2)
    save_checkpoint(tmp_path / "t.ckpt", model=model, optimizer=opt, step=5, config=cfg)
    files = pack_checkpoint(tmp_path / "t.ckpt", tmp_path / "pack", shard_bytes=300)
    assert len(files) > 2  # the index and several shards: the bound is honoured
    assert all(f.stat().st_size < 300 + 1024 for f in files[1:])
    back = unpack_checkpoint(files[0], tmp_path / "back.ckpt")
    assert back["step"] == 5 and back["config"]["steps"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v) and back["model"][k].dtype == v.dtype, k
    sd = opt.state_dict()
    assert back["optimizer"]["param_groups"] == sd["param_groups"]  # betas stay a tuple, ints stay ints
    for i, st in sd["state"].items():
        assert torch.equal(back["optimizer"]["state"][i]["step"], st["step"])
        for name in ("exp_avg", "exp_avg_sq"):
            got, want = back["optimizer"]["state"][i][name], st[name]
            assert got.dtype == want.dtype == torch.float32
            assert torch.allclose(got, want, rtol=2**-8, atol=0), (i, name)
    stored = {k: t for f in files[1:] for k, t in load_file(f).items()}
    assert any(k.startswith("optimizer/") and t.ndim for k, t in stored.items())
    assert {t.dtype for k, t in stored.items() if k.startswith("optimizer/") and t.ndim} <= {torch.bfloat16}
    assert {t.dtype for k, t in stored.items() if k.startswith("model/")} <= {torch.float32}


def test_a_run_continued_from_the_pack_tracks_the_uninterrupted_one(tmp_path: Path) -> None:
    full, _ = trained(10)
    model, opt = trained(5)
    for m in (full, model):
        shared_buffer(m)
    at5 = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "w" / "t.ckpt", model=model, optimizer=opt, step=5, config={"steps": 10})
    pack_run(tmp_path / "w", tmp_path / "pack")
    unpack_run(tmp_path / "pack", tmp_path / "fresh")
    state = torch.load(tmp_path / "fresh" / "t.ckpt", weights_only=True)
    model2, opt2 = trained(0)
    shared_buffer(model2)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    for i in range(5, 10):
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(i))
        loss = model2(x).pow(2).mean()
        opt2.zero_grad()
        loss.backward()
        opt2.step()
    # the bf16 moments move the next five updates by well under a percent of their size
    for (k, a), b in zip(full.state_dict().items(), model2.state_dict().values(), strict=True):
        assert (a - b).abs().max() <= 0.01 * (a - at5[k]).abs().max(), k


def test_pack_run_trims_the_log_to_the_checkpoint_and_unpack_never_goes_back(tmp_path: Path) -> None:
    work = tmp_path / "w"
    model, opt = trained(2)
    save_checkpoint(work / "vae.ckpt", model=model, optimizer=opt, step=50, config={})
    rows = [{"time_s": 1.0 * s, "step": s, "loss": 1.0 / s} for s in (25, 50, 60)]
    (work / "vae_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pack_run(work, tmp_path / "pack")
    packed_log = (tmp_path / "pack" / "vae_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in packed_log] == [25, 50]  # step 60 is redone after resuming

    ahead = tmp_path / "ahead"
    save_checkpoint(ahead / "vae.ckpt", model=model, optimizer=opt, step=75, config={})
    assert unpack_run(tmp_path / "pack", ahead) == []
    assert torch.load(ahead / "vae.ckpt", weights_only=True)["step"] == 75
    assert unpack_run(tmp_path / "pack", tmp_path / "new") == [tmp_path / "new" / "vae.ckpt"]
    assert (tmp_path / "new" / "vae_log.jsonl").read_text().splitlines() == packed_log


def test_packing_an_empty_folder_or_a_foreign_index_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no \*\.ckpt"):
        pack_run(tmp_path, tmp_path / "pack")
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a packed checkpoint"):
        unpack_checkpoint(tmp_path / "x.json", tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="shard_bytes must be >= 1"):
        pack_checkpoint(tmp_path / "x.ckpt", tmp_path, shard_bytes=0)
