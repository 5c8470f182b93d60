"""Resumable batch runs: one PNG per job in an output folder; a job is (style image x prompt x seed) for
`stylize` (:class:`StyleJob`) and (content image x style image x seed) for `transfer` (:class:`TransferJob`).

A job is named by a readable slug beside a short hash of what it is (the prompt, the style image's
content hash, the seed), so two jobs never share a file: prompts that differ only in case, punctuation or
after the slug's length, and style images of the same name in different folders, all get files of their
own. ``manifest.jsonl`` in the folder maps every job to its file (one row per job, written after its
image is in place).

A finished image is reused only when the settings it records (style prompt, every style and sampling
setting, model) are the run's; an image made with other settings is a conflict, named setting by setting,
that refuses the run before any model loads, unless ``overwrite`` asks to make it again. The folder is
locked for the run (:func:`scalestyle.records.folder_lock`) and the temporary files of a killed run are
removed when the next one starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from PIL import Image

from scalestyle.config import SamplingConfig
from scalestyle.images import load_image
from scalestyle.metadata import read_png_metadata, remove_stale_tmp, write_png
from scalestyle.records import JsonlRows, canonical_json, folder_lock, settings_diff, settings_hash

MANIFEST_FILE = "manifest.jsonl"
SLUG_CHARS = 40
HASH_CHARS = 10
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def slug(text: str, limit: int = SLUG_CHARS) -> str:
    """Lowercase letters and digits joined by single dashes, at most ``limit`` characters: readable only;
    the job hash beside it keeps names apart."""
    keep = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in keep:
        keep = keep.replace("--", "-")
    return keep[:limit].strip("-") or "x"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StyleJob:
    """One image to make: ``style_file`` None is text-only (the style in words only)."""

    prompt: str
    style_file: str | None
    style_sha256: str | None
    seed: int

    @property
    def key(self) -> str:
        """sha256 of what the job is; the file of a style image is identified by its bytes, not its name."""
        return settings_hash({"prompt": self.prompt, "style_sha256": self.style_sha256, "seed": self.seed})

    @property
    def file_name(self) -> str:
        style = slug(Path(self.style_file).stem, 24) if self.style_file else "text"
        return f"{style}__{slug(self.prompt)}__s{self.seed}__{self.key[:HASH_CHARS]}.png"

    def describe(self) -> dict[str, Any]:
        """What the manifest records of the job."""
        return {
            "prompt": self.prompt,
            "style_file": self.style_file,
            "style_sha256": self.style_sha256,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class TransferJob:
    """One transfer to make: ``content_file`` redrawn in the style of ``style_file``."""

    content_file: str
    content_sha256: str
    style_file: str
    style_sha256: str
    seed: int

    @property
    def key(self) -> str:
        return settings_hash(
            {"content_sha256": self.content_sha256, "style_sha256": self.style_sha256, "seed": self.seed}
        )

    @property
    def file_name(self) -> str:
        content, style = slug(Path(self.content_file).stem, 24), slug(Path(self.style_file).stem, 24)
        return f"{content}__{style}__s{self.seed}__{self.key[:HASH_CHARS]}.png"

    def describe(self) -> dict[str, Any]:
        return {
            "content_file": self.content_file,
            "content_sha256": self.content_sha256,
            "style_file": self.style_file,
            "style_sha256": self.style_sha256,
            "seed": self.seed,
        }


class Job(Protocol):
    """What a batch needs of a job: its identity, its file, the style image to decode, its manifest row."""

    @property
    def key(self) -> str: ...

    @property
    def file_name(self) -> str: ...

    @property
    def style_file(self) -> str | None: ...

    def describe(self) -> dict[str, Any]: ...


J = TypeVar("J", bound=Job)


def make_jobs(prompts: Sequence[str], style_files: Sequence[str | Path], seed: int) -> list[StyleJob]:
    """Every (style file, prompt) pair in that order (text-only jobs when ``style_files`` is empty); a
    job repeated (the same image under two names, a prompt listed twice) is kept once."""
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty texts")
    styles: list[tuple[str | None, str | None]] = [
        (os.fspath(f), file_sha256(f) if Path(f).is_file() else None) for f in style_files
    ]
    for name, digest in styles:
        if digest is None:
            raise ValueError(f"{name}: no such file")
    jobs = [StyleJob(p, name, digest, seed) for name, digest in (styles or [(None, None)]) for p in prompts]
    return list({job.key: job for job in jobs}.values())


def image_files(paths: Sequence[str | Path], flag: str) -> list[str]:
    """Each path as given when it is a file; a folder's images (by suffix, sorted by name) in its place."""
    files: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"{flag} {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += map(os.fspath, found)
        elif path.is_file():
            files.append(os.fspath(path))
        else:
            raise ValueError(f"{flag} {path}: no such file or folder")
    return files


