"""Weights: reading every container upstream uses, strict loading with upstream's adaptations, one-line
errors for every failure, scalestyle model folders, and download errors (the hub is always patched out)."""

from __future__ import annotations

import argparse
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from scalestyle.config import PRESETS, ModelPreset
from scalestyle.weights import (
    LAYOUT_FILE,
    WeightsError,
    download,
    load_infinity_weights,
    load_vae_weights,
    read_model_config,
    read_state_dict,
    resolve_model_files,
    save_model_dir,
)

# ---------------------------------------------------------------------------------------------------------
# Small stand-ins with the official key layout (the real models are exercised at the end of the file)


class TinySelfAttn(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.scale_mul_1H11 = nn.Parameter(torch.zeros(1, heads, 1, 1))


class TinyBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, width))
        self.sa = TinySelfAttn(width, heads)
        self.ffn = nn.Linear(width, 2 * width)


class TinyChunk(nn.Module):
    def __init__(self, width: int, heads: int, blocks: int) -> None:
        super().__init__()
        self.module = nn.ModuleList(TinyBlock(width, heads) for _ in range(blocks))


class TinyInfinity(nn.Module):
    """Infinity's key layout at toy size: cfg_uncond, pos_start, chunked blocks, a bf16-able block stack."""

    def __init__(self, width: int = 16, heads: int = 2, rows: int = 6, text: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.cfg_uncond = nn.Parameter(torch.randn(rows, text))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, width))
        self.word_embed = nn.Linear(4, width)
        self.block_chunks = nn.ModuleList(TinyChunk(width, heads, depth // 2) for _ in range(2))
        self.head = nn.Linear(width, 8)


class Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k)


class Norm(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(2, ch)


class TinyResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = Norm(cin)
        self.conv1 = Conv(cin, cout)
        self.nin_shortcut = Conv(cin, cout, 1)


class TinyLFQ(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.register_buffer("mask", torch.tensor([2**i for i in range(d - 1, -1, -1)]))


class TinyQuantizer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lfq = TinyLFQ(d)


class TinyEncoder(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv_in = Conv(3, 4)
        self.block = nn.ModuleList([TinyResBlock(4, 6)])
        self.norm_out = Norm(6)
        self.conv_out = Conv(6, d)


class TinyVAE(nn.Module):
    """The BSQ-VAE's naming: wrapped convs and norms, and the quantizer registered under two names."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.encoder = TinyEncoder(d)
        self.quantizer = TinyQuantizer(d)
        self.quantize = self.quantizer


def random_state(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """Fresh values for every key (float keys random, integer buffers as they are), as a checkpoint."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


def plain_vae_naming(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream's un-wrapped naming: ``x.conv.weight`` -> ``x.weight``, ``x.norm.bias`` -> ``x.bias``."""
    return {
        k.replace(".conv.weight", ".weight")
        .replace(".conv.bias", ".bias")
        .replace(".norm.weight", ".weight")
        .replace(".norm.bias", ".bias"): v
        for k, v in state.items()
    }


def assert_loaded(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key].to(value.dtype)), key


def raises_one_line(fn: Callable[[], Any], *needles: str) -> str:
    with pytest.raises(WeightsError) as caught:
        fn()
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message
    # raised `from None`: no library exception chained into the traceback a user would see
    assert caught.value.__cause__ is None
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# ---------------------------------------------------------------------------------------------------------
# Containers


def _write_sharded(folder: Path, state: dict[str, torch.Tensor], fmt: str) -> Path:
    folder.mkdir()
    keys = list(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        if fmt == "safetensors":
            name = f"model-{i:05d}-of-00002.safetensors"
            save_file({k: state[k].contiguous() for k in part}, str(folder / name))
        else:
            name = f"pytorch_model-{i:05d}-of-00002.bin"
            torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


FORMATS = (
    "pth",
    "pth-legacy",
    "pth-trainer",
    "pth-state_dict",
    "pth-ddp-compiled",
    "safetensors",
    "dir-single",
    "sharded-safetensors",
    "sharded-bin",
    "index-file",
)


def write_checkpoint(fmt: str, folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """``state`` saved the way upstream (or a common trainer) would; returns what a user would pass."""
    if fmt == "pth":
        torch.save(state, folder / "m.pth")
        return folder / "m.pth"
    if fmt == "pth-legacy":
        torch.save(state, folder / "m.pth", _use_new_zipfile_serialization=False)
        return folder / "m.pth"
    if fmt == "pth-trainer":  # upstream full training checkpoint
        torch.save({"trainer": {"gpt_fsdp": state, "step": 7}, "epoch": 1}, folder / "c.pth")
        return folder / "c.pth"
    if fmt == "pth-state_dict":
        torch.save({"state_dict": state, "epoch": 1}, folder / "c.ckpt")
        return folder / "c.ckpt"
    if fmt == "pth-ddp-compiled":
        torch.save({f"module._orig_mod.{k}": v for k, v in state.items()}, folder / "m.pt")
        return folder / "m.pt"
    if fmt == "safetensors":
        save_file(state, str(folder / "m.safetensors"))
        return folder / "m.safetensors"
    if fmt == "dir-single":
        torch.save(state, folder / "only.pth")
        return folder
    if fmt == "sharded-safetensors":  # the official 8B folder
        return _write_sharded(folder / "infinity_8b_weights", state, "safetensors")
    if fmt == "sharded-bin":
        return _write_sharded(folder / "shards", state, "bin")
    if fmt == "index-file":
        return _write_sharded(folder / "w", state, "safetensors") / "model.safetensors.index.json"
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_infinity_layout_loads_from_every_container(tmp_path: Path, fmt: str) -> None:
    model = TinyInfinity()
    state = random_state(model)
    path = write_checkpoint(fmt, tmp_path, state)
    loaded = read_state_dict(path)
    assert set(loaded) == set(state)
    load_infinity_weights(model, loaded, source=str(path))
    assert_loaded(model, state)


def test_vae_checkpoint_under_vae_key_with_plain_naming_and_no_mask(tmp_path: Path) -> None:
    model = TinyVAE()
    state = random_state(model)
    plain = {k: v for k, v in plain_vae_naming(state).items() if not k.endswith("lfq.mask")}
    assert "encoder.block.0.conv1.weight" in plain and "encoder.block.0.norm1.bias" in plain
    assert "encoder.norm_out.weight" in plain and "encoder.block.0.nin_shortcut.weight" in plain
    torch.save({"vae": plain, "discriminator": {"w": torch.ones(1)}, "step": 3}, tmp_path / "vae.pth")
    load_vae_weights(model, read_state_dict(tmp_path / "vae.pth"), source="vae.pth")
    assert_loaded(model, state)
    assert model.quantize.lfq.mask.tolist() == [8, 4, 2, 1]


def test_vae_wrapped_naming_and_mixed_naming_load() -> None:
    model = TinyVAE()
    state = random_state(model)
    load_vae_weights(model, dict(state), source="wrapped")
    assert_loaded(model, state)
    mixed = dict(state)
    mixed["encoder.conv_in.weight"] = mixed.pop("encoder.conv_in.conv.weight")
    mixed["encoder.norm_out.bias"] = mixed.pop("encoder.norm_out.norm.bias")
    load_vae_weights(TinyVAE(), mixed, source="mixed")


def test_wrapper_keys_are_an_argument(tmp_path: Path) -> None:
    state = random_state(TinyInfinity())
    torch.save({"ema": state, "other": 1}, tmp_path / "c.pth")
    raises_one_line(lambda: read_state_dict(tmp_path / "c.pth"), "c.pth", "no state dict", "ema")
    assert set(read_state_dict(tmp_path / "c.pth", wrappers=[("ema",)])) == set(state)


# ---------------------------------------------------------------------------------------------------------
# Upstream's adaptations


def test_dropped_buffers_are_ignored() -> None:
    model = TinyInfinity()
    state = random_state(model)
    for name in ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen"):
        state[name] = torch.zeros(3)
    load_infinity_weights(model, state, source="x.pth")


def test_scale_mul_in_flash_attn_layout_is_accepted() -> None:
    model = TinyInfinity(heads=2)
    state = random_state(model)
    key = "block_chunks.1.module.0.sa.scale_mul_1H11"
    values = torch.tensor([0.25, 0.75])
    state[key] = values.view(1, 1, 2, 1)
    load_infinity_weights(model, state, source="x.pth")
    assert model.state_dict()[key].shape == (1, 2, 1, 1)
    assert torch.equal(model.state_dict()[key].flatten(), values)


def test_cfg_uncond_is_truncated_to_the_model_rows() -> None:
    model = TinyInfinity(rows=6)
    state = random_state(model)
    longer = torch.randn(10, 8)
    state["cfg_uncond"] = longer
    load_infinity_weights(model, state, source="x.pth")
    assert torch.equal(model.cfg_uncond.detach(), longer[:6])


def test_cfg_uncond_is_padded_with_upstream_initial_rows() -> None:
    from scalestyle.weights import upstream_cfg_uncond

    model = TinyInfinity(rows=6)
    state = random_state(model)
    state["cfg_uncond"] = torch.randn(4, 8)
    with pytest.warns(UserWarning, match=r"4 rows, the model 6.*rows 4\.\.5"):
        load_infinity_weights(model, state, source="x.pth")
    assert torch.equal(model.cfg_uncond.detach()[:4], state["cfg_uncond"])
    assert torch.equal(model.cfg_uncond.detach()[4:], upstream_cfg_uncond(6, 8)[4:])


def test_bf16_blocks_receive_bf16_values() -> None:
    model = TinyInfinity()
    for chunk in model.block_chunks:
        chunk.to(torch.bfloat16)
    state = random_state(model)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # fp32 file
    load_infinity_weights(model, state, source="x.pth")
    block_param = model.block_chunks[0].module[0].ffn.weight  # type: ignore[union-attr,index]
    assert block_param.dtype == torch.bfloat16
    assert torch.equal(block_param, state["block_chunks.0.module.0.ffn.weight"].to(torch.bfloat16))
    assert model.head.weight.dtype == torch.float32
    assert torch.equal(model.head.weight, state["head.weight"])


def test_loading_does_not_mutate_the_given_state() -> None:
    model = TinyInfinity()
    state = random_state(model)
    state["lvl_1L"] = torch.zeros(2)
    state["cfg_uncond"] = torch.randn(9, 8)
    before = dict(state)
    load_infinity_weights(model, state, source="x.pth")
    assert state.keys() == before.keys() and all(state[k] is before[k] for k in state)


# ---------------------------------------------------------------------------------------------------------
# Strict coverage


def test_missing_key_is_named() -> None:
    state = random_state(TinyInfinity())
    del state["block_chunks.0.module.0.sa.q_bias"]
    raises_one_line(
        lambda: load_infinity_weights(TinyInfinity(), state, source="w.pth"),
        "w.pth",
        "1 missing keys",
        "block_chunks.0.module.0.sa.q_bias",
    )


def test_constant_buffers_are_required_like_parameters() -> None:
    state = random_state(TinyInfinity())
    del state["block_chunks.1.module.0.sa.zero_k_bias"]
    raises_one_line(
        lambda: load_infinity_weights(TinyInfinity(), state, source="w.pth"),
        "missing",
        "block_chunks.1.module.0.sa.zero_k_bias",
    )


def test_unexpected_key_is_named() -> None:
    state = random_state(TinyInfinity())
    state["head.extra_bias"] = torch.zeros(8)
    raises_one_line(
        lambda: load_infinity_weights(TinyInfinity(), state, source="w.pth"),
        "w.pth",
        "1 unexpected keys",
        "head.extra_bias",
    )


def test_wrong_shape_names_key_expected_and_found() -> None:
    state = random_state(TinyInfinity())
    state["head.weight"] = torch.zeros(9, 16)
    raises_one_line(
        lambda: load_infinity_weights(TinyInfinity(), state, source="w.pth"),
        "w.pth",
        "head.weight expected (8, 16) found (9, 16)",
    )


def test_many_problems_list_the_first_few_and_count() -> None:
    state = random_state(TinyInfinity(depth=2))
    msg = raises_one_line(lambda: load_infinity_weights(TinyInfinity(depth=4), state, source="w.pth"))
    assert "checkpoint depth 2 but preset depth 4" in msg
    assert "missing keys" in msg and "more)" in msg


def test_checkpoint_of_another_width_says_so() -> None:
    state = random_state(TinyInfinity(width=24))
    raises_one_line(
        lambda: load_infinity_weights(TinyInfinity(width=16), state, source="big.pth"),
        "big.pth: checkpoint width 24 but preset width 16: is this a checkpoint of another model size?",
    )


def test_vae_of_another_codebook_says_so() -> None:
    state = random_state(TinyVAE(d=6))
    raises_one_line(
        lambda: load_vae_weights(TinyVAE(d=4), state, source="vae.pth"),
        "checkpoint codebook dim 6 but preset codebook dim 4",
    )


def test_file_of_another_model_entirely() -> None:
    state = random_state(TinyInfinity())
    raises_one_line(
        lambda: load_vae_weights(TinyVAE(), state, source="t.pth"), "t.pth", "none of the model's"
    )


# ---------------------------------------------------------------------------------------------------------
# Unreadable files: one line naming the file


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_files(tmp: Path) -> dict[str, Path]:
    state = {"a.weight": torch.randn(64, 64)}
    torch.save(state, tmp / "cut.pth")
    torch.save(state, tmp / "cut_legacy.pth", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp / "cut.safetensors"))
    (tmp / "notes.pth").write_text("these are not weights\n")
    (tmp / "notes.safetensors").write_text("these are not weights either\n")
    (tmp / "notes.txt").write_text("hello\n")
    (tmp / "empty.pth").write_bytes(b"")
    torch.save([torch.ones(1)], tmp / "list.pth")
    torch.save({"lr": 0.1, "epoch": 3}, tmp / "no_tensors.pth")
    torch.save({"args": argparse.Namespace(lr=0.1), "model": state}, tmp / "namespace.pth")
    (tmp / "plain.pkl.pth").write_bytes(pickle.dumps({"a": 1}))
    (tmp / "empty_dir").mkdir()
    (tmp / "ambiguous").mkdir()
    torch.save(state, tmp / "ambiguous" / "a.pth")
    torch.save(state, tmp / "ambiguous" / "b.pth")
    (tmp / "broken_index").mkdir()
    (tmp / "broken_index" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "model-00001-of-00001.safetensors"}})
    )
    (tmp / "bad_json_index").mkdir()
    (tmp / "bad_json_index" / "x.index.json").write_text("{not json")
    return {
        "truncated zip .pth": _truncate(tmp / "cut.pth"),
        "truncated legacy .pth": _truncate(tmp / "cut_legacy.pth"),
        "truncated .safetensors": _truncate(tmp / "cut.safetensors"),
        "text as .pth": tmp / "notes.pth",
        "text as .safetensors": tmp / "notes.safetensors",
        "text file": tmp / "notes.txt",
        "empty file": tmp / "empty.pth",
        "pickled list": tmp / "list.pth",
        "dict without tensors": tmp / "no_tensors.pth",
        "pickle with foreign globals": tmp / "namespace.pth",
        "plain pickle": tmp / "plain.pkl.pth",
        "missing path": tmp / "nope.pth",
        "empty dir": tmp / "empty_dir",
        "dir with two files": tmp / "ambiguous",
        "index with missing shard": tmp / "broken_index",
        "index not json": tmp / "bad_json_index",
    }


def test_unreadable_inputs_give_one_line_naming_the_file(tmp_path: Path) -> None:
    for case, path in _bad_files(tmp_path).items():
        with pytest.raises(WeightsError) as caught:
            read_state_dict(path)
        message = str(caught.value)
        assert "\n" not in message, case
        assert str(path) in message, (case, message)
        assert len(message) < 400, (case, message)
        assert "Traceback" not in message


def test_unreadable_messages_say_what_is_wrong(tmp_path: Path) -> None:
    files = _bad_files(tmp_path)
    expectations = {
        "truncated zip .pth": "truncated or corrupt",
        "truncated .safetensors": "truncated or corrupt",
        "text as .pth": "not a weights file",
        "empty file": "empty file",
        "pickled list": "holds a list, not a state dict",
        "pickle with foreign globals": "argparse.Namespace",
        "missing path": "no such file",
        "empty dir": "no weights",
        "dir with two files": "several weight files",
        "index with missing shard": "model-00001-of-00001.safetensors is missing",
    }
    for case, needle in expectations.items():
        raises_one_line(lambda p=files[case]: read_state_dict(p), needle)  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------
# scalestyle model folders


def test_save_model_dir_round_trip_with_forced_sharding(tmp_path: Path) -> None:
    preset = PRESETS["tiny"]
    transformer, vae = TinyInfinity(), TinyVAE()
    out = save_model_dir(
        tmp_path / "model",
        preset=preset,
        transformer=transformer,
        vae=vae,
        extra={"trained_steps": 12, "data": "demo"},
        max_shard_bytes=2048,
    )
    names = sorted(p.name for p in out.iterdir())
    assert "config.json" in names and "transformer.safetensors.index.json" in names
    shards = [n for n in names if n.startswith("transformer-")]
    assert len(shards) > 1 and shards[0] == f"transformer-00001-of-{len(shards):05d}.safetensors"
    largest_tensor = max(v.numel() * v.element_size() for v in transformer.state_dict().values())
    for shard in shards:
        assert (out / shard).stat().st_size <= max(2048, largest_tensor) + 1024

    files = resolve_model_files(out)
    assert files.preset == preset and files.text_encoder == "bundled:demo-t5"
    for original, path, loader in (
        (transformer, files.transformer, load_infinity_weights),
        (vae, files.vae, load_vae_weights),
    ):
        state = read_state_dict(path)
        for key, value in original.state_dict().items():
            assert torch.equal(state[key], value) and state[key].dtype == value.dtype, key
        fresh = type(original)()
        loader(fresh, state, source=str(path))
        assert_loaded(fresh, original.state_dict())
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == 1 and config["extra"]["trained_steps"] == 12
    assert read_model_config(out) == preset


def test_save_model_dir_unsharded_and_resave_cleans_old_shards(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"preset": PRESETS["tiny"], "transformer": TinyInfinity(), "vae": TinyVAE()}
    save_model_dir(tmp_path, max_shard_bytes=1024, **kwargs)
    save_model_dir(tmp_path, **kwargs)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "transformer.safetensors", "vae.safetensors"]
    assert resolve_model_files(tmp_path).transformer == tmp_path / "transformer.safetensors"


def test_save_model_dir_keeps_bf16(tmp_path: Path) -> None:
    transformer = TinyInfinity().to(torch.bfloat16)
    save_model_dir(tmp_path, preset=PRESETS["tiny"], transformer=transformer, vae=TinyVAE())
    assert read_state_dict(tmp_path / "transformer.safetensors")["head.weight"].dtype == torch.bfloat16


def _config(preset: ModelPreset) -> dict[str, Any]:
    from dataclasses import asdict

    return {"format_version": 1, **asdict(preset)}


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.update(format_version=99), "format_version 99 is not supported"),
        (lambda c: c.pop("format_version"), "not a scalestyle model config"),
        (lambda c: c["transformer"].update(depth="2"), "transformer.depth: expected int"),
        (lambda c: c["transformer"].update(depth=3), "depth 3 must be a multiple of block_chunks"),
        (lambda c: c["vae"].update(colour="red"), "unknown fields colour"),
        (lambda c: c["vae"].pop("codebook_dim"), "missing fields codebook_dim"),
        (lambda c: c["vae"].update(ch_mult="1,2"), "vae.ch_mult: expected a list of integers"),
        (lambda c: c.update(text=None), "text: expected an object"),
    ],
)
def test_read_model_config_errors_name_the_file(
    tmp_path: Path, edit: Callable[[dict[str, Any]], Any], needle: str
) -> None:
    config = _config(PRESETS["tiny"])
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    raises_one_line(lambda: read_model_config(tmp_path), str(tmp_path / "config.json"), needle)


