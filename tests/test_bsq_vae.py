from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scalestyle.config import PRESETS, BSQVAEConfig, ModelPreset
from scalestyle.images import cover_size, load_image, preprocess, to_pil
from scalestyle.models.bsq_vae import (
    BSQ,
    BSQVAE,
    MultiScaleEncoding,
    Norm,
    RMSNorm2d,
    bits_to_codes,
    group_norm_groups,
    next_scale_input,
    upsample_codes,
)
from scalestyle.schedules import get_schedule
from scalestyle.weights import preset_from_dict, preset_to_dict

TINY = BSQVAEConfig(codebook_dim=8, patch_size=4, ch_mult=(1, 1, 2), base_ch=16, num_res_blocks=1)
# stride 4 with patchify: the VAE latent is 32x32 for a 64x64 image, the token grid 16x16 with 16 bits
TINY_PATCHIFY = BSQVAEConfig(
    codebook_dim=4, patch_size=2, ch_mult=(1, 1), base_ch=16, num_res_blocks=1, spatial_patchify=True
)
GRIDS = get_schedule(1.0, "0.06M").grids  # (1,1) .. (16,16)


def _smooth_images(batch: int, size: int = 64) -> torch.Tensor:
    """Images in [-1, 1] with structure at several scales (random weights still give varied latents)."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(batch, 3, 4, 4, generator=g)
    fine = torch.rand(batch, 3, size, size, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 0.8 + fine * 0.2
    return img * 2 - 1


def _tiny_vae(cfg: BSQVAEConfig) -> BSQVAE:
    torch.manual_seed(0)
    vae = BSQVAE(cfg).eval()
    with torch.no_grad():  # non-trivial affine norms, so the test exercises them
        for name, p in vae.named_parameters():
            if ".norm." in name:
                p.add_(torch.randn_like(p) * 0.1)
    return vae


@pytest.fixture(scope="module")
def tiny() -> tuple[BSQVAE, torch.Tensor, MultiScaleEncoding]:
    vae = _tiny_vae(TINY)
    img = _smooth_images(2)
    with torch.no_grad():
        return vae, img, vae.encode_multiscale(img, GRIDS)


@pytest.fixture(scope="module")
def tiny_patchify() -> tuple[BSQVAE, torch.Tensor, MultiScaleEncoding]:
    vae = _tiny_vae(TINY_PATCHIFY)
    img = _smooth_images(2)
    with torch.no_grad():
        return vae, img, vae.encode_multiscale(img, GRIDS)


# ---------------------------------------------------------------------------------------------------------
# State dict against the upstream key dump


def _dump_sections(path: Path) -> list[list[tuple[str, tuple[int, ...], str, str]]]:
    sections: list[list[tuple[str, tuple[int, ...], str, str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith("# BSQ VAE"):
            sections.append([])
        elif line.strip() and not line.startswith("#"):
            key, shape, dtype, kind = line.split("\t")
            dims = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
            sections[-1].append((key, dims, dtype, kind))
    return sections


@pytest.mark.parametrize(("preset", "section"), [("infinity-2b", 0), ("infinity-8b", 1)])
def test_state_dict_equals_upstream_dump(key_dumps: Path, preset: str, section: int) -> None:
    dump = _dump_sections(key_dumps / "infinity_vae_keys.txt")
    assert len(dump) == 2, "expected a d32 and a d56 section in the dump"
    with torch.device("meta"):
        vae = BSQVAE(PRESETS[preset].vae)
    buffers = {name for name, _ in vae.named_buffers(remove_duplicate=False)}
    ours = [
        (k, tuple(t.shape), str(t.dtype).removeprefix("torch."), "buffer" if k in buffers else "param")
        for k, t in vae.state_dict().items()
    ]
    assert ours == dump[section]  # names, shapes, dtypes, kinds and order
    assert all(t.is_meta for t in vae.state_dict().values())


def test_mask_buffer_alias_and_loading_without_it() -> None:
    vae = BSQVAE(TINY)
    sd = vae.state_dict()
    expected = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1])
    assert sd["quantizer.lfq.mask"].dtype == torch.int64
    assert torch.equal(sd["quantizer.lfq.mask"], expected)
    assert vae.quantize is vae.quantizer and torch.equal(sd["quantize.lfq.mask"], expected)
    # the mask is a constant: checkpoints without it still load strictly, a wrong one is refused
    stripped = {k: v for k, v in sd.items() if not k.endswith("lfq.mask")}
    BSQVAE(TINY).load_state_dict(stripped, strict=True)
    with pytest.raises(ValueError, match="powers of two"):
        BSQVAE(TINY).load_state_dict({**sd, "quantize.lfq.mask": expected.flip(0)})


def test_group_norm_rule() -> None:
    # upstream: 32 groups, else 24; our fallback only for channels that upstream rejects
    assert [group_norm_groups(c) for c in (128, 256, 512, 48, 72, 16, 8, 12, 3)] == [
        32,
        32,
        32,
        24,
        24,
        16,
        8,
        4,
        1,
    ]
    with pytest.raises(ValueError, match="channels"):
        group_norm_groups(0)


def test_norm_setting_round_trips_through_the_model_folder_config() -> None:
    demo = PRESETS["demo"]
    assert isinstance(demo, ModelPreset) and demo.vae.norm == "group"  # upstream's, the default
    pixel = replace(demo, vae=replace(demo.vae, norm="pixel"))
    data = json.loads(json.dumps(preset_to_dict(pixel)))
    assert data["vae"]["norm"] == "pixel"
    assert preset_from_dict(data, "config.json") == pixel
    # folders written before the setting existed keep upstream's GroupNorm
    del data["vae"]["norm"]
    assert preset_from_dict(data, "config.json").vae.norm == "group"
    with pytest.raises(ValueError, match=r"norm must be one of .*'layer'"):
        replace(demo.vae, norm="layer")


@pytest.mark.parametrize("norm", ["pixel", "group_rms"])
def test_every_norm_keeps_the_state_dict_keys(norm: str) -> None:
    group = BSQVAE(TINY).state_dict()
    other = BSQVAE(replace(TINY, norm=norm)).state_dict()
    assert [(k, v.shape) for k, v in other.items()] == [(k, v.shape) for k, v in group.items()]
    BSQVAE(replace(TINY, norm=norm)).load_state_dict(group, strict=True)


def test_group_norm_amplifies_a_near_flat_map_and_the_rms_norms_do_not() -> None:
    # the droplet mechanism: GroupNorm divides by the (tiny) spread of a nearly constant map, so a 1e-3
    # bump comes out about 1000x stronger (eps 1e-6 bounds it); norms without the mean subtraction keep
    # it at about its true size
    x = torch.full((1, 16, 16, 16), 0.7)
    x[..., 0, 0] += 1e-3
    for kind, limit in (("pixel", 1e-2), ("group_rms", 1e-2)):
        y = Norm(16, kind)(x).detach()
        assert float((y - y[..., 8:9, 8:9]).abs().max()) < limit, kind
    y = Norm(16, "group")(x).detach()
    assert float((y - y[..., 8:9, 8:9]).abs().max()) > 0.5


def test_pixel_norm_has_no_spatial_statistics_and_matches_its_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 5, generator=g)
    norm = Norm(8, "pixel")
    inner = norm.norm
    assert isinstance(inner, RMSNorm2d)
    with torch.no_grad():
        inner.weight.copy_(torch.randn(8, generator=g))
        inner.bias.copy_(torch.randn(8, generator=g))
        y = norm(x)
    w, b = inner.weight.detach()[:, None, None], inner.bias.detach()[:, None, None]
    expected = x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-6) * w + b
    assert torch.allclose(y, expected, atol=1e-6)
    # a spot elsewhere leaves every other pixel unchanged (GroupNorm would rescale them all)
    spot = x.clone()
    spot[..., 0, 0] *= 100
    assert torch.equal(norm(spot)[..., 1:, :], y[..., 1:, :])


# ---------------------------------------------------------------------------------------------------------
# Multi-scale encoding


def test_encoding_shapes_and_dtypes(tiny: tuple[BSQVAE, torch.Tensor, MultiScaleEncoding]) -> None:
    _, _, enc = tiny
    assert [tuple(b.shape) for b in enc.bits] == [(2, h, w, 8) for h, w in GRIDS]
    assert all(b.dtype == torch.int64 and set(b.unique().tolist()) <= {0, 1} for b in enc.bits)
    assert [tuple(x.shape) for x in enc.inputs] == [(2, h * w, 8) for h, w in GRIDS[1:]]
    assert all(x.dtype == torch.float32 for x in enc.inputs)
    assert tuple(enc.summed_codes_BdHW.shape) == (2, 8, 16, 16)
    # both bit values occur at the finer scales (random weights still give a spread of latents)
    assert 0.2 < enc.bits[-1].float().mean().item() < 0.8


def test_bits_are_the_sign_of_the_residual(tiny: tuple[BSQVAE, torch.Tensor, MultiScaleEncoding]) -> None:
    """An independent 4-D re-derivation of spec §2.3: area down, sign, bilinear up, subtract."""
    vae, img, enc = tiny
    s = 1 / math.sqrt(8)
    with torch.no_grad():
        residual = vae.encode_latent(img)
    for (h, w), bits in zip(GRIDS, enc.bits, strict=True):
        r = residual if (h, w) == (16, 16) else F.adaptive_avg_pool2d(residual, (h, w))
        assert torch.equal(bits, (r > 0).long().permute(0, 2, 3, 1))
        q = torch.where(r > 0, s, -s)
        residual = residual - F.interpolate(q, size=(16, 16), mode="bilinear", align_corners=False)


def test_decode_bits_reproduces_decode_of_summed_codes(
    tiny: tuple[BSQVAE, torch.Tensor, MultiScaleEncoding],
) -> None:
    vae, img, enc = tiny
    with torch.no_grad():
        _, q_sum = vae.quantizer(vae.encode_latent(img), GRIDS)
        assert torch.equal(vae.decode_bits(enc.bits), vae.decode(enc.summed_codes_BdHW))
        # codes re-derived from bits equal the quantizer's straight-through sum up to float rounding
        assert (enc.summed_codes_BdHW - q_sum).abs().max().item() < 1e-6
        out = vae.decode(q_sum)
    assert tuple(out.shape) == (2, 3, 64, 64) and out.abs().max() <= 1


def test_inputs_follow_the_inference_loop(tiny: tuple[BSQVAE, torch.Tensor, MultiScaleEncoding]) -> None:
    """Teacher forcing with the encoded bits gives exactly the encoding's inputs and summed codes."""
    _, _, enc = tiny
    summed = None
    for k, bits in enumerate(enc.bits):
        codes = bits_to_codes(bits, patchify=False)
        if k < len(GRIDS) - 1:
            codes = upsample_codes(codes, (16, 16))
        summed = codes if summed is None else summed + codes
        if k < len(GRIDS) - 1:
            x_BLD = next_scale_input(summed, GRIDS[k + 1], patchify=False)
            assert torch.equal(x_BLD, enc.inputs[k])
    assert summed is not None and torch.equal(summed, enc.summed_codes_BdHW)
    # the first input is the 1x1 code upsampled and resized to 2x2: every token sees the same vector
    first = enc.inputs[0]
    assert torch.allclose(first, first[:, :1].expand_as(first))


