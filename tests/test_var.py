"""VAR backbone: presets against the official key dump, the cached loop against teacher forcing, the VQ-VAE's
index paths, the index codec's sampling rules, strict loading and the hub download (patched)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from scalestyle.attention import AttnSite, BatchLayout
from scalestyle.config import (
    PRESETS,
    ModelPreset,
    SamplingConfig,
    VARConfig,
    VARPreset,
    VQVAEConfig,
    get_preset,
)
from scalestyle.models.var import VAR, ClassLabels
from scalestyle.models.vqvae import VQVAE, IndexCodec, filter_top_k_top_p, make_norm
from scalestyle.sampling import PathPlan, ScaleEvent, run_scales
from scalestyle.scale_model import Draw
from scalestyle.schedules import var_schedule
from scalestyle.weights import (
    LAYOUT_FILE,
    WeightsError,
    download,
    load_var_models,
    load_var_weights,
    load_vqvae_weights,
    resolve_var_files,
)

KEYS = Path(__file__).parent / "data" / "var_keys.txt"
TINY = get_preset("var-tiny", VARPreset)


def key_dump(section: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of one section of the key dump (d16, VQ-VAE, d30, d36)."""
    out: dict[str, tuple[int, ...]] = {}
    current = -1
    for line in KEYS.read_text().splitlines():
        if line.startswith("#"):
            current += "entries" not in line
        elif line.strip() and current == section:
            key, shape, _dtype, _kind = line.split("\t")
            out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def tiny_var(cfg: VARConfig = TINY.transformer, seed: int = 0) -> VAR:
    model = VAR(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    # the training init keeps the AdaLN gates near zero; larger random ones exercise every path
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ada_lin" in name or "ada_gss" in name or name.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def tiny_vqvae(seed: int = 0) -> VQVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VQVAE(TINY.vae).eval()
        with torch.no_grad():
            vae.quantize.embedding.weight.normal_()
    return vae


def random_images(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, TINY.image_size, TINY.image_size, generator=g) * 2 - 1


def raises_one_line(fn: Callable[[], Any], *parts: str) -> str:
    with pytest.raises(WeightsError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


# ---------------------------------------------------------------------------------------------------------
# Presets and configs


@pytest.mark.parametrize(("preset", "section"), [("var-d16", 0), ("var-d30", 2), ("var-d36", 3)])
def test_presets_built_on_meta_have_the_official_keys_and_shapes(preset: str, section: int) -> None:
    with torch.device("meta"):
        model = VAR(get_preset(preset, VARPreset).transformer)
    assert shapes(model) == key_dump(section)


def test_vqvae_built_on_meta_has_the_official_keys_and_shapes() -> None:
    with torch.device("meta"):
        vae = VQVAE(get_preset("var-d16", VARPreset).vae)
    assert shapes(vae) == key_dump(1)


def test_pixel_norm_vqvae_keeps_the_keys_and_has_no_spatial_statistics() -> None:
    """The demo's VQ-VAE swaps GroupNorm for PixelNorm (docs/demo_v2.md section 1) under the same keys;
    PixelNorm normalises each pixel alone, so a bright spot leaves every other pixel as it was."""
    cfg = get_preset("var-d16", VARPreset).vae
    with torch.device("meta"):
        group, pixel = VQVAE(cfg), VQVAE(replace(cfg, norm="pixel"))
    assert shapes(pixel) == shapes(group)
    assert get_preset("var-demo", VARPreset).vae.norm == "pixel"
    x = torch.randn(1, 64, 8, 8)
    spot = x.clone()
    spot[0, :, 3, 3] += 100.0
    for norm, far_pixels_unchanged in (("pixel", True), ("group", False)):
        layer = make_norm(64, norm)
        changed = (layer(spot) - layer(x)).abs()
        changed[0, :, 3, 3] = 0
        assert bool(changed.max() < 1e-5) == far_pixels_unchanged


@pytest.mark.parametrize("depth", [20, 24])
def test_presets_outside_the_dump_follow_the_d16_layout(depth: int) -> None:
    """d20 and d24 are not in the dump: the same keys as d16 with ``depth`` blocks, width 64 * depth."""
    with torch.device("meta"):
        model = VAR(get_preset(f"var-d{depth}", VARPreset).transformer)
    d16 = key_dump(0)
    per_block = {k.split(".", 2)[2] for k in d16 if k.startswith("blocks.0.")}
    expected = {k for k in d16 if not k.startswith("blocks.")}
    expected |= {f"blocks.{i}.{rest}" for i in range(depth) for rest in per_block}
    got = shapes(model)
    assert set(got) == expected
    C = 64 * depth
    assert got["blocks.0.attn.mat_qkv.weight"] == (3 * C, C)
    assert got["blocks.0.attn.scale_mul_1H11"] == (1, depth, 1, 1)
    assert got["head.weight"] == (4096, C) and got["pos_1LC"] == (1, 680, C)


def test_preset_families_are_kept_apart() -> None:
    assert isinstance(get_preset("var-d16", VARPreset), VARPreset)
    with pytest.raises(ValueError, match="'var-d16' is a VAR preset"):
        get_preset("var-d16")
    with pytest.raises(ValueError, match="'tiny' is an Infinity preset"):
        get_preset("tiny", VARPreset)
    assert isinstance(get_preset("tiny"), ModelPreset)
    assert {n for n, p in PRESETS.items() if isinstance(p, VARPreset)} == {
        "var-d16",
        "var-d20",
        "var-d24",
        "var-d30",
        "var-d36",
        "var-tiny",
        "var-demo",
    }
    assert get_preset("var-d36", VARPreset).image_size == 512 and TINY.image_size == 64


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: replace(TINY.transformer, depth=0), "depth must be > 0, got 0"),
        (lambda: replace(TINY.transformer, heads=3), "width 128 must be a multiple of heads 3"),
        (lambda: replace(TINY.transformer, patch_nums=(4,)), "patch_nums must be >= 2"),
        (lambda: replace(TINY.transformer, patch_nums=(1, 3, 2)), "must increase strictly, got (1, 3, 2)"),
        (lambda: replace(TINY.vae, ch=48), "ch must be a multiple of 32"),
        (lambda: replace(TINY.vae, quant_resi=1.5), "quant_resi must be in (0, 1], got 1.5"),
        (lambda: replace(TINY.vae, share_quant_resi=1), "share_quant_resi must be >= 2"),
        (lambda: replace(TINY.vae, norm="batch"), "norm must be one of ('group', 'pixel'), got 'batch'"),
        (lambda: VARPreset("x", TINY.transformer, VQVAEConfig()), "does not fit its VQ-VAE"),
    ],
)
def test_bad_configs_name_the_value(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_var_schedule() -> None:
    schedule = var_schedule(get_preset("var-d16", VARPreset).transformer.patch_nums)
    assert schedule.total_tokens == 680 and schedule.last_grid == (16, 16)
    assert schedule.grids[:3] == ((1, 1), (2, 2), (3, 3))


def test_phi_ticks_for_ten_scales() -> None:
    """Spec §5.3: the 4 shared phi convs serve the 10 scales as [0,0,1,1,1,2,2,3,3,3] (with two ties)."""
    with torch.device("meta"):
        vae = VQVAE(VQVAEConfig())
    assert [vae.quantize.quant_resi.index(si, 10) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


# ---------------------------------------------------------------------------------------------------------
# Transformer and VQ-VAE


def scale_logits(model: VAR, vae: VQVAE, labels: ClassLabels, indices: list[torch.Tensor]) -> torch.Tensor:
    """Logits of every scale from the KV-cached per-scale protocol, teacher-forced with ``indices``."""
    schedule, codec = model.schedule, IndexCodec(vae)
    cond = model.condition([labels])
    positions = model.positions(schedule, model.device)
    cache, layout = model.new_cache(), BatchLayout(("gen",), labels.batch)
    x, f_hat, out = model.start_tokens(cond), None, []
    for si in range(schedule.num_scales):
        hidden = model.forward_scale(
            x, cond, scale=si, schedule=schedule, positions=positions, cache=cache, layout=layout
        )
        out.append(model.logits(hidden, cond))
        f_hat = codec.accumulate(f_hat, Draw(indices[si]), scale=si, schedule=schedule)
        if si + 1 < schedule.num_scales:
            x = model.embed(codec.next_input(f_hat, schedule.grids[si + 1]))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize(
    "variant", ["per-block AdaLN, l2 attention", "shared AdaLN (d36)", "attn_l2_norm off"]
)
def test_cached_per_scale_forward_equals_teacher_forced(variant: str) -> None:
    cfg = {
        "per-block AdaLN, l2 attention": TINY.transformer,
        "shared AdaLN (d36)": replace(TINY.transformer, shared_aln=True),
        "attn_l2_norm off": replace(TINY.transformer, attn_l2_norm=False),
    }[variant]
    model, vae = tiny_var(cfg), tiny_vqvae()
    labels = ClassLabels.of([3, 1000])  # a class and the null class
    with torch.no_grad():
        indices = vae.encode_indices(random_images(2), model.schedule)
        full = model(vae.teacher_inputs(indices, model.schedule), model.condition([labels]), model.schedule)
        stepped = scale_logits(model, vae, labels, indices)
    assert full.shape == (2, model.schedule.total_tokens, 64)
    assert full.abs().max() > 1  # far from a degenerate head
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)


def test_run_scales_with_given_indices_rebuilds_the_encoded_latent() -> None:
    model, vae = tiny_var(), tiny_vqvae()
    img = random_images(2)
    with torch.no_grad():
        indices = vae.encode_indices(img, model.schedule)
        plan = PathPlan("gen", ClassLabels.of([5, 9]), given_tokens=tuple(indices))
        sampling = SamplingConfig(cfg=1.5, top_k=10, top_p=0.9)
        f_hat = run_scales(model, IndexCodec(vae), [plan], model.schedule, sampling)["gen"]
        torch.testing.assert_close(f_hat, vae.indices_to_fhat(indices, model.schedule), atol=0, rtol=0)


def test_encode_indices_decode_equals_the_reconstruction_path() -> None:
    """Indices -> f_hat (the loop's rule) and the quantizer's own running f_hat agree; upstream's two paths
    differ only by the memory layout into phi (float noise), so the images agree to float precision."""
    vae, schedule = tiny_vqvae(), var_schedule(TINY.transformer.patch_nums)
    img = random_images(3)
    with torch.no_grad():
        indices = vae.encode_indices(img, schedule)
        decoded = vae.decode_indices(indices, schedule)
        reconstructed = vae.reconstruct(img, schedule)
    assert [tuple(i.shape) for i in indices] == [(3, pn, pn) for pn in TINY.transformer.patch_nums]
    assert all(i.dtype == torch.long and int(i.min()) >= 0 and int(i.max()) < 64 for i in indices)
    assert len({int(i) for idx in indices for i in idx.flatten()}) > 4  # a codebook in use
    torch.testing.assert_close(decoded, reconstructed, atol=1e-4, rtol=0)
    assert decoded.abs().max() <= 1


def test_identity_controller_is_bit_identical() -> None:
    model, vae = tiny_var(), tiny_vqvae()
    codec, schedule = IndexCodec(vae), model.schedule
    sites: list[AttnSite] = []

    def identity(site: AttnSite, q: Any, k: Any, v: Any, bias: Any, attend: Any) -> torch.Tensor:
        sites.append(site)
        return attend(q, k, v, bias)

    plan = PathPlan("gen", ClassLabels.of([1, 2]))
    sampling = SamplingConfig(cfg=4.0, top_k=20, top_p=0.95, seed=3)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            f_hat = run_scales(model, codec, [plan], schedule, sampling)["gen"]
            indices = vae.encode_indices(random_images(2), schedule)
            logits = model(vae.teacher_inputs(indices, schedule), model.condition([plan.cond]), schedule)
        return f_hat, logits

    plain = run()
    with model.control.install(identity):
        controlled = run()
    assert torch.equal(plain[0], controlled[0]) and torch.equal(plain[1], controlled[1])
    cached = [s for s in sites if s.scale is not None]
    forced = [s for s in sites if s.scale is None]
    assert {s.scale for s in cached} == set(range(schedule.num_scales))
    assert {s.layer for s in sites} == {0, 1} and all(s.kind == "self" for s in sites)
    assert cached[-1].layout.cfg  # cfg 4: unconditional rows present
    assert forced and forced[0].query_scales_L is not None
    assert torch.equal(forced[0].query_scales_L, model.lvl_1L[0])


def test_guidance_ramp() -> None:
    model = tiny_var()
    S = model.schedule.num_scales
    lc, lu = torch.randn(2, 4, 64), torch.randn(2, 4, 64)
    sampling = SamplingConfig(cfg=3.0)
    assert torch.equal(model.guide(lc, lu, scale=0, schedule=model.schedule, sampling=sampling), lc)
    last = model.guide(lc, lu, scale=S - 1, schedule=model.schedule, sampling=sampling)
    assert torch.equal(last, 4.0 * lc - 3.0 * lu)
    off = SamplingConfig(cfg=0.0)
    assert not model.uses_uncond(off) and model.uses_uncond(sampling)
    assert torch.equal(model.guide(lc, None, scale=S - 1, schedule=model.schedule, sampling=off), lc)
    with pytest.raises(ValueError, match="needs unconditional logits"):
        model.guide(lc, None, scale=1, schedule=model.schedule, sampling=sampling)


def test_labels_are_checked_and_null_class_is_the_last_row() -> None:
    model = tiny_var()
    assert model.null_condition(ClassLabels.of([4, 7])).labels_B.tolist() == [1000, 1000]
    with pytest.raises(ValueError, match="class label 1001 is outside"):
        model.condition([ClassLabels.of([1001])])
    with pytest.raises(ValueError, match="1-D integer"):
        ClassLabels(torch.tensor([1.0]))


def test_schedule_must_be_the_model_own() -> None:
    model = tiny_var()
    with pytest.raises(ValueError, match="runs the grids"):
        model.positions(var_schedule((1, 2, 4)), model.device)


def test_generation_is_seeded_and_paths_are_independent() -> None:
    model, vae = tiny_var(), tiny_vqvae()
    codec, schedule = IndexCodec(vae), model.schedule
    sampling = SamplingConfig(cfg=1.5, top_k=30, top_p=0.96, seed=11)
    seen: list[ScaleEvent] = []
    with torch.no_grad():
        alone = run_scales(model, codec, [PathPlan("gen", ClassLabels.of([7]))], schedule, sampling)
        both = run_scales(
            model,
            codec,
            [PathPlan("gen", ClassLabels.of([7])), PathPlan("other", ClassLabels.of([8]))],
            schedule,
            sampling,
            on_scale=seen.append,
        )
    torch.testing.assert_close(alone["gen"], both["gen"], atol=1e-6, rtol=0)
    assert not torch.equal(both["gen"], both["other"])
    assert [tuple(e.tokens["gen"].shape) for e in seen] == [(1, pn, pn) for pn in (1, 2, 3, 4)]


# ---------------------------------------------------------------------------------------------------------
# Index codec


def test_top_k_keeps_the_k_largest_and_k_is_at_most_v() -> None:
    logits = torch.randn(2, 5, 64)
    kept = filter_top_k_top_p(logits, 7, 1.0).isfinite()
    assert kept.sum(-1).eq(7).all()
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(7, dim=-1).indices, True))
    assert filter_top_k_top_p(logits, 64, 1.0).isfinite().all()
    with pytest.raises(ValueError, match=r"top_k must be in \[0, 64\].*got 65"):
        filter_top_k_top_p(logits, 65, 1.0)
    tied = torch.tensor([[[3.0, 3.0, 1.0, 0.0]]])
    assert filter_top_k_top_p(tied, 1, 1.0).isfinite().sum() == 2  # a threshold: ties stay


