"""Metrics on tiny random models built offline, and images with known answers."""

from __future__ import annotations

import inspect
import itertools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from scalestyle.metrics import (
    LPIPS,
    CLIPScorer,
    DINOScorer,
    DreamSim,
    GramStyle,
    HFFeatures,
    evaluate,
    gram_matrix,
    load_lpips,
    lpips_from_features,
    pil_to_batch,
    ssim,
)
from scalestyle.metrics._common import resolve_source
from scalestyle.metrics.ssim import K1, K2

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
WORDS = ["a", "photo", "of", "cat", "dog", "in", "neon", "watercolor", "style", "the"]
BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<unk>"
CLIP_MAX_TOKENS = 16


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    # module-scoped fixtures are built before the per-test seed of conftest: seed them on their own
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def smooth_images(b: int, h: int = 32, w: int = 32, lo: float = 0.3, hi: float = 0.7) -> torch.Tensor:
    """Low-frequency random images within [lo, hi], leaving room for perturbations without clipping."""
    coarse = torch.rand(b, 3, max(h // 8, 2), max(w // 8, 2))
    img = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return lo + (hi - lo) * img


def save_processor(path: Path, kind: str, side: int, mean: list[float], std: list[float]) -> None:
    # written as JSON rather than through a class: the class names differ between transformers releases
    cfg = {
        "image_processor_type": kind,
        "do_resize": True,
        "size": {"shortest_edge": side},
        "do_center_crop": True,
        "crop_size": {"height": side, "width": side},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "resample": 3,
        "do_convert_rgb": True,
    }
    (path / "preprocessor_config.json").write_text(json.dumps(cfg))


def build_tokenizer() -> Any:
    """A word-level CLIP-like tokenizer (BOS ... EOS, EOS pads) built with the tokenizers library."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([BOS, EOS, UNK, *WORDS])}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        model_max_length=CLIP_MAX_TOKENS,
    )


@dataclass
class Tiny:
    path: Path
    model: Any
    tokenizer: Any = None


def save_tiny_clip(path: Path) -> tuple[Any, Any]:
    """A tiny seeded CLIP with its tokenizer and image processor saved in ``path``; (model, tokenizer)."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = build_tokenizer()
    # CLIP pools the text at the first EOS: its id in the config must be the tokenizer's
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    with seeded(0):
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    save_processor(path, "CLIPImageProcessor", 32, CLIP_MEAN, CLIP_STD)
    return model, tokenizer


def save_tiny_dino(path: Path) -> Any:
    """A tiny seeded DINOv2 with its image processor saved in ``path``; the model."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2
    )
    with seeded(1):
        model = Dinov2Model(cfg).eval()
    model.save_pretrained(path)
    save_processor(path, "BitImageProcessor", 32, IMAGENET_MEAN, IMAGENET_STD)
    return model


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    path = tmp_path_factory.mktemp("tiny_clip")
    model, tokenizer = save_tiny_clip(path)
    return Tiny(path, model, tokenizer)


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    path = tmp_path_factory.mktemp("tiny_dino")
    return Tiny(path, save_tiny_dino(path))


@pytest.fixture(scope="module")
def tiny_resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ResNetConfig, ResNetModel

    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    with seeded(2):
        model = ResNetModel(cfg).eval()
    path = tmp_path_factory.mktemp("tiny_resnet")
    # no preprocessor_config.json: the loader falls back to ImageNet normalisation
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip(tiny_clip: Tiny) -> CLIPScorer:
    return CLIPScorer.from_pretrained(tiny_clip.path, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def dino(tiny_dino: Tiny) -> DINOScorer:
    return DINOScorer.from_pretrained(tiny_dino.path, device="cpu", batch_size=2)


class TinyConv(nn.Module):
    """Two random conv layers (kernel ``k``) with ReLU: a stand-in for a pretrained backbone."""

    def __init__(self, k: int = 3, seed: int = 0) -> None:
        super().__init__()
        with seeded(seed):
            self.conv1 = nn.Conv2d(3, 8, k, padding=k // 2)
            self.conv2 = nn.Conv2d(8, 12, k, padding=k // 2)

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        f1 = F.relu(self.conv1(img * 2 - 1))
        return [f1, F.relu(self.conv2(f1))]


def pixels(img: torch.Tensor) -> list[torch.Tensor]:
    """The identity backbone: the pixels are the only layer."""
    return [img]


def permute_pixels(img: torch.Tensor, seed: int = 0) -> torch.Tensor:
    b, c, h, w = img.shape
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    return img.reshape(b, c, h * w)[:, :, perm].reshape(b, c, h, w)


# ----------------------------------------------------------------------------------------- conversions


def test_pil_to_batch_values_and_sizes() -> None:
    a = Image.new("RGB", (5, 4), (255, 0, 51))
    b = Image.new("RGBA", (5, 4), (0, 255, 0, 10))
    batch = pil_to_batch([a, b])
    assert batch.shape == (2, 3, 4, 5) and batch.dtype == torch.float32
    assert torch.allclose(batch[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    assert torch.allclose(batch[1, :, 2, 3], torch.tensor([0.0, 1.0, 0.0]))
    c = Image.new("RGB", (6, 6))
    with pytest.raises(ValueError, match="size_hw"):
        pil_to_batch([a, c])
    assert pil_to_batch([a, c], size_hw=(8, 7)).shape == (2, 3, 8, 7)


def test_inputs_are_checked() -> None:
    img = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        ssim(img * 2 - 1, img)
    with pytest.raises(ValueError, match="shape"):
        ssim(img[:, :1], img)
    with pytest.raises(ValueError, match="floating"):
        ssim((img * 255).to(torch.uint8), img)
    with pytest.raises(ValueError, match="1 image or one per image"):
        ssim(img, torch.rand(3, 3, 16, 16))
    with pytest.raises(ValueError, match="same height and width"):
        ssim(img, torch.rand(2, 3, 16, 17))
    with pytest.raises(ValueError, match="window"):
        ssim(img[..., :10, :10], img[..., :10, :10])


def test_resolve_source(tmp_path: Path) -> None:
    assert resolve_source(tmp_path) == tmp_path
    assert resolve_source(str(tmp_path)) == tmp_path
    assert resolve_source("openai/clip-vit-large-patch14") == "openai/clip-vit-large-patch14"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source("./no/such/dir")


# ------------------------------------------------------------------------------------------------ SSIM


def naive_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Wang et al.'s definition written out window by window, in float64, for one (C, H, W) pair."""
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    c1, c2 = K1**2, K2**2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                wx, wy = x[c, i : i + 11, j : j + 11].double(), y[c, i : i + 11, j : j + 11].double()
                mx, my = (g * wx).sum(), (g * wy).sum()
                vx, vy = (g * (wx - mx) ** 2).sum(), (g * (wy - my) ** 2).sum()
                cov = (g * (wx - mx) * (wy - my)).sum()
                vals.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(torch.stack(vals).mean())


def test_ssim_matches_the_windowed_definition() -> None:
    x, y = torch.rand(2, 3, 13, 14), torch.rand(2, 3, 13, 14)
    got = ssim(x, y)
    for b in range(2):
        assert got[b].item() == pytest.approx(naive_ssim(x[b], y[b]), abs=1e-6)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    yx, yy = (x * luma).sum(1), (y * luma).sum(1)
    assert ssim(x, y, channels="luma")[0].item() == pytest.approx(naive_ssim(yx[:1], yy[:1]), abs=1e-6)


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    a, b = 0.3, 0.5
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    # zero variances: the contrast-structure term is C2 / C2 = 1
    expected = (2 * a * b + K1**2) / (a**2 + b**2 + K1**2)
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-6)
    # float32 moments lose ~1e-4 to cancellation in E[x^2] - E[x]^2 (see the module docstring)
    assert ssim(x, y, dtype=torch.float32).item() == pytest.approx(expected, abs=3e-4)


def test_ssim_identity_noise_and_colour_shift() -> None:
    x = smooth_images(2)
    for channels in ("rgb", "luma"):
        assert torch.allclose(ssim(x, x, channels=channels), torch.ones(2), atol=1e-6)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    scores = [ssim(x, x + s * noise) for s in (0.01, 0.05, 0.1, 0.2)]
    for hi, lo in itertools.pairwise(scores):
        assert (lo < hi).all()
    shifted = [ssim(x, x + d) for d in (0.05, 0.2)]
    assert (shifted[1] < shifted[0]).all() and (shifted[0] < 1 - 1e-3).all()


def test_ssim_is_symmetric_batched_and_broadcasts() -> None:
    x, y = torch.rand(5, 3, 16, 16), torch.rand(5, 3, 16, 16)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)
    assert torch.allclose(ssim(x, y, batch_size=2), ssim(x, y, batch_size=5), atol=1e-6)
    assert torch.allclose(ssim(x, y[:1]), ssim(x, y[:1].expand(5, -1, -1, -1)), atol=1e-6)


