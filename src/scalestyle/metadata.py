"""Writing images with their provenance: every PNG carries prompt, seed, settings and model.

Files are written to a temporary name in the same folder and renamed, so a killed run never leaves a
partial image behind (resumable batch runs rely on that).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from scalestyle import __version__


def write_png(image: Image.Image, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``image`` as an RGB PNG with each metadata item as a text chunk (non-strings as JSON)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {path.name!r}")
    info = PngImagePlugin.PngInfo()
    for key, value in {**metadata, "software": f"scalestyle {__version__}"}.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    tmp = _tmp_name(path, os.getpid())
    try:
        image.convert("RGB").save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _tmp_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{pid}.tmp")


def remove_stale_tmp(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write (SIGKILL skips their cleanup) left under
    ``folder``; files of a writer still running are kept. Returns the files removed."""
    removed = []
    for tmp in Path(folder).rglob(".*.png.*.tmp"):
        pid_text = tmp.name.rsplit(".", 2)[-2]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def read_png_metadata(path: str | Path) -> dict[str, str]:
    with Image.open(path) as img:
        return {k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str)}
