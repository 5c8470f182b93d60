"""StyleAR adapters as evaluation methods (issue 16): ``evaluate --stylear NAME=DIR[:no-se]``.

A StyleAR method runs :class:`~scalestyle.method.stylear.StyleARPipeline` with a trained adapter on the
evaluation's own pipeline. Its caption is the content prompt followed by ``"in style"`` (what `train
stylear` trains on, so the tokens, not the words, carry the style); the style words of the case are not
used. Where the protocol knows the reference's object mask (``procedural``: the world's silhouette,
:meth:`Case.reference_mask`) the style tokens are style-enhanced (SE) unless the method is ``no-se``; SE
is inference-side (training never sees a mask), so "StyleAR without SE" is the same adapter with plain
tokens. A method's settings, and so each row's config hash, hold the adapter's config and the sha256 of
its files: a retrained adapter under the same name is refused by a run folder holding the old one's rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from scalestyle.eval.methods import DEFAULT_METHODS, METHODS, Method, Request, get_methods
from scalestyle.locate import adapter_folder
from scalestyle.method.stylear import StyleARPipeline
from scalestyle.models.stylear import CONFIG_FILE, WEIGHTS_FILE, StyleARAdapter, StyleARSettings
from scalestyle.pipeline import Pipeline

NO_SE = "no-se"


@dataclass(frozen=True)
class StyleARSpec:
    """One ``--stylear`` value: the method's name, the adapter folder, whether SE tokens are used."""

    name: str
    folder: Path
    se: bool = True


def parse_stylear_spec(text: str) -> StyleARSpec:
    """``NAME=DIR`` or ``NAME=DIR:no-se``; the folder must be an adapter (config.json + weights), DIR
    ``stylear-demo`` the shipped one."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest:
        raise ValueError(f"--stylear wants NAME=DIR or NAME=DIR:{NO_SE}, got {text!r}")
    name = name.strip()
    se = not rest.endswith(f":{NO_SE}")
    folder = adapter_folder(rest.removesuffix(f":{NO_SE}"))
    if name in METHODS or name == "ours":
        raise ValueError(f"--stylear {text!r}: {name!r} is a built-in method's name; pick another")
    if not all((folder / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE)):
        raise ValueError(
            f"--stylear {name}: {folder} is not a StyleAR adapter folder (needs {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}, as `scalestyle train stylear` writes)"
        )
    return StyleARSpec(name, folder, se)


def adapter_digest(folder: str | Path) -> str:
    """sha256 over the adapter's config and weights files (their bytes, in that order)."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def stylear_method(
    name: str,
    adapter: StyleARAdapter,
    *,
    digest: str,
    se: bool = True,
    settings: StyleARSettings | None = None,
) -> Method:
    """The method ``name`` generating with ``adapter`` (``digest``: its files' :func:`adapter_digest`);
    its pipeline is built on first use, on the pipe the evaluation passes."""
    style = settings or StyleARSettings()
    stylers: dict[int, tuple[Pipeline, StyleARPipeline]] = {}

    def run(pipe: Pipeline, request: Request) -> Image.Image:
        if id(pipe) not in stylers:
            stylers[id(pipe)] = (
                pipe,
                StyleARPipeline.load(pipe, adapter),
            )  # the pipe kept: its id stays its own
        styler = stylers[id(pipe)][1]
        out = styler(
            request.content_prompt,
            request.ref_image,
            style_mask=request.ref_mask if se else None,
            style=style,
            sampling=request.seeded_sampling,
            on_scale=request.on_scale,
        )
        return out.images[0]

    settings_: dict[str, Any] = {
        "kind": "stylear",
        "adapter_sha256": digest,
        "adapter": asdict(adapter.cfg),
        "se": se,
        "caption": "<content prompt> in style",
        **asdict(style),
    }
    return Method(name, run, settings_)


def load_stylear_method(spec: StyleARSpec, settings: StyleARSettings | None = None) -> Method:
    return stylear_method(
        spec.name,
        StyleARAdapter.load(spec.folder),
        digest=adapter_digest(spec.folder),
        se=spec.se,
        settings=settings,
    )


def select_methods(
    names: str | None,
    specs: Sequence[StyleARSpec],
    *,
    default: str = ",".join(DEFAULT_METHODS),
    settings: StyleARSettings | None = None,
) -> dict[str, Method]:
    """The methods of ``names`` (comma-separated; None: ``default`` and every spec) with the StyleAR
    specs among them, in the order given."""
    by_name: Mapping[str, StyleARSpec] = {s.name: s for s in specs}
    if len(by_name) != len(specs):
        raise ValueError(f"--stylear names must differ, got {[s.name for s in specs]}")
    text = names if names else ",".join([default, *by_name])
    wanted = [n.strip() for n in text.split(",") if n.strip()]
    builtin = get_methods([n for n in wanted if n not in by_name]) if set(wanted) - set(by_name) else {}
    out: dict[str, Method] = {}
    for n in dict.fromkeys("d" if n == "ours" else n for n in wanted):
        out[n] = load_stylear_method(by_name[n], settings) if n in by_name else builtin[n]
    if not out:
        raise ValueError("no method given")
    return out