def test_read_model_config_bad_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{")
    raises_one_line(lambda: read_model_config(tmp_path), "config.json", "not readable JSON")


def test_resolve_model_files_rejects_a_folder_with_neither(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hi")
    raises_one_line(lambda: resolve_model_files(tmp_path), str(tmp_path), "not a model folder")
    raises_one_line(lambda: resolve_model_files(tmp_path / "missing"), "no such model folder")


def test_resolve_model_files_config_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_config(PRESETS["tiny"])))
    raises_one_line(lambda: resolve_model_files(tmp_path), "transformer.safetensors", "missing")


def test_resolve_upstream_weights_folder_without_our_json(tmp_path: Path) -> None:
    (tmp_path / "infinity_2b_reg.pth").write_bytes(b"x")
    (tmp_path / "infinity_vae_d32reg.pth").write_bytes(b"x")
    (tmp_path / "flan-t5-xl").mkdir()
    (tmp_path / "flan-t5-xl" / "config.json").write_text("{}")
    files = resolve_model_files(tmp_path)
    assert files.preset.name == "infinity-2b"
    assert files.transformer == tmp_path / "infinity_2b_reg.pth"
    assert files.text_encoder == str(tmp_path / "flan-t5-xl")


# ---------------------------------------------------------------------------------------------------------
# Download (huggingface_hub is patched: no test touches the network)


