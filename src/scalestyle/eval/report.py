"""Reports of an evaluation run, rebuilt from its rows: summary table (markdown and CSV), one contact
sheet per style and a prompt-vs-style fidelity plot, all drawn with PIL and written atomically.

Protocols: the procedural world (ground-truth classifiers) and FineStyle (CLIP-T, CLIP-I, DINO); the
methods and their references are described in :mod:`scalestyle.eval.methods`.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from scalestyle.metadata import write_png

Row = dict[str, Any]


@dataclass(frozen=True)
class MetricColumn:
    """A summary column: the mean of ``field`` over a method's rows (booleans count as 0/1)."""

    name: str
    field: str
    better: str  # "higher" or "lower"
    unit_range: bool  # values live in [0, 1] (accuracies, probabilities): plots use that range


METRIC_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("content_acc", "content_correct", "higher", True),
    MetricColumn("p_content", "p_content", "higher", True),
    MetricColumn("style_acc", "style_correct", "higher", True),
    MetricColumn("p_style", "p_style", "higher", True),
    MetricColumn("leakage", "leakage", "lower", True),
    MetricColumn("ssim", "ssim", "lower", False),
    MetricColumn("gram_style", "gram_style", "lower", False),
    MetricColumn("content_loss", "content_loss", "higher", False),
    MetricColumn("clip_t", "clip_t", "higher", False),
    MetricColumn("clip_t_full", "clip_t_full", "higher", False),
    MetricColumn("clip_i", "clip_i", "higher", False),
    MetricColumn("dino", "dino", "higher", False),
)
"""Summary columns in table order. ssim and content_loss compare with the *style reference*, which shows
another content: a high SSIM or low content loss there means the reference's layout leaked."""

# first available wins: prompt fidelity (y) and style fidelity (x) of the trade-off plot
PLOT_Y = ("content_acc", "clip_t")
PLOT_X = ("style_acc", "clip_i", "dino")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write to a temporary name in the same folder, fsync, rename: a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(nums) if nums else None


def summarize_rows(
    rows: Sequence[Row], methods: Sequence[str] = (), columns: Sequence[MetricColumn] = METRIC_COLUMNS
) -> list[dict[str, Any]]:
    """One dict per method (``methods`` first, in that order, then any other method in the rows): method,
    images, the mean of every metric column present, seconds_per_image."""
    order = list(dict.fromkeys([*methods, *(r["method"] for r in rows)]))
    out = []
    for method in order:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        entry: dict[str, Any] = {"method": method, "images": len(rs)}
        for col in columns:
            value = _mean([r.get(col.field) for r in rs])
            if value is not None:
                entry[col.name] = value
        entry["seconds_per_image"] = _mean([r.get("seconds") for r in rs])
        out.append(entry)
    return out


def summary_columns(
    summary: Sequence[Mapping[str, Any]], columns: Sequence[MetricColumn] = METRIC_COLUMNS
) -> list[str]:
    present = {k for s in summary for k in s}
    return ["method", "images", *(c.name for c in columns if c.name in present), "seconds_per_image"]


def summary_csv(
    summary: Sequence[Mapping[str, Any]], columns: Sequence[MetricColumn] = METRIC_COLUMNS
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = summary_columns(summary, columns)
    writer.writerow(cols)
    for s in summary:
        writer.writerow(["" if s.get(c) is None else s[c] for c in cols])
    return buf.getvalue()


def summary_markdown(
    summary: Sequence[Mapping[str, Any]], *, title: str = "", columns: Sequence[MetricColumn] = METRIC_COLUMNS
) -> str:
    cols = summary_columns(summary, columns)
    better = {c.name: c.better for c in columns}
    head = [f"{c} {'↑' if better[c] == 'higher' else '↓'}" if c in better else c for c in cols]

    unit = {c.name for c in columns if c.unit_range} | {"seconds_per_image"}

    def cell(col: str, v: Any) -> str:
        if v is None:
            return ""
        if not isinstance(v, float):
            return str(v)
        # losses can be tiny (Gram) or large: significant digits, not a fixed number of decimals
        return f"{v:.3f}" if col in unit else f"{v:.4g}"

    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(c, s.get(c)) for c in cols) + " |" for s in summary]
    return "\n".join(lines) + "\n"


