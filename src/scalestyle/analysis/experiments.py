"""The step-injection and Q/K/V-injection experiments over pairs and seeds: resumable runs that write
images, a JSONL of scored rows, an image grid and a plot (the paper's Section 4 figures).

Output folder layout::

    rows.jsonl            one row per image: pair, seed, variant, scales, step, scores, config, commit
    images/<pair>/*.png   every image, with its provenance in PNG text chunks
    grid.png              rows: (pair, seed); columns: A, the injected variants, B
    plot_<scorer>.png     step injection: similarity to B against the step, band over pairs and seeds
    bars_<scorer>.png     Q/K/V injection: similarity to B of A, B, A+Q_B, A+K_B, A+V_B

A rerun into the same folder computes only the rows that are missing (a row counts as done when its line
is in rows.jsonl and its image exists) and rebuilds the grid and plots from every row there.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from scalestyle.analysis.injection import (
    COMPONENTS,
    MODES,
    CfgRows,
    Component,
    InjectionMode,
    QKVInjection,
    generate_qkv_injection,
    generate_step_injection,
    injected_path,
    scales_label,
)
from scalestyle.analysis.pairs import PromptPair
from scalestyle.analysis.plots import Bars, HLine, Series, bar_plot, image_grid, line_plot
from scalestyle.analysis.records import RowLog
from scalestyle.analysis.scorers import Scorer, score_all
from scalestyle.config import SamplingConfig
from scalestyle.metadata import write_png
from scalestyle.pipeline import Pipeline
from scalestyle.records import Row, source_commit
from scalestyle.schedules import Schedule

Band = Literal["minmax", "std"]
Convention = Literal["A", "B"]
Progress = Callable[[int, int], None]
KEY_FIELDS = ("pair", "seed", "variant", "scales")
JSONL = "rows.jsonl"


def step_of(scale: int, convention: Convention) -> int:
    """The paper's step number of a 0-based scale index: convention "A" counts scales from 1 (the start
    token is step 1), "B" is upstream's 0-based loop index (see :mod:`scalestyle.method.style`)."""
    return scale + 1 if convention == "A" else scale


def scale_of(step: int, convention: Convention, num_scales: int) -> int:
    lo = 1 if convention == "A" else 0
    if not lo <= step < lo + num_scales:
        raise ValueError(
            f"step {step} outside [{lo}, {lo + num_scales - 1}] "
            f"(convention {convention}, {num_scales} scales)"
        )
    return step - lo


def _check_common(convention: str, cfg_rows: str, batch: int, band: str, thumb: int) -> None:
    if convention not in ("A", "B"):
        raise ValueError(f"convention must be 'A' or 'B', got {convention!r}")
    if cfg_rows not in ("share", "plain"):
        raise ValueError(f"cfg_rows must be 'share' or 'plain', got {cfg_rows!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1 (injected images per run), got {batch}")
    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}")
    if thumb < 8:
        raise ValueError(f"thumb must be >= 8 pixels, got {thumb}")


@dataclass(frozen=True)
class StepInjectionConfig:
    """Settings of the step-injection analysis. ``sampling.seed`` is ignored (seeds are given per run);
    ``scales`` are 0-based (None: every scale); ``batch`` injected images share one run (a kill loses at
    most that many rows); ``convention`` only names the steps in rows and plots."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    mode: InjectionMode = "cross"
    cfg_rows: CfgRows = "share"
    scales: tuple[int, ...] | None = None
    convention: Convention = "B"
    batch: int = 1
    band: Band = "minmax"
    thumb: int = 128

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        _check_common(self.convention, self.cfg_rows, self.batch, self.band, self.thumb)
        if self.scales is not None and (not self.scales or min(self.scales) < 0):
            raise ValueError(f"scales must be a non-empty tuple of indices >= 0, got {self.scales}")

    def settings(self) -> dict[str, Any]:
        """What the images depend on (not which scales are swept, nor how runs are batched or drawn)."""
        return {
            "sampling": {k: v for k, v in asdict(self.sampling).items() if k != "seed"},
            "mode": self.mode,
            "cfg_rows": self.cfg_rows,
            "convention": self.convention,
        }


@dataclass(frozen=True)
class QKVInjectionConfig:
    """Settings of the Q/K/V-injection analysis: each of ``components`` is injected at each scale set of
    ``ranges`` (0-based; None: one set holding every scale)."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ranges: tuple[tuple[int, ...], ...] | None = None
    components: tuple[Component, ...] = COMPONENTS
    cfg_rows: CfgRows = "share"
    convention: Convention = "B"
    batch: int = 1
    band: Band = "minmax"
    thumb: int = 128

    def __post_init__(self) -> None:
        _check_common(self.convention, self.cfg_rows, self.batch, self.band, self.thumb)
        if not self.components or any(c not in COMPONENTS for c in self.components):
            raise ValueError(f"components must be a non-empty subset of {COMPONENTS}, got {self.components}")
        if self.ranges is not None and (not self.ranges or any(not r or min(r) < 0 for r in self.ranges)):
            raise ValueError(f"ranges must be non-empty tuples of scale indices >= 0, got {self.ranges}")

    def settings(self) -> dict[str, Any]:
        return {
            "sampling": {k: v for k, v in asdict(self.sampling).items() if k != "seed"},
            "cfg_rows": self.cfg_rows,
            "convention": self.convention,
        }


