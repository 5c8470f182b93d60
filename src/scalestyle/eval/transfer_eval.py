"""The ``transfer`` protocol: reference-based style transfer (a content image redrawn in a style image's
style), scored as StyleVAR's authors score it plus the procedural world's ground truth.

Metrics follow Senfier-LiqiJing/StyleVAR `eval/eval_grpo.py` (research note wave2_methods.md §1.7): the
Gram style loss against the *style* image, the feature content loss against the *content* image, and
LPIPS, SSIM, DreamSim and CLIP image similarity against the *ground-truth target*. Their Gram and
content losses use ImageNet VGG19; on the demo the world's style classifier's conv stages stand in (no
download), so demo numbers are not comparable with the paper's. The world adds what a paired set cannot
measure: whether the style judge sees the reference's style, whether the content judge still sees the
content (and not the style image's object: leakage), and the pixel distance to the true target, which
exists exactly because the world paints any content in any style.

Cases (:func:`world_transfer_cases`): contents x held-out styles x seeds; the content image is the
content in the neutral style, the target the same content and pose in the held-out style, and the style
image :func:`scalestyle.eval.world.reference_for` (another content in that style, from evaluation seeds).
A run folder is laid out and resumed like :mod:`scalestyle.eval.evaluate`: images under
``images/<method>/<style>/<content>__s<seed>.png`` with their inputs' key in the metadata, one fsynced
JSONL row per image (config, config hash, seed, commit, machine), reports rebuilt at the end.

Methods (:class:`TransferMethod`): anything that maps (content image, style image, seed, content
caption) to an image. :func:`pipeline_method` wraps a :class:`scalestyle.transfer.TransferPipeline` (or
any pipeline with its call signature, such as AdaIN's); :func:`training_free_method` runs our
training-free method on a text-to-image model, given the content's caption instead of the content
image; :func:`copy_content` returns the content image unchanged, the floor a transfer must beat on style.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from scalestyle.bench import machine_info
from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.eval.evaluate import existing_image, world_metrics
from scalestyle.eval.report import MetricColumn, Row, slug, write_reports
from scalestyle.eval.world import Judges, reference_for
from scalestyle.metadata import remove_stale_tmp, write_png
from scalestyle.method.style import StyleConfig, StylePipeline
from scalestyle.metrics import LPIPS, CLIPScorer, DreamSim, GramStyle, LPIPSPackage, pil_to_batch, ssim
from scalestyle.records import JsonlRows, folder_lock, settings_diff, settings_hash, source_commit

PROTOCOL = "transfer"
ROWS_FILE = "rows.jsonl"
TRANSFER_CONTENTS: tuple[str, ...] = ("star", "heart", "house", "fish")
TRANSFER_SEEDS: tuple[int, ...] = (0,)
# content/target poses come from evaluation seeds far from those reference_for draws its references from
_CONTENT_SEED_OFFSET = 500_000_000

TRANSFER_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("content_acc", "content_correct", "higher", True),
    MetricColumn("style_acc", "style_correct", "higher", True),
    MetricColumn("p_style", "p_style", "higher", True),
    MetricColumn("leakage", "leakage", "lower", True),
    MetricColumn("l1_target", "l1_target", "lower", True),
    MetricColumn("ssim_target", "ssim_target", "higher", False),
    MetricColumn("lpips_target", "lpips_target", "lower", False),
    MetricColumn("dreamsim_target", "dreamsim_target", "lower", False),
    MetricColumn("clip_target", "clip_target", "higher", False),
    MetricColumn("gram_style", "gram_style", "lower", False),
    MetricColumn("content_loss", "content_loss", "lower", False),
)
"""Summary columns of the transfer table: world judges, distances to the true target (the authors'
LPIPS/SSIM/DreamSim/CLIP columns), Gram style loss to the style image, content loss to the content image."""


@dataclass(frozen=True)
class TransferCase:
    """One (content, style, seed) cell. ``content``/``style`` are world names (or file stems)."""

    content: str
    style: str
    seed: int
    content_prompt: str
    content_image: Image.Image = field(compare=False, repr=False)
    style_image: Image.Image = field(compare=False, repr=False)
    target: Image.Image | None = field(compare=False, repr=False)
    ref_content: str | None = None


def world_transfer_cases(
    contents: Sequence[str] | None = None,
    styles: Sequence[str] | None = None,
    seeds: Sequence[int] = TRANSFER_SEEDS,
    size: int = 64,
) -> list[TransferCase]:
    """Contents (default :data:`TRANSFER_CONTENTS`) x styles (default the held-out ones) x seeds."""
    chosen_contents = tuple(contents) if contents is not None else TRANSFER_CONTENTS
    chosen_styles = tuple(styles) if styles is not None else world.HELD_OUT_STYLES
    for name in chosen_styles:
        if name == world.NEUTRAL_STYLE:
            raise ValueError(f"style {name!r} is the content images' own style: pick another")
    cases = []
    for style in chosen_styles:
        for content in chosen_contents:
            for seed in seeds:
                if not 0 <= seed < _CONTENT_SEED_OFFSET:
                    raise ValueError(f"seed must be in [0, {_CONTENT_SEED_OFFSET}), got {seed}")
                pose = world.EVAL_SEEDS[_CONTENT_SEED_OFFSET + seed]
                ref_content, ref = reference_for(content, style, seed)
                if ref.width != size:
                    ref = world.render(ref_content, style, world.EVAL_SEEDS[seed], size).image
                cases.append(
                    TransferCase(
                        content=content,
                        style=style,
                        seed=seed,
                        content_prompt=world.content_caption(content),
                        content_image=world.render(content, world.NEUTRAL_STYLE, pose, size).image,
                        style_image=ref,
                        target=world.render(content, style, pose, size).image,
                        ref_content=ref_content,
                    )
                )
    return cases


class TransferMethod(Protocol):
    """``method(case) -> image`` with a name and JSON-able settings (hashed into the rows)."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> Mapping[str, Any]: ...

    def __call__(self, case: TransferCase) -> Image.Image: ...


