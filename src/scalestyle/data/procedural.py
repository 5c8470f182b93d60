"""The procedural world: images whose content and style are known exactly, the demo's ground truth.

Every image is one object (the *content*: a shape or simple object such as a star, a house or a fish) drawn
in one *style* (a look: palette, fill texture, stroke and filters). The two are independent by construction,
which is what lets benchmarks measure content accuracy, style accuracy and content leakage with classifiers
trained on this world:

- Content only decides the object's silhouette. Its pose (position, size, rotation, mirror) comes from a
  generator seeded by ``("layout", content, seed)``, so ``render(c, s1, k)`` and ``render(c, s2, k)`` have
  the same silhouette and the same :attr:`Sample.mask` whatever the styles: triplets use that to pair the
  neutral content image with its stylised target pixel for pixel.
- Style only decides how the silhouette and the background are painted. A style is a :class:`_Look`: a
  background paint, an object paint, a stroke (filled, outline, glow, rough, ...) and a chain of filters
  (pixelate, posterize, blur, grain, ...). Its small per-image jitter (hue, saturation, value, texture
  frequency and angle) comes from a generator seeded by ``("style", content, style, seed)``. No paint
  looks at which content it paints (only at the silhouette's coverage), so any content takes any style.

Generators are NumPy PCG64 seeded from a BLAKE2b digest of those tuples, never from Python's ``hash()``
(salted per process), so an image is the same on every run and platform. Painting is done in float64:
CPUs may differ in the last ulp of sin, cos or hypot (SIMD vs libm), and at float64 such a difference is
vanishingly unlikely to flip a pixel's rounding to 8 bits.

Everything is drawn at the requested size: geometry through supersampled polygons, and every frequency,
width and blur radius is a fraction of the image side, so a 256-pixel render shows the same scene as the
64-pixel one (pose, palette, pattern phases) with finer detail, not an upscale.

Splits: :data:`HELD_OUT_STYLES` never appear in the ``"train"`` split (samples, triplets, dataset); all
contents do. Seeds are split into disjoint ranges (:data:`TRAIN_SEEDS`, :data:`EVAL_SEEDS`), so benchmarks
never evaluate on an image a model was trained on. A third range, :data:`CLASSIFIER_SEEDS`, serves the
measuring classifiers, which must see held-out styles without seeing the benchmark's images.
"""

from __future__ import annotations

import colorsys
import hashlib
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    "CLASSIFIER_SEEDS",
    "CONTENTS",
    "EVAL_SEEDS",
    "HELD_OUT_STYLES",
    "MAX_SIZE",
    "MIN_SIZE",
    "NEUTRAL_STYLE",
    "REMIX_SOURCES",
    "SPLITS",
    "SPLIT_SEEDS",
    "STYLES",
    "SUBJECTS",
    "SUBJECT_CLASSES",
    "TRAIN_SEEDS",
    "TRAIN_STYLES",
    "ProceduralDataset",
    "Remix",
    "Sample",
    "Split",
    "Triplet",
    "caption",
    "content_caption",
    "iter_samples",
    "remix",
    "remix_triplet",
    "render",
    "render_remix",
    "render_subject",
    "sample_at",
    "split_styles",
    "style_caption",
    "to_tensor",
    "triplet",
]

MIN_SIZE = 32
MAX_SIZE = 1024

Split = Literal["train", "eval", "classifier"]
SPLITS: tuple[str, ...] = ("train", "eval", "classifier")

# Disjoint seed ranges: an evaluation image can never coincide with a training image, even for the same
# content and style.
TRAIN_SEEDS = range(0, 1_000_000_000)
EVAL_SEEDS = range(1_000_000_000, 2_000_000_000)
CLASSIFIER_SEEDS = range(2_000_000_000, 3_000_000_000)
SPLIT_SEEDS: dict[str, range] = {"train": TRAIN_SEEDS, "eval": EVAL_SEEDS, "classifier": CLASSIFIER_SEEDS}

# ----------------------------------------------------------------------------------------------------------
# Contents: silhouettes in a unit box (y points down), each a list of polygons drawn in order, additive ones
# filling and subtractive ones cutting holes (a ring's hole, a house's door).


@dataclass(frozen=True)
class _Content:
    article: str
    max_rotation: float  # degrees either way; small for objects that have an up (a house upside down is odd)
    mirror: bool  # whether a left-right flip is allowed (a fish may swim either way)


_CONTENT_SPECS: dict[str, _Content] = {
    "circle": _Content("a", 0.0, False),
    "square": _Content("a", 15.0, False),  # beyond ~20 degrees it reads as a diamond
    "triangle": _Content("a", 15.0, False),
    "star": _Content("a", 36.0, False),  # a 5-point star repeats every 72 degrees
    "heart": _Content("a", 20.0, False),
    "cross": _Content("a", 15.0, False),  # at 45 degrees a plus becomes an x
    "ring": _Content("a", 0.0, False),
    "arrow": _Content("an", 180.0, False),
    "house": _Content("a", 10.0, True),
    "tree": _Content("a", 10.0, False),
    "moon": _Content("a", 35.0, True),
    "lightning bolt": _Content("a", 20.0, True),
    "fish": _Content("a", 25.0, True),
    "flower": _Content("a", 15.0, True),
    "mushroom": _Content("a", 12.0, True),
    "hourglass": _Content("an", 15.0, False),  # silent h
}

CONTENTS: tuple[str, ...] = tuple(_CONTENT_SPECS)

# Subjects: shapes drawn like contents but never part of CONTENTS, so the demo model (trained on CONTENTS
# only) has never seen them; subject-driven fine-tuning (proxy-tuning, issue 18) teaches them to it. Each
# names the content it is "a kind of" (DreamBooth's class word), whose renders serve as prior images.
_SUBJECT_SPECS: dict[str, _Content] = {
    "hexstar": _Content("a", 30.0, False),  # a six-point star (hexagram) repeats every 60 degrees
    "cactus": _Content("a", 10.0, True),
}
SUBJECT_CLASSES: dict[str, str] = {"hexstar": "star", "cactus": "tree"}
SUBJECTS: tuple[str, ...] = tuple(_SUBJECT_SPECS)

_Polys = tuple[tuple[bool, np.ndarray], ...]


def _ellipse(
    cx: float, cy: float, rx: float, ry: float, n: int = 48, a0: float = 0.0, a1: float = 360.0
) -> np.ndarray:
    t = np.deg2rad(np.linspace(a0, a1, n, endpoint=a1 - a0 < 360.0))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def _poly(*pts: tuple[float, float]) -> np.ndarray:
    return np.array(pts, dtype=np.float64)


