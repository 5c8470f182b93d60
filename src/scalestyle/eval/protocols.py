"""Evaluation protocols: the grid of (content, style, seed) cases with their prompts and style references.

- ``procedural``: contents of the procedural world x its held-out styles x seeds. The reference of a case
  is :func:`scalestyle.eval.world.reference_for`: another content drawn in the case's held-out style with
  evaluation seeds, so that the content classifier can tell content leakage (the output showing the
  reference's content) from success. Prompts are the world's captions: "a star" (content), "crayon
  style" (style), "a star in crayon style" (generation, also the prompt-only baseline).
- ``finestyle``: the FineStyle protocol as the scale-wise style paper uses it (190 Parti prompts x 10
  styles; FineStyle: Zhang et al. 2024, "FineStyle: Fine-grained Controllable Style Personalization for
  Text-to-image Models", NeurIPS). The lists are a third-party reconstruction kept outside the project
  (``shared/benchmarks/finestyle``: ``prompts_190.csv``, ``styles_10.csv``). The generation prompt is
  "<content>, <superclass>, in <style> style" ("A cat, animals, in watercolor painting style"); our
  method's content prompt is the CSV's content prompt and its style prompt "<style> style". The style
  images were never published: the user supplies a folder with one image per style, named by style id
  (``style_04.png``).
- ``stylear``: the StyleAR protocol (Wu et al. 2025, "StyleAR: Customizing Multimodal Autoregressive
  Model for Style-Aligned Text-to-Image Generation", arXiv 2505.19874): 20 text prompts x 10 style
  reference images, judged by CLIP-T (image-prompt), CLIP-I and DINO (image-reference). Its lists were
  never published, so the user gives both: a prompt file (one prompt per line; ``#`` starts a comment)
  and a folder of style images, each style named by its file stem (``watercolor.png`` is style
  ``watercolor``, prompted in words as "watercolor style"; an optional ``styles.csv`` in that folder with
  columns ``style_id,style_descriptor`` gives better words). The prompt carries no style: it is the
  content prompt, and the generation prompt is "<prompt> in <style words> style".
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from scalestyle.data import procedural as world
from scalestyle.eval.world import reference_for, reference_sample

ProtocolName = Literal["procedural", "finestyle", "stylear"]
PROTOCOLS: tuple[str, ...] = ("procedural", "finestyle", "stylear")

# Defaults of the procedural protocol, sized so that all seven methods run in a few CPU minutes on the
# demo model: four contents of different shape families (polygon, curve, object, thin parts) in every
# held-out style, one seed.
PROCEDURAL_CONTENTS: tuple[str, ...] = ("star", "heart", "house", "fish")
PROCEDURAL_SEEDS: tuple[int, ...] = (0,)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Case:
    """One cell of the grid. ``content``/``style`` are ids (world names, or FineStyle ``content_id`` /
    ``style_id``); ``prompt`` is the full generation prompt. The reference is ``ref_file`` (finestyle) or
    the world's reference of ``ref_content`` (procedural)."""

    protocol: str
    content: str
    style: str
    seed: int
    prompt: str
    content_prompt: str
    style_prompt: str
    ref_content: str | None = None
    ref_file: str | None = None

    def reference(self) -> Image.Image:
        if self.protocol == "procedural":
            return reference_for(self.content, self.style, self.seed)[1]
        if self.ref_file is None:
            raise ValueError(f"case {self.content}/{self.style} has no reference file")
        with Image.open(self.ref_file) as img:
            return img.convert("RGB")

    def reference_mask(self) -> np.ndarray | None:
        """The reference's object mask (bool, H x W) where the protocol knows it: the world's silhouette
        on ``procedural`` (for StyleAR's SE tokens); None for reference files."""
        if self.protocol != "procedural":
            return None
        return reference_sample(self.content, self.style, self.seed).mask


def parse_list(text: str | None) -> tuple[str, ...] | None:
    """``"star, lightning bolt"`` -> ``("star", "lightning bolt")``; None or blank -> None."""
    if text is None:
        return None
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    return items or None


def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {list(seeds)}")
    return tuple(dict.fromkeys(int(s) for s in seeds))


