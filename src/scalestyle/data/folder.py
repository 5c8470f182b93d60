"""A folder of captioned images: the trainers' input for users' own data.

Layout, after the Hugging Face ``imagefolder`` convention: images anywhere under the root (.png, .jpg,
.jpeg, .webp), each captioned by a line ``{"file_name": "sub/cat.png", "text": "a cat"}`` of
``metadata.jsonl`` in the root or, failing that, by a sidecar text file beside it (``sub/cat.txt``). An
image with no caption is an error naming it, unless ``uncaptioned="empty"`` (it then trains the model's
empty caption, as classifier-free-guidance dropout does). Images are read with
:func:`scalestyle.images.load_image` (EXIF orientation, transparency on white) and prepared as inference
prepares a reference (:func:`scalestyle.images.preprocess`: LANCZOS cover-resize, centre crop, [-1, 1]).

Batches are a pure function of (seed, step): position ``p = step * batch + i`` of the stream is image
``perm_e[p mod N]`` of epoch ``e = p // N``'s own permutation, so every image is seen once per epoch and a
resumed run reads exactly the batches it would have read uninterrupted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from scalestyle.images import load_image, preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILE = "metadata.jsonl"


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    caption: str


def _read_metadata(root: Path) -> dict[Path, str]:
    path = root / METADATA_FILE
    if not path.is_file():
        return {}
    captions: dict[Path, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = row["file_name"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f'{path}:{number}: expected {{"file_name": ..., "text": ...}} ({type(err).__name__}: {err})'
            ) from None
        if not isinstance(name, str) or not isinstance(text, str):
            raise ValueError(f"{path}:{number}: file_name and text must be strings")
        captions[(root / name).resolve()] = text.strip()
    return captions


def scan_folder(
    root: str | Path, *, uncaptioned: Literal["error", "empty"] = "error"
) -> list[CaptionedImage]:
    """Every image under ``root`` with its caption, in sorted path order."""
    if uncaptioned not in ("error", "empty"):
        raise ValueError(f"uncaptioned must be 'error' or 'empty', got {uncaptioned!r}")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"--data {base}: no such folder")
    listed = _read_metadata(base)
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{base}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    known = {p.resolve() for p in files}
    stray = sorted(str(p) for p in listed if p not in known)
    if stray:
        raise ValueError(f"{base / METADATA_FILE} lists missing image(s): {stray[:3]}")
    items, missing = [], []
    for p in files:
        sidecar = p.with_suffix(".txt")
        if p.resolve() in listed:
            caption = listed[p.resolve()]
        elif sidecar.is_file():
            caption = sidecar.read_text(encoding="utf-8").strip()
        elif uncaptioned == "empty":
            caption = ""
        else:
            missing.append(str(p.relative_to(base)))
            continue
        items.append(CaptionedImage(p, caption))
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) in {base} have no caption (first: {missing[:3]}); add them to "
            f"{METADATA_FILE} or a .txt beside each image, or allow uncaptioned images"
        )
    return items


class ImageFolder:
    """Captioned images prepared at ``size_hw`` pixels; ``cache`` keeps up to that many prepared images in
    memory (small datasets are read from disk once)."""

    def __init__(
        self,
        root: str | Path,
        size_hw: tuple[int, int],
        *,
        seed: int = 0,
        uncaptioned: Literal["error", "empty"] = "error",
        cache: int = 4096,
    ) -> None:
        if min(size_hw) < 1:
            raise ValueError(f"size_hw must be positive, got {size_hw}")
        if cache < 0:
            raise ValueError(f"cache must be >= 0, got {cache}")
        self.root, self.size_hw, self.seed = Path(root), size_hw, seed
        self.items = scan_folder(root, uncaptioned=uncaptioned)
        self.cache_limit = cache
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> torch.Tensor:
        """(3, H, W) float32 in [-1, 1]."""
        if index in self._cache:
            return self._cache[index]
        img_3HW = preprocess(load_image(self.items[index].path), self.size_hw)
        if len(self._cache) < self.cache_limit:
            self._cache[index] = img_3HW
        return img_3HW

    def indices(self, step: int, batch_size: int) -> list[int]:
        n, out = len(self.items), []
        perms: dict[int, list[int]] = {}
        for p in range(step * batch_size, (step + 1) * batch_size):
            epoch = p // n
            if epoch not in perms:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perms[epoch] = torch.randperm(n, generator=g).tolist()
            out.append(perms[epoch][p % n])
        return out

    def batch(self, step: int, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """Images (B, 3, H, W) and captions of ``step`` (the trainers' batch signature; ``g`` is unused:
        the order is fixed by the folder's own seed)."""
        idx = self.indices(step, batch_size)
        return torch.stack([self.image(i) for i in idx]), [self.items[i].caption for i in idx]
