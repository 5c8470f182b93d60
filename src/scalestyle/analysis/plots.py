"""Plots and image grids drawn with PIL alone (no plotting library): a line plot with shaded bands, a bar
plot with whiskers, and a labelled image grid. Enough for the analyses' figures, and light to install."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

Color = tuple[int, int, int]
PALETTE: tuple[Color, ...] = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)
_INK, _GRID, _BG = (30, 30, 30), (225, 225, 225), (255, 255, 255)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int = 13) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@dataclass(frozen=True)
class Series:
    """One line: mean ``y`` at ``x`` and an optional band [lo, hi]; NaN points are skipped."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    lo: tuple[float, ...] | None = None
    hi: tuple[float, ...] | None = None


@dataclass(frozen=True)
class HLine:
    """A horizontal reference line (e.g. the score of plain A or plain B), dashed or dotted."""

    label: str
    y: float
    color: int = 0
    dotted: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 times a power of ten) covering [lo, hi]."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks if ticks[-1] >= hi - step * 1e-9 else [*ticks, ticks[-1] + step]


def _fit(draw: ImageDraw.ImageDraw, text: str, width: float, font: Font) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


class _Axes:
    """Maps data to pixels inside a frame and draws the frame, grid, ticks and labels."""

    def __init__(
        self, box: tuple[int, int, int, int], xlim: tuple[float, float], yticks: list[float]
    ) -> None:
        self.box, self.xlim = box, xlim
        self.ylim = (yticks[0], yticks[-1])
        self.yticks = yticks

    def px(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    def frame(self, draw: ImageDraw.ImageDraw, font: Font, xticks: Sequence[tuple[float, str]]) -> None:
        x0, _, x1, y1 = self.box
        for t in self.yticks:
            _, py = self.px(self.xlim[0], t)
            draw.line([(x0, py), (x1, py)], fill=_GRID)
            label = f"{t:.3g}"
            draw.text((x0 - 6 - draw.textlength(label, font=font), py - 7), label, fill=_INK, font=font)
        for x, label in xticks:
            px, _ = self.px(x, self.ylim[0])
            draw.line([(px, y1), (px, y1 + 4)], fill=_INK)
            draw.text((px - draw.textlength(label, font=font) / 2, y1 + 6), label, fill=_INK, font=font)
        draw.rectangle(self.box, outline=_INK)


def _canvas(
    size: tuple[int, int], title: str, xlabel: str, ylabel: str, box: tuple[int, int, int, int]
) -> Image.Image:
    img = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(img)
    big, font = _font(15), _font(13)
    draw.text(((size[0] - draw.textlength(title, font=big)) / 2, 10), title, fill=_INK, font=big)
    x0, _, x1, y1 = box
    draw.text(((x0 + x1 - draw.textlength(xlabel, font=font)) / 2, y1 + 26), xlabel, fill=_INK, font=font)
    # the y label, written horizontally then rotated into the left margin
    w = int(draw.textlength(ylabel, font=font)) + 4
    label = Image.new("RGB", (w, 18), _BG)
    ImageDraw.Draw(label).text((2, 1), ylabel, fill=_INK, font=font)
    label = label.rotate(90, expand=True)
    img.paste(label, (6, int((box[1] + box[3] - label.height) / 2)))
    return img


def _dashes(draw: ImageDraw.ImageDraw, x0: float, x1: float, y: float, color: Color, dotted: bool) -> None:
    on, period = (2, 5) if dotted else (6, 10)
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + on, x1), y)], fill=color, width=2)
        x += period


def _legend(
    draw: ImageDraw.ImageDraw, items: Sequence[tuple[str, Color, str]], x: int, y: int, font: Font
) -> None:
    """Items (label, colour, "solid" | "dashed" | "dotted")."""
    for i, (label, color, line) in enumerate(items):
        yy = y + i * 20
        if line != "solid":
            _dashes(draw, x, x + 24, yy + 8, color, line == "dotted")
        else:
            draw.line([(x, yy + 8), (x + 24, yy + 8)], fill=color, width=3)
        draw.text((x + 30, yy), _fit(draw, label, 150, font), fill=_INK, font=font)


