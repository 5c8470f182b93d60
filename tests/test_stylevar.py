"""StyleVAR: the blended guide attention, its KV cache, the control seam, the released key layout, loading."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from scalestyle.attention import AttnSite
from scalestyle.config import SamplingConfig, StyleVARConfig, get_stylevar_preset
from scalestyle.models.stylevar import StyleVAR, TransferInputs, effective_alphas
from scalestyle.models.vqvae import VQVAE, IndexCodec
from scalestyle.sampling import PathPlan, ScaleEvent, run_scales
from scalestyle.schedules import var_schedule

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
    return tuple(torch.rand(batch, 3, size, size, generator=g) * 2 - 1 for _ in range(2))  # type: ignore[return-value]


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
        out = real(hidden, cond)  # type: ignore[arg-type]
        logits.append(out)
        return out

    def on_scale(event: ScaleEvent) -> None:
        tokens.append(event.tokens["gen"])

    model.logits = recording  # type: ignore[method-assign]
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

    def identity(site: AttnSite, q, k, v, bias, attend):  # type: ignore[no-untyped-def]
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
    assert all(torch.equal(s.query_scales_L, model.lvl_1L[0]) for s in sites)  # type: ignore[arg-type]


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
