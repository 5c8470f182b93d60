"""AdaIN's weights: the public naoto0804/pytorch-AdaIN files and scalestyle's own AdaIN folders.

The public release (naoto0804/pytorch-AdaIN `README.md`) is two plain state dicts:

- ``vgg_normalised.pth``: net.py's whole ``vgg`` Sequential, relu1_1 to relu5_4 (53 modules, keys
  ``0.weight`` .. ``51.bias``); `test.py` and `train.py` load it whole and then keep ``vgg[:31]``. Here the
  keys to relu4_1 load into :class:`~scalestyle.models.adain.VGGEncoder`; those of relu4_2 .. relu5_4 are
  checked (all there, right shapes) and left out. A file holding only ``vgg[:31]`` loads too.
- ``decoder.pth``: ``net.decoder.state_dict()`` as `train.py` saves it (keys ``1.weight`` .. ``28.bias``).

Upstream loads them with ``load_state_dict`` (strict); here each is read with ``weights_only=True``
(:func:`scalestyle.weights.read_state_dict`) and checked by :func:`scalestyle.weights.check_coverage`, so
a missing, unexpected or mis-shaped key is one :class:`~scalestyle.weights.WeightsError` line naming it.

scalestyle's own AdaIN folder (the demo's)::

    config.json         {"format_version": 1, "model": "adain", "adain": AdaINConfig, "extra": {...}}
    adain.safetensors   the AdaIN module's state dict (encoder.* and decoder.*)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalestyle.models.adain import AdaIN, AdaINConfig
from scalestyle.weights import (
    CONFIG_FILE,
    FORMAT_VERSION,
    SizeHint,
    WeightsError,
    _brief,
    _build,
    _load_strict,
    _model_state,
    _read_json,
    _saveable,
    _shapes,
    check_coverage,
    read_state_dict,
)

PUBLIC_ENCODER_FILE = "vgg_normalised.pth"
PUBLIC_DECODER_FILE = "decoder.pth"
WEIGHTS_FILE = "adain.safetensors"
MODEL_KIND = "adain"
# net.py's vgg past relu4_1: the convs of relu4_2, relu4_3, relu4_4 and relu5_1 .. relu5_4 (VGG-19 keeps
# relu4_1's 512 channels to the end)
PUBLIC_TAIL_CONVS = (32, 35, 38, 42, 45, 48, 51)
ENCODER_HINTS = (SizeHint("29.weight", 0, "relu4_1 channels", "is this the encoder of another AdaIN size?"),)
DECODER_HINTS = (SizeHint("1.weight", 1, "input channels", "is this the decoder of another AdaIN size?"),)


def public_tail_shapes(relu4_channels: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the public encoder file past relu4_1."""
    out: dict[str, tuple[int, ...]] = {}
    for index in PUBLIC_TAIL_CONVS:
        out[f"{index}.weight"] = (relu4_channels, relu4_channels, 3, 3)
        out[f"{index}.bias"] = (relu4_channels,)
    return out


def load_encoder_weights(encoder: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """A ``vgg_normalised.pth`` state dict into a :class:`VGGEncoder`, strictly; its relu4_2 .. relu5_4
    keys, when there, must all be there with VGG-19's shapes and are not loaded."""
    own = _shapes(_model_state(encoder))
    tail = public_tail_shapes(own["29.weight"][0])
    if not any(k in state for k in tail):
        tail = {}
    check_coverage({**own, **tail}, _shapes(state), source=source, hints=ENCODER_HINTS)
    _load_strict(encoder, {k: state[k] for k in own}, source=source, hints=ENCODER_HINTS)


def load_decoder_weights(decoder: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """A ``decoder.pth`` state dict into an :class:`AdaINDecoder`, strictly."""
    _load_strict(decoder, state, source=source, hints=DECODER_HINTS)


@dataclass(frozen=True)
class AdaINFiles:
    """An AdaIN folder resolved: the public pair (``encoder`` and ``decoder`` differ) or one of ours."""

    cfg: AdaINConfig
    encoder: Path
    decoder: Path
    name: str

    @property
    def public(self) -> bool:
        return self.encoder != self.decoder


def resolve_adain_files(model_dir: str | Path) -> AdaINFiles:
    """Which kind of AdaIN folder ``model_dir`` is: ``vgg_normalised.pth`` + ``decoder.pth`` (the public
    full-size model) or ``config.json`` + ``adain.safetensors`` (:func:`save_adain_dir`)."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such AdaIN folder")
    encoder, decoder = folder / PUBLIC_ENCODER_FILE, folder / PUBLIC_DECODER_FILE
    if encoder.is_file() or decoder.is_file():
        for part in (encoder, decoder):
            if not part.is_file():
                raise WeightsError(
                    f"{folder}: {part.name} is missing (the public AdaIN needs both .pth files)"
                )
        return AdaINFiles(AdaINConfig(), encoder, decoder, "adain (naoto0804/pytorch-AdaIN)")
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise WeightsError(
            f"{folder}: not an AdaIN folder (neither {PUBLIC_ENCODER_FILE} + {PUBLIC_DECODER_FILE} nor "
            f"{CONFIG_FILE} + {WEIGHTS_FILE})"
        )
    data = _read_json(config)
    if not isinstance(data, dict) or data.get("model") != MODEL_KIND:
        raise WeightsError(f'{config}: not an AdaIN config (no "model": "{MODEL_KIND}")')
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise WeightsError(f"{config}: format_version {json.dumps(version)} is not supported")
    cfg: AdaINConfig = _build(AdaINConfig, data.get("adain"), f"{config}.adain")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise WeightsError(f"{folder}: {WEIGHTS_FILE} is missing")
    extra = data.get("extra")
    name = extra.get("name") if isinstance(extra, dict) else None
    return AdaINFiles(cfg, weights, weights, str(name) if name else f"adain ({folder.name})")


def load_adain(files: AdaINFiles) -> AdaIN:
    """The AdaIN of a resolved folder on the CPU in eval mode, built on the meta device, loaded strictly."""
    with torch.device("meta"):
        model = AdaIN(files.cfg)
    if files.public:
        load_encoder_weights(model.encoder, read_state_dict(files.encoder), source=str(files.encoder))
        load_decoder_weights(model.decoder, read_state_dict(files.decoder), source=str(files.decoder))
    else:
        _load_strict(model, read_state_dict(files.encoder), source=str(files.encoder), hints=())
    return model.eval()


def save_adain_dir(out_dir: str | Path, model: AdaIN, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``adain.safetensors`` (config last: an interrupted save is no model)."""
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser()
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": MODEL_KIND,
        "adain": asdict(model.cfg),
    }
    if extra is not None:
        config["extra"] = extra
    try:
        text = json.dumps(config, indent=2) + "\n"
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{out / CONFIG_FILE}: extra is not JSON-serializable ({_brief(err)})") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_file(_saveable(model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        (out / CONFIG_FILE).write_text(text)
    except OSError as err:
        raise WeightsError(f"{out}: cannot write the AdaIN folder ({_brief(err)})") from None
    return out
