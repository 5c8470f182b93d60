"""Resumable evaluation runs: methods x cases -> images, one JSONL row per image, and reports.

Protocols (:mod:`scalestyle.eval.protocols`): the procedural world, judged by its ground-truth
classifiers, and FineStyle (Zhang et al. 2024; 190 Parti prompts x 10 styles), judged by CLIP-T, CLIP-I
and DINO. Methods (:mod:`scalestyle.eval.methods`): plain, prompt-only, StyleAligned shared attention
(Hertz et al. 2024) and the ablations (a)-(d) of ours.

A run directory holds ``images/<method>/<style>/<content>__s<seed>.png`` (``images/plain/<content>...``
for methods that ignore the style), ``rows.jsonl``, ``summary.md``, ``summary.csv``,
``sheets/<style>.png`` and ``plot.png``. Killed at any moment and started again, a run recomputes nothing
that was written and loses nothing:

- images are written atomically (temporary file, then rename), carrying in their metadata the key of
  everything they were made from, so an image whose row was not yet logged is reused, not regenerated;
- a row is appended (flushed and fsynced) only after its image is in place; a last line cut short by a
  kill is dropped when the log is opened, and that image's row made again;
- reports are rebuilt from all rows at the end of every run, each written atomically.

Each row carries the method's config hash: the sha256 of the canonical JSON of the method's settings,
the sampling settings (seed excluded: it is a row field) and the model name. A run directory whose rows
of a method were made with another hash is refused, rather than mixed into one table.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from scalestyle.bench import machine_info
from scalestyle.config import SamplingConfig
from scalestyle.eval.classifier import WorldClassifier, judge_batch
from scalestyle.eval.methods import DEFAULT_METHODS, Method, Request, get_methods
from scalestyle.eval.protocols import Case
from scalestyle.eval.report import Row, slug, write_reports
from scalestyle.eval.world import Judges
from scalestyle.metadata import read_png_metadata, remove_stale_tmp, write_png
from scalestyle.metrics import CLIPScorer, DINOScorer, GramStyle, evaluate, pil_to_batch
from scalestyle.pipeline import Pipeline
from scalestyle.records import (
    JsonlRows,
    canonical_json,
    folder_lock,
    settings_diff,
    settings_hash,
    source_commit,
)

ROWS_FILE = "rows.jsonl"
KEY_FIELDS = ("method", "content", "style", "seed")


def method_config(method: Method, sampling: SamplingConfig, model_name: str) -> dict[str, Any]:
    """Everything an image of ``method`` depends on apart from its case (prompts, reference, seed)."""
    settings = asdict(sampling)
    settings.pop("seed")
    config = {
        "method": method.name,
        "settings": dict(method.settings),
        "sampling": settings,
        "model": model_name,
    }
    # through JSON once, so that the config compares equal to one read back from a row (tuples -> lists)
    result: dict[str, Any] = json.loads(canonical_json(config))
    return result


# -- the row log -------------------------------------------------------------------------------------------


class RowLog(JsonlRows):
    """The rows of a run (:class:`scalestyle.records.JsonlRows`), keyed by :data:`KEY_FIELDS`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, lambda row: tuple(row[f] for f in KEY_FIELDS))

    def check_hashes(self, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """The config hash of each method in ``configs``; refuses a log whose rows of one of those methods
        were made with other settings (mixing them would make one table of two experiments)."""
        hashes = {name: settings_hash(c) for name, c in configs.items()}
        for row in self:
            name = row["method"]
            if name in hashes and row.get("config_hash") != hashes[name]:
                diff = settings_diff(row.get("config") or {}, configs[name]) or "config hash differs"
                raise ValueError(
                    f"{self.path} holds rows of method {name!r} made with other settings ({diff}); "
                    "use another output folder, or the settings those rows were made with"
                )
        return hashes


# -- scorers -----------------------------------------------------------------------------------------------


class ClassifierFeatures(nn.Module):
    """The conv stages of a world classifier as a Gram feature extractor (``FeatureFn``): a style
    measure that needs no download, trained on exactly the procedural world's styles."""

    def __init__(self, classifier: WorldClassifier) -> None:
        super().__init__()
        self.features = copy.deepcopy(classifier.features)

    def forward(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        x = img_B3HW * 2 - 1  # metrics hand [0, 1]; the classifiers see [-1, 1]
        if x.shape[-2:] != (64, 64):
            x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        out = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.SiLU):
                out.append(x)
        return out


@dataclass(frozen=True)
class Scorers:
    """The metrics of a run; each one absent (None, False) is skipped. ``ssim``: SSIM to the reference
    (no download); ``gram``: Gram style loss (and content loss) to the reference."""

    judges: Judges | None = None
    clip: CLIPScorer | None = None
    dino: DINOScorer | None = None
    gram: GramStyle | None = None
    ssim: bool = True
    names: Mapping[str, str] = field(default_factory=dict)


def classifier_gram(judges: Judges) -> GramStyle:
    """Gram style loss over the style classifier's conv stages (CPU: the nets are tiny)."""
    return GramStyle(ClassifierFeatures(judges.style), device="cpu")


def build_scorers(
    *,
    world_dir: Path | None,
    gram: str = "auto",
    clip: str | None = None,
    dino: str | None = None,
    ssim: bool = True,
    device: str | torch.device | None = None,
) -> Scorers:
    """The metrics of a run from its settings. ``world_dir``: a demo model folder whose world classifiers
    judge the procedural protocol (None, or a folder without them: no ground-truth metrics); ``gram``:
    "auto" (the world style classifier when present, else none), "classifier", "none", or a CNN folder or
    hub id; ``clip``/``dino``: a folder or hub id each (None: skipped)."""
    judges = None
    if world_dir is not None and all(
        (world_dir / f"{k}_classifier.safetensors").is_file() for k in ("content", "style")
    ):
        judges = Judges.load(world_dir)
    gram_style = None
    if gram == "classifier" or (gram == "auto" and judges is not None):
        if judges is None:
            raise ValueError("--gram classifier needs the world classifiers of a demo model folder")
        gram_style = classifier_gram(judges)
    elif gram not in ("auto", "none"):
        gram_style = GramStyle.from_pretrained(gram, device=device)
    return Scorers(
        judges=judges,
        clip=CLIPScorer.from_pretrained(clip, device=device) if clip else None,
        dino=DINOScorer.from_pretrained(dino, device=device) if dino else None,
        gram=gram_style,
        ssim=ssim,
    )


@torch.no_grad()
def world_metrics(
    judges: Judges, image: Image.Image, content: str, style: str, ref_content: str | None
) -> dict[str, Any]:
    """Ground truth on the procedural world: predicted content and style, whether each is the case's,
    the probabilities of the case's content and style, and leakage (the reference's content predicted)."""
    batch = judge_batch([image])
    out: dict[str, Any] = {}
    for kind, clf, want in (("content", judges.content, content), ("style", judges.style, style)):
        param = next(clf.parameters())
        probs = clf(batch.to(param.device, param.dtype)).float().softmax(1)[0].cpu()
        pred = clf.labels[int(probs.argmax())]
        out[f"pred_{kind}"] = pred
        out[f"{kind}_correct"] = pred == want
        out[f"p_{kind}"] = float(probs[clf.labels.index(want)]) if want in clf.labels else None
    if ref_content is not None:
        out["leakage"] = out["pred_content"] == ref_content
    return out


def score(scorers: Scorers, image: Image.Image, case: Case, ref: Image.Image) -> dict[str, Any]:
    """Every available metric of one image against its case: world ground truth, SSIM and Gram losses to
    the reference (resized to the image), CLIP-T to the content prompt and to the full prompt, CLIP-I and
    DINO to the reference."""
    out: dict[str, Any] = {}
    if scorers.judges is not None and case.protocol == "procedural":
        out.update(world_metrics(scorers.judges, image, case.content, case.style, case.ref_content))
    img = pil_to_batch([image])
    values: dict[str, list[float]] = {}
    if scorers.clip is not None or scorers.dino is not None:
        # embeddings see the reference as it is (their processors resize and crop it)
        values |= evaluate(
            img,
            ref_B3HW=pil_to_batch([ref]),
            prompts=[case.content_prompt] if scorers.clip is not None else None,
            clip=scorers.clip,
            dino=scorers.dino,
        )
    if scorers.gram is not None or scorers.ssim:
        # SSIM and the content loss compare pixel grids: the reference is resized to the image
        values |= evaluate(
            img,
            ref_B3HW=pil_to_batch([ref], size_hw=(image.height, image.width)),
            gram=scorers.gram,
            ssim_channels="rgb" if scorers.ssim else None,
        )
    renamed = {"content": "content_loss"}
    for key, vals in values.items():
        out[renamed.get(key, key)] = float(vals[0])
    if scorers.clip is not None:
        out["clip_t_full"] = float(scorers.clip.clip_t(img, [case.prompt])[0])
    # JSON has no NaN: a metric that could not judge is recorded as null
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


# -- the run -----------------------------------------------------------------------------------------------


def image_relpath(method: Method, case: Case) -> str:
    name = f"{slug(case.content)}__s{case.seed}.png"
    if not method.reads_style:
        return f"images/{slug(method.name)}/{name}"
    return f"images/{slug(method.name)}/{slug(case.style)}/{name}"


@dataclass(frozen=True)
class EvalResult:
    rows: list[Row]
    computed: int
    reused: int
    skipped: int
    stopped: bool
    files: dict[str, Path]


class _References:
    """Each case's reference image and its identity (for finestyle, a digest of the file's bytes, so a
    replaced image is a different reference), computed once per case."""

    def __init__(self) -> None:
        self._last: tuple[Case, Image.Image] | None = None
        self._mask: tuple[Case, np.ndarray | None] | None = None
        self._digests: dict[str, str] = {}

    def image(self, case: Case) -> Image.Image:
        if self._last is None or self._last[0] != case:
            self._last = (case, case.reference())
        return self._last[1]

    def mask(self, case: Case) -> np.ndarray | None:
        if self._mask is None or self._mask[0] != case:
            self._mask = (case, case.reference_mask())
        return self._mask[1]

    def identity(self, case: Case) -> str:
        if case.ref_file is None:
            return f"world:{case.ref_content}:{case.style}:{case.seed}"
        if case.ref_file not in self._digests:
            self._digests[case.ref_file] = hashlib.sha256(Path(case.ref_file).read_bytes()).hexdigest()
        return self._digests[case.ref_file]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_evaluation(
    pipe: Pipeline,
    cases: Sequence[Case],
    out_dir: str | Path,
    *,
    methods: str | Sequence[str] | Mapping[str, Method] = DEFAULT_METHODS,
    sampling: SamplingConfig | None = None,
    scorers: Scorers | None = None,
    max_images: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    thumb: int = 96,
    sheet_columns: int = 32,
) -> EvalResult:
    """Generate and score every (case, method) not yet in ``out_dir``, then rebuild the reports.

    ``max_images`` stops after that many newly generated images (reports are still rebuilt; a later run
    continues). ``progress(done, total)`` is called after each row. One run at a time writes into a folder
    (a second is refused: :func:`scalestyle.records.folder_lock`); the temporary files of a killed run are
    removed first.
    """
    with folder_lock(out_dir):
        remove_stale_tmp(out_dir)
        return _evaluate(
            pipe,
            cases,
            Path(out_dir),
            methods=methods,
            sampling=sampling,
            scorers=scorers,
            max_images=max_images,
            progress=progress,
            thumb=thumb,
            sheet_columns=sheet_columns,
        )


def _evaluate(
    pipe: Pipeline,
    cases: Sequence[Case],
    out: Path,
    *,
    methods: str | Sequence[str] | Mapping[str, Method],
    sampling: SamplingConfig | None,
    scorers: Scorers | None,
    max_images: int | None,
    progress: Callable[[int, int], None] | None,
    thumb: int,
    sheet_columns: int,
) -> EvalResult:
    if not cases:
        raise ValueError("no case to evaluate (empty grid of contents x styles x seeds)")
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be >= 0 or None, got {max_images}")
    table = (
        dict(methods)
        if isinstance(methods, Mapping)
        else get_methods(methods if isinstance(methods, str) else list(methods))
    )
    sampling = sampling or SamplingConfig()
    scorers = scorers or Scorers()
    log = RowLog(out / ROWS_FILE)
    protocol = cases[0].protocol
    if any(c.protocol != protocol for c in cases) or any(r.get("protocol") != protocol for r in log):
        found = sorted({c.protocol for c in cases} | {str(r.get("protocol")) for r in log})
        raise ValueError(f"one run folder holds one protocol; {out} would mix {found}")
    configs = {name: method_config(m, sampling, pipe.model_name) for name, m in table.items()}
    hashes = log.check_hashes(configs)
    machine = machine_info(pipe.device)
    commit = machine.pop("commit", None) or source_commit()
    refs = _References()
    jobs = [(case, name) for case in cases for name in table]
    total = len(jobs)
    done = sum(1 for case, name in jobs if (name, case.content, case.style, case.seed) in log)
    skipped, computed, reused, stopped = done, 0, 0, False
    for case, name in jobs:
        key = (name, case.content, case.style, case.seed)
        if key in log:
            continue
        method = table[name]
        path = out / image_relpath(method, case)
        image_key = settings_hash(
            {
                "config_hash": hashes[name],
                "seed": case.seed,
                "content_prompt": case.content_prompt,
                **(
                    {
                        "prompt": case.prompt,
                        "style_prompt": case.style_prompt,
                        "reference": refs.identity(case) if method.uses_reference else None,
                    }
                    if method.reads_style
                    else {}
                ),
            }
        )
        image, seconds = existing_image(path, image_key)
        if image is None:
            if max_images is not None and computed >= max_images:
                stopped = True
                break
            ref = refs.image(case) if method.uses_reference else None
            _sync(pipe.device)
            start = time.perf_counter()
            mask = refs.mask(case) if method.uses_reference else None
            request = Request(
                case.content_prompt, case.style_prompt, ref, case.seed, sampling, case.prompt, ref_mask=mask
            )
            image = method(pipe, request)
            _sync(pipe.device)
            seconds = time.perf_counter() - start
            path.parent.mkdir(parents=True, exist_ok=True)
            write_png(
                image,
                path,
                {
                    "method": name,
                    "prompt": case.prompt,
                    "content_prompt": case.content_prompt,
                    "style_prompt": case.style_prompt,
                    "seed": case.seed,
                    "model": pipe.model_name,
                    "config_hash": hashes[name],
                    "image_key": image_key,
                    "seconds": seconds,
                },
            )
            computed += 1
        else:
            reused += 1
        row: Row = {
            "method": name,
            "protocol": case.protocol,
            "content": case.content,
            "style": case.style,
            "seed": case.seed,
            "prompt": case.prompt,
            "content_prompt": case.content_prompt,
            "style_prompt": case.style_prompt,
            "ref_content": case.ref_content,
            "ref_file": case.ref_file,
            "image": path.relative_to(out).as_posix(),
            "config_hash": hashes[name],
            "config": configs[name],
            "commit": commit,
            "device": str(pipe.device),
            "machine": machine,
            "seconds": None if math.isnan(seconds) else seconds,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            **score(scorers, image, case, refs.image(case)),
        }
        log.append(row)
        done += 1
        if progress is not None:
            progress(done, total)
    rows = list(log)
    files = write_reports(
        out,
        rows,
        methods=list(table),
        reference=_row_reference,
        thumb=thumb,
        max_columns=sheet_columns,
        title=f"{protocol} evaluation",
    )
    return EvalResult(rows, computed, reused, skipped, stopped, files)


def existing_image(path: Path, image_key: str) -> tuple[Image.Image | None, float]:
    """An image already written for exactly these inputs (its row not yet logged), with the seconds its
    generation took; (None, nan) when there is none or it was made from other inputs."""
    if not path.is_file():
        return None, math.nan
    try:
        meta = read_png_metadata(path)
        if meta.get("image_key") != image_key:
            return None, math.nan
        with Image.open(path) as img:
            return img.convert("RGB"), float(meta.get("seconds", "nan"))
    except (OSError, ValueError):
        # unreadable: made again (writes are atomic, so this is a foreign file, not a torn one)
        return None, math.nan


def _row_reference(row: Mapping[str, Any]) -> Image.Image | None:
    case = Case(
        row["protocol"],
        row["content"],
        row["style"],
        int(row["seed"]),
        row["prompt"],
        row["content_prompt"],
        row["style_prompt"],
        row.get("ref_content"),
        row.get("ref_file"),
    )
    try:
        return case.reference()
    except (OSError, ValueError):
        return None