def test_bitwise_self_correction_requantizes_after_the_flipped_scale(
    tiny: tuple[BSQVAE, torch.Tensor, MultiScaleEncoding],
) -> None:
    vae, img, enc = tiny
    with torch.no_grad():
        same = vae.encode_multiscale(img, GRIDS, flip=lambda k, b: b)
        k = 3
        flipped = vae.encode_multiscale(img, GRIDS, flip=lambda s, b: 1 - b if s == k else b)
        z = vae.encode_latent(img)
    for a, b in zip((*same.bits, *same.inputs), (*enc.bits, *enc.inputs), strict=True):
        assert torch.equal(a, b)  # flipping nothing is the plain encoding
    # targets up to the flipped scale are the true bits; the model is shown the flipped ones
    assert all(torch.equal(a, b) for a, b in zip(flipped.bits[: k + 1], enc.bits[: k + 1], strict=True))
    assert torch.equal(flipped.inputs[k - 1], enc.inputs[k - 1]) and not torch.equal(
        flipped.inputs[k], enc.inputs[k]
    )
    # later targets differ: they correct the error, so the flipped tokens plus the corrections land much
    # closer to the latent than the same flips left uncorrected
    assert not torch.equal(flipped.bits[k + 1], enc.bits[k + 1])
    uncorrected = enc.summed_codes_BdHW - 2 * upsample_codes(
        bits_to_codes(enc.bits[k], patchify=False), (16, 16)
    )
    err_corrected = (flipped.summed_codes_BdHW - z).norm()
    assert err_corrected < 0.8 * (uncorrected - z).norm()