@cache
def _silhouette(content: str) -> _Polys:
    add, cut = True, False
    if content == "circle":
        return ((add, _ellipse(0, 0, 1, 1, 64)),)
    if content == "square":
        return ((add, _rect(-0.85, -0.85, 0.85, 0.85)),)
    if content == "triangle":
        return ((add, _poly((0, -1), (0.98, 0.72), (-0.98, 0.72))),)
    if content == "star":
        ang = np.deg2rad(-90 + 36 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return ((add, np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)),)
    if content == "heart":
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return ((add, np.stack([x, y], axis=1) / 17.0),)
    if content == "cross":
        return ((add, _rect(-0.3, -1, 0.3, 1)), (add, _rect(-1, -0.3, 1, 0.3)))
    if content == "ring":
        return ((add, _ellipse(0, 0, 1, 1, 64)), (cut, _ellipse(0, 0, 0.52, 0.52, 48)))
    if content == "arrow":
        return ((add, _rect(-1, -0.2, 0.2, 0.2)), (add, _poly((0.1, -0.62), (1, 0), (0.1, 0.62))))
    if content == "house":
        return (
            (add, _rect(0.38, -0.85, 0.62, -0.3)),  # chimney
            (add, _rect(-0.72, -0.15, 0.72, 0.95)),
            (add, _poly((-0.98, -0.05), (0, -0.98), (0.98, -0.05))),
            (cut, _rect(-0.2, 0.38, 0.2, 0.95)),  # door
        )
    if content == "tree":
        return (
            (add, _rect(-0.16, 0.5, 0.16, 1)),
            (add, _poly((0, -1), (0.58, -0.25), (-0.58, -0.25))),
            (add, _poly((0, -0.6), (0.8, 0.22), (-0.8, 0.22))),
            (add, _poly((0, -0.15), (1, 0.62), (-1, 0.62))),
        )
    if content == "moon":
        return ((add, _ellipse(0, 0, 1, 1, 64)), (cut, _ellipse(0.48, -0.22, 0.84, 0.84, 64)))
    if content == "lightning bolt":
        return (
            (
                add,
                _poly(
                    (0.05, -1),
                    (-0.58, 0.12),
                    (-0.02, 0.12),
                    (-0.32, 1),
                    (0.62, -0.22),
                    (0.1, -0.22),
                    (0.52, -1),
                ),
            ),
        )
    if content == "fish":
        return (
            (add, _ellipse(-0.15, 0, 0.72, 0.46, 48)),
            (add, _poly((0.38, 0), (1, -0.52), (0.88, 0), (1, 0.52))),
            (cut, _ellipse(-0.52, -0.1, 0.1, 0.1, 16)),  # eye
        )
    if content == "flower":
        petals = [
            (add, _ellipse(0.42 * np.cos(a), -0.38 + 0.42 * np.sin(a), 0.3, 0.3, 24))
            for a in np.deg2rad(np.arange(6) * 60 + 90)
        ]
        leaf = _ellipse(0, 0, 0.3, 0.12, 24)
        c, s = np.cos(np.deg2rad(-35)), np.sin(np.deg2rad(-35))
        leaf = leaf @ np.array([[c, s], [-s, c]]) + np.array([0.27, 0.58])
        return (
            (add, _rect(-0.06, -0.1, 0.06, 1)),
            (add, leaf),
            *petals,
            (cut, _ellipse(0, -0.38, 0.22, 0.22, 24)),
            (add, _ellipse(0, -0.38, 0.15, 0.15, 24)),
        )
    if content == "mushroom":
        return (
            (add, _rect(-0.28, -0.05, 0.28, 0.92)),
            (add, _ellipse(0, 0.02, 1, 0.86, 40, 180, 360)),
            (cut, _ellipse(-0.48, -0.36, 0.13, 0.13, 16)),
            (cut, _ellipse(0.08, -0.6, 0.15, 0.15, 16)),
            (cut, _ellipse(0.52, -0.28, 0.12, 0.12, 16)),
        )
    if content == "hourglass":
        return (
            (
                add,
                _poly(
                    (-0.72, -1),
                    (0.72, -1),
                    (0.72, -0.84),
                    (0.12, 0),
                    (0.72, 0.84),
                    (0.72, 1),
                    (-0.72, 1),
                    (-0.72, 0.84),
                    (-0.12, 0),
                    (-0.72, -0.84),
                ),
            ),
        )
    if content == "hexstar":
        ang = np.deg2rad(-90 + 30 * np.arange(12))
        rad = np.where(np.arange(12) % 2 == 0, 1.0, 0.58)  # two overlapping triangles' outline
        return ((add, np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)),)
    if content == "cactus":
        return (
            (add, _rect(-0.2, -0.7, 0.2, 1)),
            (add, _ellipse(0, -0.7, 0.2, 0.28, 24)),
            (add, _rect(-0.62, -0.05, -0.2, 0.15)),  # left arm: elbow, then up
            (add, _rect(-0.62, -0.45, -0.42, 0.15)),
            (add, _ellipse(-0.52, -0.45, 0.1, 0.14, 16)),
            (add, _rect(0.2, 0.2, 0.6, 0.4)),  # right arm, lower
            (add, _rect(0.4, -0.25, 0.6, 0.4)),
            (add, _ellipse(0.5, -0.25, 0.1, 0.14, 16)),
        )
    raise AssertionError(content)  # unreachable: contents are validated first


def _supersampling(size: int) -> int:
    # 4x4 samples per pixel keeps 64-pixel edges smooth; large images need less and would cost more
    return 4 if size <= 128 else 2 if size <= 512 else 1


