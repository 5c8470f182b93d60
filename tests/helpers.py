"""Tiny random models shared by the tests."""

from __future__ import annotations

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