def test_top_p_drops_the_unlikely_tail_never_the_most_likely() -> None:
    probs = torch.tensor([[[0.05, 0.5, 0.2, 0.25]]])
    logits = probs.log()
    # ascending cumulative 0.05, 0.25, 0.5, 1.0: those <= 1 - 0.7 = 0.3 go
    assert filter_top_k_top_p(logits, 0, 0.7).isfinite().tolist() == [[[False, True, False, True]]]
    assert filter_top_k_top_p(logits, 0, 1e-6).isfinite().tolist() == [[[False, True, False, False]]]
    assert filter_top_k_top_p(logits, 0, 1.0).isfinite().all()
    # top-k first, then top-p over the survivors' renormalised probabilities (0.21, 0.26, 0.53)
    assert filter_top_k_top_p(logits, 0, 0.52).isfinite().tolist() == [[[False, True, False, True]]]
    assert filter_top_k_top_p(logits, 3, 0.52).isfinite().tolist() == [[[False, True, False, False]]]


def test_sample_draws_kept_entries_with_one_multinomial_on_the_generator() -> None:
    codec, schedule = IndexCodec(tiny_vqvae()), var_schedule((1, 2, 3, 4))
    logits = torch.randn(2, 9, 64) * 3
    sampling = SamplingConfig(top_k=5, top_p=0.9)
    g = torch.Generator().manual_seed(0)
    draw = codec.sample(logits, (3, 3), scale=2, schedule=schedule, sampling=sampling, generator=g)
    assert draw.tokens.shape == (2, 3, 3) and draw.codes is None
    kept = filter_top_k_top_p(logits, 5, 0.9).isfinite()
    assert kept.flatten(0, 1)[torch.arange(18), draw.tokens.flatten()].all()
    ref = torch.Generator().manual_seed(0)
    probs = filter_top_k_top_p(logits, 5, 0.9).softmax(-1).flatten(0, 1)
    assert torch.equal(
        torch.multinomial(probs, 1, replacement=True, generator=ref).view(2, 3, 3), draw.tokens
    )
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=ref))  # nothing else consumed
    with pytest.raises(ValueError, match="top_k"):
        codec.sample(logits, (3, 3), scale=2, schedule=schedule, sampling=SamplingConfig(), generator=g)