def _pick(given: Sequence[str] | None, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    if given is None:
        return tuple(allowed)
    unknown = [g for g in given if g not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {list(allowed)}")
    if not given:
        raise ValueError(f"no {what} given; choose from {list(allowed)}")
    return tuple(dict.fromkeys(given))


def procedural_cases(
    contents: Sequence[str] | None = None,
    styles: Sequence[str] | None = None,
    seeds: Sequence[int] = PROCEDURAL_SEEDS,
) -> list[Case]:
    """Contents (default :data:`PROCEDURAL_CONTENTS`) x styles (default every held-out style) x seeds,
    in (style, content, seed) order. Styles must be held out: a training style would measure recall."""
    picked_styles = _pick(styles, world.HELD_OUT_STYLES, "held-out style(s)")
    picked_contents = _pick(
        contents if contents is not None else PROCEDURAL_CONTENTS, world.CONTENTS, "content(s)"
    )
    cases = []
    for style in picked_styles:
        for content in picked_contents:
            for seed in _check_seeds(seeds):
                ref_content, _ = reference_for(content, style, seed)
                cases.append(
                    Case(
                        "procedural",
                        content,
                        style,
                        seed,
                        world.caption(content, style),
                        world.content_caption(content),
                        world.style_caption(style),
                        ref_content=ref_content,
                    )
                )
    return cases


# -- FineStyle ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FineStylePrompt:
    content_id: str
    content_prompt: str
    category: str
    superclass: str


@dataclass(frozen=True)
class FineStyleStyle:
    style_id: str
    style_name: str
    style_descriptor: str


def default_finestyle_dir() -> Path:
    """``../shared/benchmarks/finestyle`` next to the repository this package runs from (a source
    checkout: ``<repo>/src/scalestyle/eval/protocols.py``)."""
    return Path(__file__).resolve().parents[4] / "shared" / "benchmarks" / "finestyle"


PROMPTS_CSV = "prompts_190.csv"
STYLES_CSV = "styles_10.csv"


def finestyle_files(prompts_csv: str | Path | None, styles_csv: str | Path | None) -> tuple[Path, Path]:
    """The two lists: the paths given, or the default folder's files; a missing one is a clear error."""
    folder = default_finestyle_dir()
    paths = (
        Path(prompts_csv) if prompts_csv else folder / PROMPTS_CSV,
        Path(styles_csv) if styles_csv else folder / STYLES_CSV,
    )
    for path, flag in zip(paths, ("--prompts-csv", "--styles-csv"), strict=True):
        if not path.is_file():
            raise FileNotFoundError(
                f"FineStyle list {path} not found: pass {flag} PATH (the lists live in "
                "shared/benchmarks/finestyle beside the repository)"
            )
    return paths


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {list(columns)}")
        rows = [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    for i, row in enumerate(rows, start=2):
        empty = [c for c in columns if not row.get(c)]
        if empty:
            raise ValueError(f"{path}:{i}: empty {empty}")
    return rows


def read_finestyle(
    prompts_csv: str | Path, styles_csv: str | Path
) -> tuple[list[FineStylePrompt], list[FineStyleStyle]]:
    prompts = [
        FineStylePrompt(r["content_id"], r["content_prompt"], r["category"], r["superclass"])
        for r in _read_csv(Path(prompts_csv), ("content_id", "content_prompt", "category", "superclass"))
    ]
    styles = [
        FineStyleStyle(r["style_id"], r["style_name"], r["style_descriptor"])
        for r in _read_csv(Path(styles_csv), ("style_id", "style_name", "style_descriptor"))
    ]
    for what, ids in (
        ("content_id", [p.content_id for p in prompts]),
        ("style_id", [s.style_id for s in styles]),
    ):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate {what}(s) {dup} in the FineStyle lists")
    return prompts, styles


def style_words(descriptor: str) -> str:
    """The style without a trailing "style": the list's "oil painting style" must not become "oil
    painting style style" in prompts."""
    words = descriptor.strip()
    if words.lower().endswith(" style"):
        words = words[: -len(" style")].rstrip()
    return words


def finestyle_prompt(content_prompt: str, superclass: str, descriptor: str) -> str:
    """``"A cat, animals, in watercolor painting style"`` (first letter capitalised, as FineStyle writes
    its prompts)."""
    text = f"{content_prompt.strip()}, {superclass.strip()}, in {style_words(descriptor)} style"
    return text[:1].upper() + text[1:]


def find_style_image(folder: str | Path, style_id: str) -> Path:
    """``folder/<style_id>.png`` (or .jpg/.jpeg/.webp); a missing image names the file expected."""
    base = Path(folder)
    for suffix in IMAGE_SUFFIXES:
        path = base / f"{style_id}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no style image for {style_id}: expected {base / (style_id + '.png')} "
        f"(or {', '.join(IMAGE_SUFFIXES[1:])}) in --style-images {base}"
    )


def finestyle_cases(
    prompts: Sequence[FineStylePrompt],
    styles: Sequence[FineStyleStyle],
    style_images: str | Path | None,
    *,
    contents: Sequence[str] | None = None,
    style_ids: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
) -> list[Case]:
    """Prompts x styles x seeds in (style, prompt, seed) order. ``contents`` picks prompts by content_id
    or by their exact text; ``style_ids`` picks styles by style_id or style name. Every picked style
    needs its image in ``style_images`` (checked before anything runs)."""
    by_id = {p.content_id: p for p in prompts}
    by_text = {p.content_prompt: p for p in prompts}
    if contents is None:
        picked_prompts = list(prompts)
    else:
        unknown = [c for c in contents if c not in by_id and c not in by_text]
        if unknown:
            raise ValueError(
                f"unknown FineStyle content(s) {unknown}; give content_ids such as "
                f"{[p.content_id for p in prompts[:3]]} or exact content prompts"
            )
        picked_prompts = list({id(p): p for p in (by_id.get(c) or by_text[c] for c in contents)}.values())
    styles_by = {s.style_id: s for s in styles} | {s.style_name: s for s in styles if s.style_name}
    if style_ids is None:
        picked_styles = list(styles)
    else:
        unknown = [s for s in style_ids if s not in styles_by]
        if unknown:
            raise ValueError(
                f"unknown FineStyle style(s) {unknown}; choose from {[s.style_id for s in styles]}"
            )
        picked_styles = list({s.style_id: s for s in (styles_by[x] for x in style_ids)}.values())
    if style_images is None:
        raise ValueError("the finestyle protocol needs --style-images DIR (one image per style_id)")
    if not Path(style_images).is_dir():
        raise FileNotFoundError(f"--style-images {style_images}: no such folder")
    files = {s.style_id: find_style_image(style_images, s.style_id) for s in picked_styles}
    cases = []
    for s in picked_styles:
        for p in picked_prompts:
            for seed in _check_seeds(seeds):
                cases.append(
                    Case(
                        "finestyle",
                        p.content_id,
                        s.style_id,
                        seed,
                        finestyle_prompt(p.content_prompt, p.superclass, s.style_descriptor),
                        p.content_prompt,
                        f"{style_words(s.style_descriptor)} style",
                        ref_file=str(files[s.style_id]),
                    )
                )
    return cases


# -- StyleAR -----------------------------------------------------------------------------------------------

STYLEAR_STYLES_CSV = "styles.csv"


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts, one per line; blank lines and ``#`` comments are skipped, repeats refused."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--prompts-file {file}: no such file")
    prompts = []
    for line in file.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            prompts.append(text)
    if not prompts:
        raise ValueError(f"{file}: no prompt in it (one per line)")
    dup = sorted({p for p in prompts if prompts.count(p) > 1})
    if dup:
        raise ValueError(f"{file}: repeated prompt(s) {dup}")
    return prompts


def style_folder(folder: str | Path) -> dict[str, tuple[Path, str]]:
    """style_id -> (image, style words) of every image in ``folder``, sorted by id."""
    base = Path(folder)
    if not base.is_dir():
        raise FileNotFoundError(f"--style-images {base}: no such folder")
    images = sorted(p for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(f"--style-images {base}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    stems = [p.stem for p in images]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ValueError(f"--style-images {base}: several images per style id {dup}")
    words = {p.stem: " ".join(p.stem.replace("_", " ").replace("-", " ").split()) for p in images}
    table = base / STYLEAR_STYLES_CSV
    if table.is_file():
        for row in _read_csv(table, ("style_id", "style_descriptor")):
            if row["style_id"] not in words:
                raise ValueError(f"{table}: style_id {row['style_id']!r} has no image in {base}")
            words[row["style_id"]] = style_words(row["style_descriptor"])
    return {p.stem: (p, words[p.stem]) for p in images}


def stylear_cases(
    prompts: Sequence[str],
    style_images: str | Path | None,
    *,
    contents: Sequence[str] | None = None,
    style_ids: Sequence[str] | None = None,
    seeds: Sequence[int] = (0,),
) -> list[Case]:
    """Prompts x style images x seeds in (style, prompt, seed) order. Prompt ids are ``p00``, ``p01``...
    in file order; ``contents`` picks prompts by id or exact text, ``style_ids`` styles by file stem."""
    if style_images is None:
        raise ValueError("the stylear protocol needs --style-images DIR (one image per style)")
    styles = style_folder(style_images)
    width = max(2, len(str(len(prompts) - 1)))
    ids = {f"p{i:0{width}d}": p for i, p in enumerate(prompts)}
    by_text = {p: i for i, p in ids.items()}
    picked = list(ids) if contents is None else list(dict.fromkeys(by_text.get(c, c) for c in contents))
    unknown = [c for c in picked if c not in ids]
    if unknown:
        raise ValueError(f"unknown prompt(s) {unknown}; give ids such as {list(ids)[:3]} or exact prompts")
    picked_styles = _pick(style_ids, list(styles), "style(s)")
    cases = []
    for sid in picked_styles:
        file, words = styles[sid]
        for cid in picked:
            for seed in _check_seeds(seeds):
                cases.append(
                    Case(
                        "stylear",
                        cid,
                        sid,
                        seed,
                        f"{ids[cid]} in {words} style",
                        ids[cid],
                        f"{words} style",
                        ref_file=str(file),
                    )
                )
    return cases
