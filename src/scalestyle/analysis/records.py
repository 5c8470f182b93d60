"""The resumable record of an analysis run: one JSON object per line, appended and fsynced row by row.

A killed run loses at most the rows in progress: each row is written only after its image file is in
place (written atomically by :func:`scalestyle.metadata.write_png`), and a line cut short by the kill is
dropped when the log is opened again. Every row carries the id of the settings it was made with; a log
made with other settings is refused rather than mixed into the same plots.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def config_id(settings: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able settings (keys sorted)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def source_commit() -> str:
    """The git commit of the scalestyle source tree ("+dirty" with uncommitted changes), or "unknown"
    for an installed copy outside a repository."""
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
    return f"{head}+dirty" if dirty else head


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


class RowLog:
    """Rows of one analysis in a JSONL file, made with ``settings`` (stored in every row as "config", with
    its hash as "config_id"). ``key_fields`` name the fields that identify a row; a row whose key is
    already present counts as done."""

    def __init__(self, path: str | Path, *, settings: Mapping[str, Any], key_fields: tuple[str, ...]) -> None:
        self.path, self.key_fields = Path(path), key_fields
        self.settings, self.config = dict(settings), config_id(settings)
        self.rows: list[Row] = []
        self._keys: dict[tuple[Any, ...], int] = {}
        self._load()

    def key(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(json.dumps(row.get(f), sort_keys=True) for f in self.key_fields)

    def has(self, row: Mapping[str, Any]) -> bool:
        return self.key(row) in self._keys

    def append(self, row: Row) -> None:
        """Add a row (replacing an earlier one with the same key in :attr:`rows`) and make it durable."""
        row = {**row, "config": self.settings, "config_id": self.config}
        line = json.dumps(row, sort_keys=True, allow_nan=False) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._add(row)

    def _add(self, row: Row) -> None:
        key = self.key(row)
        if key in self._keys:
            self.rows[self._keys[key]] = row
        else:
            self._keys[key] = len(self.rows)
            self.rows.append(row)

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # the last line was cut short by a kill: drop it (its row is recomputed)
            cut = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            data = data[:cut]
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{self.path}:{number}: not a JSON row ({err}); repair or remove it"
                ) from err
            if row.get("config_id") != self.config:
                diff = settings_diff(row.get("config") or {}, self.settings)
                raise ValueError(
                    f"{self.path} holds rows made with other settings ({diff or row.get('config_id')}); "
                    "use another --out-dir, or the settings it was made with"
                )
            self._add(row)