def test_more_smooth_keeps_the_indices_and_adds_soft_codes() -> None:
    vae = tiny_vqvae()
    codec, schedule = IndexCodec(vae), var_schedule((1, 2, 3, 4))
    logits = torch.randn(1, 4, 64) * 2
    plain, smooth = (
        SamplingConfig(top_k=20, top_p=0.95),
        SamplingConfig(top_k=20, top_p=0.95, more_smooth=True),
    )
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = codec.sample(logits, (2, 2), scale=1, schedule=schedule, sampling=plain, generator=g1)
    b = codec.sample(logits, (2, 2), scale=1, schedule=schedule, sampling=smooth, generator=g2)
    assert torch.equal(a.tokens, b.tokens)
    assert b.codes is not None and b.codes.shape == (1, 8, 2, 2)
    hard = vae.quantize.codes(b.tokens)
    assert not torch.allclose(b.codes, hard)
    f_plain = codec.accumulate(None, a, scale=1, schedule=schedule)
    f_smooth = codec.accumulate(None, b, scale=1, schedule=schedule)
    assert f_plain.shape == f_smooth.shape == (1, 8, 4, 4) and not torch.allclose(f_plain, f_smooth)
    assert not torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))  # Gumbel noise drawn


# ---------------------------------------------------------------------------------------------------------
# Loading and download


