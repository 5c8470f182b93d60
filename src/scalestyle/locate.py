"""Where a ``--model`` or ``--adapter`` value lives on disk: the bundled demo (with its StyleAR adapter and
the demo StyleVAR), a folder, or a preset's folder under :func:`scalestyle.pipeline.default_home` (what
`scalestyle download` fills)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from scalestyle.pipeline import bundled_demo_dir, default_home

BUNDLED_STYLEAR = "stylear-demo"
"""The name of the StyleAR adapter shipped for the demo model (``assets/stylear-demo``)."""
BUNDLED_STYLEVAR = "stylevar-demo"
"""The name of the StyleVAR shipped for the demo world (``assets/stylevar-demo``)."""


def model_folder(model: str | Path | None) -> Path:
    """The folder ``model`` loads from (it may not exist: a preset not downloaded yet)."""
    if model is None:
        return bundled_demo_dir()
    path = Path(model)
    if path.is_dir():
        return path
    if str(model) == BUNDLED_STYLEVAR:
        return bundled_stylevar_dir()
    return default_home() / str(model)


def bundled_stylear_dir() -> Path:
    """The StyleAR adapter trained on the demo world (``MODEL_CARD.md`` there has its recipe and table)."""
    return Path(str(resources.files("scalestyle") / "assets" / BUNDLED_STYLEAR))


def bundled_stylevar_dir() -> Path:
    """The StyleVAR trained on the demo world (``MODEL_CARD.md`` there has its recipe and table)."""
    return Path(str(resources.files("scalestyle") / "assets" / BUNDLED_STYLEVAR))


def adapter_folder(adapter: str | Path) -> Path:
    """The folder an ``--adapter`` value names: :data:`BUNDLED_STYLEAR` is the shipped adapter unless a
    folder of that name exists where the user is (a folder the user made wins over the package's)."""
    path = Path(adapter)
    if str(adapter) == BUNDLED_STYLEAR and not path.is_dir():
        return bundled_stylear_dir()
    return path
