"""Pluggable feature extractors for the spatial metrics (LPIPS, Gram style and content losses).

A feature extractor is any ``FeatureFn``: ``img_B3HW`` in [0, 1] -> a list of feature maps. The one here
wraps a transformers vision model (a CNN such as ``microsoft/resnet-50``, or a ViT, whose tokens become
spatial positions) and returns its hidden states.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalestyle.metrics._common import as_maps, dtype_kwarg, load_pretrained, resolve_device

DEFAULT_CNN = "microsoft/resnet-50"
"""ImageNet ResNet-50: a pretrained CNN for Gram-matrix style statistics, as Gatys et al. used VGG."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HFFeatures(nn.Module):
    """Hidden states of a transformers vision model (``output_hidden_states=True``) as a ``FeatureFn``.

    The input is normalised with the checkpoint's ``image_mean``/``image_std`` and fed at its own
    resolution (no resize: LPIPS and Gram statistics are computed at the images' size). ``layers`` picks
    hidden states by index (None: all; for transformers' ResNet the stem output and each stage's output).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError(f"image_mean and image_std need 3 values, got {image_mean} and {image_std}")
        self.model = model.eval().requires_grad_(False)
        # annotated so that mypy reads the buffers as tensors, not as nn.Module attributes
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1))
        self.layers = None if layers is None else tuple(layers)

    def forward(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        param = next(self.model.parameters())
        pixels = ((img_B3HW.float() - self.mean) / self.std).to(device=param.device, dtype=param.dtype)
        hidden = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        if self.layers is None:
            chosen = list(hidden)
        else:
            try:
                chosen = [hidden[i] for i in self.layers]
            except IndexError:
                raise ValueError(
                    f"layers {self.layers} out of range: the model returns {len(hidden)} hidden states"
                ) from None
        return [as_maps(h) for h in chosen]


def load_hf_features(
    source: str | Path = DEFAULT_CNN,
    *,
    layers: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    local_files_only: bool = False,
) -> HFFeatures:
    """``AutoModel`` from a local directory or a hub id, normalised as its image processor says.

    A checkpoint without an image processor config is normalised with ImageNet mean/std.
    """
    from transformers import AutoImageProcessor, AutoModel

    def load(src: Path | str, local: bool) -> tuple[Any, Any]:
        model = AutoModel.from_pretrained(src, local_files_only=local, **dtype_kwarg(dtype))
        try:
            processor = AutoImageProcessor.from_pretrained(src, local_files_only=local)
        except (OSError, ValueError):
            # no preprocessor_config.json: the checkpoint then says nothing about normalisation
            processor = None
        return model, processor

    model, processor = load_pretrained(load, source, local_files_only=local_files_only, what="vision model")
    mean = getattr(processor, "image_mean", None) or IMAGENET_MEAN
    std = getattr(processor, "image_std", None) or IMAGENET_STD
    return HFFeatures(model, image_mean=mean, image_std=std, layers=layers).to(resolve_device(device))