def test_bits_to_codes_values() -> None:
    bits = torch.randint(0, 2, (2, 3, 5, 8))
    codes = bits_to_codes(bits, patchify=False)
    assert tuple(codes.shape) == (2, 8, 3, 5)
    assert torch.allclose(codes.norm(dim=1), torch.ones(2, 3, 5))
    assert torch.allclose(codes, (bits.permute(0, 3, 1, 2).float() * 2 - 1) / math.sqrt(8))
    assert torch.equal(bits_to_codes(bits.bool(), patchify=False), codes)
    with pytest.raises(ValueError, match=r"\(B, h, w, D\)"):
        bits_to_codes(bits[0], patchify=False)
    with pytest.raises(ValueError, match="D % 4"):
        bits_to_codes(torch.zeros(1, 2, 2, 6), patchify=True)


def test_zero_vector_gives_zero_bits() -> None:
    q, bits = BSQ(8)(torch.zeros(2, 8, 3, 3))
    assert bits.dtype == torch.int64 and not bits.any()
    assert torch.allclose(q, torch.full_like(q, -1 / math.sqrt(8)))
    # a zero latent: scale 0 gives all zeros (codes -s), so the residual is +s everywhere and scale 1 all ones
    bits_ms, _ = BSQVAE(TINY).quantizer(torch.zeros(1, 8, 16, 16), GRIDS)
    assert not bits_ms[0].any() and bits_ms[1].all()


