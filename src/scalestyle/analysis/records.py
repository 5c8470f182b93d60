"""The record of an analysis run: a :class:`scalestyle.records.JsonlRows` log whose every row carries the
settings it was made with (``config``) and their id (``config_id``). A log made with other settings is
refused rather than mixed into the same plots; durability and resume are those of the shared log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scalestyle.records import JsonlRows, Key, Row, settings_diff, settings_hash


def config_id(settings: Mapping[str, Any]) -> str:
    """A short stable id of JSON-able settings: the first 12 hex digits of their settings hash."""
    return settings_hash(settings)[:12]


class RowLog:
    """Rows of one analysis, made with ``settings``; ``key_fields`` name the fields that identify a row."""

    def __init__(self, path: str | Path, *, settings: Mapping[str, Any], key_fields: tuple[str, ...]) -> None:
        self.settings, self.config = dict(settings), config_id(settings)
        self.key_fields = key_fields
        self.log = JsonlRows(path, self.key)
        self.path = self.log.path
        for row in self.log:
            if row.get("config_id") != self.config:
                diff = settings_diff(row.get("config") or {}, self.settings)
                raise ValueError(
                    f"{self.path} holds rows made with other settings ({diff or row.get('config_id')}); "
                    "use another --out-dir, or the settings it was made with"
                )

    def key(self, row: Mapping[str, Any]) -> Key:
        # lists read back from JSON and tuples given in code must make the same key
        return tuple(json.dumps(row.get(f), sort_keys=True) for f in self.key_fields)

    def has(self, row: Mapping[str, Any]) -> bool:
        return self.key(row) in self.log

    @property
    def rows(self) -> list[Row]:
        return self.log.rows

    def append(self, row: Row) -> None:
        """Add a row (replacing an earlier one with the same key) and make it durable."""
        self.log.append({**row, "config": self.settings, "config_id": self.config})
