"""Where a ``--model`` value lives on disk: the bundled demo, a model folder, or a preset's folder under
:func:`scalestyle.pipeline.default_home` (what `scalestyle download` fills)."""

from __future__ import annotations

from pathlib import Path

from scalestyle.pipeline import bundled_demo_dir, default_home


def model_folder(model: str | Path | None) -> Path:
    """The folder ``model`` loads from (it may not exist: a preset not downloaded yet)."""
    if model is None:
        return bundled_demo_dir()
    path = Path(model)
    return path if path.is_dir() else default_home() / str(model)