def _coverage(content: str, seed: int, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the posed silhouette, float64 (size, size) in [0, 1]."""
    rng = _rng("layout", content, seed)
    spec = _CONTENT_SPECS.get(content) or _SUBJECT_SPECS[content]
    theta = np.deg2rad(rng.uniform(-spec.max_rotation, spec.max_rotation))
    flip = -1.0 if spec.mirror and rng.random() < 0.5 else 1.0
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[flip * c, flip * s], [-s, c]])  # mirror x first, then rotate
    polys = [(add, pts @ rot) for add, pts in _silhouette(content)]
    solid = np.concatenate([pts for add, pts in polys if add])
    lo, hi = solid.min(axis=0), solid.max(axis=0)
    extent = float((hi - lo).max())
    # the longer side spans 50-78% of the frame and the whole object stays inside a 5% margin
    scale = rng.uniform(0.5, 0.78) * size / extent
    half = (hi - lo) * scale / 2
    margin = 0.05 * size
    room = np.maximum(size / 2 - margin - half, 0.0)
    centre = size / 2 + rng.uniform(-1.0, 1.0, 2) * room
    ss = _supersampling(size)
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    offset = centre - (lo + hi) / 2 * scale
    for add, pts in polys:
        xy = (pts * scale + offset) * ss
        draw.polygon([(float(x), float(y)) for x, y in xy], fill=255 if add else 0)
    if ss > 1:
        canvas = canvas.reduce(ss)
    return np.asarray(canvas, dtype=np.float64) / 255.0


# ----------------------------------------------------------------------------------------------------------
# Styles: declarative looks. Colours are hex strings; frequencies are cycles (or cells) per image side;
# widths and blur radii are fractions of the side, so a look is the same at every size.


@dataclass(frozen=True)
class _Paint:
    texture: str = "solid"
    colors: tuple[str, ...] = ("#000000",)
    freq: float = 8.0
    angle: float = 0.0  # degrees
    param: float = 0.5  # texture-specific: stripe duty, dot radius, line width (in cells/periods)


@dataclass(frozen=True)
class _Look:
    background: _Paint
    fill: _Paint
    stroke: str = "fill"
    width: float = 0.03  # stroke width as a fraction of the side
    line: str = "#000000"  # the stroke's own colour where the stroke mode has one
    filters: tuple[tuple[str, float], ...] = ()
    jitter: float = 1.0  # scales the per-image hue/saturation/value/frequency jitter


def _P(texture: str, *colors: str, freq: float = 8.0, angle: float = 0.0, param: float = 0.5) -> _Paint:
    return _Paint(texture, colors, freq, angle, param)


_LOOKS: dict[str, _Look] = {
    # The neutral reference: dark object on a light ground, nothing else, so it carries content alone.
    "plain": _Look(_P("solid", "#eeeeee"), _P("solid", "#2b2b2b"), jitter=0.3),
    "neon": _Look(_P("linear", "#1a0833", "#06051a", angle=90), _P("solid", "#ff2fd0"), "glow", 0.028),
    "blueprint": _Look(
        _P("grid", "#1b4c8c", "#4f7fc4", freq=8, param=0.07), _P("solid", "#eef4ff"), "outline", 0.024
    ),
    "pop art": _Look(
        _P("dots", "#ffd91a", "#ff8a00", freq=9, angle=45, param=0.27),
        _P("dots", "#e3122a", "#ff9fb0", freq=9, angle=45, param=0.2),
        "fill+outline",
        0.045,
        "#111111",
    ),
    "pastel": _Look(
        _P("linear", "#ffe3ec", "#fbcfdc", angle=90),
        _P("linear", "#6fd3b0", "#9aa6ee", angle=45),
        filters=(("blur", 0.014),),
    ),
    "sepia": _Look(
        _P("radial", "#f0ddb6", "#a9804a"),
        _P("solid", "#4a2c14"),
        filters=(("blur", 0.006), ("grain", 0.06), ("vignette", 0.7)),
    ),
    "chalkboard": _Look(
        _P("noise", "#24332b", "#34473c", freq=4),
        _P("grain", "#f4f2ea", "#a5b0a7"),
        "rough outline",
        0.035,
        filters=(("grain", 0.03),),
    ),
    "stained glass": _Look(
        _P("cells", "#0e0e0e", "#2a2a52", "#4a2430", "#21432f", "#4a3f1c", freq=5, param=0.07),
        _P("cells", "#0e0e0e", "#e02a3f", "#1d6ff2", "#2bbf4f", "#f8bb10", "#9a3fe0", freq=5, param=0.07),
        "fill+outline",
        0.035,
        "#0e0e0e",
    ),
    "risograph": _Look(
        _P("grain", "#f6f1e5", "#e8e0cb"),
        _P("grain", "#ff4fa6", "#ff8cc6"),
        "riso",
        line="#2a6ff0",
        filters=(("grain", 0.035),),
    ),
    "8bit": _Look(
        _P("solid", "#5cc8f5"),
        _P("solid", "#ff8a1d"),
        "fill+outline",
        0.04,
        "#161616",
        filters=(("pixelate", 16), ("posterize", 5)),
    ),
    "watercolor": _Look(
        _P("noise", "#fbf8f1", "#ebe4d4", freq=6),
        _P("noise", "#2a66cc", "#8ab8f0", freq=3),
        "wash",
        filters=(("blur", 0.008),),
    ),
    "newsprint": _Look(
        _P("grain", "#dedacd", "#cdc8b9"),
        _P("dots", "#d6d1c3", "#1c1c1c", freq=15, angle=45, param=0.34),
        filters=(("blur", 0.005), ("grain", 0.05)),
    ),
    "sunset gradient": _Look(_P("linear", "#4a1f7a", "#d9416a", "#ffa340", angle=90), _P("solid", "#1b0d22")),
    "candy stripes": _Look(
        _P("solid", "#d3efff"),
        _P("stripes", "#e3213b", "#ffffff", freq=8, angle=45),
        "fill+outline",
        0.02,
        "#9a1024",
    ),
    "camouflage": _Look(
        _P("solid", "#cfbe8f"), _P("camo", "#4b5a22", "#6f7d38", "#3e2f1c", "#28321a", freq=5)
    ),
    "thermal": _Look(
        _P("noise", "#0b0220", "#2a0b5c", freq=3),
        _P("heat", "#3a0e6e", "#8a1f6a", "#d03c48", "#f5811f", "#fcd23a", "#fcffb0"),
        filters=(("blur", 0.012),),
    ),
    "art deco": _Look(
        _P("rays", "#101015", "#4a3e22", freq=28, param=0.18),
        _P("stripes", "#e8bf4e", "#9c7a26", freq=18, angle=90),
        "fill+outline",
        0.02,
        "#fbe596",
    ),
    "crayon": _Look(
        _P("grain", "#fdfdf9", "#efeee6"),
        _P("hatch", "#fdfdf9", "#1f9a3a", freq=14, angle=60, param=0.62),
        "rough",
        filters=(("grain", 0.03),),
    ),
    "mosaic": _Look(
        _P("noise", "#c4572f", "#dd8a55", freq=8),
        _P("noise", "#168d93", "#46c6c2", freq=8),
        filters=(("tiles", 16),),
    ),
    "glitch": _Look(
        _P("solid", "#0a0a0a"),
        _P("stripes", "#00e5ff", "#0090b0", freq=24, angle=90, param=0.7),
        filters=(("rowjitter", 0.09), ("chroma", 0.035), ("scanlines", 0.45)),
    ),
    "linocut": _Look(
        _P("grain", "#f2ead3", "#e6dabd"),
        _P("wavy", "#151515", "#f2ead3", freq=11, param=0.22),
        "rough",
    ),
    "embroidery": _Look(
        _P("weave", "#efe5cf", "#d6c8a6", freq=32),
        _P("stitch", "#efe5cf", "#c42338", freq=20, param=0.16),
        "cells",
    ),
    "retro polka": _Look(_P("dots", "#ff7aa5", "#ffffff", freq=6, param=0.2), _P("solid", "#1d2b5e")),
    "night vision": _Look(
        _P("noise", "#021a06", "#0c4214", freq=5),
        _P("noise", "#5cf04c", "#c0ffa8", freq=6),
        filters=(("blur", 0.008), ("scanlines", 0.35), ("grain", 0.08), ("vignette", 0.9)),
    ),
    "marble": _Look(_P("marble", "#2b2e36", "#474c58", freq=2), _P("marble", "#f3f1ec", "#85858f", freq=2.5)),
    "tie dye": _Look(
        _P("tiedye", "#ff3b3b", "#ff9f1c", "#ffe53b", "#3bd16f", "#2f9bff", "#9b5cff", freq=3),
        _P("solid", "#ffffff"),
        "fill+outline",
        0.025,
        "#222222",
    ),
    "cyanotype": _Look(
        _P("noise", "#0e3877", "#1e5399", freq=5),
        _P("noise", "#e8f0fa", "#b9cbe6", freq=6),
        filters=(("blur", 0.01), ("grain", 0.04)),
    ),
    "graffiti": _Look(
        _P("bricks", "#a04a30", "#cdbfae", freq=6),
        _P("linear", "#a6ff00", "#ff2fb4", angle=0),
        "spray",
        0.02,
        "#111111",
        filters=(("grain", 0.03),),
    ),
}

STYLES: tuple[str, ...] = tuple(_LOOKS)
NEUTRAL_STYLE = "plain"
# One of each kind of look is held out (a palette-led look, a texture, a stroke, a filter chain, a pattern,
# a colour field, a carved fill) so that held-out evaluation covers every way styles differ.
HELD_OUT_STYLES: tuple[str, ...] = (
    "crayon",
    "cyanotype",
    "embroidery",
    "linocut",
    "marble",
    "night vision",
    "tie dye",
)
TRAIN_STYLES: tuple[str, ...] = tuple(s for s in STYLES if s not in HELD_OUT_STYLES)

_CONTENT_INDEX = {c: i for i, c in enumerate(CONTENTS)}
_STYLE_INDEX = {s: i for i, s in enumerate(STYLES)}

# ----------------------------------------------------------------------------------------------------------
# Validation and captions


def _check_content(content: str) -> None:
    if content not in _CONTENT_INDEX:
        raise ValueError(f"unknown content {content!r}; choose one of {list(CONTENTS)}")


def _check_style(style: str) -> None:
    if style not in _STYLE_INDEX:
        raise ValueError(f"unknown style {style!r}; choose one of {list(STYLES)}")


def _check_size(size: int) -> int:
    size = operator.index(size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}] pixels, got {size}")
    return size


def _check_split(split: str) -> range:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    return SPLIT_SEEDS[split]


def content_caption(content: str) -> str:
    """``"a star"``, ``"an arrow"``: the content prompt."""
    _check_content(content)
    return f"{_CONTENT_SPECS[content].article} {content}"


def style_caption(style: str) -> str:
    """``"neon style"``: the style prompt."""
    _check_style(style)
    return f"{style} style"


def caption(content: str, style: str) -> str:
    """``"a star in neon style"``: the generation prompt."""
    return f"{content_caption(content)} in {style_caption(style)}"


# ----------------------------------------------------------------------------------------------------------
# Painting


def _rng(*parts: object) -> np.random.Generator:
    # BLAKE2b of the parts' reprs: stable across processes, platforms and Python versions
    digest = hashlib.blake2b("\x1f".join(repr(p) for p in parts).encode(), digest_size=16).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u right, v down) in [0, 1], shared read-only between renders."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size
    v, u = np.meshgrid(t, t, indexing="ij")
    u.flags.writeable = False
    v.flags.writeable = False
    return u, v


@dataclass(frozen=True)
class _Ctx:
    """What a look's painters share for one render.

    ``rng`` only ever makes draws whose number does not depend on the size (pattern phases, noise lattices,
    cell centres), and per-pixel noise comes from :meth:`pixels`, one stream per call: so the same image at
    another size shows the same scene rather than a reshuffled one.
    """

    size: int
    key: tuple[str, str, int]
    rng: np.random.Generator
    alpha: np.ndarray
    hue: float
    sat: float
    val: float
    freq_mul: float
    angle_off: float
    calls: list[int] = field(default_factory=lambda: [0])

    def pixels(self, normal: bool = False) -> np.ndarray:
        """Per-pixel noise (size, size): uniform in [0, 1), or standard normal."""
        self.calls[0] += 1
        g = _rng("pixels", *self.key, self.calls[0])
        shape = (self.size, self.size)
        return g.standard_normal(shape) if normal else g.random(shape)

    @property
    def uv(self) -> tuple[np.ndarray, np.ndarray]:
        return _grid(self.size)

    def color(self, hex_color: str) -> np.ndarray:
        return _jittered(hex_color, self.hue, self.sat, self.val)

    def colors(self, paint: _Paint) -> np.ndarray:
        return np.stack([self.color(c) for c in paint.colors])


@lru_cache(maxsize=1024)
def _hex(hex_color: str) -> tuple[float, float, float]:
    h = hex_color.lstrip("#")
    return (int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255)


def _jittered(hex_color: str, hue: float, sat: float, val: float) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*_hex(hex_color))
    r, g, b = colorsys.hsv_to_rgb((h + hue) % 1.0, min(s * sat, 1.0), min(v * val, 1.0))
    return np.array((r, g, b), dtype=np.float64)


def _ramp(t: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour ramp: t (H, W) in [0, 1] through cols (n, 3) to (H, W, 3)."""
    n = len(cols)
    if n == 1:
        return np.broadcast_to(cols[0], (*t.shape, 3)).astype(np.float64)
    x = np.clip(t, 0.0, 1.0) * (n - 1)
    i = np.minimum(x.astype(np.int64), n - 2)
    f = (x - i)[..., None].astype(np.float64)
    return cols[i] * (1 - f) + cols[i + 1] * f


def _aa(signed: np.ndarray, per_pixel: float | np.ndarray) -> np.ndarray:
    """1 where ``signed`` > 0, with a one-pixel linear edge; ``per_pixel`` is its change across a pixel."""
    return np.clip(0.5 + signed / np.maximum(per_pixel, 1e-6), 0.0, 1.0)


def _rotated(ctx: _Ctx, angle: float, centred: bool = False) -> tuple[np.ndarray, np.ndarray]:
    u, v = ctx.uv
    if centred:
        u, v = u - 0.5, v - 0.5
    a = np.deg2rad(angle + ctx.angle_off)
    c, s = np.cos(a), np.sin(a)
    return u * c + v * s, -u * s + v * c


def _value_noise(ctx: _Ctx, freq: float) -> np.ndarray:
    """Smooth value noise with ``freq`` cells per side, (H, W) in [0, 1]."""
    n = int(np.ceil(freq)) + 2
    grid = ctx.rng.random((n + 1, n + 1))
    ox, oy = ctx.rng.random(2)
    u, v = ctx.uv
    x, y = u * freq + ox, v * freq + oy
    ix, iy = x.astype(np.int64), y.astype(np.int64)
    fx, fy = x - ix, y - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = grid[iy, ix] * (1 - fx) + grid[iy, ix + 1] * fx
    bottom = grid[iy + 1, ix] * (1 - fx) + grid[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _fractal(ctx: _Ctx, freq: float) -> np.ndarray:
    """Two octaves of value noise stretched to fill [0, 1] (one octave alone looks blobby and pale)."""
    n = 0.65 * _value_noise(ctx, freq) + 0.35 * _value_noise(ctx, 2 * freq)
    return np.clip((n - 0.2) / 0.6, 0.0, 1.0)


def _tex_solid(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    return _ramp(np.zeros((ctx.size, ctx.size), np.float64), cols)


def _tex_linear(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    x, _ = _rotated(ctx, p.angle, centred=True)
    return _ramp(x + 0.5, cols)


def _tex_radial(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    u, v = ctx.uv
    return _ramp(np.hypot(u - 0.5, v - 0.5) / 0.7071, cols)


def _tex_stripes(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    f = p.freq * ctx.freq_mul
    x, _ = _rotated(ctx, p.angle)
    s = np.sin(2 * np.pi * (f * x + ctx.rng.random())) - np.cos(np.pi * p.param)
    return _ramp(_aa(s, 2 * np.pi * f / ctx.size), cols)


def _tex_wavy(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    # carved lines: horizontal stripes bent by a slow sine, thin second colour (the gouge) on the first
    f = p.freq * ctx.freq_mul
    u, v = ctx.uv
    bend = 0.35 * np.sin(2 * np.pi * (1.5 * u + ctx.rng.random()))
    s = np.cos(2 * np.pi * (f * v + bend)) - np.cos(np.pi * p.param)
    return _ramp(_aa(s, 2 * np.pi * f / ctx.size), cols)


def _cell_coords(ctx: _Ctx, p: _Paint, jitter: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    f = p.freq * (ctx.freq_mul if jitter else 1.0)
    x, y = _rotated(ctx, p.angle)
    ox, oy = ctx.rng.random(2)
    return f * x + ox, f * y + oy, f


def _tex_dots(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    x, y, f = _cell_coords(ctx, p)
    d = np.hypot(x - np.floor(x) - 0.5, y - np.floor(y) - 0.5)
    return _ramp(_aa(p.param - d, f / ctx.size), cols)


def _tex_grid(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    x, y, f = _cell_coords(ctx, p)
    dx = np.abs(x - np.round(x))
    dy = np.abs(y - np.round(y))
    line = np.maximum(_aa(p.param / 2 - dx, f / ctx.size), _aa(p.param / 2 - dy, f / ctx.size))
    return _ramp(line, cols)


def _tex_noise(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    return _ramp(_fractal(ctx, p.freq * ctx.freq_mul), cols)


def _tex_grain(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    return _ramp(ctx.pixels(), cols)


def _tex_camo(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    n = len(cols)
    level = np.minimum((_fractal(ctx, p.freq * ctx.freq_mul) * n).astype(np.int64), n - 1)
    return cols[level]


def _tex_cells(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    """Voronoi panes in cols[1:] separated by leads of cols[0] (stained glass)."""
    n = max(2, round(p.freq * ctx.freq_mul))
    gy, gx = np.mgrid[0:n, 0:n]
    pts = (np.stack([gx.ravel(), gy.ravel()], axis=1) + ctx.rng.uniform(0.1, 0.9, (n * n, 2))) / n
    pane = ctx.rng.integers(1, len(cols), n * n)
    u, v = ctx.uv
    d1 = np.full(u.shape, np.inf, np.float64)
    d2 = np.full(u.shape, np.inf, np.float64)
    owner = np.zeros(u.shape, np.int64)
    for k, (px, py) in enumerate(pts):
        d = np.hypot(u - px, v - py)
        closer = d < d1
        d2 = np.where(closer, d1, np.minimum(d2, d))
        owner = np.where(closer, k, owner)
        d1 = np.where(closer, d, d1)
    out = cols[pane[owner]]
    lead = _aa(p.param / n / 2 - (d2 - d1) / 2, 1.0 / ctx.size)[..., None]
    return out * (1 - lead) + cols[0] * lead


def _tex_heat(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    # hotter towards the object's core: the silhouette's own blur is the temperature field
    heat = _blur(ctx.alpha, 0.07 * ctx.size)
    heat = heat / max(float(heat.max()), 1e-6)
    return _ramp(0.15 + 0.85 * heat, cols)


def _tex_rays(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    # a sunburst fanning from below the bottom edge
    u, v = ctx.uv
    theta = np.arctan2(u - 0.5, 1.15 - v)
    f = p.freq * ctx.freq_mul
    s = np.cos(f * theta + ctx.rng.random() * 2 * np.pi) - np.cos(np.pi * p.param)
    r = np.hypot(u - 0.5, 1.15 - v)
    return _ramp(_aa(s, f / (ctx.size * np.maximum(r, 0.05))), cols)


def _tex_hatch(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    # waxy hatching: strokes of wandering width, flecked with paper where the wax skipped
    f = p.freq * ctx.freq_mul
    x, _ = _rotated(ctx, p.angle)
    wobble = _value_noise(ctx, 6)
    s = np.sin(2 * np.pi * (f * x + 0.6 * wobble)) + 1.2 * (p.param - 0.5) + 0.4 * (wobble - 0.5)
    wax = _aa(s, 2 * np.pi * f / ctx.size) * (ctx.pixels() > 0.18)
    return _ramp(0.25 + 0.75 * wax, cols)


def _tex_marble(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    x, _ = _rotated(ctx, 30.0)
    turb = _fractal(ctx, 3.0 * ctx.freq_mul)
    vein = (1 - np.abs(np.sin(2 * np.pi * (p.freq * x + 1.6 * turb)))) ** 6
    return _ramp(vein, cols)


def _tex_tiedye(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    u, v = ctx.uv
    r = np.hypot(u - 0.5, v - 0.5)
    theta = np.arctan2(v - 0.5, u - 0.5) / (2 * np.pi)
    phase = theta + p.freq * ctx.freq_mul * r + 0.25 * _value_noise(ctx, 4) + ctx.rng.random()
    # wrap the ramp around so the spiral has no seam
    cyc = np.concatenate([cols, cols[:1]])
    return _ramp(phase % 1.0, cyc)


def _tex_bricks(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    f = p.freq * ctx.freq_mul
    u, v = ctx.uv
    rows = v * f
    row = np.floor(rows)
    bx = u * f / 2 + 0.5 * (row % 2)
    dy = np.abs(rows - np.round(rows))
    dx = np.abs(bx - np.round(bx)) * 2
    mortar = np.maximum(_aa(0.08 - dy, f / ctx.size), _aa(0.08 - dx, f / ctx.size))
    shade = ctx.rng.uniform(0.85, 1.1, (int(f) + 2, int(f) + 3))
    brick = cols[0] * shade[row.astype(np.int64), np.floor(bx).astype(np.int64)][..., None]
    return brick * (1 - mortar[..., None]) + cols[1] * mortar[..., None]


def _tex_weave(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    x, y, _ = _cell_coords(ctx, p, jitter=False)
    t = 0.5 + 0.25 * (np.cos(2 * np.pi * x) + np.cos(2 * np.pi * y))
    return _ramp(t, cols)


def _cells_per_side(ctx: _Ctx, p: _Paint) -> int:
    # shared by the stitch texture and the "cells" stroke so the stitches sit exactly on the cells
    return max(4, round(p.freq))


def _tex_stitch(ctx: _Ctx, p: _Paint, cols: np.ndarray) -> np.ndarray:
    n = _cells_per_side(ctx, p)
    u, v = ctx.uv
    x, y = u * n - np.floor(u * n), v * n - np.floor(v * n)
    d = np.minimum(np.abs(x - y), np.abs(x + y - 1)) / np.sqrt(2)
    return _ramp(_aa(p.param - d, n / ctx.size), cols)


_TEXTURES: dict[str, Callable[[_Ctx, _Paint, np.ndarray], np.ndarray]] = {
    "solid": _tex_solid,
    "linear": _tex_linear,
    "radial": _tex_radial,
    "stripes": _tex_stripes,
    "wavy": _tex_wavy,
    "dots": _tex_dots,
    "grid": _tex_grid,
    "noise": _tex_noise,
    "grain": _tex_grain,
    "camo": _tex_camo,
    "cells": _tex_cells,
    "heat": _tex_heat,
    "rays": _tex_rays,
    "hatch": _tex_hatch,
    "marble": _tex_marble,
    "tiedye": _tex_tiedye,
    "bricks": _tex_bricks,
    "weave": _tex_weave,
    "stitch": _tex_stitch,
}


def _paint(ctx: _Ctx, p: _Paint) -> np.ndarray:
    return _TEXTURES[p.texture](ctx, p, ctx.colors(p)).astype(np.float64, copy=False)


def _box(x: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Mean over a window of 2r+1 along ``axis`` (edges replicated), via a cumulative sum: O(1) in r."""
    if r < 1:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float64)
    n = x.shape[axis]
    hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return ((hi - lo) / (2 * r + 1)).astype(np.float64)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur approximated by three box passes per axis."""
    if sigma < 0.4:
        return x
    r = max(1, round((np.sqrt(4 * sigma * sigma + 1) - 1) / 2))
    for _ in range(3):
        x = _box(_box(x, r, 0), r, 1)
    return x


def _erode(a: np.ndarray, w: float) -> np.ndarray:
    """The coverage shrunk by ``w`` pixels (square structuring element, soft one-pixel edge)."""
    r = max(1, round(w))
    pad = np.pad(a, r, mode="constant")  # outside the frame counts as empty
    m = _box(_box(pad, r, 0), r, 1)[r:-r, r:-r]
    return np.clip((m - 1.0) * (2 * r + 1) + 1.0, 0.0, 1.0)


def _roughen(ctx: _Ctx, a: np.ndarray, amount: float, freq: float) -> np.ndarray:
    """Ragged edges: the silhouette's blur thresholded against noise."""
    soft = _blur(a, 0.015 * ctx.size)
    n = 0.6 * _value_noise(ctx, freq) + 0.4 * ctx.pixels()
    return np.clip((soft - 0.5 + amount * (n - 0.5)) * 4.0 + 0.5, 0.0, 1.0)


def _mix(base: np.ndarray, top: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return base * (1 - a) + top * a


def _compose(look: _Look, ctx: _Ctx) -> np.ndarray:
    a = ctx.alpha
    bg = _paint(ctx, look.background)
    fill = _paint(ctx, look.fill)
    w = max(1.0, look.width * ctx.size)
    mode = look.stroke
    if mode == "fill":
        return _mix(bg, fill, a)
    if mode == "outline":
        return _mix(bg, fill, a * (1 - _erode(a, w)))
    if mode == "fill+outline":
        return _mix(_mix(bg, fill, a), ctx.color(look.line), a * (1 - _erode(a, w)))
    if mode == "glow":
        band = a * (1 - _erode(a, w))
        halo = np.clip(_blur(band, 2.5 * w) * 1.6, 0.0, 1.0)
        out = bg + (halo + 0.1 * a)[..., None] * fill
        core = 0.45 * fill + 0.55  # tubes burn white-hot in the middle
        return _mix(np.clip(out, 0.0, 1.0), core, band)
    if mode == "rough":
        return _mix(bg, fill, _roughen(ctx, a, 0.6, 10.0))
    if mode == "rough outline":
        ar = _roughen(ctx, a, 0.9, 12.0)
        band = ar * (1 - _erode(ar, w))
        chalk = 0.5 + 0.5 * ctx.pixels()
        return _mix(bg, fill, band * chalk)
    if mode == "wash":
        ar = _blur(_roughen(ctx, a, 0.5, 5.0), 0.008 * ctx.size)
        edge = np.clip(ar - _blur(ar, 0.03 * ctx.size), 0.0, 1.0) * 2.2
        pigment = fill * (1 - 0.5 * edge[..., None])  # pigment pools at a wash's rim
        return bg * _mix(np.ones_like(bg), pigment, 0.9 * ar)
    if mode == "riso":
        # two inks printed with a misregistration: multiply blend, the overlap turns purple
        shift = max(1, round(0.045 * ctx.size))
        dx, dy = (int(s) * shift for s in ctx.rng.choice([-1, 1], 2))
        a2 = np.roll(a, (dy, dx), axis=(0, 1))
        ink2 = ctx.color(look.line)
        out = bg * _mix(np.ones_like(bg), np.broadcast_to(ink2, bg.shape), 0.85 * a2)
        return out * _mix(np.ones_like(bg), fill, 0.92 * a)
    if mode == "cells":
        n = _cells_per_side(ctx, look.fill)
        u, v = ctx.uv
        idx = (
            np.minimum(v * n, n - 1).astype(np.int64) * n + np.minimum(u * n, n - 1).astype(np.int64)
        ).ravel()
        counts = np.bincount(idx, minlength=n * n)
        cover = np.bincount(idx, weights=a.ravel(), minlength=n * n) / np.maximum(counts, 1)
        return _mix(bg, fill, (cover[idx] > 0.4).reshape(a.shape).astype(np.float64))
    if mode == "spray":
        ar = _roughen(ctx, a, 0.6, 16.0)
        speckle = ctx.pixels()
        halo = _blur(a, 0.04 * ctx.size) * 0.8 * (speckle > 0.45)  # overspray
        out = _mix(bg, fill, np.maximum(ar, halo))
        return _mix(out, ctx.color(look.line), ar * (1 - _erode(ar, w)))
    raise AssertionError(mode)


def _block_mean(img: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block mean colour on an n x n grid; returns (block colours (n*n, 3), block index per pixel)."""
    size = img.shape[0]
    blk = (np.arange(size) * n) // size
    idx = (blk[:, None] * n + blk[None, :]).ravel()
    counts = np.maximum(np.bincount(idx, minlength=n * n), 1)
    flat = img.reshape(-1, 3)
    means = np.stack(
        [np.bincount(idx, weights=flat[:, k], minlength=n * n) / counts for k in range(3)], axis=1
    )
    return means.astype(np.float64), idx


def _filter(img: np.ndarray, name: str, amount: float, ctx: _Ctx) -> np.ndarray:
    size = ctx.size
    if name == "blur":
        return _blur(img, amount * size)
    if name == "grain":
        return img + amount * ctx.pixels(normal=True)[..., None]
    if name == "vignette":
        u, v = ctx.uv
        return img * (1 - amount * ((u - 0.5) ** 2 + (v - 0.5) ** 2))[..., None]
    if name == "posterize":
        levels = int(amount) - 1
        return np.round(np.clip(img, 0, 1) * levels) / levels
    if name == "pixelate":
        means, idx = _block_mean(img, int(amount))
        return means[idx].reshape(img.shape)
    if name == "tiles":
        n = int(amount)
        means, idx = _block_mean(img, n)
        means = means * ctx.rng.uniform(0.9, 1.1, (n * n, 1))
        out = means[idx].reshape(img.shape)
        u, v = ctx.uv
        gu, gv = u * n - np.round(u * n), v * n - np.round(v * n)
        grout = np.maximum(_aa(0.1 - np.abs(gu), n / size), _aa(0.1 - np.abs(gv), n / size))
        return _mix(out, ctx.color("#d9d3c5"), grout)
    if name == "scanlines":
        period = max(2, round(size / 32))
        rows = (np.arange(size) % period) < period // 2
        return img * np.where(rows, 1 - amount, 1.0).astype(np.float64)[:, None, None]
    if name == "chroma":
        d = max(1, round(amount * size))
        out = img.copy()
        out[..., 0] = np.roll(img[..., 0], d, axis=1)
        out[..., 2] = np.roll(img[..., 2], -d, axis=1)
        return out
    if name == "rowjitter":
        out = img.copy()
        for _ in range(int(ctx.rng.integers(3, 6))):
            # fractions of the side, so the bands fall in the same places at every size
            fh, fy, fs = ctx.rng.random(3)
            h = max(1, round((1 / 32 + fh * (1 / 8 - 1 / 32)) * size))
            y = round(fy * (size - h))
            shift = round((2 * fs - 1) * amount * size)
            out[y : y + h] = np.roll(img[y : y + h], shift, axis=1)
        return out
    raise AssertionError(name)


# ----------------------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True, eq=False)  # eq=False: a dataclass __eq__/__hash__ over an ndarray field would raise
class Sample:
    content: str
    style: str
    seed: int
    image: Image.Image  # RGB
    mask: np.ndarray  # bool (H, W): the object's silhouette before texture, stroke and filters; read-only
    caption: str


@dataclass(frozen=True, eq=False)
class Triplet:
    content: Sample  # the target's content in NEUTRAL_STYLE, same seed (same pose) as the target
    style: Sample  # another content in the target's style
    target: Sample


def render(content: str, style: str, seed: int, size: int = 64) -> Sample:
    """Draw ``content`` in ``style`` at ``size`` x ``size`` pixels; the same arguments give the same bytes."""
    _check_content(content)
    return _render(content, style, seed, size)


def render_subject(subject: str, style: str, seed: int, size: int = 64) -> Sample:
    """Draw a subject (one of :data:`SUBJECTS`, never a content) as :func:`render` draws a content; its
    caption names its class, ``"a star in neon style"`` for the hexstar (the subject has no word)."""
    if subject not in _SUBJECT_SPECS:
        raise ValueError(f"unknown subject {subject!r}; choose one of {list(SUBJECTS)}")
    sample = _render(subject, style, seed, size)
    return Sample(subject, style, seed, sample.image, sample.mask, caption(SUBJECT_CLASSES[subject], style))


def _render(content: str, style: str, seed: int, size: int) -> Sample:
    _check_style(style)
    return _render_look(content, style, _LOOKS[style], seed, size)


def _render_look(content: str, style: str, look: _Look, seed: int, size: int, hue: float = 0.0) -> Sample:
    """``content`` in ``look``, named ``style`` (the name seeds the look's randomness); ``hue`` turns every
    colour of the look round the hue circle before the per-image jitter."""
    # plain str and int: the seeding hashes reprs, and np.str_('star') would not hash like 'star'
    content, style = str(content), str(style)
    size = _check_size(size)
    seed = operator.index(seed)
    alpha = _coverage(content, seed, size)
    rng = _rng("style", content, style, seed)
    j = look.jitter
    ctx = _Ctx(
        size=size,
        key=(content, style, seed),
        rng=rng,
        alpha=alpha,
        hue=hue + float(rng.uniform(-0.03, 0.03) * j),
        sat=float(1 + rng.uniform(-0.08, 0.08) * j),
        val=float(1 + rng.uniform(-0.06, 0.06) * j),
        freq_mul=float(1 + rng.uniform(-0.12, 0.12) * j),
        angle_off=float(rng.uniform(-8.0, 8.0) * j),
    )
    img = _compose(look, ctx)
    for name, amount in look.filters:
        img = _filter(img, name, amount, ctx)
    pixels = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    mask = alpha >= 0.5
    mask.flags.writeable = False
    text = caption(content, style) if content in _CONTENT_INDEX and style in _STYLE_INDEX else ""
    return Sample(content, style, seed, Image.fromarray(pixels, "RGB"), mask, text)


def split_styles(split: str) -> tuple[str, ...]:
    """The styles a split draws from: TRAIN_STYLES for "train", every style for "eval" and "classifier"."""
    _check_split(split)
    return TRAIN_STYLES if split == "train" else STYLES


def _resolve_styles(split: str, styles: Sequence[str] | None) -> tuple[str, ...]:
    allowed = split_styles(split)
    if styles is None:
        return allowed
    if isinstance(styles, str):
        raise ValueError(f"styles must be a sequence of style names, got the string {styles!r}")
    chosen = tuple(styles)
    if not chosen:
        raise ValueError("styles must not be empty")
    for s in chosen:
        _check_style(s)
        if s not in allowed:
            raise ValueError(
                f"style {s!r} is not in the {split!r} split (held-out styles: {list(HELD_OUT_STYLES)})"
            )
    return chosen


def sample_at(
    split: Split, index: int, size: int = 64, styles: Sequence[str] | None = None, seed_offset: int = 0
) -> Sample:
    """Item ``index`` of :func:`iter_samples` for the same arguments, computed directly."""
    seeds = _check_split(split)
    chosen = _resolve_styles(split, styles)
    k = operator.index(index) + operator.index(seed_offset)
    if not 0 <= k < len(seeds):
        raise ValueError(f"index + seed_offset must be in [0, {len(seeds)}), got {k}")
    nc = len(CONTENTS)
    # contents vary fastest: any nc * len(styles) consecutive items cover every (content, style) once
    return render(CONTENTS[k % nc], chosen[(k // nc) % len(chosen)], seeds[k], size)


def iter_samples(
    split: Split, n: int, size: int = 64, styles: Sequence[str] | None = None, seed_offset: int = 0
) -> Iterator[Sample]:
    """``n`` samples cycling over contents x styles of ``split`` with the split's seeds, deterministically.

    Item i has seed ``SPLIT_SEEDS[split][seed_offset + i]``; different offsets give disjoint images.
    """
    _check_split(split)
    _resolve_styles(split, styles)
    _check_size(size)
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for i in range(n):
        yield sample_at(split, i, size, styles, seed_offset)


def triplet(index: int, split: Split = "train", size: int = 64) -> Triplet:
    """(content image, style image, target) number ``index`` of ``split``.

    The target cycles over contents (fastest) and the split's styles other than NEUTRAL_STYLE (a plain
    target would teach nothing); the content image is the target's content and pose in NEUTRAL_STYLE; the
    style image is a different content, chosen by seed, in the target's style with its own seed.
    """
    seeds = _check_split(split)
    size = _check_size(size)
    index = operator.index(index)
    if not 0 <= 2 * index + 1 < len(seeds):
        raise ValueError(f"index must be in [0, {len(seeds) // 2}), got {index}")
    styles = tuple(s for s in split_styles(split) if s != NEUTRAL_STYLE)
    nc = len(CONTENTS)
    content = CONTENTS[index % nc]
    style = styles[(index // nc) % len(styles)]
    seed = seeds[2 * index]
    others = [c for c in CONTENTS if c != content]
    other = others[int(_rng("triplet", split, index).integers(len(others)))]
    return Triplet(
        content=render(content, NEUTRAL_STYLE, seed, size),
        style=render(other, style, seeds[2 * index + 1], size),
        target=render(content, style, seed, size),
    )


# ----------------------------------------------------------------------------------------------------------
# Remixed looks: unnamed styles assembled from the training looks' parts

# A model that sees 21 styles learns 21 identities, and a held-out style is none of them (the demo StyleVAR:
# 75.9% style accuracy on training styles, 4.5% on held-out ones). Remixes give it thousands of styles whose
# parts (background, fill, stroke, filter chain, palette) vary independently, so that reading a style image
# means reading its parts. Only training looks give parts: a held-out look is never rendered, although a
# remix may come near one (a hue-turned noise ground under a noise fill and a blur is cyanotype-like).
REMIX_SOURCES: tuple[str, ...] = tuple(s for s in TRAIN_STYLES if s != NEUTRAL_STYLE)


@dataclass(frozen=True)
class Remix:
    """Remixed look number ``index``: the background of training look ``background``, the fill of ``fill``,
    the stroke (mode, width, line colour) of ``stroke``, the filter chain of ``filters``, every colour turned
    by ``hue`` (a fraction of the hue circle)."""

    index: int
    background: str
    fill: str
    stroke: str
    filters: str
    hue: float

    @property
    def name(self) -> str:
        return f"remix-{self.index}"

    def look(self) -> _Look:
        stroke = _LOOKS[self.stroke]
        return _Look(
            _LOOKS[self.background].background,
            _LOOKS[self.fill].fill,
            stroke.stroke,
            stroke.width,
            stroke.line,
            _LOOKS[self.filters].filters,
        )


def remix(index: int) -> Remix:
    """The remixed look ``index`` (any index >= 0; the same index gives the same look)."""
    index = operator.index(index)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    g = _rng("remix", index)
    background, fill, stroke, filters = (
        REMIX_SOURCES[int(i)] for i in g.integers(len(REMIX_SOURCES), size=4)
    )
    return Remix(index, background, fill, stroke, filters, float(g.random()))


def render_remix(content: str, look: Remix, seed: int, size: int = 64) -> Sample:
    """Draw ``content`` in a remixed look; the sample's style is the remix's name and its caption is empty
    (a remix has no words)."""
    _check_content(content)
    return _render_look(content, look.name, look.look(), seed, size, hue=look.hue)


def remix_triplet(index: int, size: int = 64) -> Triplet:
    """Triplet ``index`` of remixed looks, laid out as :func:`triplet`'s train split: the content cycles
    fastest, the look is :func:`remix` ``(index // len(CONTENTS))``, the seeds are the train split's."""
    seeds = TRAIN_SEEDS
    size = _check_size(size)
    index = operator.index(index)
    if not 0 <= 2 * index + 1 < len(seeds):
        raise ValueError(f"index must be in [0, {len(seeds) // 2}), got {index}")
    nc = len(CONTENTS)
    content = CONTENTS[index % nc]
    look = remix(index // nc)
    seed = seeds[2 * index]
    others = [c for c in CONTENTS if c != content]
    other = others[int(_rng("remix-triplet", index).integers(len(others)))]
    return Triplet(
        content=render(content, NEUTRAL_STYLE, seed, size),
        style=render_remix(other, look, seeds[2 * index + 1], size),
        target=render_remix(content, look, seed, size),
    )


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image to float32 (3, H, W) in [-1, 1], the models' convention."""
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).float().div(127.5).sub(1.0)


class ProceduralDataset(torch.utils.data.Dataset[tuple[torch.Tensor, str, int, int]]):
    """``length`` items of ``split``: (image float32 (3, S, S) in [-1, 1], caption, content idx, style idx).

    Indices are into CONTENTS and STYLES (not into the split's styles), so labels agree across splits.
    Item i is :func:`sample_at` ``(split, i, size, styles, seed_offset)``, rendered on access.
    """

    def __init__(
        self,
        split: Split,
        length: int,
        size: int = 64,
        styles: Sequence[str] | None = None,
        seed_offset: int = 0,
    ) -> None:
        seeds = _check_split(split)
        self.split: Split = split
        self.styles = _resolve_styles(split, styles)
        self.size = _check_size(size)
        self.length = operator.index(length)
        self.seed_offset = operator.index(seed_offset)
        if self.length < 0 or self.seed_offset < 0 or self.seed_offset + self.length > len(seeds):
            raise ValueError(
                f"length ({self.length}) and seed_offset ({self.seed_offset}) must be >= 0 with a sum of at "
                f"most {len(seeds)}"
            )

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        return sample_at(self.split, index, self.size, self.styles, self.seed_offset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int, int]:
        s = self.sample(index)
        return to_tensor(s.image), s.caption, _CONTENT_INDEX[s.content], _STYLE_INDEX[s.style]