# -- drawing -----------------------------------------------------------------------------------------------

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # loaded on first use, not at import
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=_font())
    return int(right - left), int(bottom - top)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if _text_size(draw, text)[0] <= width:
        return text
    while text and _text_size(draw, text + "…")[0] > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(
    style: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[tuple[str, Sequence[Image.Image | None]]],
    *,
    thumb: int = 96,
) -> Image.Image:
    """A grid: one column per (key, label) in ``columns``, one row per (label, images) in ``rows``;
    None images are drawn as grey "missing" cells."""
    if thumb < 16:
        raise ValueError(f"thumb must be >= 16 pixels, got {thumb}")
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([_text_size(scratch, label)[0] for label, _ in rows] + [40]) + 12
    line_h = _text_size(scratch, "Ag")[1] + 4
    head_h = 2 * line_h + 8
    pad = 4
    width = label_w + len(columns) * (thumb + pad) + pad
    height = head_h + len(rows) * (thumb + pad) + pad
    sheet = Image.new("RGB", (max(width, 200), height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), _fit(draw, f"style: {style}", sheet.width - 2 * pad), fill="black", font=_font())
    for j, (_, label) in enumerate(columns):
        x = label_w + j * (thumb + pad)
        draw.text((x, pad + line_h + 2), _fit(draw, label, thumb), fill="black", font=_font())
    for i, (label, images) in enumerate(rows):
        y = head_h + i * (thumb + pad)
        draw.text((pad, y + thumb // 2 - line_h // 2), label, fill="black", font=_font())
        for j, img in enumerate(images):
            x = label_w + j * (thumb + pad)
            if img is None:
                draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill="#cccccc")
                draw.text((x + 4, y + thumb // 2 - 6), "missing", fill="#555555", font=_font())
            else:
                # nearest keeps the tokens' pixels visible when small images are enlarged
                resample = Image.Resampling.NEAREST if img.width < thumb else Image.Resampling.LANCZOS
                sheet.paste(img.convert("RGB").resize((thumb, thumb), resample), (x, y))
    return sheet


def _axis_range(values: Sequence[float], unit: bool) -> tuple[float, float]:
    if unit:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    return lo - 0.1 * span, hi + 0.1 * span


def pick_plot_axes(summary: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(x, y): the first style-fidelity and prompt-fidelity metric every method has, or None."""

    def first(options: Sequence[str]) -> str | None:
        return next((m for m in options if summary and all(s.get(m) is not None for s in summary)), None)

    x, y = first(PLOT_X), first(PLOT_Y)
    return (x, y) if x and y else None


def tradeoff_plot(
    summary: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    *,
    size: tuple[int, int] = (640, 480),
    title: str = "",
) -> Image.Image:
    """Each method as a labelled point: ``x`` (style fidelity) against ``y`` (prompt fidelity)."""
    if not summary:
        raise ValueError("no method to plot")
    unit = {c.name: c.unit_range for c in METRIC_COLUMNS}
    xs, ys = [float(s[x]) for s in summary], [float(s[y]) for s in summary]
    (x0, x1), (y0, y1) = _axis_range(xs, unit.get(x, False)), _axis_range(ys, unit.get(y, False))
    w, h = size
    left, right, top, bottom = 70, 30, 40, 60
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)

    def px(vx: float, vy: float) -> tuple[float, float]:
        return (
            left + (vx - x0) / (x1 - x0) * (w - left - right),
            h - bottom - (vy - y0) / (y1 - y0) * (h - top - bottom),
        )

    draw.rectangle((left, top, w - right, h - bottom), outline="black")
    for k in range(5):
        fx, fy = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        gx, _ = px(fx, y0)
        _, gy = px(x0, fy)
        draw.line((gx, top, gx, h - bottom), fill="#e6e6e6")
        draw.line((left, gy, w - right, gy), fill="#e6e6e6")
        tx = f"{fx:.2f}"
        draw.text((gx - _text_size(draw, tx)[0] / 2, h - bottom + 6), tx, fill="black", font=_font())
        ty = f"{fy:.2f}"
        draw.text((left - 8 - _text_size(draw, ty)[0], gy - 6), ty, fill="black", font=_font())
    draw.rectangle((left, top, w - right, h - bottom), outline="black")
    xl, yl = f"style fidelity: {x}", f"prompt fidelity: {y}"
    draw.text(((w - _text_size(draw, xl)[0]) / 2, h - 28), xl, fill="black", font=_font())
    draw.text((8, 12), yl, fill="black", font=_font())
    if title:
        draw.text((w - right - _text_size(draw, title)[0], 12), title, fill="black", font=_font())
    placed: list[tuple[float, float, float, float]] = []
    line_h = _text_size(draw, "Ag")[1] + 3
    for i, (s, vx, vy) in enumerate(zip(summary, xs, ys, strict=True)):
        cx, cy = px(vx, vy)
        color = _PALETTE[i % len(_PALETTE)]
        draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=color, outline="black")
        label = str(s["method"])
        tw = _text_size(draw, label)[0]
        # methods often tie (same accuracy): stack their labels instead of printing them over each other
        boxes = [
            (cx + 8, cy - 6 + k * line_h, cx + 8 + tw, cy - 6 + (k + 1) * line_h) for k in range(-12, 13)
        ]
        boxes.sort(key=lambda b: (not top <= b[1] <= b[3] <= h - bottom, abs(b[1] - (cy - 6))))
        box = next(
            (
                box
                for box in boxes
                if not any(
                    b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in placed
                )
            ),
            boxes[0],
        )
        placed.append(box)
        draw.text(box[:2], label, fill=color, font=_font())
    return img


def slug(text: str) -> str:
    """A file-name-safe lower-case form of ``text`` (runs of other characters become one dash)."""
    keep = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in keep:
        keep = keep.replace("--", "-")
    return keep or "x"


def write_reports(
    out_dir: Path,
    rows: Sequence[Row],
    *,
    methods: Sequence[str] = (),
    reference: Callable[[Row], Image.Image | None],
    thumb: int = 96,
    max_columns: int = 32,
    title: str = "",
    columns: Sequence[MetricColumn] = METRIC_COLUMNS,
    inputs: Mapping[str, Callable[[Row], Image.Image | None]] | None = None,
) -> dict[str, Path]:
    """summary.md, summary.csv, sheets/<style>.png and plot.png from ``rows``; returns what was written.
    ``reference(row)`` gives the row's style reference for the sheets' first row; ``inputs`` adds rows
    above the methods' (name -> image of a row), such as a transfer's content image and true target."""
    if max_columns < 1:
        raise ValueError(f"max_columns must be >= 1, got {max_columns}")
    files: dict[str, Path] = {}
    summary = summarize_rows(rows, methods, columns)
    files["summary_md"] = atomic_write_bytes(
        out_dir / "summary.md", summary_markdown(summary, title=title, columns=columns).encode()
    )
    files["summary_csv"] = atomic_write_bytes(out_dir / "summary.csv", summary_csv(summary, columns).encode())
    order = [s["method"] for s in summary]
    sheets = out_dir / "sheets"
    for style in dict.fromkeys(r["style"] for r in rows):
        in_style = [r for r in rows if r["style"] == style]
        seeds = {r["seed"] for r in in_style}
        keys = list(dict.fromkeys((r["content"], r["seed"]) for r in in_style))[:max_columns]
        first = {(r["content"], r["seed"]): r for r in reversed(in_style)}
        labels = [(f"{c}/{s}", c if len(seeds) == 1 else f"{c} s{s}") for c, s in keys]
        grid: list[tuple[str, Sequence[Image.Image | None]]] = [
            ("reference", [reference(first[k]) for k in keys])
        ]
        grid += [(name, [fn(first[k]) for k in keys]) for name, fn in (inputs or {}).items()]
        by_key = {(r["method"], r["content"], r["seed"]): r for r in in_style}
        for method in order:
            cells: list[Image.Image | None] = []
            for k in keys:
                row = by_key.get((method, *k))
                path = out_dir / row["image"] if row else None
                if path is not None and path.is_file():
                    with Image.open(path) as im:
                        cells.append(im.convert("RGB"))
                else:
                    cells.append(None)
            grid.append((method, cells))
        sheets.mkdir(exist_ok=True)
        sheet = contact_sheet(str(style), labels, grid, thumb=thumb)
        files[f"sheet:{style}"] = write_png(sheet, sheets / f"{slug(str(style))}.png", {"style": style})
    axes = pick_plot_axes(summary)
    if axes is not None:
        plot = tradeoff_plot(summary, *axes, title=title)
        files["plot"] = write_png(plot, out_dir / "plot.png", {"x": axes[0], "y": axes[1]})
    return files
