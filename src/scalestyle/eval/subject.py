"""Subject fidelity on the procedural world (proxy-tuning, issue 18): does a generated image show the
subject's shape, and the prompt's style?

- :func:`object_mask`: the drawn object's mask, by two-means clustering of the pixels' colours (the
  cluster that holds most of the image border is the background), holes filled, largest component
  kept. It knows nothing of the world's styles; on the world's own renders it is measured against the
  true masks (:func:`mask_iou`, the teacher rows of the table), which says how far to trust it per style.
- :func:`shape_iou`: IoU of a mask with a shape's true masks, pose removed: both are cropped to their
  bounding box, centred in a square and resized to 32 x 32, and the best IoU over 24 posed renders of the
  shape (its rotations and mirrors) counts. ``shape_iou(mask, "hexstar")`` against
  ``shape_iou(mask, "star")`` tells the subject from its class.
- :func:`nearest_shape`: which of the subject and every world content a mask matches best (pose-free
  IoU); the subject rate counts images whose nearest shape is the subject. A blob is nearer the circle
  than the hexstar, so this is stricter than comparing the subject with its class alone.
- :func:`train_shape_judge`: a second instrument, the content judge's network trained the same way (the
  world's classifier split, a quarter of each batch through the model's VAE so that its blur is seen) on
  the contents and the subjects. Where the colour clustering loses a blurry silhouette, a judge that has
  seen the tokenizer's renderings still reads it; the table reports both, and the base model's rate on
  the class word (its own known shape) as the ceiling of either.
- Prompt fidelity: the bundled style classifier (:class:`scalestyle.eval.world.Judges`) reads the style.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage

from scalestyle.data import procedural as world

if TYPE_CHECKING:
    from scalestyle.eval.classifier import WorldClassifier
    from scalestyle.models.bsq_vae import BSQVAE
    from scalestyle.schedules import Schedule

NORM_SIDE = 32
REFERENCE_POSES = 24


def object_mask(image: Image.Image, *, iterations: int = 10) -> np.ndarray:
    """Bool (H, W): the object of a one-object image (see the module docstring)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    h, w, _ = rgb.shape
    pixels = rgb.reshape(-1, 3)
    border = np.zeros((h, w), dtype=bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    bg = np.median(rgb[border], axis=0)
    far = pixels[np.argmax(((pixels - bg) ** 2).sum(1))]
    centres = np.stack([bg, far])
    for _ in range(iterations):
        labels = ((pixels[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for k in range(2):
            if (labels == k).any():
                centres[k] = pixels[labels == k].mean(0)
    labels_HW = labels.reshape(h, w)
    bg_label = int(np.bincount(labels_HW[border], minlength=2).argmax())
    fg = ndimage.binary_fill_holes(labels_HW != bg_label)
    parts, n = ndimage.label(fg)
    if n == 0:
        return np.zeros((h, w), dtype=bool)
    sizes = np.bincount(parts.ravel())[1:]
    return np.asarray(parts == 1 + int(sizes.argmax()))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def normalized(mask: np.ndarray, side: int = NORM_SIDE) -> np.ndarray:
    """The mask's bounding box, centred in a square, at ``side`` x ``side`` (bool); empty stays empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((side, side), dtype=bool)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    n = max(crop.shape)
    square = np.zeros((n, n), dtype=np.uint8)
    oy, ox = (n - crop.shape[0]) // 2, (n - crop.shape[1]) // 2
    square[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop * 255
    small = Image.fromarray(square).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(small) >= 128


@cache
def _references(shape: str) -> tuple[np.ndarray, ...]:
    """Normalised true masks of ``shape`` (a subject or a content) in :data:`REFERENCE_POSES` poses."""
    seeds = world.SPLIT_SEEDS["classifier"]
    render = world.render_subject if shape in world.SUBJECTS else world.render
    return tuple(
        normalized(render(shape, world.NEUTRAL_STYLE, seeds[i], 128).mask) for i in range(REFERENCE_POSES)
    )


def shape_iou(mask: np.ndarray, shape: str) -> float:
    """The best IoU of the normalised ``mask`` with ``shape``'s normalised posed masks."""
    m = normalized(mask)
    return max(mask_iou(m, ref) for ref in _references(shape))


def nearest_shape(mask: np.ndarray, subject: str) -> str:
    """The best-matching shape among ``subject`` and :data:`~scalestyle.data.procedural.CONTENTS`."""
    shapes = (subject, *world.CONTENTS)
    ious = [shape_iou(mask, s) for s in shapes]
    return shapes[int(np.argmax(ious))]


@dataclass(frozen=True)
class SubjectScore:
    """One image's scores: IoU with the subject and with its class (pose removed), the nearest shape of
    the subject and the contents, the style read."""

    iou_subject: float
    iou_class: float
    nearest: str
    pred_style: str
    p_style: float

    @property
    def is_subject(self) -> bool:
        return self.nearest == self.subject_name

    subject_name: str = ""
    judged: str = ""
    """The shape judge's reading (empty without one)."""


SHAPE_JUDGE_FILE = "shape_classifier.safetensors"


def train_shape_judge(
    vae: BSQVAE, schedule: Schedule, out_dir: Path, *, steps: int = 400, seed: int = 0
) -> WorldClassifier:
    """The shape judge (contents and subjects) in ``out_dir``: loaded when there, else trained (the
    content judge's recipe, :func:`scalestyle.train.classifiers.train_classifiers`) and saved."""
    from scalestyle.eval.classifier import WorldClassifier
    from scalestyle.train.classifiers import ClassifierTrainConfig, train_classifiers

    path = out_dir / SHAPE_JUDGE_FILE
    if path.is_file():
        return WorldClassifier.load(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = ClassifierTrainConfig(steps=steps, batch_size=32, recon_fraction=0.25, seed=seed)
    judge, _ = train_classifiers(
        cfg, out_dir, vae=vae, schedule=schedule, progress=False, shapes=world.CONTENTS + world.SUBJECTS
    )
    judge.save(path)
    return judge


def score_images(
    images: Sequence[Image.Image],
    subject: str,
    styles: Sequence[str],
    judges: object,
    shape_judge: WorldClassifier | None = None,
) -> list[SubjectScore]:
    """Scores of ``images`` asked to show ``subject`` in ``styles`` (one a image), read by ``judges``
    (:class:`scalestyle.eval.world.Judges`) and, when given, the shape judge (:func:`train_shape_judge`)."""
    import torch

    from scalestyle.eval.classifier import judge_batch
    from scalestyle.eval.world import Judges

    if not isinstance(judges, Judges):
        raise TypeError("judges must be scalestyle.eval.world.Judges")
    if len(images) != len(styles):
        raise ValueError(f"{len(images)} images but {len(styles)} styles")
    _, pred, probs = judges.judge(images)
    judged = [""] * len(images)
    if shape_judge is not None:
        with torch.no_grad():
            batch = judge_batch(images)
            judged = shape_judge.predict(batch)
    cls = world.SUBJECT_CLASSES[subject]
    out = []
    for i, (image, style) in enumerate(zip(images, styles, strict=True)):
        mask = object_mask(image)
        out.append(
            SubjectScore(
                shape_iou(mask, subject),
                shape_iou(mask, cls),
                nearest_shape(mask, subject),
                pred[i],
                float(probs[i, world.STYLES.index(style)]),
                subject,
                judged[i],
            )
        )
    return out