def test_grid_validation(tiny: tuple[BSQVAE, torch.Tensor, MultiScaleEncoding]) -> None:
    vae, img, _ = tiny
    with pytest.raises(ValueError, match="latent size"):
        vae.encode_multiscale(img, GRIDS[:-1])
    with pytest.raises(ValueError, match="at least one"):
        vae.encode_multiscale(img, [])
    with pytest.raises(ValueError, match="multiple of the VAE patch size"):
        vae.encode_latent(img[..., :62])


# ---------------------------------------------------------------------------------------------------------
# Spatial patchify (the 8B VAE's layout)


def test_patchify_bits_are_pixel_unshuffled(
    tiny_patchify: tuple[BSQVAE, torch.Tensor, MultiScaleEncoding],
) -> None:
    vae, img, enc = tiny_patchify
    assert [tuple(b.shape) for b in enc.bits] == [(2, h, w, 16) for h, w in GRIDS]
    with torch.no_grad():
        vae_bits, _ = vae.quantizer(vae.encode_latent(img), [(2 * h, 2 * w) for h, w in GRIDS])
    for tok, pix in zip(enc.bits, vae_bits, strict=True):
        assert tuple(pix.shape) == (2, 2 * tok.shape[1], 2 * tok.shape[2], 4)
        # bit j of token (y, x) is channel j // 4 at pixel (2y + (j % 4) // 2, 2x + j % 2)
        j = torch.arange(16)
        y, x = 0, tok.shape[2] - 1
        assert torch.equal(tok[:, y, x], pix[:, 2 * y + (j % 4) // 2, 2 * x + j % 2, j // 4])
        # the same as torch's pixel_unshuffle of the channel-first bits
        assert torch.equal(tok, F.pixel_unshuffle(pix.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1))
        # and codes of the token bits equal codes of the pixel bits (pixel_shuffle inverts it)
        assert torch.equal(bits_to_codes(tok, patchify=True), bits_to_codes(pix, patchify=False))


def test_patchify_inputs_and_round_trip(
    tiny_patchify: tuple[BSQVAE, torch.Tensor, MultiScaleEncoding],
) -> None:
    vae, _, enc = tiny_patchify
    assert [tuple(x.shape) for x in enc.inputs] == [(2, h * w, 16) for h, w in GRIDS[1:]]
    summed = None
    for k, bits in enumerate(enc.bits):
        codes = bits_to_codes(bits, patchify=True)
        if k < len(GRIDS) - 1:
            codes = upsample_codes(codes, (32, 32))
        summed = codes if summed is None else summed + codes
        if k < len(GRIDS) - 1:
            h, w = GRIDS[k + 1]
            x_BLD = next_scale_input(summed, (h, w), patchify=True)
            assert torch.equal(x_BLD, enc.inputs[k])
            resized = F.interpolate(summed, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
            ref = F.pixel_unshuffle(resized, 2).flatten(2).transpose(1, 2)
            assert torch.allclose(x_BLD, ref, atol=1e-6)
    assert summed is not None and torch.equal(summed, enc.summed_codes_BdHW)
    with torch.no_grad():
        assert torch.equal(vae.decode_bits(enc.bits), vae.decode(enc.summed_codes_BdHW))


# ---------------------------------------------------------------------------------------------------------
# images.py


def _reference_transform(img: Image.Image, rw: int, rh: int, tgt_h: int, tgt_w: int) -> torch.Tensor:
    arr = np.asarray(img.resize((rw, rh), resample=Image.Resampling.LANCZOS))
    top, left = (rh - tgt_h) // 2, (rw - tgt_w) // 2
    crop = arr[top : top + tgt_h, left : left + tgt_w]
    return torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255 * 2 - 1


def _gradient_image(w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8))


@pytest.mark.parametrize(
    ("w", "h", "size_hw", "resized_wh"),
    [
        (200, 100, (64, 64), (128, 64)),  # landscape: height fits, width cropped by 32 each side
        (100, 300, (32, 48), (48, 144)),  # portrait into landscape target: width fits, height cropped
        (90, 60, (64, 32), (96, 64)),  # wider than a tall target: height fits
    ],
)
def test_preprocess_cover_resize_and_centre_crop(
    w: int, h: int, size_hw: tuple[int, int], resized_wh: tuple[int, int]
) -> None:
    img = _gradient_image(w, h)
    assert cover_size(w, h, size_hw) == resized_wh
    x = preprocess(img, size_hw)
    assert tuple(x.shape) == (3, *size_hw) and x.dtype == torch.float32
    assert torch.allclose(x, _reference_transform(img, *resized_wh, *size_hw), atol=1e-6)
    assert x.min() >= -1 and x.max() <= 1


def test_preprocess_values_and_errors() -> None:
    white = preprocess(Image.new("RGB", (40, 30), (255, 255, 255)), (16, 16))
    black = preprocess(Image.new("RGB", (40, 30), (0, 0, 0)), (16, 16))
    assert torch.equal(white, torch.ones(3, 16, 16)) and torch.equal(black, -torch.ones(3, 16, 16))
    # upstream's truncating formula can land one pixel short (16 / (16/93) = 92.999...): we keep the target
    assert cover_size(16, 93, (93, 16)) == (16, 93)
    assert tuple(preprocess(_gradient_image(16, 93), (93, 16)).shape) == (3, 93, 16)
    with pytest.raises(ValueError, match="RGB"):
        preprocess(Image.new("L", (20, 20)), (16, 16))
    with pytest.raises(ValueError, match="size_hw"):
        preprocess(Image.new("RGB", (20, 20)), (0, 16))


def test_to_pil_truncates_and_keeps_rgb_order() -> None:
    x = torch.full((3, 2, 3), -1.0)
    x[0] = 1.0  # red
    x[1, 0, 0] = 254.9 / 255 * 2 - 1  # green 254.9 -> 254, truncated not rounded
    x[2, 1, 2] = 0.0  # blue (0+1)/2*255 = 127.5 -> 127
    img = to_pil(x)
    assert img.mode == "RGB" and img.size == (3, 2)
    arr = np.asarray(img)
    assert tuple(arr[1, 1]) == (255, 0, 0)
    assert arr[0, 0, 1] == 254 and arr[1, 2, 2] == 127
    assert tuple(np.asarray(to_pil(torch.full((3, 1, 1), 5.0)))[0, 0]) == (255, 255, 255)  # clamped
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_pil(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        to_pil(torch.full((3, 2, 2), float("nan")))


def test_load_image_converts_modes(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent: becomes white
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black over white: mid grey
    rgba.save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((5, 5)) == (255, 0, 0)
    assert all(abs(c - 127) <= 1 for c in img.getpixel((1, 0)))  # type: ignore[union-attr]

    Image.new("L", (20, 20), 77).save(tmp_path / "l.png")
    assert load_image(tmp_path / "l.png").getpixel((3, 3)) == (77, 77, 77)

    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").getpixel((3, 3)) == (0, 255, 0)
    pal.save(tmp_path / "pt.png", transparency=1)  # palette entry 1 transparent: white
    assert load_image(tmp_path / "pt.png").getpixel((3, 3)) == (255, 255, 255)

    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    r, g, b = load_image(tmp_path / "c.jpg").getpixel((3, 3))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60  # cyan-free, full magenta+yellow: red

    deep = Image.fromarray(np.full((20, 20), 65535 // 2, dtype=np.uint16))  # 16-bit mid grey
    deep.save(tmp_path / "d.png")
    assert load_image(tmp_path / "d.png").getpixel((3, 3)) == (127, 127, 127)


def test_load_image_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png: not a readable image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ValueError, match="no such file"):
        load_image(tmp_path / "missing.png")
    Image.new("RGB", (8, 30)).save(tmp_path / "tiny.png")
    with pytest.raises(ValueError, match="8x30, smaller than the minimum side of 16"):
        load_image(tmp_path / "tiny.png")
    assert load_image(tmp_path / "tiny.png", min_side=8).size == (8, 30)
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"300x200 = 0.1 megapixels, above the limit"):
        load_image(tmp_path / "big.png", max_pixels=50_000)
    _gradient_image(64, 64).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png: not a readable image"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="min_side"):
        load_image(tmp_path / "full.png", min_side=0)
