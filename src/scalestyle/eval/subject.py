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

Outside the world, with real CLIP and DINO weights (``scalestyle subject-eval``), DreamBooth's protocol
(Ruiz et al. 2023, Sec. 4.1): :func:`embedding_fidelity` scores a set of images by CLIP-I and DINO, the
mean cosine of each image with every real subject image, and CLIP-T, the cosine of each image with its
prompt read without the identifier; :func:`run_subject_eval` generates a prompt set with the base model
and with a subject adapter and scores both (and a teacher's images) so.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy import ndimage

from scalestyle.data import procedural as world

if TYPE_CHECKING:
    import torch

    from scalestyle.config import SamplingConfig
    from scalestyle.eval.classifier import WorldClassifier
    from scalestyle.metrics import CLIPScorer, DINOScorer
    from scalestyle.models.bsq_vae import BSQVAE
    from scalestyle.models.subject import SubjectAdapter
    from scalestyle.pipeline import Pipeline
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
    content judge's recipe, :func:`scalestyle.train.classifiers.train_shape_classifier`) and saved."""
    from scalestyle.eval.classifier import WorldClassifier
    from scalestyle.train.classifiers import ClassifierTrainConfig, train_shape_classifier

    path = out_dir / SHAPE_JUDGE_FILE
    if path.is_file():
        return WorldClassifier.load(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = ClassifierTrainConfig(steps=steps, batch_size=32, recon_fraction=0.25, seed=seed)
    judge = train_shape_classifier(
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


# ---- real weights: CLIP-I, DINO and CLIP-T, DreamBooth's protocol ---------------------------------------
SYSTEMS = ("real", "teacher", "base", "student")
"""The rows of :func:`run_subject_eval`: the subject images among themselves (the ceiling of CLIP-I and
DINO, DreamBooth's "real images" row), the teacher's images, the base model, the base with the adapter."""
RESULTS_FILE = "results.json"


def strip_identifiers(prompt: str, identifiers: Sequence[str]) -> str:
    """``prompt`` without the identifier words: ``"a <sks> dog on a beach"`` -> ``"a dog on a beach"``.

    CLIP knows the class word but not the made-up identifier, which would only add noise to CLIP-T;
    DreamBooth scores CLIP-T on the prompt without it. Whole words only (case-insensitive), so that an
    identifier such as ``sks`` leaves ``asks`` alone."""
    out = prompt
    for token in identifiers:
        out = re.sub(rf"(?<!\S){re.escape(token)}(?=[\s,.;:!?)]|$)", "", out, flags=re.IGNORECASE)
    return re.sub(r"\s+([,.;:!?)])", r"\1", " ".join(out.split()))


def _unit_embeddings(
    embed: Callable[[torch.Tensor], torch.Tensor], images: Sequence[Image.Image]
) -> torch.Tensor:
    """``embed`` of ``images`` in their order, ``(N, D)``; each image size is batched on its own, as
    :func:`~scalestyle.metrics.pil_to_batch` wants one size (the scorer's processor resizes anyway)."""
    import torch

    from scalestyle.metrics import pil_to_batch

    if not images:
        raise ValueError("no images given")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.size, []).append(i)
    rows: list[torch.Tensor | None] = [None] * len(images)
    for indices in groups.values():
        for i, vector in zip(indices, embed(pil_to_batch([images[i] for i in indices])), strict=True):
            rows[i] = vector
    return torch.stack([r for r in rows if r is not None])


def _reference_embeddings(
    subject_images: Sequence[Image.Image], clip: CLIPScorer | None, dino: DINOScorer | None
) -> dict[str, torch.Tensor]:
    """``"clip_i"`` / ``"dino"`` -> the subject images' unit embeddings ``(R, D)``, for the scorers given."""
    refs: dict[str, torch.Tensor] = {}
    if clip is not None:
        refs["clip_i"] = _unit_embeddings(clip.embed_images, subject_images)
    if dino is not None:
        refs["dino"] = _unit_embeddings(dino.embed, subject_images)
    return refs


def _fidelity(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    refs: Mapping[str, torch.Tensor],
    clip: CLIPScorer | None,
    dino: DINOScorer | None,
    identifiers: Sequence[str],
) -> dict[str, list[float]]:
    """:func:`per_image_fidelity` against the subject images' embeddings, computed once elsewhere."""
    out: dict[str, list[float]] = {}
    if clip is not None:
        emb = _unit_embeddings(clip.embed_images, images)
        # all pairs: clip.clip_i compares row with row (or with one shared reference)
        out["clip_i"] = (emb @ refs["clip_i"].T).mean(1).tolist()
        text = clip.embed_texts([strip_identifiers(p, identifiers) for p in prompts])
        out["clip_t"] = (emb * text).sum(-1).tolist()
    if dino is not None:
        emb = _unit_embeddings(dino.embed, images)
        out["dino"] = (emb @ refs["dino"].T).mean(1).tolist()
    return out


def _set_means(scores: Mapping[str, Sequence[float]], n: int) -> dict[str, float]:
    return {"n": n, **{k: float(np.mean(v)) for k, v in scores.items()}}


def per_image_fidelity(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    subject_images: Sequence[Image.Image],
    *,
    clip: CLIPScorer | None,
    dino: DINOScorer | None,
    identifiers: Sequence[str] = (),
) -> dict[str, list[float]]:
    """Each image's ``clip_i`` and ``dino`` (its mean cosine with every subject image) and ``clip_t`` (its
    cosine with its prompt, ``identifiers`` removed by :func:`strip_identifiers`); a metric whose scorer
    is None is left out. ``prompts``: one per image."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not subject_images:
        raise ValueError("no subject images given")
    refs = _reference_embeddings(subject_images, clip, dino)
    return _fidelity(images, prompts, refs, clip, dino, identifiers)


def embedding_fidelity(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    subject_images: Sequence[Image.Image],
    *,
    clip: CLIPScorer | None,
    dino: DINOScorer | None,
    identifiers: Sequence[str] = (),
) -> dict[str, float]:
    """The set's means of :func:`per_image_fidelity` (``clip_i``, ``clip_t``, ``dino``) and its size ``n``."""
    scores = per_image_fidelity(
        images, prompts, subject_images, clip=clip, dino=dino, identifiers=identifiers
    )
    return _set_means(scores, len(images))


def _self_similarity(refs: Mapping[str, torch.Tensor], n: int) -> dict[str, float]:
    """:func:`subject_self_similarity` from the subject images' embeddings."""
    out: dict[str, float] = {"n": n}
    if n < 2:
        return out
    for key, emb in refs.items():
        sims = emb @ emb.T
        out[key] = float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))
    return out


