"""Style-transfer triplets (target, content, style) for StyleVAR's supervised fine-tuning.

Follows Senfier-LiqiJing/StyleVAR `utils/data.py` (research note wave2_methods.md §1.4): every image is
resized to the model's square size with LANCZOS, without cropping or augmentation
(:func:`scalestyle.transfer.square_tensor`), in [-1, 1]; several folders are joined one after the other
(their ``ConcatDataset``). Two folder layouts, told apart by :func:`detect_layout`:

- **OmniStyle-150K** (``StyleTransferDataset``): ``content/``, ``style/`` and ``target/`` (or the archive's
  own ``OmniStyle-150K/``), each target named ``<content>&&<style>.png``. The authors take the content part
  as a file name and cut the target's ``.png`` off the style part; here each part, without the target's
  own extension, is looked up by file name and otherwise by stem with any image extension.
- **ImagePulse** (``ImagePulseDataset``): sub-folders each holding ``content.png``, ``style.png`` and
  ``target.png`` (layout A), or JSON records with ``image_1`` (content), ``image_2`` (style) and
  ``image_4`` (target), paths relative to the record's file (layout B: one object per ``.json`` file as
  in the extracted archives, a list of them, or one per line of a ``.jsonl``). JSON files without those
  keys (layout A's ``meta.json``) are not records.

A ``train_files.txt`` in the root restricts it to the listed targets (OmniStyle) or sub-folders
(ImagePulse), the split files of the authors' ``prepare_data.py``. Where the authors skip an unreadable
triplet or a record naming a missing file in silence, here it is a ``ValueError`` naming the file.

:class:`WorldTriplets` gives the procedural world's triplets (:func:`scalestyle.data.procedural.triplet`)
of the train split, whose styles exclude :data:`~scalestyle.data.procedural.HELD_OUT_STYLES`, or those of
remixed looks; :func:`world_triplets` joins the two.

Every dataset has a fixed order (sorted paths, the world's index order) and items
``(target_3PP, content_3PP, style_3PP)``, float32 in [-1, 1] at ``size`` x ``size`` pixels.
"""

from __future__ import annotations

import bisect
import json
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from scalestyle.data import procedural as world
from scalestyle.images import load_image
from scalestyle.transfer import square_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLIT_FILE = "train_files.txt"
# the archive's folder name, which the authors link to target/ when target/ is absent
OMNISTYLE_TARGET_DIRS = ("target", "OmniStyle-150K", "OmniStyle-150k")
IMAGEPULSE_KEYS = {"content": "image_1", "style": "image_2", "target": "image_4"}
LAYOUTS_EXPECTED = (
    "expected the OmniStyle-150K layout (content/, style/, target/<content>&&<style>.png) or the "
    "ImagePulse layout (sub-folders with content.png, style.png, target.png, or JSON records with "
    "image_1 (content), image_2 (style), image_4 (target))"
)

Layout = Literal["omnistyle", "imagepulse"]
TripletTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(target_3PP, content_3PP, style_3PP), float32 in [-1, 1]."""


class TripletData(Protocol):
    """What the StyleVAR trainer reads: a sized, indexable set of triplets at one image size."""

    size: int
    description: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> TripletTensors: ...


@dataclass(frozen=True)
class TripletFiles:
    target: Path
    content: Path
    style: Path


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _split_list(root: Path) -> list[str] | None:
    path = root / SPLIT_FILE
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _omnistyle_target_dir(root: Path) -> Path | None:
    for name in OMNISTYLE_TARGET_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


class _ByName:
    """A folder's images looked up by file name, then by stem (any image extension)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        files = _images(folder)
        self.names = {p.name: p for p in files}
        self.stems: dict[str, list[Path]] = {}
        for p in files:
            self.stems.setdefault(p.stem, []).append(p)

    def find(self, part: str, target: Path, what: str) -> Path:
        if part in self.names:
            return self.names[part]
        stem = Path(part).stem if Path(part).suffix.lower() in IMAGE_SUFFIXES else part
        found = self.stems.get(part) or self.stems.get(stem) or []
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(p.name for p in found)
            raise ValueError(f"{target}: {what} {part!r} is ambiguous in {self.folder} ({names})")
        raise ValueError(f"{target}: names the {what} {part!r}, which is not in {self.folder}")