@dataclass(frozen=True)
class AnalysisResult:
    """Every row now in the folder's JSONL, how many were computed by this call, and the files written."""

    rows: list[Row]
    computed: int
    skipped: int
    files: dict[str, Path]


@dataclass(frozen=True)
class _Variant:
    """One image of a (pair, seed): plain A ("a"), plain B ("b"), or an injection (its path in the run)."""

    name: str
    scales: tuple[int, ...] | None
    path: str


Generate = Callable[[PromptPair, Sequence[_Variant], int, bool, bool], dict[str, torch.Tensor]]


def _slug(text: str, limit: int = 32) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in keep.split("-") if p)[:limit] or "prompt"


def _image_rel(pair: PromptPair, seed: int, v: _Variant) -> str:
    # prompts can share a slug after truncation: a hash of the full pair keeps folders apart
    digest = hashlib.sha256(f"{pair.a}\x1f{pair.b}".encode()).hexdigest()[:6]
    tag = v.name if v.scales is None else f"{v.name}-s{scales_label(v.scales).replace(',', '_')}"
    return f"images/{_slug(pair.a)}__{_slug(pair.b)}__{digest}/seed{seed}_{tag}.png"


def _key_row(pair: PromptPair, seed: int, v: _Variant) -> Row:
    return {
        "pair": {"a": pair.a, "b": pair.b, "kind": pair.kind},
        "seed": seed,
        "variant": v.name,
        "scales": None if v.scales is None else list(v.scales),
    }


def _run_experiment(
    experiment: str,
    pipe: Pipeline,
    pairs: Sequence[PromptPair],
    seeds: Sequence[int],
    out_dir: Path,
    *,
    settings: dict[str, Any],
    variants: Sequence[_Variant],
    generate: Generate,
    batch: int,
    scorers: Mapping[str, Scorer],
    describe: Callable[[_Variant], dict[str, Any]],
    progress: Progress | None,
) -> tuple[RowLog, int, int]:
    if not pairs:
        raise ValueError("give at least one prompt pair")
    if not seeds:
        raise ValueError("give at least one seed")
    out_dir.mkdir(parents=True, exist_ok=True)
    # a model folder is named by its absolute path, so that a rerun from another directory still matches
    model = Path(pipe.model_name)
    name = str(model.resolve()) if model.is_dir() else pipe.model_name
    full = {"experiment": experiment, "model": name, **settings}
    log = RowLog(out_dir / JSONL, settings=full, key_fields=KEY_FIELDS)
    commit = source_commit()

    def done(pair: PromptPair, seed: int, v: _Variant) -> bool:
        return log.has(_key_row(pair, seed, v)) and (out_dir / _image_rel(pair, seed, v)).is_file()

    units = [(pair, seed) for pair in dict.fromkeys(pairs) for seed in dict.fromkeys(seeds)]
    todo = {u: [v for v in variants if not done(*u, v)] for u in units}
    total = sum(len(vs) for vs in todo.values())
    made = 0
    for (pair, seed), missing in todo.items():
        refs = {v.name for v in missing if v.name in ("a", "b")}
        injected = [v for v in missing if v.name not in ("a", "b")]
        chunks: list[list[_Variant]] = [injected[i : i + batch] for i in range(0, len(injected), batch)]
        if refs and not chunks:
            chunks = [[]]
        for k, chunk in enumerate(chunks):
            include_a, include_b = k == 0 and "a" in refs, k == 0 and "b" in refs
            started = time.perf_counter()
            codes = generate(pair, chunk, seed, include_a, include_b)
            outs = [v for v in variants if (v.name == "a" and include_a) or (v.name == "b" and include_b)]
            outs += chunk
            # one image per decode: a batched VAE decode rounds differently now and then, and a plain-A
            # image should be the very image `scalestyle generate` makes
            images = [pipe.decode(codes[v.path])[0] for v in outs]
            to_b = score_all(scorers, images, [pair.b] * len(images))
            to_a = score_all(scorers, images, [pair.a] * len(images))
            seconds = (time.perf_counter() - started) / len(outs)
            for v, image, sb, sa in zip(outs, images, to_b, to_a, strict=True):
                row: Row = {
                    "experiment": experiment,
                    **_key_row(pair, seed, v),
                    **describe(v),
                    "scores": {"to_b": sb, "to_a": sa},
                    "image": _image_rel(pair, seed, v),
                    "commit": commit,
                    "seconds": round(seconds, 4),
                }
                path = out_dir / row["image"]
                path.parent.mkdir(parents=True, exist_ok=True)
                meta = {k: row[k] for k in ("experiment", "pair", "seed", "variant", "scales", "commit")}
                meta["config"] = full
                # the image lands before its row: a row in the log always has its image
                write_png(image, path, meta)
                log.append(row)
            made += len(outs)
            if progress is not None:
                progress(made, total)
    return log, made, sum(len(variants) for _ in units) - made