@dataclass(frozen=True)
class FnMethod:
    name: str
    settings: Mapping[str, Any]
    run: Callable[[TransferCase], Image.Image] = field(repr=False)

    def __call__(self, case: TransferCase) -> Image.Image:
        return self.run(case)


class TransferCallable(Protocol):
    """The call signature of :class:`scalestyle.transfer.TransferPipeline` that the wrapper needs."""

    def __call__(
        self,
        content: Image.Image,
        style: Image.Image,
        *,
        strength: float = ...,
        sampling: SamplingConfig | None = ...,
    ) -> Any: ...


def copy_content() -> FnMethod:
    """The content image itself: perfect content, no style (the floor of the style columns)."""
    return FnMethod("copy-content", {"kind": "copy-content"}, lambda case: case.content_image.copy())


def pipeline_method(
    name: str,
    pipe: TransferCallable,
    *,
    model_name: str,
    strength: float = 0.0,
    sampling: SamplingConfig | None = None,
) -> FnMethod:
    """A transfer pipeline (StyleVAR, AdaIN) called on the case's images with the case's seed."""

    def run(case: TransferCase) -> Image.Image:
        seeded = None if sampling is None else replace(sampling, seed=case.seed)
        out = pipe(case.content_image, case.style_image, strength=strength, sampling=seeded)
        image: Image.Image = out.images[0]
        return image

    settings = {
        "kind": "pipeline",
        "model": model_name,
        "strength": strength,
        "sampling": None if sampling is None else {**vars(sampling), "seed": None},
    }
    return FnMethod(name, settings, run)


def training_free_method(
    name: str,
    styler: StylePipeline,
    *,
    style: StyleConfig | None = None,
    style_prompt: str = "style",
    sampling: SamplingConfig | None = None,
) -> FnMethod:
    """Our training-free method given the content's *caption* and the style image: a text-to-image
    model cannot read the content image, so it redraws the content class, not the content's pose."""
    style = style or StyleConfig()
    sampling = sampling or SamplingConfig()

    def run(case: TransferCase) -> Image.Image:
        out = styler(
            case.content_prompt,
            case.style_image,
            style_prompt=style_prompt,
            style=style,
            sampling=replace(sampling, seed=case.seed),
        )
        image: Image.Image = out.images[0]
        return image

    settings = {
        "kind": "training-free",
        "model": styler.pipe.model_name,
        "style_prompt": style_prompt,
        "style": vars(style),
        "sampling": {**vars(sampling), "seed": None},
    }
    return FnMethod(name, settings, run)


@dataclass(frozen=True)
class TransferScorers:
    """Metrics of a run; each absent one is skipped. ``gram`` scores style (to the style image) and
    content (to the content image); the others compare with the target."""

    judges: Judges | None = None
    gram: GramStyle | None = None
    lpips: LPIPS | LPIPSPackage | None = None
    dreamsim: DreamSim | None = None
    clip: CLIPScorer | None = None


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else value


@torch.no_grad()
def score_transfer(scorers: TransferScorers, image: Image.Image, case: TransferCase) -> dict[str, Any]:
    """Every available metric of one output against its case."""
    out: dict[str, Any] = {}
    size_hw = (image.height, image.width)
    img = pil_to_batch([image])
    if scorers.judges is not None:
        out.update(world_metrics(scorers.judges, image, case.content, case.style, case.ref_content))
    if case.target is not None:
        target = pil_to_batch([case.target], size_hw=size_hw)
        out["l1_target"] = float((img - target).abs().mean())
        out["ssim_target"] = float(ssim(img, target, channels="rgb")[0])
        if scorers.lpips is not None:
            out["lpips_target"] = float(scorers.lpips(img, target)[0])
        if scorers.dreamsim is not None:
            out["dreamsim_target"] = float(scorers.dreamsim(img, target)[0])
        if scorers.clip is not None:
            out["clip_target"] = float(scorers.clip.clip_i(img, pil_to_batch([case.target]))[0])
    if scorers.gram is not None:
        style_ref = pil_to_batch([case.style_image], size_hw=size_hw)
        content_ref = pil_to_batch([case.content_image], size_hw=size_hw)
        out["gram_style"] = float(scorers.gram.style_loss(img, style_ref)[0])
        out["content_loss"] = float(scorers.gram.content_loss(img, content_ref)[0])
    return {k: _clean(v) if isinstance(v, float) else v for k, v in out.items()}