def omnistyle_triplets(root: str | Path) -> list[TripletFiles]:
    """The triplets of an OmniStyle-150K folder, in sorted target order."""
    base = Path(root)
    target_dir = _omnistyle_target_dir(base)
    if target_dir is None or not (base / "content").is_dir() or not (base / "style").is_dir():
        raise ValueError(f"{base}: not an OmniStyle-150K folder (content/, style/, target/)")
    contents, styles = _ByName(base / "content"), _ByName(base / "style")
    listed = _split_list(base)
    if listed is None:
        targets = _images(target_dir)
    else:
        targets = [target_dir / name for name in listed]
        missing = [str(t) for t in targets if not t.is_file()]
        if missing:
            raise ValueError(
                f"{base / SPLIT_FILE} lists {len(missing)} missing target(s), first {missing[0]}"
            )
    if not targets:
        raise ValueError(f"{target_dir}: no target images; {LAYOUTS_EXPECTED}")
    out = []
    for target in targets:
        parts = target.stem.split("&&")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{target}: an OmniStyle target is named <content>&&<style>.png")
        content, style = parts
        out.append(
            TripletFiles(
                target, contents.find(content, target, "content"), styles.find(style, target, "style")
            )
        )
    return out


def _by_stem(folder: Path, stem: str) -> Path | None:
    found = [p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(found)[0] if found else None


def _sample_folder(folder: Path) -> TripletFiles | None:
    """Layout A: ``content``, ``style`` and ``target`` images in one folder."""
    target, content, style = (_by_stem(folder, s) for s in ("target", "content", "style"))
    if target is None or content is None or style is None:
        return None
    return TripletFiles(target, content, style)


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, object) of every record a ``.json`` (an object or a list) or ``.jsonl`` file holds."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    yield f"{path}:{number}", json.loads(line)
            return
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({type(err).__name__}: {err})") from None
    for i, item in enumerate(data if isinstance(data, list) else [data]):
        yield (f"{path}[{i}]" if isinstance(data, list) else str(path)), item


def _record(where: str, base: Path, row: Any) -> TripletFiles | None:
    if not isinstance(row, dict) or not all(k in row for k in IMAGEPULSE_KEYS.values()):
        return None
    paths = {}
    for what, key in IMAGEPULSE_KEYS.items():
        if not isinstance(row[key], str):
            raise ValueError(f"{where}: {key} must be a file name, got {json.dumps(row[key])[:40]}")
        paths[what] = base / row[key]
        if not paths[what].is_file():
            raise ValueError(f"{where}: {key} ({what}) names {paths[what]}, which is missing")
    return TripletFiles(paths["target"], paths["content"], paths["style"])


