"""LPIPS (Zhang et al. 2018) over a pluggable backbone, or through the ``lpips`` package when installed.

The formula, for images x, y and backbone layers l with feature maps f_l of C_l channels:

    d(x, y) = sum_l  mean_{h,w}  sum_c  w_{l,c} * (u_l(x)_{c,h,w} - u_l(y)_{c,h,w})^2

where u_l = f_l / (||f_l||_2 over channels + 1e-10) normalises each position's feature vector to unit
length and w_l >= 0 are the learned per-channel weights (the package's 1x1 "lin" layers). With w = 1 (the
package's ``lpips=False`` baseline) each layer contributes a value in [0, 4].

Only the ``lpips`` package with its calibrated weights gives numbers comparable to published LPIPS. The
fallback here (uniform weights over a transformers model's hidden states) is the same formula over other
features: fine for ranking within one study, not comparable across papers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

LPIPS_NETS = ("alex", "vgg", "squeeze")
_EPS = 1e-10  # as lpips.normalize_tensor


def unit_normalize(feat_BCHW: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Each spatial position's channel vector divided by its L2 norm (+ eps, so zero vectors stay zero)."""
    return feat_BCHW / (feat_BCHW.pow(2).sum(1, keepdim=True).sqrt() + eps)


def lpips_from_features(
    feats_a: Sequence[torch.Tensor],
    feats_b: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """LPIPS distance ``(B,)`` from the two images' per-layer features (see the module docstring).

    ``feats_b`` may have batch 1 (one reference for all). ``weights[l]`` has shape ``(C_l,)``, non-negative;
    None means 1 for every channel. Computed in float32 whatever the features' dtype.
    """
    if len(feats_a) != len(feats_b) or not feats_a:
        raise ValueError(f"need the same, non-zero number of layers, got {len(feats_a)} and {len(feats_b)}")
    if weights is not None and len(weights) != len(feats_a):
        raise ValueError(f"got {len(weights)} weight vectors for {len(feats_a)} layers")
    total: torch.Tensor | None = None
    for layer, (fa, fb) in enumerate(zip(feats_a, feats_b, strict=True)):
        fa, fb = as_maps(fa).float(), as_maps(fb).float()
        if fa.shape[1:] != fb.shape[1:]:
            raise ValueError(f"layer {layer}: feature shapes {tuple(fa.shape)} and {tuple(fb.shape)} differ")
        diff = (unit_normalize(fa) - unit_normalize(fb)).pow(2)
        if weights is None:
            per_position = diff.sum(1)
        else:
            w = weights[layer].to(device=diff.device, dtype=diff.dtype).flatten()
            if w.numel() != diff.shape[1]:
                raise ValueError(f"layer {layer}: {w.numel()} weights for {diff.shape[1]} channels")
            per_position = torch.einsum("bchw,c->bhw", diff, w)
        term = per_position.mean((1, 2))
        total = term if total is None else total + term
    assert total is not None
    return total


class LPIPS:
    """LPIPS's formula over any backbone: ``LPIPS(features, weights)(img_B3HW, ref_B3HW) -> (B,)``.

    Lower is more similar; exactly 0 for identical images, symmetric in its two arguments. Images and
    references must have the same size; one reference may serve all images.
    """

    def __init__(
        self,
        features: FeatureFn,
        *,
        weights: Sequence[torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        name: str = "lpips",
    ) -> None:
        """``features`` maps [0, 1] images to per-layer maps (an ``nn.Module`` is moved to ``device``)."""
        self.device = resolve_device(device)
        self.batch_size = check_batch_size(batch_size)
        if weights is not None and any(bool((w < 0).any()) for w in weights):
            # negative weights would let the "distance" go below 0 and break d(x, x) = min
            raise ValueError("LPIPS weights must be non-negative")
        self.weights = None if weights is None else [w.detach().float().to(self.device) for w in weights]
        if isinstance(features, nn.Module):
            features = features.eval().requires_grad_(False).to(self.device)
        self.features = features
        self.name = name

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_CNN,
        *,
        layers: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = DEFAULT_BATCH_SIZE,
        local_files_only: bool = False,
    ) -> LPIPS:
        """Uniform-weight LPIPS over a transformers vision model's hidden states (see module docstring)."""
        features = load_hf_features(
            source, layers=layers, device=device, dtype=dtype, local_files_only=local_files_only
        )
        return cls(features, device=device, batch_size=batch_size, name=f"lpips-uniform[{source}]")

    def __call__(self, img_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> torch.Tensor:
        img_B3HW = check_images(img_B3HW)
        ref_B3HW = check_refs(img_B3HW, ref_B3HW, same_size=True)
        out = []
        with torch.inference_mode():
            # one shared reference: its features once, broadcast against every chunk
            shared = list(self.features(ref_B3HW.to(self.device))) if len(ref_B3HW) == 1 else None
            for rows in chunks(len(img_B3HW), self.batch_size):
                fa = list(self.features(img_B3HW[rows].to(self.device)))
                fb = shared if shared is not None else list(self.features(ref_B3HW[rows].to(self.device)))
                out.append(lpips_from_features(fa, fb, self.weights))
        return finish(torch.cat(out))


class LPIPSPackage:
    """The ``lpips`` package's calibrated LPIPS (``lpips.LPIPS(net=...)``), same call as :class:`LPIPS`.

    Its backbone weights come from torchvision's model zoo, downloaded on first use.
    """

    def __init__(
        self,
        model: Any,
        *,
        device: torch.device | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        name: str = "lpips",
    ) -> None:
        """``model(in0, in1, normalize=True) -> (B, 1, 1, 1)`` on [0, 1] images, as ``lpips.LPIPS``."""
        self.device = resolve_device(device)
        self.batch_size = check_batch_size(batch_size)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.name = name

    @classmethod
    def from_net(
        cls,
        net: str = "alex",
        *,
        device: torch.device | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> LPIPSPackage:
        if net not in LPIPS_NETS:
            raise ValueError(f"net must be one of {LPIPS_NETS}, got {net!r}")
        import lpips

        return cls(
            lpips.LPIPS(net=net, verbose=False), device=device, batch_size=batch_size, name=f"lpips-{net}"
        )

    def __call__(self, img_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> torch.Tensor:
        img_B3HW = check_images(img_B3HW)
        ref_B3HW = check_refs(img_B3HW, ref_B3HW, same_size=True)
        out = []
        with torch.inference_mode():
            ref = ref_B3HW.to(self.device)
            for rows in chunks(len(img_B3HW), self.batch_size):
                a = img_B3HW[rows].to(self.device)
                b = ref.expand(len(a), -1, -1, -1) if len(ref) == 1 else ref[rows]
                # normalize=True: the package maps [0, 1] to the [-1, 1] it was trained on
                out.append(self.model(a, b, normalize=True).reshape(len(a)).float())
        return finish(torch.cat(out))


def load_lpips(
    net: str = "alex",
    *,
    fallback_source: str | Path | None = DEFAULT_CNN,
    device: torch.device | str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    local_files_only: bool = False,
) -> LPIPS | LPIPSPackage:
    """Calibrated LPIPS from the ``lpips`` package when it is installed; otherwise, with a warning, the
    uniform-weight formula over ``fallback_source``'s hidden states (None: raise ImportError instead).

    The returned object's ``name`` records which one it is (``lpips-alex`` or ``lpips-uniform[...]``).
    """
    try:
        import lpips  # noqa: F401
    except ImportError:
        if fallback_source is None:
            raise ImportError(
                "calibrated LPIPS needs the optional `lpips` package (pip install lpips)"
            ) from None
        warnings.warn(
            f"the `lpips` package is not installed: LPIPS falls back to uniform weights over "
            f"{fallback_source} features, which is not comparable to published LPIPS values",
            stacklevel=2,
        )
        return LPIPS.from_pretrained(
            fallback_source, device=device, batch_size=batch_size, local_files_only=local_files_only
        )
    return LPIPSPackage.from_net(net, device=device, batch_size=batch_size)
