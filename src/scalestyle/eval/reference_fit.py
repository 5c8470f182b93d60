"""How far a reference image lies from the procedural world that a demo model was trained on.

A demo model knows only the world's styles (`scalestyle.data.procedural`); a photograph or a painting of
one's own is far outside it, and the model then gives a blob in some world colour. To say so instead of
leaving the user to guess, the reference is scored by its Mahalanobis distance in the style judge's pooled
features (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks": one mean per class, one shared covariance): the judge's softmax confidence cannot
do it, since it is above 0.9 on photographs too, and neither can the VAE's reconstruction error, which is
larger on the world's own held-out styles than on photographs (both measured: docs/demo_v2.md §4).

The statistics are fitted on renders of the classifier split (the judge's own training split) and the
threshold is the largest distance over renders of the evaluation split, every style held out or not:
a reference above it is further from the world than any of the world's own images that were measured.
They are saved beside the judges as ``reference_fit.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier, judge_batch
from scalestyle.pipeline import bundled_references_dir

FILE_NAME = "reference_fit.safetensors"
# the covariance of 256 pooled features from a few thousand renders is close to singular in places
_RIDGE = 1e-3


@dataclass(frozen=True)
class ReferenceVerdict:
    """One reference: its distance to the nearest world style and whether that exceeds the threshold."""

    distance: float
    nearest_style: str
    threshold: float

    @property
    def outside(self) -> bool:
        return self.distance > self.threshold

    @property
    def held_out(self) -> bool:
        return self.nearest_style in world.HELD_OUT_STYLES

    def message(self, name: str) -> str:
        """One line for the CLI and the UI."""
        if self.outside:
            return (
                f"{name} is far outside the demo model's world (distance {self.distance:.1f}; the world's "
                f"own images reach {self.threshold:.1f}): the demo knows only the procedural world's styles, "
                f"so expect a weak transfer (the references in {bundled_references_dir()} are in its world)"
            )
        seen = "held out: never trained on" if self.held_out else "trained on"
        return (
            f"{name} is in the demo model's world: nearest style {self.nearest_style!r} ({seen}; distance "
            f"{self.distance:.1f}, the world's own images reach {self.threshold:.1f})"
        )


def _features(judge: WorldClassifier, images: Sequence[Image.Image]) -> torch.Tensor:
    """The judge head's input (B, 2C) in float64."""
    batch = judge_batch(images)
    with torch.no_grad():
        return judge.pooled(batch).double()


@dataclass(frozen=True)
class ReferenceFit:
    """Per-style means ``means_SF``, shared precision ``precision_FF`` and the threshold, for ``judge``."""

    judge: WorldClassifier
    means_SF: torch.Tensor
    precision_FF: torch.Tensor
    threshold: float

    def __post_init__(self) -> None:
        if self.means_SF.shape[0] != len(self.judge.labels):
            raise ValueError(
                f"{self.means_SF.shape[0]} style means for a judge of {len(self.judge.labels)} styles"
            )
        if self.threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")

    def distances(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, list[str]]:
        """Distance of each image to its nearest style mean (B,), and that style's name."""
        d_BSF = _features(self.judge, images)[:, None, :] - self.means_SF[None]
        d2_BS = torch.einsum("bsf,fg,bsg->bs", d_BSF, self.precision_FF, d_BSF)
        best_B, idx_B = d2_BS.min(dim=1)
        return best_B.clamp_min(0).sqrt(), [self.judge.labels[i] for i in idx_B.tolist()]

    def check(self, image: Image.Image) -> ReferenceVerdict:
        dist, nearest = self.distances([image])
        return ReferenceVerdict(float(dist[0]), nearest[0], self.threshold)

    def save(self, path: Path) -> None:
        save_file(
            {"means_SF": self.means_SF.contiguous(), "precision_FF": self.precision_FF.contiguous()},
            str(path),
            metadata={"threshold": repr(self.threshold), "labels": json.dumps(list(self.judge.labels))},
        )

    @classmethod
    def load(cls, path: Path, judge: WorldClassifier) -> ReferenceFit:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        if json.loads(meta.get("labels", "[]")) != list(judge.labels):
            raise ValueError(f"{path} was fitted for other styles than the judge's {len(judge.labels)}")
        return cls(judge, tensors["means_SF"], tensors["precision_FF"], float(meta["threshold"]))

    @classmethod
    def for_model(cls, model_dir: Path) -> ReferenceFit | None:
        """The fit shipped in a world model's folder, or None for a model of other images."""
        path, judge_path = model_dir / FILE_NAME, model_dir / "style_classifier.safetensors"
        if not path.is_file() or not judge_path.is_file():
            return None
        return cls.load(path, WorldClassifier.load(judge_path))


def _renders(split: str, per_style: int, size: int) -> tuple[list[Image.Image], list[int]]:
    seeds = world.SPLIT_SEEDS[split]
    images, labels = [], []
    for s, style in enumerate(world.STYLES):
        for k in range(per_style):
            content = world.CONTENTS[k % len(world.CONTENTS)]
            images.append(world.render(content, style, seeds[0] + s * per_style + k, size).image)
            labels.append(s)
    return images, labels


def fit_reference_fit(judge: WorldClassifier, per_style: int = 48, size: int = 64) -> ReferenceFit:
    """Fit the statistics on ``per_style`` classifier-split renders a style, the threshold on as many
    evaluation-split renders (the largest distance among them)."""
    if list(judge.labels) != list(world.STYLES):
        raise ValueError(
            "the reference fit needs the world's style judge (its labels are the world's styles)"
        )
    if per_style < 2:
        raise ValueError(f"per_style must be >= 2, got {per_style}")
    images, labels = _renders("classifier", per_style, size)
    feats_NF, lab_N = _features(judge, images), torch.tensor(labels)
    means_SF = torch.stack([feats_NF[lab_N == s].mean(0) for s in range(len(world.STYLES))])
    centred_NF = feats_NF - means_SF[lab_N]
    cov_FF = centred_NF.T @ centred_NF / len(centred_NF)
    precision_FF = torch.linalg.inv(cov_FF + _RIDGE * torch.eye(cov_FF.shape[0], dtype=cov_FF.dtype))
    # any positive placeholder: the threshold is measured with these very statistics just below
    probe = ReferenceFit(judge, means_SF, precision_FF, threshold=1.0)
    eval_images, _ = _renders("eval", per_style, size)
    dist, _ = probe.distances(eval_images)
    return ReferenceFit(judge, means_SF, precision_FF, float(dist.max()))
