"""AdaIN (Huang & Belongie 2017): the operation, the model, the public file layout, the pipeline and the
trainer, on tiny models and state dicts built here (the commands: test_adain_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from scalestyle.adain_transfer import AdaINPipeline, adain_alpha
from scalestyle.adain_weights import (
    PUBLIC_DECODER_FILE,
    PUBLIC_ENCODER_FILE,
    load_encoder_weights,
    save_adain_dir,
)
from scalestyle.data import procedural as world
from scalestyle.models.adain import AdaIN, AdaINConfig, VGGEncoder, adain_BCHW, mean_std_BC11
from scalestyle.train.adain import (
    AdaINObjective,
    AdaINTrainConfig,
    equalise_stages,
    train_adain,
    world_labelled_batch,
    world_pair_batch,
)
from scalestyle.transfer import image_sha256
from scalestyle.weights import WeightsError

TINY = AdaINConfig(widths=(4, 4, 8, 8))


def tiny_adain(seed: int = 0) -> AdaIN:
    with torch.random.fork_rng(devices=[]):
        model = AdaIN(TINY)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval()


def picture(width: int, height: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


# -- the operation -----------------------------------------------------------------------------------------


def test_mean_std_is_function_py_calc_mean_std() -> None:
    feat = torch.randn(2, 5, 6, 7, generator=torch.Generator().manual_seed(1)) * 3 + 1
    mean, std = mean_std_BC11(feat, 1e-5)
    # function.py: view(N, C, -1).var(dim=2) (unbiased) + eps, then sqrt
    flat = feat.view(2, 5, -1)
    torch.testing.assert_close(mean, flat.mean(dim=2).view(2, 5, 1, 1))
    torch.testing.assert_close(std, (flat.var(dim=2) + 1e-5).sqrt().view(2, 5, 1, 1))


def test_adain_output_has_the_style_statistics_and_the_content_structure() -> None:
    g = torch.Generator().manual_seed(0)
    content = torch.randn(2, 8, 5, 7, generator=g) * 2 + 3
    style = torch.randn(2, 8, 9, 4, generator=g) * 0.5 - 1  # another size: only its statistics count
    out = adain_BCHW(content, style, 1e-5)
    assert out.shape == content.shape
    out_mean, out_std = mean_std_BC11(out, 0.0)
    style_mean, style_std = mean_std_BC11(style, 1e-5)
    torch.testing.assert_close(out_mean, style_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_std, style_std, atol=1e-4, rtol=1e-4)

    def normalised(x: torch.Tensor) -> torch.Tensor:
        mean, std = mean_std_BC11(x, 0.0)
        return (x - mean) / std

    torch.testing.assert_close(normalised(out), normalised(content), atol=1e-4, rtol=1e-4)


def test_adain_refuses_features_of_other_widths_or_batches() -> None:
    with pytest.raises(ValueError, match="same channels"):
        adain_BCHW(torch.randn(1, 4, 3, 3), torch.randn(1, 5, 3, 3), 1e-5)
    with pytest.raises(ValueError, match="batch"):
        adain_BCHW(torch.randn(3, 4, 3, 3), torch.randn(2, 4, 3, 3), 1e-5)


def test_config_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"four integers >= 1.*\(4, 0, 8, 8\)"):
        AdaINConfig(widths=(4, 0, 8, 8))
    with pytest.raises(ValueError, match=r"eps must be in \(0, 1\), got 0.0"):
        AdaINConfig(eps=0.0)
    with pytest.raises(ValueError, match="lr must be in"):
        AdaINTrainConfig(lr=2.0)


# -- the model ---------------------------------------------------------------------------------------------


def test_encoder_features_are_relu1_to_relu4_and_the_last_is_the_encoding() -> None:
    model = tiny_adain()
    img = torch.rand(2, 3, 20, 28)
    feats = model.encoder.features(img)
    assert [f.shape[1] for f in feats] == list(TINY.widths)
    assert [tuple(f.shape[-2:]) for f in feats] == [(20, 28), (10, 14), (5, 7), (3, 4)]  # ceil pooling
    assert all(bool((f >= 0).all()) for f in feats)  # after a ReLU
    assert torch.equal(feats[-1], model.encoder(img))


def test_alpha_zero_decodes_the_content_features_unchanged() -> None:
    model = tiny_adain()
    content, style = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 16, 32)
    with torch.no_grad():
        plain = model.decoder(model.encoder(content))
        assert torch.equal(model(content, style, alpha=0.0), plain)
        assert not torch.allclose(model(content, style, alpha=1.0), plain)
        half = model.target_BCHW(content, style, 0.5)
        full, none = model.target_BCHW(content, style, 1.0), model.target_BCHW(content, style, 0.0)
        torch.testing.assert_close(half, (full + none) / 2)
    assert plain.shape == (1, 3, 24, 24)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        model(content, style, alpha=1.5)


# -- the public files --------------------------------------------------------------------------------------

# net.py, written out: (module index, in channels, out channels, kernel) of every conv of `vgg` and `decoder`
PUBLIC_VGG_CONVS = [(0, 3, 3, 1), (2, 3, 64, 3), (5, 64, 64, 3), (9, 64, 128, 3), (12, 128, 128, 3)]
PUBLIC_VGG_CONVS += [(16, 128, 256, 3), (19, 256, 256, 3), (22, 256, 256, 3), (25, 256, 256, 3)]
PUBLIC_VGG_CONVS += [(29, 256, 512, 3)]  # relu4_1: the last one used
PUBLIC_VGG_TAIL = [(i, 512, 512, 3) for i in (32, 35, 38, 42, 45, 48, 51)]
PUBLIC_DECODER_CONVS = [(1, 512, 256, 3), (5, 256, 256, 3), (8, 256, 256, 3), (11, 256, 256, 3)]
PUBLIC_DECODER_CONVS += [
    (14, 256, 128, 3),
    (18, 128, 128, 3),
    (21, 128, 64, 3),
    (25, 64, 64, 3),
    (28, 64, 3, 3),
]


def public_state(convs: list[tuple[int, int, int, int]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, c_in, c_out, k in convs:
        state[f"{index}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * 0.01
        state[f"{index}.bias"] = torch.randn(c_out, generator=g) * 0.01
    return state


def test_the_full_size_model_has_the_public_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = AdaIN(AdaINConfig())
    shapes = {k: tuple(v.shape) for k, v in public_state(PUBLIC_VGG_CONVS, 0).items()}
    assert {k: tuple(v.shape) for k, v in model.encoder.state_dict().items()} == shapes
    shapes = {k: tuple(v.shape) for k, v in public_state(PUBLIC_DECODER_CONVS, 0).items()}
    assert {k: tuple(v.shape) for k, v in model.decoder.state_dict().items()} == shapes


def test_public_files_load_strictly_and_a_missing_key_is_named(tmp_path: Path) -> None:
    vgg = public_state(PUBLIC_VGG_CONVS, 1)
    tail = {k: torch.zeros(v.shape) for k, v in public_state(PUBLIC_VGG_TAIL, 2).items()}
    decoder = public_state(PUBLIC_DECODER_CONVS, 3)
    torch.save({**vgg, **tail}, tmp_path / PUBLIC_ENCODER_FILE)
    torch.save(decoder, tmp_path / PUBLIC_DECODER_FILE)
    pipe = AdaINPipeline.load(tmp_path)
    assert pipe.model.cfg == AdaINConfig()
    for key, value in vgg.items():
        assert torch.equal(pipe.model.encoder.state_dict()[key], value), key
    for key, value in decoder.items():
        assert torch.equal(pipe.model.decoder.state_dict()[key], value), key

    with torch.device("meta"):
        encoder = VGGEncoder(AdaINConfig())
    load_encoder_weights(encoder, dict(vgg), source="vgg[:31]")  # a file of vgg[:31] alone loads too
    for bad, named in (
        ({k: v for k, v in vgg.items() if k != "29.bias"}, r"1 missing keys: 29\.bias"),
        ({**vgg, **{k: v for k, v in tail.items() if k != "51.weight"}}, r"missing keys: 51\.weight"),
        ({**vgg, "53.weight": torch.zeros(1)}, r"unexpected keys: 53\.weight"),
        ({**vgg, "2.weight": torch.zeros(32, 3, 3, 3)}, r"2\.weight expected \(64, 3, 3, 3\) found \(32"),
    ):
        with torch.device("meta"):
            encoder = VGGEncoder(AdaINConfig())
        with pytest.raises(WeightsError, match=named):
            load_encoder_weights(encoder, bad, source="vgg_normalised.pth")

    torch.save({k: v for k, v in decoder.items() if k != "28.weight"}, tmp_path / PUBLIC_DECODER_FILE)
    with pytest.raises(WeightsError, match=r"decoder\.pth: 1 missing keys: 28\.weight"):
        AdaINPipeline.load(tmp_path)
    (tmp_path / PUBLIC_DECODER_FILE).unlink()
    with pytest.raises(WeightsError, match=r"decoder\.pth is missing"):
        AdaINPipeline.load(tmp_path)


# -- the pipeline ------------------------------------------------------------------------------------------


def test_pipeline_gives_rgb_images_of_the_content_size_with_metadata(tmp_path: Path) -> None:
    folder = save_adain_dir(tmp_path / "tiny", tiny_adain(), extra={"name": "tiny-adain"})
    pipe = AdaINPipeline.load(folder)
    contents, style = [picture(37, 22, 0), picture(16, 16, 1)], picture(30, 40, 2)
    out = pipe(contents, style)
    assert out.summed_codes_BdHW is None
    assert [im.mode for im in out.images] == ["RGB", "RGB"]
    assert [im.size for im in out.images] == [(37, 22), (16, 16)]
    meta = out.metadata[0]
    assert meta["content_sha256"] == image_sha256(contents[0]) and meta["style_sha256"] == image_sha256(style)
    assert meta["model"] == "tiny-adain" and meta["settings"]["alpha"] == 1.0 and meta["row"] == 0
    # the folder's weights, not new random ones: the same images as the model saved
    again = AdaINPipeline(tiny_adain(), "same", torch.device("cpu"))(contents, style)
    assert [im.tobytes() for im in again.images] == [im.tobytes() for im in out.images]
    weaker = pipe(contents[0], style, strength=-0.75)
    assert weaker.metadata[0]["settings"]["alpha"] == 0.25
    assert weaker.images[0].tobytes() != out.images[0].tobytes()
    resized = AdaINPipeline.load(folder, size=32)(contents[0], style)
    assert resized.images[0].size == (53, 32)  # the shorter side to 32, as torchvision's Resize(32)
    assert resized.metadata[0]["settings"]["size"] == 32


def test_pipeline_refuses_what_adain_cannot_do() -> None:
    pipe = AdaINPipeline(tiny_adain(), "tiny", torch.device("cpu"))
    assert adain_alpha(0.0) == 1.0 and adain_alpha(-1.0) == 0.0
    with pytest.raises(ValueError, match=r"strength must be in \[-1, 0\].*got 0.5"):
        pipe(picture(16, 16, 0), picture(16, 16, 1), strength=0.5)
    with pytest.raises(ValueError, match="one style image or one per content"):
        pipe([picture(16, 16, 0)] * 3, [picture(16, 16, 1)] * 2)
    with pytest.raises(ValueError, match=r"size must be in \[16, 4096\]"):
        AdaINPipeline(tiny_adain(), "tiny", torch.device("cpu"), size=8)


def test_our_folder_refuses_a_foreign_config(tmp_path: Path) -> None:
    folder = save_adain_dir(tmp_path / "tiny", tiny_adain())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "adain": {"widths": [4, 4, 8]}}))
    with pytest.raises(WeightsError, match="four integers"):
        AdaINPipeline.load(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model": "var"}))
    with pytest.raises(WeightsError, match="not an AdaIN config"):
        AdaINPipeline.load(folder)


# -- the trainer -------------------------------------------------------------------------------------------


def test_world_batches_hold_training_styles_in_unit_range() -> None:
    img, c_idx, s_idx = world_labelled_batch(0, 6, torch.Generator().manual_seed(0), size=32)
    assert img.shape == (6, 3, 32, 32) and float(img.min()) >= 0 and float(img.max()) <= 1
    assert int(c_idx.max()) < len(world.CONTENTS) and int(s_idx.max()) < len(world.TRAIN_STYLES)
    content, style = world_pair_batch(0, 2, torch.Generator().manual_seed(0), size=32)
    assert content.shape == style.shape == (2, 3, 32, 32) and not torch.equal(content, style)


def test_equalising_the_stages_only_rescales_each_stage() -> None:
    model = tiny_adain()
    with torch.no_grad():
        model.encoder[16].weight.mul_(30)  # a stage far louder than the others, as pretraining leaves them
    img = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.encoder.features(img)
        factors = equalise_stages(model, img)
        after = model.encoder.features(img)
    for feat, scaled, k in zip(before, after, factors, strict=True):
        torch.testing.assert_close(scaled, feat * k, rtol=1e-4, atol=1e-6)
        assert float(scaled.pow(2).mean()) == pytest.approx(1.0, rel=1e-4)
    assert factors[2] < factors[0] / 5


# a pool of four images: batches depend on the step's generator (what resuming must reproduce) and the task is
# small enough for the loss to fall within a few steps
POOL = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))


def test_decoder_steps_lower_adains_loss_on_a_fixed_pair() -> None:
    model = tiny_adain()
    objective = AdaINObjective(model, AdaINTrainConfig(widths=TINY.widths))
    model.encoder.requires_grad_(False)
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=3e-3)
    content, style = POOL[:2], POOL[2:]
    losses = []
    for _ in range(30):
        loss = objective(content, style)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in model.encoder.parameters())  # the encoder stays frozen


class Interrupt(Exception):
    pass


def synthetic_labelled(
    step: int, batch_size: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx = torch.randint(4, (batch_size,), generator=g)
    return POOL[idx], idx % 2, idx // 2


def synthetic_pairs(step: int, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return POOL[torch.randint(4, (batch_size,), generator=g)], POOL[
        torch.randint(4, (batch_size,), generator=g)
    ]


@pytest.mark.slow  # over 5 s on 2 cores (accelerate's import alone takes seconds): the CI's slow step
def test_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    cfg = AdaINTrainConfig(
        widths=(4, 4, 8, 8), encoder_steps=4, encoder_batch_size=4, steps=8, batch_size=2, lr=1e-2
    )
    cfg = AdaINTrainConfig(**{**cfg.__dict__, "log_every": 1, "ckpt_every": 2})
    kwargs = {"encoder_batches": synthetic_labelled, "pair_batches": synthetic_pairs, "progress": False}
    full = train_adain(tmp_path / "full_model", tmp_path / "full", cfg, **kwargs)  # type: ignore[arg-type]

    def encoder_killed_at_3(step: int, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        if step == 3:
            raise Interrupt
        return synthetic_labelled(step, batch_size, g)

    def decoder_killed_at_5(step: int, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        if step == 5:  # after the checkpoint at step 4
            raise Interrupt
        return synthetic_pairs(step, batch_size, g)

    work = tmp_path / "resumed"
    for killed in ({"encoder_batches": encoder_killed_at_3}, {"pair_batches": decoder_killed_at_5}):
        with pytest.raises(Interrupt):
            train_adain(None, work, cfg, **{**kwargs, **killed})  # type: ignore[arg-type]
    resumed = train_adain(None, work, cfg, **kwargs)  # type: ignore[arg-type]
    for (key, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    rows = [json.loads(line) for line in (tmp_path / "full" / "decoder_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 9))
    # the written folder holds the trained model
    loaded = AdaINPipeline.load(tmp_path / "full_model").model
    for (key, a), b in zip(full.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