class FakeHub:
    """Stands in for ``huggingface_hub.snapshot_download``: records calls, then runs ``behaviour``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.behaviour: Callable[[str, dict[str, Any]], None] | None = None

    def snapshot_download(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append({"repo_id": repo_id, **kwargs})
        if self.behaviour is not None:
            self.behaviour(repo_id, kwargs)
        return str(kwargs.get("local_dir"))


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    import huggingface_hub

    fake = FakeHub()

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the test tried to use the network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    return fake


def test_download_network_error_is_one_line(tmp_path: Path, hub: FakeHub) -> None:
    def offline(repo: str, kwargs: dict[str, Any]) -> None:
        raise ConnectionError(
            "Failed to resolve 'huggingface.co' ([Errno -3] Temporary failure)\nmore detail"
        )

    hub.behaviour = offline
    raises_one_line(
        lambda: download("infinity-2b", tmp_path / "w"),
        "could not reach the hub",
        "huggingface.co",
        "pass --model DIR",
    )


def test_download_access_refused_is_one_line(tmp_path: Path, hub: FakeHub) -> None:
    class GatedRepoError(OSError):
        pass

    def gated(repo: str, kwargs: dict[str, Any]) -> None:
        raise GatedRepoError("401 Client Error: access to google/flan-t5-xl is restricted")

    hub.behaviour = gated
    raises_one_line(lambda: download("infinity-8b", tmp_path / "w", token="t"), "refused access", "--token")


def test_download_unknown_preset(tmp_path: Path, hub: FakeHub) -> None:
    raises_one_line(lambda: download("tiny", tmp_path), "no official weights for 'tiny'")


@pytest.mark.parametrize("preset", ["infinity-2b", "infinity-8b"])
def test_download_writes_a_layout_the_loader_resolves(tmp_path: Path, hub: FakeHub, preset: str) -> None:
    def fake_files(repo: str, kwargs: dict[str, Any]) -> None:
        root = Path(kwargs["local_dir"])
        for pattern in kwargs["allow_patterns"]:
            target = root / pattern.replace("*", "model-00001-of-00001.safetensors")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"x")

    hub.behaviour = fake_files
    dest = download(preset, tmp_path / preset, token="hf_x")
    real_calls = hub.calls
    assert [c["repo_id"] for c in real_calls] == ["FoundationVision/Infinity", "google/flan-t5-xl"]
    assert all(c["token"] == "hf_x" for c in real_calls)
    expected = {
        "infinity-2b": ["infinity_2b_reg.pth", "infinity_vae_d32reg.pth"],
        "infinity-8b": ["infinity_8b_weights/*", "infinity_vae_d56_f8_14_patchify.pth"],
    }[preset]
    assert real_calls[0]["allow_patterns"] == expected
    assert "spiece.model" in real_calls[1]["allow_patterns"]
    assert (dest / LAYOUT_FILE).is_file()
    files = resolve_model_files(dest)
    assert files.preset.name == preset
    assert files.transformer.exists() and files.vae.exists()
    assert files.text_encoder == str(dest / "flan-t5-xl")


def test_download_incomplete_snapshot(tmp_path: Path, hub: FakeHub) -> None:
    raises_one_line(lambda: download("infinity-2b", tmp_path), "has no infinity_2b_reg.pth")


# ---------------------------------------------------------------------------------------------------------
# The real models (skipped until they import)


def _key_dump(path: Path, section: int = 0) -> dict[str, tuple[int, ...]]:
    """Key -> shape from a research key dump; sections start at header lines without 'entries'."""
    out: dict[str, tuple[int, ...]] = {}
    current = -1
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            current += "entries" not in line
            continue
        if line.strip() and current == section:
            key, shape, _dtype, _kind = line.split("\t")
            out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def _meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def test_official_key_dumps_fit_the_real_models(key_dumps: Path) -> None:
    infinity = pytest.importorskip("scalestyle.models.infinity")
    bsq_vae = pytest.importorskip("scalestyle.models.bsq_vae")
    with torch.device("meta"):
        model_2b = infinity.Infinity(PRESETS["infinity-2b"].transformer)
        vae_d32 = bsq_vae.BSQVAE(PRESETS["infinity-2b"].vae)
        vae_d56 = bsq_vae.BSQVAE(PRESETS["infinity-8b"].vae)
    keys_2b = _key_dump(key_dumps / "infinity_2b_keys.txt")
    keys_8b = _key_dump(key_dumps / "infinity_8b_keys.txt")
    assert len(keys_2b) == 694 and len(keys_8b) == 862
    load_infinity_weights(model_2b, _meta_state(keys_2b), source="infinity_2b_reg.pth")
    raises_one_line(
        lambda: load_infinity_weights(model_2b, _meta_state(keys_8b), source="infinity_8b_weights"),
        "checkpoint width 3584 but preset width 2048: is this a checkpoint of another model size?",
    )
    vae_keys = key_dumps / "infinity_vae_keys.txt"
    load_vae_weights(vae_d32, _meta_state(plain_vae_naming(_key_dump(vae_keys, 0))), source="d32")
    load_vae_weights(vae_d56, _meta_state(_key_dump(vae_keys, 1)), source="d56")


def test_real_tiny_models_round_trip_through_upstream_files(tmp_path: Path) -> None:
    infinity = pytest.importorskip("scalestyle.models.infinity")
    bsq_vae = pytest.importorskip("scalestyle.models.bsq_vae")
    preset = PRESETS["tiny"]
    source = infinity.Infinity(preset.transformer)
    source.init_weights(torch.Generator().manual_seed(3))
    upstream = dict(source.state_dict())
    upstream["lvl_1L"] = torch.zeros(1, 521)
    torch.save(upstream, tmp_path / "infinity_tiny.pth")
    vae_state = random_state(bsq_vae.BSQVAE(preset.vae))
    torch.save({"vae": plain_vae_naming(vae_state)}, tmp_path / "vae_tiny.pth")

    target = infinity.Infinity(preset.transformer)
    load_infinity_weights(target, read_state_dict(tmp_path / "infinity_tiny.pth"), source="infinity_tiny.pth")
    assert_loaded(target, source.state_dict())
    vae = bsq_vae.BSQVAE(preset.vae)
    load_vae_weights(vae, read_state_dict(tmp_path / "vae_tiny.pth"), source="vae_tiny.pth")
    assert_loaded(vae, vae_state)