def subject_self_similarity(
    subject_images: Sequence[Image.Image], *, clip: CLIPScorer | None, dino: DINOScorer | None
) -> dict[str, float]:
    """CLIP-I and DINO of the subject images among themselves: the mean cosine over distinct pairs (each
    image's cosine of 1 with itself left out), what a generated set could reach; empty under 2 images."""
    if len(subject_images) < 2:
        return {"n": len(subject_images)}
    return _self_similarity(_reference_embeddings(subject_images, clip, dino), len(subject_images))


@dataclass(frozen=True)
class SubjectEvalConfig:
    """What :func:`run_subject_eval` generates: every prompt (``{subject}`` where the adapter's phrase goes,
    as in a teacher's captions) at every seed, with ``sampling``'s other settings (None: the defaults)."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    sampling: SamplingConfig | None = None
    extra: Mapping[str, object] = field(default_factory=dict, compare=False)
    """Recorded in ``results.json``'s config as given (the command's folders and model ids)."""

    def __post_init__(self) -> None:
        from scalestyle.models.subject import SUBJECT_PLACEHOLDER

        if not self.prompts:
            raise ValueError("no prompts given")
        missing = [p for p in self.prompts if SUBJECT_PLACEHOLDER not in p]
        if missing:
            raise ValueError(
                f"every prompt must hold {SUBJECT_PLACEHOLDER} where the subject goes: {missing[0]!r}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}")


def read_captioned(folder: str | Path) -> tuple[list[Image.Image], list[str]]:
    """The images of a captioned folder (a teacher folder: its ``images/``) and their captions
    (``metadata.jsonl`` or sidecar ``.txt``, as :func:`scalestyle.data.folder.scan_folder` reads them)."""
    from scalestyle.data.folder import scan_folder
    from scalestyle.images import load_image

    root = Path(folder)
    if (root / "images").is_dir():
        root = root / "images"
    items = scan_folder(root)
    return [load_image(item.path) for item in items], [item.caption for item in items]


def run_subject_eval(
    pipe: Pipeline,
    adapter: SubjectAdapter,
    cfg: SubjectEvalConfig,
    subject_images: Sequence[Image.Image],
    out_dir: str | Path,
    *,
    clip: CLIPScorer | None,
    dino: DINOScorer | None,
    teacher: tuple[Sequence[Image.Image], Sequence[str]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate ``cfg``'s prompts with the base model and with ``adapter`` folded in
    (:func:`~scalestyle.models.subject.subjects_applied`), save them as ``out_dir/{base,student}/*.png``
    with their metadata, score them and the ``teacher`` set ((images, captions with ``{subject}``)) by
    :func:`per_image_fidelity`, and write and return ``out_dir/results.json``: ``rows`` (system, n,
    clip_i, dino, clip_t; None where not measured), ``images`` (per-image scores), config, commit,
    machine. The base model reads the same prompts, the identifier an unknown word to it."""
    from dataclasses import replace

    from scalestyle.bench import machine_info
    from scalestyle.config import SamplingConfig
    from scalestyle.metadata import write_png
    from scalestyle.models.subject import SUBJECT_PLACEHOLDER, subjects_applied
    from scalestyle.records import source_commit

    if clip is None and dino is None:
        raise ValueError("nothing to score with: give a CLIP or a DINO scorer")
    sampling = cfg.sampling or SamplingConfig()
    phrase = adapter.cfg.phrase
    identifiers = [token for token, _ in adapter.cfg.subjects]
    out = Path(out_dir)
    cases = [(i, p, seed) for seed in cfg.seeds for i, p in enumerate(cfg.prompts)]
    total, done = 2 * len(cases), 0
    made: dict[str, tuple[list[Image.Image], list[str], list[dict[str, object]]]] = {}
    for system in ("base", "student"):
        folder = out / system
        folder.mkdir(parents=True, exist_ok=True)
        images, prompts, records = [], [], []
        with subjects_applied(pipe, [adapter]) if system == "student" else contextlib.nullcontext():
            for i, template, seed in cases:
                prompt = template.replace(SUBJECT_PLACEHOLDER, phrase)
                result = pipe(prompt, sampling=replace(sampling, seed=seed))
                name = f"p{i:02d}_s{seed}.png"
                meta = {
                    **result.metadata[0],
                    "system": system,
                    "clip_prompt": strip_identifiers(prompt, identifiers),
                }
                if system == "student":
                    meta["model"] = f"{pipe.model_name} + subject adapter {phrase!r}"
                write_png(result.images[0], folder / name, meta)
                images.append(result.images[0])
                prompts.append(prompt)
                records.append({"file": f"{system}/{name}", "prompt": prompt, "seed": seed})
                done += 1
                if progress is not None:
                    progress(done, total)
        made[system] = (images, prompts, records)
    if teacher is not None:
        t_images, captions = teacher
        t_prompts = [c.replace(SUBJECT_PLACEHOLDER, phrase) for c in captions]
        made["teacher"] = (list(t_images), t_prompts, [{"prompt": p} for p in t_prompts])

    def row(system: str, scores: dict[str, float]) -> dict[str, object]:
        return {"system": system, **{k: scores.get(k) for k in ("n", "clip_i", "dino", "clip_t")}}

    if not subject_images:
        raise ValueError("no subject images given")
    # the subject images are embedded once for the real row and every system's scores
    refs = _reference_embeddings(subject_images, clip, dino)
    rows = [row("real", _self_similarity(refs, len(subject_images)))]
    per_image: dict[str, list[dict[str, object]]] = {}
    for system in SYSTEMS[1:]:
        if system not in made:
            continue
        images, prompts, records = made[system]
        scores = _fidelity(images, prompts, refs, clip, dino, identifiers)
        rows.append(row(system, _set_means(scores, len(images))))
        per_image[system] = [{**rec, **{k: v[j] for k, v in scores.items()}} for j, rec in enumerate(records)]
    results: dict[str, Any] = {
        "rows": rows,
        "config": {
            **cfg.extra,
            "model": pipe.model_name,
            "phrase": phrase,
            "identifiers": identifiers,
            "prompts": list(cfg.prompts),
            "sampling": asdict(sampling),
            "n_subject_images": len(subject_images),
        },
        "seeds": list(cfg.seeds),
        "commit": source_commit(),
        "machine": machine_info(pipe.device),
        "images": per_image,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results
