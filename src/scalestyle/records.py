"""Durable, resumable JSONL records: what every run that writes one row per image shares.

Evaluation runs (:mod:`scalestyle.eval.evaluate`) and analyses (:mod:`scalestyle.analysis.experiments`)
both write one JSON object per line, appended, flushed and fsynced one row at a time, each row only
after its image is in place. A run killed at any moment loses at most the row in progress: opening the
log drops a last line cut short by the kill (no trailing newline), and that row is made again. Rows are
keyed; a row whose key is already logged counts as done, and a later row with the same key replaces it.

Also here: the settings hash and settings diff that refuse a log made with other settings, the git
commit that every row records, and the folder lock that keeps a second run from writing into a folder
that one is already writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

Row = dict[str, Any]
Key = tuple[Any, ...]


def canonical_json(value: Any) -> str:
    """Keys sorted, no spaces, non-JSON values as ``str``: the same settings always give the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def settings_hash(value: Any) -> str:
    """The sha256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, Mapping):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``"sampling.tau: 0.5 -> 0.7, mode: 'cross' -> 'handoff'"``: where two settings differ."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


def source_commit() -> str:
    """The git commit of the scalestyle source tree ("+dirty" with uncommitted changes to tracked files),
    or "unknown" for an installed copy outside a repository."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head}+dirty" if dirty else head


class JsonlRows:
    """The rows of one JSONL file, keyed by ``key(row)``, in the order first logged.

    ``key`` raising ``KeyError``/``TypeError`` on a row marks the file as not a log of this kind: opening
    it is then an error naming the line, as is any complete line that is not JSON.
    """

    def __init__(self, path: str | Path, key: Callable[[Mapping[str, Any]], Key]) -> None:
        self.path, self.key = Path(path), key
        self._rows: dict[Key, Row] = {}
        self.repaired = False
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            data = data[:cut]
            self.repaired = True
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = self.key(row)
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{self.path}:{number}: not a row of this log ({err}); repair or remove it"
                ) from err
            self._rows[key] = row

    def __contains__(self, key: Key) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows.values())

    @property
    def rows(self) -> list[Row]:
        return list(self._rows.values())

    def append(self, row: Row) -> None:
        """Make ``row`` durable (one line, flushed and fsynced), then index it."""
        line = json.dumps(row, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._rows[self.key(row)] = row


LOCK_FILE = ".scalestyle.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the one-writer lock of ``folder`` (created if missing) for the duration.

    A second run on the same folder would append the same rows twice and race on the same images; it is
    refused at once with a ValueError naming the holder's pid. The lock is an advisory ``flock`` on
    ``folder/.scalestyle.lock``: the kernel drops it when the holder exits, however it exits (SIGKILL
    included), so a killed run never leaves a stale lock behind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(
                f"another scalestyle run (pid {holder}) is writing into {folder}; wait for it to finish "
                "or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)
