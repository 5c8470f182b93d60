"""Gram-matrix style loss and feature content loss on a pretrained CNN (Gatys, Ecker & Bethge 2016).

For a layer's feature map F of C channels over N = H * W positions, the normalised Gram matrix is

    G = F F^T / (C * N)          (C x C; as the PyTorch neural-style tutorial normalises it)

Dividing by N makes it a per-position average, so images of different sizes are comparable; dividing by
C keeps wide and narrow layers on similar scales.

    style loss   = sum_l  w_l * mean_{i,j} (G_l(x) - G_l(y))_{ij}^2     (w_l = 1 by default)
    content loss = mean_{c,h,w} (F_k(x) - F_k(y))^2                      (one layer k)

Gatys et al. weight E_l = sum (G - A)^2 / (4 N_l^2 M_l^2) on unnormalised Grams; that is the same loss up
to a constant factor per layer. The Gram matrix sums over positions, so it ignores where features are:
any rearrangement of positions that the backbone maps to a rearrangement of feature positions (a pixel
permutation through 1x1 convolutions, a flip through a flip-symmetric network) leaves the style loss at 0,
while the content loss sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from scalestyle.metrics._common import (
    DEFAULT_BATCH_SIZE,
    FeatureFn,
    as_maps,
    check_batch_size,
    check_images,
    check_refs,
    chunks,
    finish,
    resolve_device,
)
from scalestyle.metrics.features import DEFAULT_CNN, load_hf_features


def gram_matrix(feat_BCHW: torch.Tensor) -> torch.Tensor:
    """Normalised Gram matrices ``(B, C, C)`` = F F^T / (C H W), in float32 (float64 stays float64).

    Tokens ``(B, L, C)`` are accepted too (each token a position).
    """
    f = as_maps(feat_BCHW)
    if f.dtype != torch.float64:
        f = f.float()
    b, c = f.shape[:2]
    flat = f.reshape(b, c, -1)
    return flat @ flat.transpose(1, 2) / flat[0].numel()


def style_loss_from_grams(
    grams_a: Sequence[torch.Tensor],
    grams_b: Sequence[torch.Tensor],
    layer_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """``(B,)`` sum over layers of the weighted MSE between Gram matrices (``grams_b`` may have batch 1)."""
    if len(grams_a) != len(grams_b) or not grams_a:
        raise ValueError(f"need the same, non-zero number of layers, got {len(grams_a)} and {len(grams_b)}")
    weights = [1.0] * len(grams_a) if layer_weights is None else list(layer_weights)
    if len(weights) != len(grams_a):
        raise ValueError(f"got {len(weights)} layer weights for {len(grams_a)} layers")
    total: torch.Tensor | None = None
    for layer, (ga, gb, w) in enumerate(zip(grams_a, grams_b, weights, strict=True)):
        if ga.shape[1:] != gb.shape[1:]:
            raise ValueError(f"layer {layer}: Gram shapes {tuple(ga.shape)} and {tuple(gb.shape)} differ")
        term = w * (ga - gb).pow(2).mean((1, 2))
        total = term if total is None else total + term
    assert total is not None
    return total


def content_loss_from_features(feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
    """``(B,)`` MSE between two feature maps of one layer (``feat_b`` may have batch 1)."""
    fa, fb = as_maps(feat_a).float(), as_maps(feat_b).float()
    if fa.shape[1:] != fb.shape[1:]:
        raise ValueError(f"feature shapes {tuple(fa.shape)} and {tuple(fb.shape)} differ")
    return (fa - fb).pow(2).flatten(1).mean(1)


class GramStyle:
    """Gatys et al.'s style loss (Gram matrices) and content loss (features) over a pluggable extractor.

    ``features`` maps [0, 1] images to a list of feature maps. ``style_layers`` indexes that list (None:
    every layer); ``content_layer`` picks the content loss's layer (default -2: for ResNet-50 the
    stride-16 stage, the counterpart of Gatys' conv4_2). Both losses are 0 for identical images; the
    style loss also accepts references of another size, the content loss does not.
    """

    def __init__(
        self,
        features: FeatureFn,
        *,
        style_layers: Sequence[int] | None = None,
        content_layer: int = -2,
        layer_weights: Sequence[float] | None = None,
        device: torch.device | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = check_batch_size(batch_size)
        if isinstance(features, nn.Module):
            features = features.eval().requires_grad_(False).to(self.device)
        self.features = features
        self.style_layers = None if style_layers is None else tuple(style_layers)
        self.content_layer = content_layer
        self.layer_weights = None if layer_weights is None else tuple(layer_weights)
        if (
            self.layer_weights is not None
            and self.style_layers is not None
            and len(self.layer_weights) != len(self.style_layers)
        ):
            raise ValueError(
                f"got {len(self.layer_weights)} layer weights for {len(self.style_layers)} style layers"
            )

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_CNN,
        *,
        style_layers: Sequence[int] | None = None,
        content_layer: int = -2,
        layer_weights: Sequence[float] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = DEFAULT_BATCH_SIZE,
        local_files_only: bool = False,
    ) -> GramStyle:
        """Over the hidden states of a transformers CNN (``AutoModel``), e.g. ``microsoft/resnet-50``."""
        features = load_hf_features(source, device=device, dtype=dtype, local_files_only=local_files_only)
        return cls(
            features,
            style_layers=style_layers,
            content_layer=content_layer,
            layer_weights=layer_weights,
            device=device,
            batch_size=batch_size,
        )

    def _pick(self, feats: Sequence[torch.Tensor], layers: Sequence[int]) -> list[torch.Tensor]:
        try:
            return [feats[i] for i in layers]
        except IndexError:
            raise ValueError(
                f"layers {tuple(layers)} out of range: the extractor returns {len(feats)}"
            ) from None

    def _grams(self, img: torch.Tensor) -> list[torch.Tensor]:
        feats = list(self.features(img.to(self.device)))
        layers = range(len(feats)) if self.style_layers is None else self.style_layers
        return [gram_matrix(f) for f in self._pick(feats, layers)]

    def _content(self, img: torch.Tensor) -> torch.Tensor:
        return self._pick(list(self.features(img.to(self.device))), [self.content_layer])[0]

    def style_loss(self, img_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> torch.Tensor:
        """Gram style loss of each image to its reference, ``(B,)``; one reference may serve all."""
        img_B3HW = check_images(img_B3HW)
        ref_B3HW = check_refs(img_B3HW, ref_B3HW, same_size=False)
        out = []
        with torch.inference_mode():
            # one shared reference: its Grams once, broadcast against every chunk
            shared = self._grams(ref_B3HW) if len(ref_B3HW) == 1 else None
            for rows in chunks(len(img_B3HW), self.batch_size):
                ga = self._grams(img_B3HW[rows])
                gb = shared if shared is not None else self._grams(ref_B3HW[rows])
                out.append(style_loss_from_grams(ga, gb, self.layer_weights))
        return finish(torch.cat(out))

    def content_loss(self, img_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> torch.Tensor:
        """Feature MSE at ``content_layer`` of each image to its reference, ``(B,)``; same sizes needed."""
        img_B3HW = check_images(img_B3HW)
        ref_B3HW = check_refs(img_B3HW, ref_B3HW, same_size=True)
        out = []
        with torch.inference_mode():
            shared = self._content(ref_B3HW) if len(ref_B3HW) == 1 else None
            for rows in chunks(len(img_B3HW), self.batch_size):
                fa = self._content(img_B3HW[rows])
                fb = shared if shared is not None else self._content(ref_B3HW[rows])
                out.append(content_loss_from_features(fa, fb))
        return finish(torch.cat(out))