def _units(rows: Sequence[Row]) -> list[tuple[str, str, str, int]]:
    seen: dict[tuple[str, str, str, int], None] = {}
    for r in rows:
        seen[(r["pair"]["a"], r["pair"]["b"], r["pair"]["kind"], r["seed"])] = None
    return list(seen)


def _open(out_dir: Path, row: Row | None) -> Image.Image | None:
    if row is None or not (out_dir / row["image"]).is_file():
        return None
    with Image.open(out_dir / row["image"]) as im:
        return im.convert("RGB")


def _band(values: Sequence[float], band: Band) -> tuple[float, float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(vals)
    if band == "minmax":
        return mean, min(vals), max(vals)
    sd = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    return mean, mean - sd, mean + sd


def _is(variant: str, scales: tuple[int, ...] | None = None) -> Callable[[Row], bool]:
    """Selects the rows of one variant (and scale set)."""

    def match(row: Row) -> bool:
        got = None if row["scales"] is None else tuple(row["scales"])
        return bool(row["variant"] == variant and got == scales)

    return match


def _scorer_names(rows: Sequence[Row]) -> list[str]:
    names: dict[str, None] = {}
    for r in rows:
        for name, value in r["scores"]["to_b"].items():
            if value is not None:
                names[name] = None
    return list(names)


def _grid(
    out_dir: Path,
    rows: Sequence[Row],
    columns: Sequence[tuple[str, Callable[[Row], bool]]],
    thumb: int,
    max_rows: int,
) -> Image.Image:
    units = _units(rows)[:max_rows]
    cells, labels = [], []
    for a, b, kind, seed in units:
        mine = [
            r
            for r in rows
            if (r["pair"]["a"], r["pair"]["b"], r["pair"]["kind"], r["seed"]) == (a, b, kind, seed)
        ]
        cells.append([_open(out_dir, next((r for r in mine if match(r)), None)) for _, match in columns])
        labels.append(f"A: {a}\nB: {b}\n{kind} pair, seed {seed}")
    return image_grid(cells, row_labels=labels, col_labels=[c for c, _ in columns], thumb=thumb)


MAX_GRID_ROWS = 64


def run_step_injection(
    pipe: Pipeline,
    pairs: Sequence[PromptPair],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    config: StepInjectionConfig | None = None,
    scorers: Mapping[str, Scorer] | None = None,
    progress: Progress | None = None,
) -> AnalysisResult:
    """For every pair and seed: plain A, plain B, and A with prompt B at each scale alone (see
    :mod:`scalestyle.analysis.injection` for what that means); scored against B and A, written resumably
    to ``out_dir`` with a grid and a similarity-to-B plot per scorer."""
    config = config or StepInjectionConfig()
    out = Path(out_dir)
    schedule = pipe.schedule_for(h_div_w=config.sampling.h_div_w, pn=config.sampling.pn)
    scales = config.scales if config.scales is not None else tuple(range(schedule.num_scales))
    bad = [s for s in scales if s >= schedule.num_scales]
    if bad:
        raise ValueError(f"scales {bad} outside [0, {schedule.num_scales - 1}] of the {schedule.pn} schedule")
    variants = [_Variant("a", None, "a"), _Variant("b", None, "b")]
    variants += [_Variant("inject", (s,), injected_path(s)) for s in sorted(set(scales))]

    def generate(
        pair: PromptPair, chunk: Sequence[_Variant], seed: int, include_a: bool, include_b: bool
    ) -> dict[str, torch.Tensor]:
        return generate_step_injection(
            pipe,
            pair.a,
            pair.b,
            [v.scales[0] for v in chunk if v.scales],
            sampling=_seeded(config.sampling, seed),
            mode=config.mode,
            cfg_rows=config.cfg_rows,
            include_a=include_a,
            include_b=include_b,
        )

    def describe(v: _Variant) -> dict[str, Any]:
        if v.scales is None:
            return {"scale": None, "step": None, "grid_hw": None}
        s = v.scales[0]
        return {"scale": s, "step": step_of(s, config.convention), "grid_hw": list(schedule.grids[s])}

    log, computed, skipped = _run_experiment(
        "step-injection",
        pipe,
        pairs,
        seeds,
        out,
        settings=config.settings(),
        variants=variants,
        generate=generate,
        batch=config.batch,
        scorers=scorers or {},
        describe=describe,
        progress=progress,
    )
    rows = log.rows
    files = write_step_injection_figures(out, rows, config, schedule)
    return AnalysisResult(rows, computed, skipped, files)


def write_step_injection_figures(
    out_dir: Path, rows: Sequence[Row], config: StepInjectionConfig, schedule: Schedule
) -> dict[str, Path]:
    """The grid and one similarity-to-B plot per scorer, from the rows (all scales found in them)."""
    files: dict[str, Path] = {}
    if not rows:
        return files
    scales = sorted({r["scale"] for r in rows if r["variant"] == "inject"})

    def col(s: int) -> str:
        # rows of this folder share the settings id, hence the schedule: every scale is in it
        h, w = schedule.grids[s]
        return f"step {step_of(s, config.convention)}\n{h}x{w}"

    columns = [("A only", _is("a")), *((col(s), _is("inject", (s,))) for s in scales), ("B only", _is("b"))]
    files["grid"] = write_png(
        _grid(out_dir, rows, columns, config.thumb, MAX_GRID_ROWS), out_dir / "grid.png", {"rows": len(rows)}
    )
    kinds = list(dict.fromkeys(r["pair"]["kind"] for r in rows))
    steps = [step_of(s, config.convention) for s in scales]
    for name in _scorer_names(rows):
        series, hlines = [], []
        for i, kind in enumerate(kinds):
            mine = [r for r in rows if r["pair"]["kind"] == kind]
            stats = [
                _band(
                    [
                        r["scores"]["to_b"].get(name)
                        for r in mine
                        if r["variant"] == "inject" and r["scale"] == s
                    ],
                    config.band,
                )
                for s in scales
            ]
            n_units = len(_units(mine))
            series.append(
                Series(
                    f"{kind} pairs ({n_units} runs)",
                    tuple(float(x) for x in steps),
                    tuple(m for m, _, _ in stats),
                    tuple(lo for _, lo, _ in stats),
                    tuple(hi for _, _, hi in stats),
                )
            )
            for ref in ("a", "b"):
                mean, _, _ = _band(
                    [r["scores"]["to_b"].get(name) for r in mine if r["variant"] == ref], config.band
                )
                if math.isfinite(mean):
                    hlines.append(HLine(f"{kind}: {ref.upper()} only", mean, i, dotted=ref == "a"))
        band = "min-max" if config.band == "minmax" else "±1 std"
        img = line_plot(
            series,
            title=f"{name}: similarity to B, prompt B at one step ({config.mode}; band {band} over runs)",
            xlabel=f"injection step (convention {config.convention})",
            ylabel=f"{name} to B",
            xticks=[(float(x), str(x)) for x in steps],
            hlines=hlines,
        )
        files[f"plot_{name}"] = write_png(img, out_dir / f"plot_{_slug(name)}.png", {"scorer": name})
    return files


def run_qkv_injection(
    pipe: Pipeline,
    pairs: Sequence[PromptPair],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    config: QKVInjectionConfig | None = None,
    scorers: Mapping[str, Scorer] | None = None,
    progress: Progress | None = None,
) -> AnalysisResult:
    """For every pair and seed: plain A, plain B, and A regenerated with B's self-attention queries, keys
    or values at each scale range; scored, written resumably with a grid and a bar plot per scorer."""
    config = config or QKVInjectionConfig()
    out = Path(out_dir)
    schedule = pipe.schedule_for(h_div_w=config.sampling.h_div_w, pn=config.sampling.pn)
    ranges = config.ranges if config.ranges is not None else (tuple(range(schedule.num_scales)),)
    for r in ranges:
        bad = [s for s in r if s >= schedule.num_scales]
        if bad:
            raise ValueError(
                f"scales {bad} outside [0, {schedule.num_scales - 1}] of the {schedule.pn} schedule"
            )
    injections = {
        (c, tuple(sorted(set(r)))): QKVInjection(c, frozenset(r)) for r in ranges for c in config.components
    }
    variants = [_Variant("a", None, "a"), _Variant("b", None, "b")]
    variants += [_Variant(c, r, inj.path) for (c, r), inj in injections.items()]
    by_path = {inj.path: inj for inj in injections.values()}

    def generate(
        pair: PromptPair, chunk: Sequence[_Variant], seed: int, include_a: bool, include_b: bool
    ) -> dict[str, torch.Tensor]:
        return generate_qkv_injection(
            pipe,
            pair.a,
            pair.b,
            [by_path[v.path] for v in chunk],
            sampling=_seeded(config.sampling, seed),
            cfg_rows=config.cfg_rows,
            include_a=include_a,
            include_b=include_b,
        )

    def describe(v: _Variant) -> dict[str, Any]:
        if v.scales is None:
            return {"steps": None}
        return {"steps": scales_label(step_of(s, config.convention) for s in v.scales)}

    log, computed, skipped = _run_experiment(
        "qkv-injection",
        pipe,
        pairs,
        seeds,
        out,
        settings=config.settings(),
        variants=variants,
        generate=generate,
        batch=config.batch,
        scorers=scorers or {},
        describe=describe,
        progress=progress,
    )
    rows = log.rows
    files = write_qkv_figures(out, rows, config)
    return AnalysisResult(rows, computed, skipped, files)


def write_qkv_figures(out_dir: Path, rows: Sequence[Row], config: QKVInjectionConfig) -> dict[str, Path]:
    """The grid (A, B, A+Q_B, A+K_B, A+V_B per step range) and a bar plot per scorer."""
    files: dict[str, Path] = {}
    if not rows:
        return files
    combos = list(dict.fromkeys((r["variant"], tuple(r["scales"])) for r in rows if r["scales"] is not None))
    combos.sort(key=lambda vr: (vr[1], COMPONENTS.index(vr[0])))
    columns = [("A only", _is("a")), ("B only", _is("b"))]
    names = []
    for c, scales in combos:
        label = f"A+{c.upper()}_B\nsteps {scales_label(step_of(s, config.convention) for s in scales)}"
        names.append(f"{c.upper()}_B\nsteps {scales_label(step_of(s, config.convention) for s in scales)}")
        columns.append((label, _is(c, scales)))
    files["grid"] = write_png(
        _grid(out_dir, rows, columns, config.thumb, MAX_GRID_ROWS), out_dir / "grid.png", {"rows": len(rows)}
    )
    kinds = list(dict.fromkeys(r["pair"]["kind"] for r in rows))
    for name in _scorer_names(rows):
        bars = []
        for kind in kinds:
            stats = [
                _band(
                    [r["scores"]["to_b"].get(name) for r in rows if r["pair"]["kind"] == kind and match(r)],
                    config.band,
                )
                for _, match in columns
            ]
            bars.append(
                Bars(
                    f"{kind} pairs",
                    tuple(m for m, _, _ in stats),
                    tuple(lo for _, lo, _ in stats),
                    tuple(hi for _, _, hi in stats),
                )
            )
        band = "min-max" if config.band == "minmax" else "±1 std"
        img = bar_plot(
            ["A only", "B only", *names],
            bars,
            title=f"{name}: similarity to B (whiskers {band} over pairs and seeds)",
            ylabel=f"{name} to B",
        )
        files[f"bars_{name}"] = write_png(img, out_dir / f"bars_{_slug(name)}.png", {"scorer": name})
    return files


def _seeded(sampling: SamplingConfig, seed: int) -> SamplingConfig:
    return replace(sampling, seed=seed)
