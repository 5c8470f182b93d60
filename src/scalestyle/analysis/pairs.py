"""Prompt pairs (A, B) for the injection analyses: the paper's kind of content and colour pairs, pairs on the
procedural world, and pairs read from a file.

A *content* pair changes what is shown and keeps the look ("a star in neon style" / "a house in neon
style"); a *style* pair keeps what is shown and changes the look (same content, another style or colour).
Comparing the two kinds step by step is the point of the step-injection analysis: the steps at which B's
caption moves a content pair are where content is decided, likewise for style.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scalestyle.data import procedural as world

PairKind = Literal["content", "style", "custom"]
PAIR_KINDS: tuple[str, ...] = ("content", "style", "custom")


@dataclass(frozen=True)
class PromptPair:
    """Prompt A (generated everywhere) and prompt B (injected), with the kind of change B makes."""

    a: str
    b: str
    kind: PairKind = "custom"

    def __post_init__(self) -> None:
        if not self.a.strip() or not self.b.strip():
            raise ValueError(f"both prompts of a pair must be non-empty text, got {self.a!r} / {self.b!r}")
        if self.kind not in PAIR_KINDS:
            raise ValueError(f"pair kind must be one of {PAIR_KINDS}, got {self.kind!r}")


# The paper's Section 4 figure uses "a photo of a donut" / "a photo of a truck" for content; its colour
# pairs are not listed in the text, so the style pairs below are ours, in the same form (one object, two
# colours), so that only the colour words differ between A and B.
PAPER_CONTENT_PAIRS: tuple[PromptPair, ...] = (
    PromptPair("a photo of a donut", "a photo of a truck", "content"),
    PromptPair("a photo of a cat", "a photo of a lighthouse", "content"),
    PromptPair("a photo of an apple", "a photo of a bicycle", "content"),
)
PAPER_STYLE_PAIRS: tuple[PromptPair, ...] = (
    PromptPair("a photo of a red car", "a photo of a blue car", "style"),
    PromptPair("a photo of a yellow flower", "a photo of a purple flower", "style"),
    PromptPair("a photo of a green house", "a photo of an orange house", "style"),
)


def world_content_pairs(
    n: int = 4, *, style: str | None = None, seed: int = 0, styles: Sequence[str] = world.TRAIN_STYLES
) -> tuple[PromptPair, ...]:
    """``n`` pairs "<c1> in <style>" / "<c2> in <style>": same style, two different contents. The style is
    ``style`` or, per pair, one of ``styles``; choices are drawn reproducibly from ``seed``."""
    _check_count(n)
    rng = random.Random(f"content-pairs/{seed}")
    out = []
    for _ in range(n):
        c1, c2 = rng.sample(world.CONTENTS, 2)
        s = style if style is not None else rng.choice(tuple(styles))
        out.append(PromptPair(world.caption(c1, s), world.caption(c2, s), "content"))
    return tuple(out)


def world_style_pairs(
    n: int = 4, *, content: str | None = None, seed: int = 0, styles: Sequence[str] = world.TRAIN_STYLES
) -> tuple[PromptPair, ...]:
    """``n`` pairs "<content> in <s1>" / "<content> in <s2>": same content, two different styles of
    ``styles``; the content is ``content`` or drawn per pair, reproducibly from ``seed``."""
    _check_count(n)
    if len(styles) < 2:
        raise ValueError(f"style pairs need at least 2 styles, got {tuple(styles)}")
    rng = random.Random(f"style-pairs/{seed}")
    out = []
    for _ in range(n):
        c = content if content is not None else rng.choice(world.CONTENTS)
        s1, s2 = rng.sample(tuple(styles), 2)
        out.append(PromptPair(world.caption(c, s1), world.caption(c, s2), "style"))
    return tuple(out)


PAIR_SETS: tuple[str, ...] = ("paper-content", "paper-style", "world-content", "world-style")


def pair_set(name: str, n: int = 4, *, seed: int = 0) -> tuple[PromptPair, ...]:
    """A named set: "paper-content", "paper-style" (fixed), "world-content", "world-style" (``n`` pairs)."""
    if name == "paper-content":
        return PAPER_CONTENT_PAIRS
    if name == "paper-style":
        return PAPER_STYLE_PAIRS
    if name == "world-content":
        return world_content_pairs(n, seed=seed)
    if name == "world-style":
        return world_style_pairs(n, seed=seed)
    raise ValueError(f"pair set must be one of {PAIR_SETS}, got {name!r}")


def read_pairs(path: str | Path) -> tuple[PromptPair, ...]:
    """One pair per line, ``prompt A | prompt B`` with an optional third field ``| content`` (or
    ``| style``); tab-separated fields work too. Blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pairs file {path}: no such file")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = [f.strip() for f in text.split("\t" if "\t" in text else "|")]
        if len(fields) not in (2, 3):
            raise ValueError(
                f"{path}:{number}: expected 'prompt A | prompt B [| content|style]', got {line!r}"
            )
        kind = fields[2] if len(fields) == 3 else "custom"
        if kind not in PAIR_KINDS:
            raise ValueError(f"{path}:{number}: pair kind must be one of {PAIR_KINDS}, got {kind!r}")
        out.append(PromptPair(fields[0], fields[1], kind))  # type: ignore[arg-type]
    if not out:
        raise ValueError(f"pairs file {path} holds no pairs")
    return tuple(out)


def _check_count(n: int) -> None:
    if n < 1:
        raise ValueError(f"number of pairs must be >= 1, got {n}")
