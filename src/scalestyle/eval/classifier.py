"""Small CNN classifiers of the procedural world's content and style: the ground truth of the demo benchmark.

Both see 64x64 RGB images in [-1, 1]. The content classifier must ignore style and the style classifier
must ignore content; they are trained on renders of every content in every style (held-out styles
included: they are measuring instruments, not generators) and on VAE reconstructions of those renders,
so that they judge generated images by what they show rather than by the tokenizer's artefacts.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from scalestyle.data import procedural as world


def judge_batch(images: Sequence[Image.Image]) -> torch.Tensor:
    """The classifiers' input (B, 3, 64, 64) in [-1, 1]: each image in RGB, PIL bicubic to 64x64."""
    return torch.stack([world.to_tensor(im.convert("RGB").resize((64, 64))) for im in images])


class WorldClassifier(nn.Module):
    def __init__(self, labels: tuple[str, ...], width: int = 32) -> None:
        super().__init__()
        if len(labels) < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {labels}")
        self.labels, self.width = labels, width
        chans = (3, width, 2 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(chans):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.GroupNorm(8, c_out),
                nn.SiLU(),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * chans[-1], len(labels))

    def pooled(self, img_B3PP: torch.Tensor) -> torch.Tensor:
        """The head's input (B, 2C): the final features pooled by both mean and max, so that texture and
        shape both reach the head."""
        if img_B3PP.shape[-2:] != (64, 64):
            img_B3PP = F.interpolate(
                img_B3PP, size=(64, 64), mode="bilinear", antialias=True, align_corners=False
            )
        f = self.features(img_B3PP)
        return torch.cat((f.mean(dim=(2, 3)), f.amax(dim=(2, 3))), dim=1)

    def forward(self, img_B3PP: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes)."""
        return self.head(self.pooled(img_B3PP))

    @torch.no_grad()
    def predict(self, img_B3PP: torch.Tensor) -> list[str]:
        return [self.labels[i] for i in self(img_B3PP).argmax(1).tolist()]

    def save(self, path: Path) -> None:
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()},
            str(path),
            metadata={"labels": json.dumps(list(self.labels)), "width": str(self.width)},
        )

    @classmethod
    def load(cls, path: Path) -> WorldClassifier:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "labels" not in meta:
            raise ValueError(f"{path} is not a scalestyle classifier (no labels in its metadata)")
        # files written before the width was recorded all used the default width
        model = cls(tuple(json.loads(meta["labels"])), int(meta.get("width", 32)))
        model.load_state_dict(load_file(str(path)))
        return model.eval()