def test_loading_from_upstream_files_on_meta_reproduces_the_model(tmp_path: Path) -> None:
    model, vae = tiny_var(), tiny_vqvae()
    torch.save(model.state_dict(), tmp_path / "t.pth")
    torch.save(vae.state_dict(), tmp_path / "v.pth")
    layout = {"format_version": 1, "preset": "var-tiny", "transformer": "t.pth", "vae": "v.pth"}
    (tmp_path / LAYOUT_FILE).write_text(json.dumps(layout))
    loaded, loaded_vae = load_var_models(resolve_var_files(tmp_path))
    assert not any(t.is_meta for t in loaded.state_dict().values())
    for a, b in ((model, loaded), (vae, loaded_vae)):
        assert all(
            torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        )
    labels = ClassLabels.of([0])
    with torch.no_grad():
        sampling = SamplingConfig(cfg=2.0, top_k=10, seed=1)
        runs = [
            run_scales(m, IndexCodec(v), [PathPlan("gen", labels)], m.schedule, sampling)["gen"]
            for m, v in ((model, vae), (loaded, loaded_vae))
        ]
    assert torch.equal(runs[0], runs[1])
    # the loaded model's own control slot drives its own attention
    assert loaded.blocks[0].attn.slot is loaded.control


def test_strict_loading_errors_are_one_line() -> None:
    state = tiny_var().state_dict()
    with torch.device("meta"):
        model = VAR(TINY.transformer)
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.proj.weight"}
    raises_one_line(
        lambda: load_var_weights(model, missing, source="f.pth"),
        "f.pth: 1 missing keys: blocks.1.attn.proj.weight",
    )
    raises_one_line(
        lambda: load_var_weights(model, {**state, "extra.w": torch.zeros(1)}, source="f.pth"),
        "1 unexpected keys: extra.w",
    )
    bad = {**state, "head.bias": torch.zeros(65)}
    raises_one_line(
        lambda: load_var_weights(model, bad, source="f.pth"), "head.bias expected (64,) found (65,)"
    )
    d16 = {k: torch.empty(s, device="meta") for k, s in key_dump(0).items()}
    raises_one_line(
        lambda: load_var_weights(model, d16, source="var_d16.pth"),
        "checkpoint width 1024 but preset width 128: is this a checkpoint of another model size?",
    )
    assert any(t.is_meta for t in model.state_dict().values())  # nothing materialized on failure
    buffers = {k: v for k, v in state.items() if k != "attn_bias_for_masking"}
    raises_one_line(
        lambda: load_var_weights(model, buffers, source="f.pth"), "missing keys: attn_bias_for_masking"
    )