def make_transfer_jobs(
    content_files: Sequence[str | Path], style_files: Sequence[str | Path], seed: int
) -> list[TransferJob]:
    """Every (style, content) pair, grouped by style (one style image decoded at a time); a pair repeated
    (the same images under other names) is kept once."""
    if not content_files or not style_files:
        raise ValueError("a transfer batch needs at least one content and one style image")
    contents = [(os.fspath(f), file_sha256(f)) for f in content_files]
    jobs: dict[str, TransferJob] = {}
    for s, s_sha in ((s, file_sha256(s)) for s in style_files):
        for c, c_sha in contents:
            job = TransferJob(c, c_sha, os.fspath(s), s_sha, seed)
            jobs.setdefault(job.key, job)  # the first name a picture goes by names its file
    return list(jobs.values())


def batch_settings(
    *, model: str, style_prompt: str | None, style: Any, sampling: SamplingConfig
) -> dict[str, Any]:
    """Everything an image depends on apart from its job: the run's settings, as JSON reads them back."""
    sampling_dict = asdict(sampling)
    sampling_dict.pop("seed")  # part of the job
    settings = {
        "model": model,
        "style_prompt": style_prompt,
        "style": asdict(style),
        "sampling": sampling_dict,
    }
    result: dict[str, Any] = json.loads(canonical_json(settings))
    return result


@dataclass(frozen=True)
class BatchPlan(Generic[J]):
    out_dir: Path
    todo: list[J]
    done: list[J]
    settings: dict[str, Any]
    removed_tmp: list[Path]


def check_out_dir(out_dir: Path) -> None:
    """A one-line error unless ``out_dir`` is (or can become) a folder that files can be written into.

    Writability is probed by creating a file: permission bits say nothing to root, and a read-only
    filesystem refuses writes whatever they say."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise ValueError(f"cannot write into {out_dir}: {err.strerror or err}") from None


def _recorded(path: Path) -> dict[str, str] | None:
    try:
        return read_png_metadata(path)
    except (OSError, ValueError):
        return None


def plan_batch(
    out_dir: str | Path, jobs: Sequence[J], settings: Mapping[str, Any], *, overwrite: bool = False
) -> BatchPlan[J]:
    """Which jobs are done and which to make. An existing file made by another job, with other settings,
    or not by scalestyle at all is a conflict: without ``overwrite``, a ValueError naming the first one
    and how its settings differ."""
    out = Path(out_dir)
    check_out_dir(out)
    removed = remove_stale_tmp(out)
    want = settings_hash(settings)
    todo: list[J] = []
    done: list[J] = []
    for job in jobs:
        path = out / job.file_name
        if not path.exists():
            todo.append(job)
            continue
        meta = _recorded(path)
        if meta is not None and meta.get("job") == job.key and meta.get("settings_hash") == want:
            done.append(job)
            continue
        if not overwrite:
            if meta is None or "batch_settings" not in meta:
                why = "it was not made by a scalestyle batch"
            else:
                why = "it was made with other settings: " + (
                    settings_diff(json.loads(meta["batch_settings"]), settings) or "another job"
                )
            raise ValueError(
                f"{path} exists and {why}; pass --overwrite to make it again, or use another --out-dir"
            )
        todo.append(job)
    return BatchPlan(out, todo, done, dict(settings), removed)


@contextlib.contextmanager
def open_batch(
    out_dir: str | Path, jobs: Sequence[J], settings: Mapping[str, Any], *, overwrite: bool = False
) -> Iterator[BatchPlan[J]]:
    """:func:`plan_batch` with the folder's lock held until the block ends (load the model inside it)."""
    check_out_dir(Path(out_dir))
    with folder_lock(out_dir):
        yield plan_batch(out_dir, jobs, settings, overwrite=overwrite)


def _manifest(out_dir: Path) -> JsonlRows:
    return JsonlRows(out_dir / MANIFEST_FILE, lambda row: (row["job"],))


def _manifest_row(job: Job, settings: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "job": job.key,
        "file": job.file_name,
        **job.describe(),
        "settings_hash": settings_hash(settings),
        "settings": dict(settings),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_batch(
    plan: BatchPlan[J],
    make: Callable[[J, Image.Image | None], tuple[Image.Image, Mapping[str, Any]]],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Make every job of ``plan.todo`` with ``make(job, style_image) -> (image, metadata)`` (the image's
    own metadata, e.g. a :class:`StylePipeline` result's), write it with the job's key and settings, and
    log it in the manifest; done jobs missing from the manifest are logged too. Returns the images made."""
    manifest = _manifest(plan.out_dir)
    for job in plan.done:
        if (job.key,) not in manifest:
            manifest.append(_manifest_row(job, plan.settings))
    recorded = {
        "settings_hash": settings_hash(plan.settings),
        "batch_settings": canonical_json(plan.settings),
    }
    last: tuple[str | None, Image.Image | None] = (None, None)
    for i, job in enumerate(plan.todo):
        if last[0] != job.style_file:
            # one reference decoded at a time: a batch over many large images stays small
            last = (job.style_file, load_image(job.style_file) if job.style_file else None)
        image, meta = make(job, last[1])
        path = plan.out_dir / job.file_name
        write_png(image, path, {**meta, **recorded, "job": job.key, "style_file": job.style_file or ""})
        manifest.append(_manifest_row(job, plan.settings))
        if progress is not None:
            progress(i + 1, len(plan.todo))
    return len(plan.todo)
