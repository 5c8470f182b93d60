"""Tiny random models shared by the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from scalestyle.config import get_preset
from scalestyle.models.bsq_vae import BSQVAE
from scalestyle.models.infinity import Infinity


def tiny_transformer(seed: int = 0) -> Infinity:
    model = Infinity(get_preset("tiny").transformer)
    model.init_weights(torch.Generator().manual_seed(seed))
    # the training init keeps residual gates near zero; larger random gates exercise every path
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.blocks:
            block.ada_gss.copy_(torch.randn(block.ada_gss.shape, generator=g) * 0.5)
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g) * 0.5)
    return model.eval()


def tiny_vae(seed: int = 0) -> BSQVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BSQVAE(get_preset("tiny").vae).eval()


WORDS = ["a", "an", "in", "style", "star", "circle", "cat", "neon", "blueprint", "photo", "of", "the"]


def build_tiny_model_dir(out: Path, seed: int = 0) -> Path:
    """A complete model folder (config, transformer, VAE, text encoder) of the tiny preset."""
    from dataclasses import replace

    from scalestyle.config import TextEncoderConfig
    from scalestyle.models.demo_text import build_demo_text_encoder
    from scalestyle.weights import save_model_dir

    build_demo_text_encoder(WORDS, out / "text_encoder", d_model=128, max_length=32)
    preset = replace(get_preset("tiny"), text=TextEncoderConfig(source="text_encoder", max_length=32))
    save_model_dir(out, preset=preset, transformer=tiny_transformer(seed), vae=tiny_vae(seed))
    return out