def imagepulse_triplets(root: str | Path) -> list[TripletFiles]:
    """The triplets of an ImagePulse folder: its sample folders (layout A) in sorted order, then the JSON
    records (layout B) of the files under the other folders, in sorted path order."""
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"{base}: no such folder")
    listed = _split_list(base)
    if listed is None:
        folders = sorted(p for p in base.iterdir() if p.is_dir())
        indexes = sorted(p for p in base.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    else:
        folders, indexes = [base / name for name in listed], []
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise ValueError(
                f"{base / SPLIT_FILE} lists {len(missing)} missing folder(s), first {missing[0]}"
            )
    out = []
    for folder in folders:
        sample = _sample_folder(folder)
        if sample is not None:
            out.append(sample)
            continue
        indexes += sorted(p for p in folder.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
    for path in indexes:
        for where, row in _json_records(path):
            record = _record(where, path.parent, row)
            if record is not None:
                out.append(record)
    return out


def detect_layout(root: str | Path) -> Layout:
    """``"omnistyle"`` for a folder with ``content/``, ``style/`` and ``target/``, ``"imagepulse"`` for one
    with sub-folders or JSON index files; a ``ValueError`` naming the folder and both layouts otherwise
    (an ImagePulse folder that holds no triplet is one when it is read)."""
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"{base}: no such folder")
    if _omnistyle_target_dir(base) is not None and (base / "content").is_dir() and (base / "style").is_dir():
        return "omnistyle"
    if any(p.is_dir() or p.suffix in (".json", ".jsonl") for p in base.iterdir()):
        return "imagepulse"
    raise ValueError(f"{base}: no triplets found; {LAYOUTS_EXPECTED}")


class TripletFolder(torch.utils.data.Dataset[TripletTensors]):
    """The triplets of one folder of either layout (auto-detected, or given as ``layout``), read from disk
    on access and resized to ``size`` x ``size``."""

    def __init__(self, root: str | Path, size: int, *, layout: Layout | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.root, self.size = Path(root), size
        self.layout: Layout = layout or detect_layout(self.root)
        if self.layout == "omnistyle":
            self.files = omnistyle_triplets(self.root)
        elif self.layout == "imagepulse":
            self.files = imagepulse_triplets(self.root)
        else:
            raise ValueError(f"layout must be 'omnistyle', 'imagepulse' or None (detect), got {layout!r}")
        if not self.files:
            raise ValueError(f"{self.root}: no triplets found; {LAYOUTS_EXPECTED}")
        self.description = f"{self.layout}:{self.root.resolve()} ({len(self.files)} triplets)"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> TripletTensors:
        f = self.files[index]
        target, content, style = (
            square_tensor(load_image(p), self.size) for p in (f.target, f.content, f.style)
        )
        return target, content, style


class WorldTriplets(torch.utils.data.Dataset[TripletTensors]):
    """Triplets ``offset .. offset + length - 1`` of the procedural world's train split, rendered at
    ``size`` on access: the held-out styles never appear (as target or style image). ``remix``: the
    triplets of remixed looks instead (:func:`scalestyle.data.procedural.remix_triplet`: unnamed styles
    assembled from the training looks' parts)."""

    def __init__(self, size: int, length: int = 100_000, offset: int = 0, *, remix: bool = False) -> None:
        if not world.MIN_SIZE <= size <= world.MAX_SIZE:
            raise ValueError(f"size must be in [{world.MIN_SIZE}, {world.MAX_SIZE}], got {size}")
        self.size, self.remix = size, remix
        self.length, self.offset = operator.index(length), operator.index(offset)
        limit = len(world.TRAIN_SEEDS) // 2
        if self.length < 1 or self.offset < 0 or self.offset + self.length > limit:
            raise ValueError(
                f"length ({self.length}) must be >= 1 and offset ({self.offset}) >= 0 with offset + length "
                f"at most {limit}"
            )
        kind = "world-remix" if remix else "world"
        self.description = f"{kind}:train[{self.offset}:{self.offset + self.length}] at {size} px"

    def __len__(self) -> int:
        return self.length

    def triplet(self, index: int) -> world.Triplet:
        """The rendered samples of item ``index`` (with their content and style names)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} triplets")
        if self.remix:
            return world.remix_triplet(self.offset + index, self.size)
        return world.triplet(self.offset + index, "train", self.size)

    def __getitem__(self, index: int) -> TripletTensors:
        t = self.triplet(index)
        target, content, style = (square_tensor(s.image, self.size) for s in (t.target, t.content, t.style))
        return target, content, style


def world_triplets(size: int, remix: float = 0.0, length: int = 100_000) -> TripletData:
    """The world's ``length`` train-split triplets, joined by remixed-look triplets that make a fraction
    ``remix`` of the whole (uniform draws then read a remix with that probability)."""
    if not 0 <= remix < 1:
        raise ValueError(f"remix must be in [0, 1), got {remix}")
    named = WorldTriplets(size, length)
    n_remix = round(length * remix / (1 - remix))
    return ConcatTriplets([named, WorldTriplets(size, n_remix, remix=True)]) if n_remix else named


class ConcatTriplets(torch.utils.data.Dataset[TripletTensors]):
    """Several triplet sets one after the other (the authors' ``ConcatDataset``), all at one size."""

    def __init__(self, parts: Sequence[TripletData]) -> None:
        if not parts:
            raise ValueError("give at least one triplet dataset")
        sizes = sorted({p.size for p in parts})
        if len(sizes) != 1:
            raise ValueError(f"triplet datasets must share one image size, got {sizes}")
        self.parts, self.size = list(parts), sizes[0]
        self.ends: list[int] = []
        for p in self.parts:
            self.ends.append((self.ends[-1] if self.ends else 0) + len(p))
        self.description = " + ".join(p.description for p in self.parts)

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> TripletTensors:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} triplets")
        part = bisect.bisect_right(self.ends, index)
        return self.parts[part][index - (self.ends[part - 1] if part else 0)]


def triplet_folders(roots: Sequence[str | Path], size: int) -> TripletData:
    """One folder's :class:`TripletFolder`, or several joined in the given order."""
    folders = [TripletFolder(r, size) for r in roots]
    return folders[0] if len(folders) == 1 else ConcatTriplets(folders)