def line_plot(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xticks: Sequence[tuple[float, str]] | None = None,
    hlines: Sequence[HLine] = (),
    size: tuple[int, int] = (760, 440),
) -> Image.Image:
    """Lines with markers and a translucent band per series, dashed reference lines, legend on the right."""
    box = (70, 40, size[0] - 200, size[1] - 60)
    xs = [x for s in series for x in s.x]
    ys = [v for s in series for arr in (s.y, s.lo or (), s.hi or ()) for v in arr if math.isfinite(v)]
    ys += [h.y for h in hlines if math.isfinite(h.y)]
    if not xs:
        xs = [0.0, 1.0]
    if not ys:
        ys = [0.0, 1.0]
    pad = 0.5 if len(set(xs)) > 1 else 1.0
    axes = _Axes(box, (min(xs) - pad, max(xs) + pad), nice_ticks(min(ys), max(ys)))
    img = _canvas(size, title, xlabel, ylabel, box)
    draw = ImageDraw.Draw(img)
    font = _font(12)
    ticks = list(xticks) if xticks is not None else [(x, f"{x:g}") for x in sorted(set(xs))]
    axes.frame(draw, font, ticks)
    overlay = Image.new("RGBA", size, (0, 0, 0, 0))
    shade = ImageDraw.Draw(overlay)
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        if s.lo is not None and s.hi is not None:
            band = [(x, lo, hi) for x, lo, hi in zip(s.x, s.lo, s.hi, strict=True) if _finite(lo, hi)]
            if len(band) > 1:
                upper = [axes.px(x, hi) for x, _, hi in band]
                lower = [axes.px(x, lo) for x, lo, _ in reversed(band)]
                shade.polygon(upper + lower, fill=(*color, 56))
    img.paste(Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB"))
    draw = ImageDraw.Draw(img)
    for h in hlines:
        color = PALETTE[h.color % len(PALETTE)]
        _, py = axes.px(0, h.y)
        _dashes(draw, box[0], box[2], py, color, h.dotted)
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = [axes.px(x, y) for x, y in zip(s.x, s.y, strict=True) if math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for px, py in pts:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=color)
    legend = [(s.label, PALETTE[i % len(PALETTE)], "solid") for i, s in enumerate(series)]
    legend += [(h.label, PALETTE[h.color % len(PALETTE)], "dotted" if h.dotted else "dashed") for h in hlines]
    _legend(draw, legend, box[2] + 14, box[1], font)
    return img


@dataclass(frozen=True)
class Bars:
    """One bar per group: height ``values[g]`` with a whisker [lo, hi]; NaN bars are left out."""

    label: str
    values: tuple[float, ...]
    lo: tuple[float, ...] | None = None
    hi: tuple[float, ...] | None = None


def bar_plot(
    groups: Sequence[str],
    bars: Sequence[Bars],
    *,
    title: str,
    ylabel: str,
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """Grouped bars (one colour per :class:`Bars`), whiskers, group labels below (up to two lines split
    at "\\n"), legend on the right."""
    width = max(560, 90 + 200 + len(groups) * max(60, 22 * len(bars) + 20))
    size = size or (width, 440)
    box = (70, 40, size[0] - 200, size[1] - 60)
    ys = [0.0] + [
        v for b in bars for arr in (b.values, b.lo or (), b.hi or ()) for v in arr if math.isfinite(v)
    ]
    axes = _Axes(box, (-0.5, len(groups) - 0.5), nice_ticks(min(ys), max(ys)))
    img = _canvas(size, title, "", ylabel, box)
    draw = ImageDraw.Draw(img)
    font = _font(12)
    axes.frame(draw, font, [])
    slot = (box[2] - box[0]) / max(len(groups), 1)
    bar_w = slot * 0.8 / max(len(bars), 1)
    for g, name in enumerate(groups):
        cx, _ = axes.px(g, 0)
        for k, line in enumerate(name.split("\n")[:2]):
            text = _fit(draw, line, slot - 4, font)
            draw.text(
                (cx - draw.textlength(text, font=font) / 2, box[3] + 6 + 15 * k), text, fill=_INK, font=font
            )
        for i, b in enumerate(bars):
            value = b.values[g]
            if not math.isfinite(value):
                continue
            color = PALETTE[i % len(PALETTE)]
            left = cx - slot * 0.4 + i * bar_w
            _, top = axes.px(0, value)
            _, base = axes.px(0, max(0.0, axes.ylim[0]))
            draw.rectangle((left + 1, min(top, base), left + bar_w - 1, max(top, base)), fill=color)
            if b.lo is not None and b.hi is not None and _finite(b.lo[g], b.hi[g]):
                mid = left + bar_w / 2
                _, plo = axes.px(0, b.lo[g])
                _, phi = axes.px(0, b.hi[g])
                draw.line([(mid, plo), (mid, phi)], fill=_INK, width=1)
                for py in (plo, phi):
                    draw.line([(mid - 3, py), (mid + 3, py)], fill=_INK, width=1)
    _legend(
        draw,
        [(b.label, PALETTE[i % len(PALETTE)], "solid") for i, b in enumerate(bars)],
        box[2] + 14,
        box[1],
        font,
    )
    return img


def image_grid(
    cells: Sequence[Sequence[Image.Image | None]],
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    thumb: int = 128,
    label_width: int = 220,
) -> Image.Image:
    """Thumbnails in rows and columns with labels on the left and on top; empty cells are light grey."""
    if len(cells) != len(row_labels):
        raise ValueError(f"{len(cells)} rows but {len(row_labels)} row labels")
    if thumb < 8:
        raise ValueError(f"thumb must be >= 8 pixels, got {thumb}")
    cols = len(col_labels)
    gap, head = 4, 34
    img = Image.new(
        "RGB", (label_width + cols * (thumb + gap) + gap, head + len(cells) * (thumb + gap) + gap), _BG
    )
    draw = ImageDraw.Draw(img)
    font = _font(12)
    for c, label in enumerate(col_labels):
        x = label_width + gap + c * (thumb + gap)
        lines = label.split("\n")[:2]
        for k, line in enumerate(lines):
            text = _fit(draw, line, thumb, font)
            draw.text(
                (x + (thumb - draw.textlength(text, font=font)) / 2, 2 + 15 * k), text, fill=_INK, font=font
            )
    for r, row in enumerate(cells):
        if len(row) != cols:
            raise ValueError(f"row {r} has {len(row)} cells, expected {cols}")
        y = head + gap + r * (thumb + gap)
        lines = row_labels[r].split("\n")
        for k, line in enumerate(lines[: max(1, thumb // 16)]):
            draw.text((4, y + 2 + 15 * k), _fit(draw, line, label_width - 8, font), fill=_INK, font=font)
        for c, cell in enumerate(row):
            x = label_width + gap + c * (thumb + gap)
            if cell is None:
                draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=(235, 235, 235))
                continue
            # nearest keeps small images' pixels crisp when enlarged; big ones are shrunk smoothly
            resample = Image.Resampling.NEAREST if max(cell.size) <= thumb else Image.Resampling.LANCZOS
            img.paste(cell.convert("RGB").resize((thumb, thumb), resample), (x, y))
    return img