def test_vqvae_loading_accepts_another_scale_count_of_the_hit_statistic() -> None:
    state = tiny_vqvae().state_dict()
    with torch.device("meta"):
        vae = VQVAE(TINY.vae)
    other = {**state, "quantize.ema_vocab_hit_SV": torch.ones(10, 64)}
    load_vqvae_weights(vae, other, source="v.pth")
    assert torch.equal(vae.quantize.ema_vocab_hit_SV, torch.zeros(4, 64))
    assert torch.equal(vae.quantize.embedding.weight, state["quantize.embedding.weight"])
    with torch.device("meta"):
        fresh = VQVAE(TINY.vae)
    official = {k: torch.empty(s, device="meta") for k, s in key_dump(1).items()}
    raises_one_line(
        lambda: load_vqvae_weights(fresh, official, source="vae_ch160v4096z32.pth"),
        "checkpoint codebook size 4096 but preset codebook size 64",
    )


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
        (root / ".cache").mkdir(exist_ok=True)
        return str(root)

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the test tried to use the network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    return calls


@pytest.mark.parametrize("preset", ["var-d16", "var-d36"])
def test_download_var_moves_complete_files_into_place(
    tmp_path: Path, hub: list[dict[str, Any]], preset: str
) -> None:
    dest = download(preset, tmp_path / "w", token="hf_x")
    depth = preset.removeprefix("var-d")
    assert [c["repo_id"] for c in hub] == ["FoundationVision/var"] and hub[0]["token"] == "hf_x"
    assert hub[0]["allow_patterns"] == [f"var_d{depth}.pth", "vae_ch160v4096z32.pth"]
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [f"var_d{depth}.pth", "vae_ch160v4096z32.pth", LAYOUT_FILE]
    )
    files = resolve_var_files(dest)
    assert files.preset.name == preset and files.transformer.name == f"var_d{depth}.pth"


def test_download_var_incomplete_snapshot_leaves_nothing(
    tmp_path: Path, hub: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def only_vae(repo_id: str, **kwargs: Any) -> str:
        kwargs["allow_patterns"] = kwargs["allow_patterns"][1:]
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", only_vae)
    raises_one_line(lambda: download("var-d20", tmp_path / "w"), "FoundationVision/var has no var_d20.pth")
    assert list((tmp_path / "w").iterdir()) == []


def test_upstream_folder_layout_resolves(tmp_path: Path) -> None:
    (tmp_path / "vae_ch160v4096z32.pth").write_bytes(b"x")
    raises_one_line(lambda: resolve_var_files(tmp_path), "holds none of var_d16.pth")
    (tmp_path / "var_d24.pth").write_bytes(b"x")
    assert resolve_var_files(tmp_path).preset.name == "var-d24"
    (tmp_path / "var_d30.pth").write_bytes(b"x")
    raises_one_line(lambda: resolve_var_files(tmp_path), "holds several of")
