"""StyleVAR: the blended guide attention, its KV cache, the control seam, the released key layout, loading."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from scalestyle.attention import AttnSite
from scalestyle.config import SamplingConfig, StyleVARConfig, VARPreset, get_preset, get_stylevar_preset
from scalestyle.hub_layouts import VQVAE_FILE
from scalestyle.models.stylevar import StyleVAR, TransferInputs, effective_alphas
from scalestyle.models.var import VAR
from scalestyle.models.vqvae import VQVAE, IndexCodec
from scalestyle.sampling import PathPlan, ScaleEvent, run_scales
from scalestyle.schedules import var_schedule
from scalestyle.stylevar_weights import (
    download_stylevar,
    init_from_var,
    load_stylevar_models,
    load_stylevar_weights,
    resolve_stylevar_files,
    trunk_state_from_torchvision,
)
from scalestyle.train.stylevar import panw_weights_L, sft_loss
from scalestyle.transfer import TransferPipeline, image_sha256
from scalestyle.weights import LAYOUT_FILE, WeightsError, download, read_state_dict

PRESET = get_stylevar_preset("stylevar-tiny")
SAMPLING = SamplingConfig(cfg=0, top_k=30, top_p=0.96, seed=3)


@torch.no_grad()
def loud_(model: StyleVAR, seed: int) -> StyleVAR:
    """Weights far from the training init (which keeps every gate near zero), so every path matters."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if name.endswith("scale_mul_1H11"):
            p.copy_(math.log(4.0) + torch.randn(p.shape, generator=g) * 0.3)
        elif p.ndim >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
        elif "bn" in name or "encoder.1." in name or "downsample.1" in name:
            continue  # batch norms stay near identity: the trunk's vector stays of moderate size
        else:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def tiny_model(seed: int = 0, **changes: object) -> StyleVAR:
    cfg = replace(PRESET.transformer, **changes)
    model = StyleVAR(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    return loud_(model, seed + 1).eval()


def tiny_vqvae(seed: int = 0) -> VQVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VQVAE(PRESET.vae).eval()


def images(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = PRESET.image_size
    return tuple(torch.rand(batch, 3, size, size, generator=g) * 2 - 1 for _ in range(2))


def inputs(vqvae: VQVAE, model: StyleVAR, batch: int = 2, seed: int = 0) -> TransferInputs:
    content, style = images(batch, seed)
    with torch.no_grad():
        return TransferInputs.encode(vqvae, content, style, model.schedule)


def sample(model: StyleVAR, vqvae: VQVAE, raw: TransferInputs, **plan: object):
    """(tokens per scale, logits per scale, f_hat) of one seeded run."""
    tokens: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    real = model.logits

    def recording(hidden: torch.Tensor, cond: object) -> torch.Tensor:
        out = real(hidden, cond)
        logits.append(out)
        return out

    def on_scale(event: ScaleEvent) -> None:
        tokens.append(event.tokens["gen"])

    model.logits = recording
    try:
        with torch.no_grad():
            f_hat = run_scales(
                model,
                IndexCodec(vqvae),
                [PathPlan("gen", raw, **plan)],
                model.schedule,
                SAMPLING,
                on_scale=on_scale,
            )["gen"]
    finally:
        del model.logits
    return tokens, logits, f_hat


def test_config_errors_name_value_and_range() -> None:
    with pytest.raises(ValueError, match="one value per scale"):
        replace(PRESET.transformer, alphas=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"alphas must each be in \[0, 1\], got"):
        replace(PRESET.transformer, alphas=(0.2, 0.4, 1.5, 0.8))
    with pytest.raises(ValueError, match="width 130 must be a multiple of heads 4"):
        StyleVARConfig(depth=2, width=130, heads=4, patch_nums=(1, 2), alphas=(0.5, 0.5))


def test_strength_shifts_alphas_by_half_and_clamps() -> None:
    alphas = (0.2, 0.5, 0.8)
    assert effective_alphas(alphas, 0.0) == [0.2, 0.5, 0.8]
    assert effective_alphas(alphas, 0.4) == pytest.approx([0.4, 0.7, 0.99])
    assert effective_alphas(alphas, -1.0) == pytest.approx([0.01, 0.01, 0.3])
    with pytest.raises(ValueError, match=r"style strength must be in \[-1, 1\], got 1.5"):
        TransferInputs.encode(tiny_vqvae(), *images(1, 0), var_schedule(PRESET.transformer.patch_nums), 1.5)


def test_alpha_one_reads_only_the_style_guide() -> None:
    model, vqvae = tiny_model(alphas=(1.0, 1.0, 1.0, 1.0)), tiny_vqvae()
    raw = inputs(vqvae, model)
    other = inputs(vqvae, model, seed=9)
    # the content guides of other images; the content images (the start token) stay
    swapped_content = replace(raw, content_guides=other.content_guides)
    swapped_style = replace(raw, style_guides=other.style_guides)
    teacher = vqvae.teacher_inputs(vqvae.encode_indices(images(2, 5)[0], model.schedule), model.schedule)
    with torch.no_grad():
        ref = model(teacher, model.condition([raw]), model.schedule)
        content_changed = model(teacher, model.condition([swapped_content]), model.schedule)
        style_changed = model(teacher, model.condition([swapped_style]), model.schedule)
    assert torch.equal(ref, content_changed)
    assert (ref - style_changed).abs().max() > 1e-2
    tokens, _, f_hat = sample(model, vqvae, raw)
    tokens_c, _, f_hat_c = sample(model, vqvae, swapped_content)
    assert all(torch.equal(a, b) for a, b in zip(tokens, tokens_c, strict=True))
    assert torch.equal(f_hat, f_hat_c)


def test_cached_sampling_equals_teacher_forcing_with_single_append() -> None:
    model, vqvae = tiny_model(), tiny_vqvae()
    raw = inputs(vqvae, model, batch=2, seed=1)
    tokens, logits, _ = sample(model, vqvae, raw)
    with torch.no_grad():
        teacher = model(vqvae.teacher_inputs(tokens, model.schedule), model.condition([raw]), model.schedule)
    cached = torch.cat(logits, dim=1)
    scale = teacher.abs().max().item()
    assert scale > 1
    # float order differs (masked full-length attention vs the cache, 1 - alpha in float32 vs from double)
    assert (teacher - cached).abs().max().item() < 1e-5 * scale


def test_double_append_differs_from_single_from_the_second_scale_on() -> None:
    single, double = tiny_model(), tiny_model(double_append=True)
    vqvae = tiny_vqvae()
    raw = inputs(vqvae, single, seed=2)
    given = tuple(vqvae.encode_indices(images(2, 7)[0], single.schedule))
    _, logits_single, _ = sample(single, vqvae, raw, given_tokens=given)
    _, logits_double, _ = sample(double, vqvae, raw, given_tokens=given)
    diffs = [(a - b).abs().max().item() for a, b in zip(logits_single, logits_double, strict=True)]
    # scale 0: every key duplicated alike leaves the softmax as it is; later the style call sees the
    # history twice and the current scale once
    assert diffs[0] < 1e-5
    assert all(d > 1e-3 for d in diffs[1:]), diffs


def test_identity_controller_is_bit_identical_and_sees_both_guide_calls() -> None:
    model, vqvae = tiny_model(), tiny_vqvae()
    raw = inputs(vqvae, model, seed=3)
    tokens, logits, f_hat = sample(model, vqvae, raw)
    sites: list[AttnSite] = []

    def identity(site: AttnSite, q, k, v, bias, attend):
        sites.append(site)
        return attend(q, k, v, bias)

    with model.control.install(identity):
        _, logits_c, f_hat_c = sample(model, vqvae, raw)
    assert torch.equal(f_hat, f_hat_c)
    assert all(torch.equal(a, b) for a, b in zip(logits, logits_c, strict=True))
    S, depth = model.schedule.num_scales, model.cfg.depth
    assert [(s.scale, s.layer, s.kind) for s in sites] == [
        (si, layer, kind)
        for si in range(S)
        for layer in range(depth)
        for kind in ("style_guide", "content_guide")
    ]
    sites.clear()
    teacher = vqvae.teacher_inputs(tokens, model.schedule)
    with torch.no_grad(), model.control.install(identity):
        model(teacher, model.condition([raw]), model.schedule)
    assert len(sites) == 2 * depth and all(s.scale is None for s in sites)
    assert all(torch.equal(s.query_scales_L, model.lvl_1L[0]) for s in sites)


def test_cfg_rows_take_the_content_as_their_style() -> None:
    model, vqvae = tiny_model(), tiny_vqvae()
    raw = inputs(vqvae, model, seed=4)
    null = model.null_condition(raw)
    assert torch.equal(null.style_B3PP, raw.content_B3PP)
    assert all(torch.equal(a, b) for a, b in zip(null.style_guides, raw.content_guides, strict=True))
    assert model.uses_uncond(SAMPLING) is False
    with torch.no_grad():
        f_hat = run_scales(
            model, IndexCodec(vqvae), [PathPlan("gen", raw)], model.schedule, replace(SAMPLING, cfg=2.0)
        )["gen"]
    assert f_hat.shape == (2, PRESET.vae.z_channels, 4, 4)


def test_meta_build_of_d20_has_the_released_key_layout() -> None:
    with torch.device("meta"):
        model = StyleVAR(get_stylevar_preset("stylevar-d20").transformer)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # wave2_methods.md §1.8: the layout the authors' code implies
    assert {k: shapes[k] for k in ("pos_start", "pos_1LC", "lvl_embed.weight", "word_embed.weight")} == {
        "pos_start": (1, 1, 1280),
        "pos_1LC": (1, 680, 1280),
        "lvl_embed.weight": (10, 1280),
        "word_embed.weight": (1280, 32),
    }
    assert shapes["feat_emb.weight"] == (1280, 512)
    assert shapes["head_nm.ada_lin.1.weight"] == (2560, 1280)
    assert shapes["head.weight"] == (4096, 1280)
    assert not any(k.startswith("class_emb") for k in shapes)
    for enc in ("style_encoder", "content_encoder"):
        children = {k.split(".")[1] for k in shapes if k.startswith(enc + ".")}
        assert children == {"0", "1", "4", "5", "6", "7"}
        assert shapes[f"{enc}.0.weight"] == (64, 3, 7, 7)
        assert shapes[f"{enc}.5.0.downsample.0.weight"] == (128, 64, 1, 1)
        assert shapes[f"{enc}.7.1.bn2.running_var"] == (512,)
    assert {k[len("blocks.7.") :]: v for k, v in shapes.items() if k.startswith("blocks.7.")} == {
        "attn.scale_mul_1H11": (1, 20, 1, 1),
        "attn.q_bias_guide": (1280,),
        "attn.v_bias_guide": (1280,),
        "attn.q_bias_target": (1280,),
        "attn.v_bias_target": (1280,),
        "attn.zero_k_bias_guide": (1280,),
        "attn.zero_k_bias_target": (1280,),
        "attn.mat_qkv_guide.weight": (3840, 1280),
        "attn.mat_qkv_target.weight": (3840, 1280),
        "attn.proj.weight": (1280, 1280),
        "attn.proj.bias": (1280,),
        "ffn.fc1.weight": (5120, 1280),
        "ffn.fc1.bias": (5120,),
        "ffn.fc2.weight": (1280, 5120),
        "ffn.fc2.bias": (1280,),
        "ada_lin.1.weight": (7680, 1280),
        "ada_lin.1.bias": (7680,),
    }
    assert sum(k.startswith("blocks.") and k.endswith("ada_lin.1.weight") for k in shapes) == 20
    # ~721M parameters: 698.7M transformer, 11.2M per ResNet-18 trunk (GRPO.md §1)
    trunk = sum(p.numel() for n, p in model.named_parameters() if n.startswith("style_encoder."))
    total = sum(p.numel() for p in model.parameters())
    assert round(trunk / 1e5) == 112 and round((total - 2 * trunk) / 1e5) == 6986


# ---------------------------------------------------------------------------------------------------------
# Loading


def raises_one_line(fn: Callable[[], Any], *parts: str) -> str:
    with pytest.raises(WeightsError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


def released_file(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "StyleVAR_SFT.pth") -> Path:
    """Saved as the authors release it: the state dict under ``model``, the optimiser state beside it."""
    path = tmp_path / name
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}, path)
    return path


def meta_model() -> StyleVAR:
    with torch.device("meta"):
        return StyleVAR(PRESET.transformer)


def test_released_checkpoint_loads_strictly_on_meta(tmp_path: Path) -> None:
    model = tiny_model()
    path = released_file(tmp_path, model.state_dict())
    loaded = meta_model()
    load_stylevar_weights(loaded, read_state_dict(path), source=str(path))
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_strict_load_errors_are_one_line(tmp_path: Path) -> None:
    state = tiny_model().state_dict()
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.q_bias_guide"}
    raises_one_line(
        lambda: load_stylevar_weights(meta_model(), missing, source="x.pth"),
        "x.pth: 1 missing keys: blocks.1.attn.q_bias_guide",
    )
    extra = {**state, "class_emb.weight": torch.zeros(1001, 128)}
    raises_one_line(
        lambda: load_stylevar_weights(meta_model(), extra, source="x.pth"),
        "1 unexpected keys: class_emb.weight",
    )
    wide = {**state, "feat_emb.weight": torch.zeros(128, 512)}
    raises_one_line(
        lambda: load_stylevar_weights(meta_model(), wide, source="x.pth"),
        "checkpoint global vector size 512 but preset global vector size 64",
    )
    var_file = tmp_path / "var.pth"
    torch.save(VAR(get_preset("var-tiny", VARPreset).transformer).state_dict(), var_file)
    raises_one_line(
        lambda: load_stylevar_weights(meta_model(), read_state_dict(var_file), source=str(var_file)),
        "missing keys",
        "unexpected keys",
    )


def test_folder_of_the_hub_layout_resolves_and_loads(tmp_path: Path) -> None:
    model, vqvae = tiny_model(), tiny_vqvae()
    released_file(tmp_path, model.state_dict(), "StyleVAR-GRPO.pth")
    torch.save(vqvae.state_dict(), tmp_path / VQVAE_FILE)
    layout = {"preset": "stylevar-tiny", "checkpoints": {"grpo": "StyleVAR-GRPO.pth"}, "vae": VQVAE_FILE}
    (tmp_path / LAYOUT_FILE).write_text(json.dumps(layout))
    files = resolve_stylevar_files(tmp_path)
    loaded, loaded_vae = load_stylevar_models(files)
    assert torch.equal(loaded.head.weight, model.head.weight)
    assert torch.equal(loaded_vae.quantize.embedding.weight, vqvae.quantize.embedding.weight)
    raises_one_line(lambda: resolve_stylevar_files(tmp_path, "sft"), "has no sft checkpoint")


def test_init_from_var_copies_qkv_into_both_projections() -> None:
    var = VAR(get_preset("var-tiny", VARPreset).transformer)
    var.init_weights(torch.Generator().manual_seed(4))
    with torch.no_grad():
        for block in var.blocks:
            block.attn.q_bias.normal_()
            block.attn.v_bias.normal_()
    model = tiny_model(seed=5)
    trunk_before = {k: v.clone() for k, v in model.style_encoder.state_dict().items()}
    feat_before = model.feat_emb.weight.clone()
    init_from_var(model, var.state_dict(), source="var.pth")
    for ours, theirs in zip(model.block_list, var.block_list, strict=True):
        assert torch.equal(ours.attn.mat_qkv_guide.weight, theirs.attn.mat_qkv.weight)
        assert torch.equal(ours.attn.mat_qkv_target.weight, theirs.attn.mat_qkv.weight)
        for bias in ("q_bias", "v_bias"):
            for role in ("guide", "target"):
                assert torch.equal(getattr(ours.attn, f"{bias}_{role}"), getattr(theirs.attn, bias))
        assert torch.equal(ours.ada_lin[1].weight, theirs.ada_lin[1].weight)
    assert torch.equal(model.head.weight, var.head.weight) and torch.equal(model.pos_1LC, var.pos_1LC)
    assert torch.equal(model.feat_emb.weight, feat_before)
    assert all(torch.equal(v, trunk_before[k]) for k, v in model.style_encoder.state_dict().items())
    partial = {k: v for k, v in var.state_dict().items() if k != "blocks.0.ffn.fc1.weight"}
    raises_one_line(
        lambda: init_from_var(model, partial, source="var.pth"), "1 missing keys: blocks.0.ffn.fc1"
    )
    raises_one_line(
        lambda: init_from_var(meta_model(), var.state_dict(), source="var.pth"),
        "needs a materialized StyleVAR",
    )


def test_torchvision_resnet_keys_map_onto_the_trunk() -> None:
    trunk = StyleVAR(PRESET.transformer).style_encoder
    renamed = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    torchvision_state = {
        f"{dict((v, k) for k, v in renamed.items())[k.split('.')[0]]}.{k.partition('.')[2]}": v
        for k, v in trunk.state_dict().items()
    }
    torchvision_state |= {"fc.weight": torch.zeros(1000, 64), "fc.bias": torch.zeros(1000)}
    mapped = trunk_state_from_torchvision(torchvision_state)
    assert mapped.keys() == trunk.state_dict().keys()
    trunk.load_state_dict(mapped, strict=True)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``huggingface_hub.snapshot_download`` writing small files; records each call."""
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        root = Path(kwargs["local_dir"])
        for name in kwargs["allow_patterns"]:
            (root / name).write_bytes(b"x")
        return str(root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_download_moves_the_release_into_place(tmp_path: Path, hub: list[dict[str, Any]]) -> None:
    dest = download("stylevar", tmp_path / "w", token="hf_x")
    assert [c["repo_id"] for c in hub] == ["Senfier-LiqiJing/StyleVAR"] and hub[0]["token"] == "hf_x"
    names = ["vae_ch160v4096z32.pth", "StyleVAR_SFT.pth", "StyleVAR-GRPO.pth"]
    assert hub[0]["allow_patterns"] == names
    assert sorted(p.name for p in dest.iterdir()) == sorted([*names, LAYOUT_FILE])
    assert resolve_stylevar_files(dest, "sft").transformer.name == "StyleVAR_SFT.pth"
    files = resolve_stylevar_files(dest)
    assert files.transformer.name == "StyleVAR-GRPO.pth" and files.preset.name == "stylevar-d20"


def test_download_incomplete_snapshot_leaves_nothing(
    tmp_path: Path, hub: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def no_grpo(repo_id: str, **kwargs: Any) -> str:
        kwargs["allow_patterns"] = kwargs["allow_patterns"][:2]
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_grpo)
    raises_one_line(
        lambda: download_stylevar(tmp_path / "w"), "Senfier-LiqiJing/StyleVAR has no StyleVAR-GRPO.pth"
    )
    assert list((tmp_path / "w").iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# TransferPipeline


def picture(seed: int, size: tuple[int, int] = (80, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def test_transfer_pipeline_returns_images_with_metadata() -> None:
    pipe = TransferPipeline.random("stylevar-tiny", seed=0)
    content, style = [picture(1), picture(2)], picture(3)
    sampling = replace(SAMPLING, seed=11)
    out = pipe(content, style, strength=0.5, sampling=sampling)
    assert [im.size for im in out.images] == [(64, 64), (64, 64)] and out.images[0].mode == "RGB"
    meta = out.metadata[1]
    assert meta["content_sha256"] == image_sha256(content[1]) != image_sha256(content[0])
    assert meta["style_sha256"] == image_sha256(style) == image_sha256(style.convert("RGBA"))
    assert meta["seed"] == 11 and meta["settings"]["strength"] == 0.5 and meta["settings"]["top_k"] == 30
    assert meta["model"] == "stylevar-tiny (random weights)"
    again = pipe(content, style, strength=0.5, sampling=sampling)
    assert torch.equal(out.summed_codes_BdHW, again.summed_codes_BdHW)
    sites: list[AttnSite] = []

    def identity(site, q, k, v, bias, attend):
        sites.append(site)
        return attend(q, k, v, bias)

    watched = pipe(content, style, strength=0.5, sampling=sampling, controller=identity)
    assert torch.equal(out.summed_codes_BdHW, watched.summed_codes_BdHW) and sites
    assert pipe.pipe.transformer.control.controller is None
    with pytest.raises(ValueError, match=r"style strength must be in \[-1, 1\], got 2"):
        pipe(content, style, strength=2.0, sampling=sampling)
    with pytest.raises(ValueError, match="give one style image or one per content: 2 contents, 3 styles"):
        pipe(content, [style] * 3, sampling=sampling)
    with pytest.raises(ValueError, match=r"use transfer\.TransferPipeline"):
        pipe.pipe(class_label=3, sampling=sampling)


# ---------------------------------------------------------------------------------------------------------
# Training objectives


def test_panw_weights_sum_to_one_and_favour_coarse_tokens() -> None:
    schedule = var_schedule(get_stylevar_preset("stylevar-d20").transformer.patch_nums)
    w = panw_weights_L(schedule)
    assert w.shape == (680,) and w.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (w[0] / w[-1]).item() == pytest.approx(256**0.7)
    # wave2_methods.md §1.6: 1x1 0.0337, 2x2 0.0128, 4x4 0.0048, 8x8 0.0018, 16x16 0.0007
    starts = {1: 0, 2: 1, 4: 14, 8: 91, 16: 424}
    assert [round(w[i].item(), 4) for i in starts.values()] == [0.0337, 0.0128, 0.0048, 0.0018, 0.0007]
    assert torch.equal(panw_weights_L(schedule, 0.0), torch.full((680,), 1 / 680, dtype=torch.float64))


def test_sft_loss_decreases_on_a_tiny_triplet_batch() -> None:
    model, vqvae = tiny_model(), tiny_vqvae()
    model.train()
    target, content = images(2, 30)
    style = images(2, 31)[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = sft_loss(model, vqvae, target, content, style)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > math.log(PRESET.vae.vocab_size) * 0.5
    assert losses[-1] < losses[0] * 0.9, losses


def test_transfer_cli_writes_an_rgb_png_with_metadata(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from scalestyle.cli import main
    from scalestyle.metadata import read_png_metadata

    rng = np.random.default_rng(0)
    for name in ("c.png", "s.png"):
        PILImage.fromarray(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)).save(tmp_path / name)
    out = tmp_path / "o.png"
    argv = ["transfer", "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png")]
    code = main(
        [*argv, "--model", "stylevar-tiny", "--random-weights", "--top-k", "30", "--out", str(out), "--quiet"]
    )
    assert code == 0 and PILImage.open(out).mode == "RGB"
    assert read_png_metadata(out)["model"].startswith("stylevar-tiny")
    assert main([*argv, "--strength", "2", "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
