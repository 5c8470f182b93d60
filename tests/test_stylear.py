"""StyleAR (issue 16): resampler, style tokens, how they join the transformer, the adapter and pipeline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scalestyle.attention import BatchLayout
from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.method.stylear import StyleARPipeline
from scalestyle.models.infinity import Infinity
from scalestyle.models.random_text import RandomTextEncoder
from scalestyle.models.stylear import (
    CLIPImageEncoder,
    PathStyle,
    PerceiverResampler,
    Reference,
    SamMasker,
    StyleARAdapter,
    StyleARConfig,
    StyleARSettings,
    StyleTokenController,
    VAEImageEncoder,
    mix_references,
    object_image,
    style_tokens,
)
from scalestyle.pipeline import Pipeline
from scalestyle.schedules import get_schedule
from tests.helpers import tiny_transformer

SCHEDULE = get_schedule(1.0, "0.06M")
SAMPLING = SamplingConfig(seed=3, cfg=3.0)
NO_NOISE = StyleARSettings(noise_strength=0.0)


def tiny_config(**overrides: object) -> StyleARConfig:
    base = StyleARConfig(
        text_width=128, encoder="vae", encoder_width=8, encoder_source=None, num_queries=4, depth=1, heads=2,
        dim_head=8, width=32,
    )  # fmt: skip
    return replace(base, **overrides)


def tiny_adapter(seed: int = 0, **overrides: object) -> StyleARAdapter:
    adapter = StyleARAdapter(tiny_config(**overrides))
    adapter.resampler.init_weights(torch.Generator().manual_seed(seed))
    return adapter.eval()


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_model_dir, device="cpu")


def styler(pipe: Pipeline, adapter: StyleARAdapter) -> StyleARPipeline:
    return StyleARPipeline(pipe, adapter, VAEImageEncoder(pipe.vae, 64))


def ref(content: str = "star", style: str = "neon", seed: int = 0) -> world.Sample:
    return world.render(content, style, seed)


def teacher_forced(model: Infinity, controller: StyleTokenController | None, *, cfg: bool) -> torch.Tensor:
    """Logits of one conditional row (and its CFG row) under ``controller``."""
    enc = RandomTextEncoder(128, 32)
    text = enc.encode(["a star in style"])
    raws = [text, model.null_condition(text)] if cfg else [text]
    cond = model.condition(raws)
    inputs = torch.randn(len(raws), SCHEDULE.total_tokens - 1, 8, generator=torch.Generator().manual_seed(1))
    layout = BatchLayout(("gen",), 1, cfg)
    with torch.no_grad(), model.control.install(controller):
        logits: torch.Tensor = model(inputs, cond, SCHEDULE, layout)
    return logits


# ---- resampler and tokens -------------------------------------------------------------------------------
def test_resampler_turns_any_number_of_features_into_the_query_tokens_at_text_width() -> None:
    resampler = PerceiverResampler(tiny_config())
    resampler.init_weights(torch.Generator().manual_seed(0))
    for rows, feats in ((1, 5), (3, 257)):
        out = resampler(torch.randn(rows, feats, 8))
        assert out.shape == (rows, 4, 128)
        # the output LayerNorm: every token has zero mean and unit variance over the text width
        torch.testing.assert_close(out.mean(-1), torch.zeros(rows, 4), atol=1e-5, rtol=0)
    with torch.device("meta"):  # the default sizes, without allocating them
        assert PerceiverResampler(StyleARConfig(text_width=64)).latents.shape == (1, 16, 1024)


def test_resampler_init_is_seeded() -> None:
    a, b = PerceiverResampler(tiny_config()), PerceiverResampler(tiny_config())
    a.init_weights(torch.Generator().manual_seed(5))
    b.init_weights(torch.Generator().manual_seed(5))
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    b.init_weights(torch.Generator().manual_seed(6))
    assert not torch.equal(a.latents, b.latents)


def test_se_tokens_with_a_zero_object_equal_the_plain_tokens_when_the_coefficients_sum_to_one() -> None:
    resampler = tiny_adapter().resampler
    feats = torch.randn(2, 9, 8)
    plain = resampler(feats)
    # 0.2 P(E) + 0.8 P(E - 0.8 * 0) = P(E)
    torch.testing.assert_close(style_tokens(resampler, feats, torch.zeros_like(feats), NO_NOISE), plain)
    doubled = StyleARSettings(se_plain=1.0, se_enhanced=1.0)
    torch.testing.assert_close(style_tokens(resampler, feats, torch.zeros_like(feats), doubled), 2 * plain)
    enhanced = style_tokens(resampler, feats, torch.randn(2, 9, 8), NO_NOISE)
    assert (enhanced - plain).abs().max() > 1e-2


def test_weights_one_and_zero_give_the_single_reference_and_weights_are_relative() -> None:
    tokens = torch.randn(2, 4, 128)
    assert torch.equal(mix_references(tokens, [1.0, 0.0]), tokens[:1])
    torch.testing.assert_close(mix_references(tokens, [0.7, 0.3]), mix_references(tokens, [7.0, 3.0]))
    with pytest.raises(ValueError, match="sum > 0"):
        mix_references(tokens, [0.0, 0.0])


def test_noise_zero_is_deterministic_and_noise_changes_tokens_reproducibly(pipe: Pipeline) -> None:
    adapter = tiny_adapter()
    encoder = VAEImageEncoder(pipe.vae, 64)
    refs = [Reference(ref().image)]

    def tokens(settings: StyleARSettings, seed: int) -> torch.Tensor:
        return adapter.references_tokens(encoder, refs, settings, torch.Generator().manual_seed(seed))

    clean = tokens(NO_NOISE, 0)
    assert torch.equal(clean, tokens(NO_NOISE, 1))  # no noise: the seed does not matter
    noisy = StyleARSettings(noise_strength=0.3)
    assert torch.equal(tokens(noisy, 0), tokens(noisy, 0))
    assert not torch.equal(tokens(noisy, 0), clean) and not torch.equal(tokens(noisy, 0), tokens(noisy, 1))
    torch.testing.assert_close((tokens(noisy, 0) - clean).std().item(), 0.3, atol=0.05, rtol=0)


def test_weighted_references_with_weights_one_and_zero_equal_the_single_reference(pipe: Pipeline) -> None:
    adapter = tiny_adapter()
    encoder = VAEImageEncoder(pipe.vae, 64)
    a, b = ref("star", "neon"), ref("fish", "graffiti", 4)
    gen = torch.Generator().manual_seed(0)
    single = adapter.references_tokens(encoder, [Reference(a.image)], NO_NOISE, gen)
    pair = adapter.references_tokens(
        encoder, [Reference(a.image, 1.0), Reference(b.image, 0.0)], NO_NOISE, gen
    )
    assert torch.equal(single, pair)
    mixed = adapter.references_tokens(
        encoder, [Reference(a.image, 0.5), Reference(b.image, 0.5)], NO_NOISE, gen
    )
    assert not torch.equal(single, mixed)


def test_object_image_keeps_the_masked_object_cropped_square_on_the_fill() -> None:
    sample = ref("house", "neon", 2)
    obj = object_image(sample.image, sample.mask, (128, 128, 128))
    ys, xs = np.nonzero(sample.mask)
    assert obj.width == obj.height == max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    pixels = np.asarray(obj)
    assert (pixels == 128).all(-1).mean() > 0.05  # the background is gone
    inside = np.asarray(sample.image)[sample.mask]
    assert np.isin(pixels.reshape(-1, 3)[:, 0], inside[:, 0]).mean() > 0.3
    with pytest.raises(ValueError, match="empty"):
        object_image(sample.image, np.zeros((64, 64), bool), (0, 0, 0))


def test_the_world_mask_gives_se_tokens_that_differ_from_plain_ones(pipe: Pipeline) -> None:
    adapter = tiny_adapter()
    encoder = VAEImageEncoder(pipe.vae, 64)
    sample, gen = ref(), torch.Generator().manual_seed(0)
    plain = adapter.references_tokens(encoder, [Reference(sample.image)], NO_NOISE, gen)
    se = adapter.references_tokens(encoder, [Reference(sample.image, 1.0, sample.mask)], NO_NOISE, gen)
    assert (plain - se).abs().max() > 1e-3


# ---- joining the transformer ----------------------------------------------------------------------------
@pytest.mark.parametrize("join", ["decoupled", "joint"])
def test_scale_zero_equals_the_base_model_bit_for_bit_and_scale_one_does_not(join: str) -> None:
    model = tiny_transformer()
    tokens = PathStyle(torch.randn(1, 4, 128) * 3)
    base = teacher_forced(model, None, cfg=True)
    off = StyleTokenController(model, {"gen": tokens}, scale=0.0, join=join)
    assert torch.equal(teacher_forced(model, off, cfg=True), base)
    on = StyleTokenController(model, {"gen": tokens}, scale=1.0, join=join)
    styled = teacher_forced(model, on, cfg=True)
    assert (styled[0] - base[0]).abs().max() > 1e-3


def test_unconditional_rows_drop_the_style_tokens() -> None:
    model = tiny_transformer()
    base = teacher_forced(model, None, cfg=True)
    on = StyleTokenController(model, {"gen": PathStyle(torch.randn(1, 4, 128))}, scale=2.0, join="decoupled")
    styled = teacher_forced(model, on, cfg=True)
    assert torch.equal(styled[1], base[1]) and not torch.equal(styled[0], base[0])
    # joint attention sees the same keys for the CFG row (the style keys masked out) up to kernel rounding
    joint = StyleTokenController(model, {"gen": PathStyle(torch.randn(1, 4, 128))}, scale=2.0, join="joint")
    torch.testing.assert_close(teacher_forced(model, joint, cfg=True)[1], base[1], atol=1e-3, rtol=0)


def test_scale_is_a_continuous_strength() -> None:
    model = tiny_transformer()
    tokens = PathStyle(torch.randn(1, 4, 128) * 3)
    base = teacher_forced(model, None, cfg=False)
    dist = []
    for scale in (0.25, 1.0, 4.0):
        ctl = StyleTokenController(model, {"gen": tokens}, scale=scale, join="joint")
        dist.append((teacher_forced(model, ctl, cfg=False) - base).abs().mean().item())
    assert dist[0] < dist[1] < dist[2]


def test_rows_marked_not_kept_see_no_style_tokens() -> None:
    model = tiny_transformer()
    enc = RandomTextEncoder(128, 32)
    text = enc.encode(["a star in style", "a fish in style"])
    cond = model.condition([text])
    inputs = torch.randn(2, SCHEDULE.total_tokens - 1, 8)
    layout = BatchLayout(("gen",), 2)
    style = PathStyle(torch.randn(2, 4, 128), keep_B=torch.tensor([True, False]))
    with torch.no_grad():
        base = model(inputs, cond, SCHEDULE, layout)
        with model.control.install(StyleTokenController(model, {"gen": style}, scale=1.0, join="decoupled")):
            styled = model(inputs, cond, SCHEDULE, layout)
    assert torch.equal(styled[1], base[1]) and not torch.equal(styled[0], base[0])


# ---- adapter: LoRA, save and load ----------------------------------------------------------------------
def test_lora_is_in_the_transformer_only_while_applied_and_starts_as_the_identity() -> None:
    model = tiny_transformer()
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = tiny_adapter(lora_rank=2)
    base = teacher_forced(model, None, cfg=False)
    with adapter.lora_applied(model):
        assert any("lora_A" in k for k in model.state_dict())
        assert torch.equal(teacher_forced(model, None, cfg=False), base)  # lora_B starts at zero
    assert set(model.state_dict()) == set(keys)
    assert all(torch.equal(v, keys[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert adapter.lora and all(".lora_" in k for k in adapter.lora)
    assert not any("text_proj_for_sos" in k for k in adapter.lora)  # the regex keeps to the blocks
    adapter.lora = {k: torch.randn_like(v) if "lora_B" in k else v for k, v in adapter.lora.items()}
    with adapter.lora_applied(model):
        assert not torch.equal(teacher_forced(model, None, cfg=False), base)


def test_save_and_load_round_trip_exactly(tmp_path: Path, pipe: Pipeline) -> None:
    adapter = tiny_adapter(seed=2, lora_rank=2, join="joint")
    with adapter.lora_applied(pipe.transformer):
        pass
    adapter.lora = {k: torch.randn_like(v) for k, v in adapter.lora.items()}
    loaded = StyleARAdapter.load(adapter.save(tmp_path / "adapter"))
    assert loaded.cfg == adapter.cfg
    assert adapter.resampler.state_dict().keys() == loaded.resampler.state_dict().keys()
    assert all(
        torch.equal(v, loaded.resampler.state_dict()[k]) for k, v in adapter.resampler.state_dict().items()
    )
    assert adapter.lora.keys() == loaded.lora.keys()
    assert all(torch.equal(v, loaded.lora[k]) for k, v in adapter.lora.items())
    settings = StyleARSettings(noise_strength=0.1)
    img = ref().image
    a = styler(pipe, adapter)("a star", img, style=settings, sampling=SAMPLING)
    b = styler(pipe, loaded)("a star", img, style=settings, sampling=SAMPLING)
    assert torch.equal(a.summed_codes_BdHW, b.summed_codes_BdHW)


def test_loading_refuses_foreign_folders_and_mismatched_transformers(tmp_path: Path, pipe: Pipeline) -> None:
    with pytest.raises(FileNotFoundError, match="not a StyleAR adapter"):
        StyleARAdapter.load(tmp_path)
    wrong = tiny_adapter(text_width=64)
    with pytest.raises(ValueError, match="text_width 64"):
        wrong.check_fits(pipe.transformer)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("num_queries", 0, r"num_queries must be in \[1, 1024\], got 0"),
        ("join", "concat", "join must be one of"),
        ("lora_targets", ("sa.mat_qkv",), "lora_targets must be a non-empty subset"),
        ("encoder", "dino", "encoder must be one of"),
    ],
)
def test_bad_config_values_name_the_value_and_range(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})


def test_bad_settings_name_the_value_and_range() -> None:
    with pytest.raises(ValueError, match=r"scale must be in \[0.0, 100.0\], got -1"):
        StyleARSettings(scale=-1)
    with pytest.raises(ValueError, match="se_object"):
        StyleARSettings(se_object=1.5)
    with pytest.raises(ValueError, match="se_plain \\+ se_enhanced"):
        StyleARSettings(se_plain=0, se_enhanced=0)


# ---- pipeline ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("join", ["decoupled", "joint"])
def test_pipeline_at_scale_zero_equals_the_plain_pipeline(pipe: Pipeline, join: str) -> None:
    plain = pipe("a star in style", sampling=SAMPLING)
    off = styler(pipe, tiny_adapter(join=join))(
        "a star", ref().image, style=StyleARSettings(scale=0.0), sampling=SAMPLING
    )
    assert torch.equal(off.summed_codes_BdHW, plain.summed_codes_BdHW)
    on = styler(pipe, tiny_adapter(join=join))(
        "a star", ref().image, style=StyleARSettings(scale=3.0), sampling=SAMPLING
    )
    assert not torch.equal(on.summed_codes_BdHW, plain.summed_codes_BdHW)


def test_pipeline_metadata_and_weighted_references(pipe: Pipeline) -> None:
    s = styler(pipe, tiny_adapter())
    a, b = ref("star", "neon"), ref("fish", "graffiti", 4)
    out = s("a moon", style_images=[(a.image, 0.7), (b.image, 0.3, b.mask)], style_prompt="neon style",
            sampling=SAMPLING)  # fmt: skip
    meta = out.metadata[0]
    assert meta["method"] == "stylear" and meta["prompt"] == "a moon in neon style" and meta["seed"] == 3
    assert [r["weight"] for r in meta["style_images"]] == [0.7, 0.3]
    assert [r["mask"] for r in meta["style_images"]] == [False, True]
    assert meta["style"]["noise_strength"] == 0.3 and meta["adapter"]["num_queries"] == 4
    assert out.images[0].size == (64, 64)
    single = s("a moon", a.image, style=NO_NOISE, sampling=SAMPLING)
    pair = s("a moon", style_images=[(a.image, 1.0), (b.image, 0.0)], style=NO_NOISE, sampling=SAMPLING)
    assert torch.equal(single.summed_codes_BdHW, pair.summed_codes_BdHW)


def test_pipeline_refuses_what_it_cannot_do(pipe: Pipeline) -> None:
    s, img = styler(pipe, tiny_adapter()), ref().image
    with pytest.raises(ValueError, match="one of the two"):
        s("a star")
    with pytest.raises(ValueError, match="content_prompt"):
        s("a star", img, content_prompt="a star")
    with pytest.raises(ValueError, match="class labels"):
        s("a star", img, class_label=3)


# ---- encoders ------------------------------------------------------------------------------------------
def test_clip_encoder_gives_the_penultimate_hidden_states_of_a_tiny_clip(tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip"
    )
    encoder = CLIPImageEncoder.from_pretrained(tmp_path / "clip")
    images = [ref().image, ref("fish", "graffiti").image.resize((80, 50))]
    feats = encoder(images)
    assert feats.shape == (2, 1 + 16, 32) and encoder.width == 32
    pixels = encoder.processor(images=images, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        hidden = encoder.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.equal(feats, hidden[-2]) and not torch.equal(feats, hidden[-1])
    # the processor's mean colour fills the object image's background (zero after normalisation)
    assert encoder.fill == (123, 117, 104)
    with pytest.raises(FileNotFoundError, match="no CLIP vision model"):
        CLIPImageEncoder.from_pretrained(tmp_path / "missing")


def test_vae_encoder_tokens_are_the_latent_grid(pipe: Pipeline) -> None:
    encoder = VAEImageEncoder(pipe.vae, 64)
    img = ref().image
    feats = encoder([img, Image.new("RGB", (64, 64), (128, 128, 128))])
    assert feats.shape == (2, 16 * 16, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        VAEImageEncoder(pipe.vae, 30)


@pytest.mark.slow  # importing transformers' SAM modules alone takes seconds on a shared CPU
def test_sam_masker_runs_a_tiny_sam_and_gives_a_mask_of_the_image_size(tmp_path: Path) -> None:
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    vision = SamVisionConfig(
        hidden_size=32, output_channels=16, num_hidden_layers=1, num_attention_heads=2, image_size=64,
        patch_size=16, mlp_dim=64, global_attn_indexes=[0], window_size=2, num_pos_feats=8,
    )  # fmt: skip
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
    )
    cfg = SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt.to_dict(),
        mask_decoder_config=decoder.to_dict(),
    )
    torch.manual_seed(0)
    SamModel(cfg).save_pretrained(tmp_path / "sam")
    processor = SamImageProcessorPil(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )  # fmt: skip
    SamProcessor(image_processor=processor).save_pretrained(tmp_path / "sam")
    masker = SamMasker.from_pretrained(tmp_path / "sam")
    image = ref().image.resize((96, 80))
    mask = masker(image)
    assert mask.shape == (80, 96) and mask.dtype == bool
    assert not np.array_equal(mask, masker(image, (5.0, 5.0)))  # the point prompt reaches the decoder
    with pytest.raises(FileNotFoundError, match="no SAM model"):
        SamMasker.from_pretrained(tmp_path / "missing")