def image_relpath(method: str, case: TransferCase) -> str:
    return f"images/{slug(method)}/{slug(case.style)}/{slug(case.content)}__s{case.seed}.png"


@dataclass(frozen=True)
class TransferResult:
    rows: list[Row]
    computed: int
    reused: int
    stopped: bool
    files: dict[str, Path]


def _key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["method"], row["content"], row["style"], int(row["seed"]))


def run_transfer_evaluation(
    cases: Sequence[TransferCase],
    methods: Sequence[TransferMethod],
    out_dir: str | Path,
    *,
    scorers: TransferScorers | None = None,
    device: torch.device | None = None,
    max_images: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    thumb: int = 96,
) -> TransferResult:
    """Run and score every (case, method) not yet in ``out_dir``, then rebuild the reports. Rows of a
    method made with other settings are refused (the settings that differ are named)."""
    if not cases:
        raise ValueError("no case to evaluate (empty grid of contents x styles x seeds)")
    if not methods:
        raise ValueError("no method to evaluate")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be >= 0 or None, got {max_images}")
    out = Path(out_dir)
    with folder_lock(out):
        remove_stale_tmp(out)
        return _run(
            cases, methods, names, out, scorers or TransferScorers(), device, max_images, progress, thumb
        )


def _run(
    cases: Sequence[TransferCase],
    methods: Sequence[TransferMethod],
    names: list[str],
    out: Path,
    scorers: TransferScorers,
    device: torch.device | None,
    max_images: int | None,
    progress: Callable[[int, int], None] | None,
    thumb: int,
) -> TransferResult:
    log = JsonlRows(out / ROWS_FILE, _key)
    hashes = {m.name: settings_hash(dict(m.settings)) for m in methods}
    by_name = {m.name: m for m in methods}
    for old in log:
        name = old["method"]
        if name in hashes and old.get("config_hash") != hashes[name]:
            diff = settings_diff(old.get("config", {}), dict(by_name[name].settings))
            raise ValueError(
                f"{out / ROWS_FILE} holds {name!r} rows made with other settings ({diff}); "
                "use another output folder"
            )
    machine = machine_info(device or torch.device("cpu"))
    commit = machine.pop("commit", None) or source_commit()
    jobs = [(case, m) for case in cases for m in methods]
    done = sum(1 for case, m in jobs if (m.name, case.content, case.style, case.seed) in log)
    computed = reused = 0
    stopped = False
    for case, method in jobs:
        if (method.name, case.content, case.style, case.seed) in log:
            continue
        path = out / image_relpath(method.name, case)
        image_key = settings_hash(
            {"config_hash": hashes[method.name], "case": [case.content, case.style, case.seed]}
        )
        image, seconds = existing_image(path, image_key)
        if image is None:
            if max_images is not None and computed >= max_images:
                stopped = True
                break
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            image = method(case).convert("RGB")
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            path.parent.mkdir(parents=True, exist_ok=True)
            write_png(
                image,
                path,
                {
                    "method": method.name,
                    "content": case.content,
                    "style": case.style,
                    "seed": case.seed,
                    "prompt": case.content_prompt,
                    "settings": dict(method.settings),
                    "model": method.settings.get("model", method.name),
                    "image_key": image_key,
                    "seconds": seconds,
                },
            )
            computed += 1
        else:
            reused += 1
        row: Row = {
            "method": method.name,
            "protocol": PROTOCOL,
            "content": case.content,
            "style": case.style,
            "seed": case.seed,
            "content_prompt": case.content_prompt,
            "ref_content": case.ref_content,
            "image": path.relative_to(out).as_posix(),
            "config_hash": hashes[method.name],
            "config": dict(method.settings),
            "commit": commit,
            "machine": machine,
            "seconds": _clean(seconds),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            **score_transfer(scorers, image, case),
        }
        log.append(row)
        done += 1
        if progress is not None:
            progress(done, len(jobs))
    rows = list(log)
    by_cell = {(c.content, c.style, c.seed): c for c in cases}

    def picture(which: str) -> Callable[[Row], Image.Image | None]:
        def get(row: Row) -> Image.Image | None:
            case = by_cell.get((row["content"], row["style"], int(row["seed"])))
            return None if case is None else getattr(case, which)

        return get

    files = write_reports(
        out,
        rows,
        methods=names,
        reference=picture("style_image"),
        thumb=thumb,
        title="transfer evaluation",
        columns=TRANSFER_COLUMNS,
        inputs={"content": picture("content_image"), "target": picture("target")},
    )
    return TransferResult(rows, computed, reused, stopped, files)