# ----------------------------------------------------------------------------------------------- LPIPS


def test_lpips_formula_by_hand() -> None:
    x, y = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    w = torch.tensor([0.5, 1.0, 2.0])
    got = lpips_from_features([x], [y], [w])
    ux, uy = F.normalize(x, dim=1, eps=1e-12), F.normalize(y, dim=1, eps=1e-12)
    expected = ((ux - uy) ** 2 * w.view(1, 3, 1, 1)).sum(1).mean((1, 2))
    assert torch.allclose(got, expected, atol=1e-6)
    # uniform weights: each layer lies in [0, 4]; two identical layers add up
    two = lpips_from_features([x, x], [y, y])
    assert torch.allclose(two, 2 * lpips_from_features([x], [y]), atol=1e-6)
    assert ((two >= 0) & (two <= 8)).all()


def test_lpips_invariants_on_a_random_conv_backbone() -> None:
    metric = LPIPS(TinyConv(), device="cpu", batch_size=2)
    x = smooth_images(3)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    y = x + 0.1 * noise
    assert torch.equal(metric(x, x), torch.zeros(3))
    assert torch.allclose(metric(x, y), metric(y, x), atol=1e-6)
    d = [metric(x, x + s * noise) for s in (0.02, 0.1, 0.25)]
    assert (d[0] > 0).all() and (d[0] < d[1]).all() and (d[1] < d[2]).all()
    # one shared reference, and chunking, change nothing
    assert torch.allclose(metric(y, x[:1]), metric(y, x[:1].expand(3, -1, -1, -1)), atol=1e-6)
    assert torch.allclose(LPIPS(TinyConv(), device="cpu", batch_size=3)(x, y), metric(x, y), atol=1e-6)


