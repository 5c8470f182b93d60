"""Rewards for StyleVAR's GRPO: one score per generated image, higher is better.

Every reward is a :data:`Reward`: it takes the generated images and the triplet that asked for them
(target, content, style), all ``(B, 3, P, P)`` in [-1, 1] as the models see them, and returns ``(B,)``
float32 rewards. Three are here:

- :class:`DreamSimReward`, the authors' (Senfier-LiqiJing/StyleVAR `train/train_grpo.py::DreamSimReward`,
  research note wave2_methods.md §1.6): ``-5 DreamSim(x, target)`` with DreamSim ``dino_vitb16`` on [0, 1]
  images bilinearly resized to 224. It needs the optional ``dreamsim`` package and its weights.
- :class:`PerceptualTargetReward`, which needs no download: SSIM to the ground-truth target
  (:func:`scalestyle.metrics.ssim`) minus the mean squared pixel error to it.
- :class:`WorldJudgeReward`, for the procedural world: the style classifier's probability of the style
  reference's style plus the content classifier's probability of the content image's content
  (:class:`scalestyle.eval.world.Judges`, the demo model's classifiers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from scalestyle.eval.world import Judges
from scalestyle.metrics import ssim

# the authors' reward scale: R = -5 DreamSim
DREAMSIM_SCALE = 5.0
DREAMSIM_SIZE = 224


# ``(pred, target, content, style) -> (B,)`` rewards, images ``(B, 3, P, P)`` in [-1, 1]; a plain function
# of the four will do, so this is no class
Reward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class RewardImages(NamedTuple):
    """One call's images, ``(B, 3, P, P)`` in [-1, 1]: the generated ones and the triplet that asked for
    them."""

    pred_B3PP: torch.Tensor
    target_B3PP: torch.Tensor
    content_B3PP: torch.Tensor
    style_B3PP: torch.Tensor


class _NoGradReward(ABC):
    """The :data:`Reward` call of the rewards below: :meth:`score` of the four images, without autograd
    (a reward is a constant of the policy loss)."""

    @torch.no_grad()
    def __call__(
        self,
        pred_B3PP: torch.Tensor,
        target_B3PP: torch.Tensor,
        content_B3PP: torch.Tensor,
        style_B3PP: torch.Tensor,
    ) -> torch.Tensor:
        return self.score(RewardImages(pred_B3PP, target_B3PP, content_B3PP, style_B3PP))

    @abstractmethod
    def score(self, images: RewardImages) -> torch.Tensor:
        """``(B,)`` rewards of ``images.pred_B3PP``."""


def _check_weights(**weights: float) -> None:
    """The weights of a reward's two terms: each >= 0, not both 0."""
    (first, a), (second, b) = weights.items()
    if a < 0 or b < 0 or a + b == 0:
        raise ValueError(f"{first} and {second} must be >= 0, not both 0, got {a} and {b}")


def to_unit(img_B3PP: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (the range of the metrics and of DreamSim)."""
    return img_B3PP.float().add(1).mul(0.5).clamp(0, 1)


class DreamSimReward(_NoGradReward):
    """``-scale * DreamSim(pred, target)``; ``model(a, b) -> (B,)`` distances of [0, 1] images at
    ``image_size`` (DreamSim's own model, or a stand-in in tests)."""

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        scale: float = DREAMSIM_SCALE,
        image_size: int = DREAMSIM_SIZE,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.model, self.scale, self.image_size = model, scale, image_size

    @classmethod
    def from_pretrained(
        cls,
        dreamsim_type: str = "dino_vitb16",
        *,
        cache_dir: str | Path | None = None,
        device: torch.device | str | None = None,
        scale: float = DREAMSIM_SCALE,
    ) -> DreamSimReward:
        """The authors' DreamSim (``dino_vitb16``) through the ``dreamsim`` package (an ImportError naming
        the package when it is missing); its weights download on first use."""
        from scalestyle.metrics import DreamSim

        return cls(
            DreamSim.from_pretrained(dreamsim_type, cache_dir=cache_dir, device=device).model, scale=scale
        )

    def score(self, images: RewardImages) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        # the authors' resize: bilinear, no antialiasing
        a = F.interpolate(to_unit(images.pred_B3PP), size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(to_unit(images.target_B3PP), size=size, mode="bilinear", align_corners=False)
        return self.model(a, b).reshape(len(a)).float().mul(-self.scale)


class PerceptualTargetReward(_NoGradReward):
    """``ssim_weight * SSIM(pred, target) - l2_weight * mean((pred - target)^2)`` on [0, 1] pixels: a
    reward against the ground truth that needs no model."""

    def __init__(self, *, ssim_weight: float = 1.0, l2_weight: float = 1.0) -> None:
        _check_weights(ssim_weight=ssim_weight, l2_weight=l2_weight)
        self.ssim_weight, self.l2_weight = ssim_weight, l2_weight

    def score(self, images: RewardImages) -> torch.Tensor:
        pred, target = to_unit(images.pred_B3PP).cpu(), to_unit(images.target_B3PP).cpu()
        l2_B = (pred - target).square().mean(dim=(1, 2, 3))
        # ssim runs under inference_mode: clone into a plain tensor
        return (self.ssim_weight * ssim(pred, target).clone() - self.l2_weight * l2_B).float()


class WorldJudgeReward(_NoGradReward):
    """``style_weight * p_style(pred)[style of the reference] + content_weight * p_content(pred)[content of
    the content image]``: each reference's label is the classifier's reading of that reference, so the
    triplet needs no labels."""

    def __init__(self, judges: Judges, *, style_weight: float = 1.0, content_weight: float = 1.0) -> None:
        _check_weights(style_weight=style_weight, content_weight=content_weight)
        self.judges, self.style_weight, self.content_weight = judges, style_weight, content_weight

    @classmethod
    def load(cls, model_dir: str | Path) -> WorldJudgeReward:
        """The classifiers of a demo model folder (``content_classifier.safetensors``, ...)."""
        return cls(Judges.load(Path(model_dir)))

    def score(self, images: RewardImages) -> torch.Tensor:
        style, content = self.judges.style, self.judges.content
        pred = images.pred_B3PP.float().cpu()
        want_style = style(images.style_B3PP.float().cpu()).argmax(1, keepdim=True)
        want_content = content(images.content_B3PP.float().cpu()).argmax(1, keepdim=True)
        p_style = style(pred).softmax(1).gather(1, want_style)[:, 0]
        p_content = content(pred).softmax(1).gather(1, want_content)[:, 0]
        return self.style_weight * p_style + self.content_weight * p_content
