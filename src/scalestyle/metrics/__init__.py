"""Image metrics for style-personalised generation: text alignment, style/content similarity, fidelity.

Every metric takes images as ``img_B3HW`` float tensors in [0, 1] (:func:`pil_to_batch` converts PIL
images) and returns one value per image as a float32 CPU tensor ``(B,)``. Paired metrics take references
``ref_B3HW`` with one image per generated image, or a single image shared by all of them. Work runs in
chunks of ``batch_size`` under ``torch.inference_mode``; models run on ``device`` (None: CUDA when present).
Models load from a local directory (never touching the network) or a hub id; transformers is imported
only when a model is loaded.

=============  ==========================================  ===========================  ===============
key            what                                        class / function             better
=============  ==========================================  ===========================  ===============
clip_t         image-prompt cosine, CLIP [1]               :class:`CLIPScorer.clip_t`   higher
clip_i         image-reference cosine, CLIP [1]            :class:`CLIPScorer.clip_i`   higher
dino           image-reference cosine of CLS, DINO [2, 3]  :class:`DINOScorer`          higher
lpips          learned perceptual distance [4]             :class:`LPIPS`, load_lpips   lower
dreamsim       DreamSim distance [7] (optional package)    :class:`DreamSim`            lower
ssim           structural similarity [5]                   :func:`ssim`                 higher (max 1)
gram_style     Gram-matrix style loss [6]                  :class:`GramStyle`           lower
content        feature content loss [6]                    :class:`GramStyle`           lower
=============  ==========================================  ===========================  ===============

CLIP scores are cosine similarities; papers often print 100 x cosine.

[1] Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision" (CLIP).
[2] Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (DINO).
[3] Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision".
[4] Zhang, Isola, Efros, Shechtman & Wang 2018, "The Unreasonable Effectiveness of Deep Features as a
    Perceptual Metric" (LPIPS).
[5] Wang, Bovik, Sheikh & Simoncelli 2004, "Image Quality Assessment: From Error Visibility to
    Structural Similarity" (SSIM).
[6] Gatys, Ecker & Bethge 2016, "Image Style Transfer Using Convolutional Neural Networks".
[7] Fu, Tamir, Sundaram, Chai, Zhang, Dekel & Isola 2023, "DreamSim: Learning New Dimensions of Human
    Visual Similarity using Synthetic Data".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scalestyle.metrics._common import FeatureFn, PairedMetric, check_images, pil_to_batch
from scalestyle.metrics.embedding import DEFAULT_CLIP, DEFAULT_DINO, CLIPScorer, DINOScorer, DreamSim
from scalestyle.metrics.features import DEFAULT_CNN, HFFeatures, load_hf_features
from scalestyle.metrics.gram import (
    GramStyle,
    content_loss_from_features,
    gram_matrix,
    style_loss_from_grams,
)
from scalestyle.metrics.perceptual import LPIPS, LPIPSPackage, load_lpips, lpips_from_features
from scalestyle.metrics.ssim import SSIMChannels, ssim

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_CNN",
    "DEFAULT_DINO",
    "LPIPS",
    "CLIPScorer",
    "DINOScorer",
    "DreamSim",
    "FeatureFn",
    "GramStyle",
    "HFFeatures",
    "LPIPSPackage",
    "PairedMetric",
    "SSIMChannels",
    "content_loss_from_features",
    "evaluate",
    "gram_matrix",
    "load_hf_features",
    "load_lpips",
    "lpips_from_features",
    "pil_to_batch",
    "ssim",
    "style_loss_from_grams",
]


def evaluate(
    img_B3HW: torch.Tensor,
    *,
    ref_B3HW: torch.Tensor | None = None,
    prompts: Sequence[str] | None = None,
    clip: CLIPScorer | None = None,
    dino: DINOScorer | None = None,
    lpips: LPIPS | LPIPSPackage | None = None,
    dreamsim: DreamSim | None = None,
    gram: GramStyle | None = None,
    ssim_channels: SSIMChannels | None = None,
) -> dict[str, list[float]]:
    """Every metric whose model (and inputs) are given, as ``{key: one value per image}``.

    Keys as in the module docstring: ``clip_t`` (``clip`` and ``prompts``), ``clip_i`` (``clip`` and
    ``ref_B3HW``), ``dino``, ``lpips``, ``dreamsim``, ``gram_style`` and ``content`` (``gram``; content
    only when sizes match), ``ssim`` (``ssim_channels`` set; sizes must match).
    """
    img_B3HW = check_images(img_B3HW)
    paired = {"dino": dino, "lpips": lpips, "dreamsim": dreamsim, "gram": gram, "ssim": ssim_channels}
    if ref_B3HW is None and any(v is not None for v in paired.values()):
        needed = sorted(k for k, v in paired.items() if v is not None)
        raise ValueError(f"metrics {needed} compare with references: pass ref_B3HW")
    if prompts is not None and clip is None:
        raise ValueError("prompts are scored by CLIP-T: pass clip")
    results: dict[str, torch.Tensor] = {}
    if clip is not None and prompts is not None:
        results["clip_t"] = clip.clip_t(img_B3HW, prompts)
    if ref_B3HW is not None:
        if clip is not None:
            results["clip_i"] = clip.clip_i(img_B3HW, ref_B3HW)
        if dino is not None:
            results["dino"] = dino.similarity(img_B3HW, ref_B3HW)
        if lpips is not None:
            results["lpips"] = lpips(img_B3HW, ref_B3HW)
        if dreamsim is not None:
            results["dreamsim"] = dreamsim(img_B3HW, ref_B3HW)
        if gram is not None:
            results["gram_style"] = gram.style_loss(img_B3HW, ref_B3HW)
            if img_B3HW.shape[2:] == ref_B3HW.shape[2:]:
                results["content"] = gram.content_loss(img_B3HW, ref_B3HW)
        if ssim_channels is not None:
            results["ssim"] = ssim(img_B3HW, ref_B3HW, channels=ssim_channels)
    return {k: v.tolist() for k, v in results.items()}