def test_lpips_weights_are_validated() -> None:
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="non-negative"):
        LPIPS(pixels, weights=[-torch.ones(3)], device="cpu")
    with pytest.raises(ValueError, match="weight vectors"):
        LPIPS(TinyConv(), weights=[torch.ones(8)], device="cpu")(x, x)
    with pytest.raises(ValueError, match="weights for"):
        LPIPS(pixels, weights=[torch.ones(4)], device="cpu")(x, x)


def test_lpips_fallback_and_transformers_backbones(
    tiny_resnet_dir: Path, tiny_dino: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` raise ImportError
    with pytest.raises(ImportError, match="lpips"):
        load_lpips(fallback_source=None)
    with pytest.warns(UserWarning, match="not comparable"):
        metric = load_lpips(fallback_source=str(tiny_resnet_dir), device="cpu")
    assert isinstance(metric, LPIPS) and metric.name.startswith("lpips-uniform")
    assert torch.equal(metric(x, x), torch.zeros(2))
    assert (metric(x, y) > 0).all()
    # a ViT's tokens serve as spatial positions
    vit = LPIPS(HFFeatures(tiny_dino.model), device="cpu")
    assert torch.equal(vit(x, x), torch.zeros(2))
    assert torch.allclose(vit(x, y), vit(y, x), atol=1e-6)


def test_lpips_package_api_if_installed() -> None:
    lpips = pytest.importorskip("lpips")
    # constructing it would download torchvision weights; check the call this module makes
    params = inspect.signature(lpips.LPIPS).parameters
    assert "net" in params and "verbose" in params
    assert "normalize" in inspect.signature(lpips.LPIPS.forward).parameters


# ------------------------------------------------------------------------------------------------ Gram


def test_gram_matrix_by_hand() -> None:
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # B=1, C=2, H=1, W=2
    expected = torch.tensor([[5.0, 11.0], [11.0, 25.0]]) / 4
    assert torch.allclose(gram_matrix(f), expected[None])
    # tokens (B, L, C) are positions too
    assert torch.allclose(gram_matrix(f.flatten(2).transpose(1, 2)), expected[None])


def test_style_loss_ignores_where_features_are() -> None:
    x = torch.rand(2, 3, 16, 16)
    shuffled = permute_pixels(x)
    on_pixels = GramStyle(pixels, content_layer=0, device="cpu")
    assert torch.equal(on_pixels.style_loss(x, x), torch.zeros(2))
    assert torch.equal(on_pixels.content_loss(x, x), torch.zeros(2))
    # a permutation of whole pixels keeps the pixel Gram, not the pixels themselves
    assert (on_pixels.style_loss(x, shuffled) < 1e-12).all()
    assert (on_pixels.content_loss(x, shuffled) > 1e-2).all()
    # 1x1 convolutions act on each pixel alone: a flip or a permutation keeps their Grams,
    # a colour shift does not
    pointwise = GramStyle(TinyConv(k=1), device="cpu")
    # (float32 rounding of the Gram sums leaves ~1e-15 where the exact value is 0)
    assert (pointwise.style_loss(x, x.flip(-1)) < 1e-12).all()
    assert (pointwise.style_loss(x, shuffled) < 1e-12).all()
    shift = pointwise.style_loss(x, (x + torch.tensor([0.2, 0.0, -0.2]).view(1, 3, 1, 1)).clamp(0, 1))
    assert (shift > 1e-7).all()
    # 3x3 convolutions see neighbourhoods, which a pixel permutation destroys
    spatial = GramStyle(TinyConv(k=3), device="cpu")
    assert (spatial.style_loss(x, shuffled) > 1e-8).all()


def test_gram_style_layers_weights_sizes_and_batching() -> None:
    x, y = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    net = TinyConv()
    one = GramStyle(net, style_layers=[1], device="cpu").style_loss(x, y)
    both = GramStyle(net, device="cpu").style_loss(x, y)
    weighted = GramStyle(net, style_layers=[0, 1], layer_weights=[0.0, 2.0], device="cpu").style_loss(x, y)
    assert torch.allclose(weighted, 2 * one, rtol=1e-5) and (both > one).all()
    metric = GramStyle(net, device="cpu", batch_size=2)
    assert torch.allclose(metric.style_loss(x, y), GramStyle(net, device="cpu").style_loss(x, y), rtol=1e-5)
    assert torch.allclose(metric.style_loss(x, y[:1]), metric.style_loss(x, y[:1].expand(3, -1, -1, -1)))
    # Grams are per-position averages: a reference of another size is fine for style, not for content
    assert metric.style_loss(x, torch.rand(1, 3, 24, 20)).shape == (3,)
    with pytest.raises(ValueError, match="same height and width"):
        metric.content_loss(x, torch.rand(1, 3, 24, 20))
    with pytest.raises(ValueError, match="out of range"):
        GramStyle(net, style_layers=[5], device="cpu").style_loss(x, y)
    with pytest.raises(ValueError, match="layer weights"):
        GramStyle(net, style_layers=[0], layer_weights=[1.0, 1.0], device="cpu")


def test_gram_style_from_a_transformers_cnn(tiny_resnet_dir: Path) -> None:
    metric = GramStyle.from_pretrained(tiny_resnet_dir, device="cpu")
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.equal(metric.style_loss(x, x), torch.zeros(2))
    assert torch.equal(metric.content_loss(x, x), torch.zeros(2))
    assert (metric.style_loss(x, y) > 0).all() and (metric.content_loss(x, y) > 0).all()
    # stem output and two stages; ImageNet statistics when the checkpoint has no processor config
    feats = metric.features(x)
    assert [f.shape[1] for f in feats] == [8, 8, 16]
    assert torch.allclose(metric.features.mean.flatten(), torch.tensor(IMAGENET_MEAN))


# ------------------------------------------------------------------------------------------------ CLIP


def manual_clip(tiny: Tiny, clip: CLIPScorer, img: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Normalised image and text embeddings' dot product, straight from the model."""
    pil = [Image.fromarray(a) for a in (img * 255).round().byte().permute(0, 2, 3, 1).numpy()]
    px = clip.image_processor(images=pil, return_tensors="pt")["pixel_values"]
    tokens = tiny.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ie = tiny.model.get_image_features(pixel_values=px)
        te = tiny.model.get_text_features(**tokens)
    ie = ie if isinstance(ie, torch.Tensor) else ie.pooler_output
    te = te if isinstance(te, torch.Tensor) else te.pooler_output
    return (F.normalize(ie, dim=-1) * F.normalize(te, dim=-1)).sum(-1)


def test_clip_t_matches_a_manual_computation(tiny_clip: Tiny, clip: CLIPScorer) -> None:
    img = torch.rand(3, 3, 40, 36)
    prompts = ["a photo of a cat", "a dog in neon style", "watercolor"]
    got = clip.clip_t(img, prompts)
    assert got.shape == (3,) and got.dtype == torch.float32
    assert ((got >= -1) & (got <= 1)).all()
    assert torch.allclose(got, manual_clip(tiny_clip, clip, img, prompts), atol=1e-5)
    # one prompt for all images
    assert torch.allclose(clip.clip_t(img, prompts[:1]), clip.clip_t(img, prompts[:1] * 3), atol=1e-6)
    text = clip.embed_texts(prompts)
    assert text.shape == (3, 16) and torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_clip_t_prompts_are_checked_and_truncated(clip: CLIPScorer) -> None:
    img = torch.rand(2, 3, 32, 32)
    with pytest.raises(TypeError, match="wrap it in a list"):
        clip.clip_t(img, "a cat")
    with pytest.raises(ValueError, match="1 prompt or one per image"):
        clip.clip_t(img, ["a", "b", "c"])
    # longer than the position table (16): truncated rather than an index error
    assert clip.clip_t(img, [" ".join(["cat"] * 40)]).shape == (2,)


def test_clip_i_identity_symmetry_and_batching(clip: CLIPScorer) -> None:
    x, y = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 48, 40)
    assert torch.allclose(clip.clip_i(x, x), torch.ones(3), atol=1e-5)
    assert torch.allclose(clip.clip_i(x, y), clip.clip_i(y, x), atol=1e-6)
    assert torch.allclose(clip.clip_i(x, y[:1]), clip.clip_i(x, y[:1].expand(3, -1, -1, -1)), atol=1e-6)
    assert torch.allclose(clip.embed_images(x)[1:], clip.embed_images(x[1:]), atol=1e-5)


def test_clip_loads_offline_by_path(tiny_clip: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = CLIPScorer.from_pretrained(str(tiny_clip.path), device="cpu")
    assert loaded.max_length == CLIP_MAX_TOKENS
    img = torch.rand(2, 3, 32, 32)
    prompts = ["a cat", "the dog"]
    expected = manual_clip(tiny_clip, loaded, img, prompts)
    assert torch.allclose(loaded.clip_t(img, prompts), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------ DINO


def test_dino_is_the_cls_cosine(tiny_dino: Tiny, dino: DINOScorer) -> None:
    x, y = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 36, 32)
    assert torch.allclose(dino.similarity(x, x), torch.ones(3), atol=1e-5)
    got = dino.similarity(x, y)
    assert torch.allclose(got, dino.similarity(y, x), atol=1e-6)
    pil = [Image.fromarray(a) for t in (x, y) for a in (t * 255).round().byte().permute(0, 2, 3, 1).numpy()]
    px = dino.image_processor(images=pil, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = F.normalize(tiny_dino.model(pixel_values=px).last_hidden_state[:, 0], dim=-1)
    assert torch.allclose(got, (cls[:3] * cls[3:]).sum(-1), atol=1e-5)


def test_dino_loads_offline_by_path(
    tiny_dino: Tiny, dino: DINOScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = DINOScorer.from_pretrained(tiny_dino.path, device="cpu", batch_size=1)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded.embed(x), dino.embed(x), atol=1e-5)


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DINOScorer.from_pretrained(tmp_path / "nope", device="cpu")


# -------------------------------------------------------------------------------------------- DreamSim


def test_dreamsim_wrapper_resizes_and_broadcasts() -> None:
    seen: list[tuple[int, ...]] = []

    def fake(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(a.shape))
        assert a.shape == b.shape
        return 1 - F.cosine_similarity(a.flatten(1), b.flatten(1))

    metric = DreamSim(fake, device="cpu", batch_size=2, image_size=24)
    x = torch.rand(3, 3, 40, 30)
    assert torch.allclose(metric(x, x), torch.zeros(3), atol=1e-6)
    assert metric(x, torch.rand(1, 3, 16, 16)).shape == (3,)
    assert seen[:2] == [(2, 3, 24, 24), (1, 3, 24, 24)]


def test_dreamsim_package_api_if_installed() -> None:
    dreamsim = pytest.importorskip("dreamsim")
    # loading would download weights; check the call this module makes
    params = inspect.signature(dreamsim.dreamsim).parameters
    assert {"pretrained", "device", "cache_dir"} <= set(params)


# -------------------------------------------------------------------------------------------- evaluate


def test_evaluate_collects_every_given_metric(clip: CLIPScorer) -> None:
    x, y = smooth_images(2), smooth_images(2)
    out = evaluate(
        x,
        ref_B3HW=y[:1],
        prompts=["a cat", "a dog"],
        clip=clip,
        lpips=LPIPS(TinyConv(), device="cpu"),
        gram=GramStyle(TinyConv(), device="cpu"),
        ssim_channels="rgb",
    )
    assert set(out) == {"clip_t", "clip_i", "lpips", "gram_style", "content", "ssim"}
    assert all(len(v) == 2 and all(isinstance(f, float) for f in v) for v in out.values())
    assert evaluate(x, ref_B3HW=x, ssim_channels="luma") == {"ssim": pytest.approx([1.0, 1.0], abs=1e-6)}
    with pytest.raises(ValueError, match="ref_B3HW"):
        evaluate(x, ssim_channels="rgb")
    with pytest.raises(ValueError, match="pass clip"):
        evaluate(x, prompts=["a cat"])


# ------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_matches_cpu(tiny_clip: Tiny, clip: CLIPScorer) -> None:
    x, y = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    half = CLIPScorer.from_pretrained(tiny_clip.path, device="cuda", dtype=torch.float16)
    assert torch.allclose(half.clip_i(x, y), clip.clip_i(x, y), atol=1e-2)
    assert torch.allclose(half.clip_t(x, ["a cat"]), clip.clip_t(x, ["a cat"]), atol=1e-2)
    assert torch.allclose(ssim(x.cuda(), y.cuda()), ssim(x, y), atol=1e-6)
    lp = LPIPS(TinyConv(), device="cuda")
    assert torch.allclose(lp(x, y), LPIPS(TinyConv(), device="cpu")(x, y), atol=1e-4)
