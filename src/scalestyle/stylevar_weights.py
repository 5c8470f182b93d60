"""StyleVAR's weights: the released checkpoints, initialisation from a plain VAR, and the hub download.

Follows Senfier-LiqiJing/StyleVAR: the released ``StyleVAR_SFT.pth`` and ``StyleVAR-GRPO.pth`` (LoRA merged)
hold the model's state dict under ``model`` (the SFT file also its optimiser state), beside the official
``vae_ch160v4096z32.pth``, in the hub repo ``Senfier-LiqiJing/StyleVAR`` (research note wave2_methods.md
§1.8). The authors load them with ``load_state_dict(strict=False)``, which once silently trained a random
transformer (GRPO.md §5); here every file is checked strictly (:func:`scalestyle.weights._load_strict`: a
missing, unexpected or mis-shaped key is one line naming the file) on a model built on the meta device.

Initialising from a plain VAR follows `train/train_sft.py` ("vanilla transfer"): each block's
``attn.mat_qkv.weight`` is copied into both ``mat_qkv_guide`` and ``mat_qkv_target``, ``q_bias`` and
``v_bias`` likewise, ``class_emb`` (and VAR's ``zero_k_bias`` buffer) dropped, every other key copied as it
is; the ResNet trunks and ``feat_emb``, which VAR lacks, keep the model's own values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from scalestyle.config import StyleVARPreset, get_stylevar_preset
from scalestyle.models.stylevar import StyleVAR
from scalestyle.models.vqvae import VQVAE
from scalestyle.weights import (
    FORMAT_VERSION,
    LAYOUT_FILE,
    VQVAE_FILE,
    SizeHint,
    WeightsError,
    _brief,
    _copy_into,
    _load_strict,
    _model_state,
    _read_json,
    _shapes,
    check_coverage,
    download_staged,
    load_vqvae_weights,
    read_state_dict,
)

STYLEVAR_HUB_REPO = "Senfier-LiqiJing/StyleVAR"
STYLEVAR_PRESET = "stylevar-d20"
# the released transformers by variant: SFT, and GRPO with its LoRA merged
STYLEVAR_CHECKPOINTS = {"sft": "StyleVAR_SFT.pth", "grpo": "StyleVAR-GRPO.pth"}
STYLEVAR_HINTS = (
    SizeHint("pos_start", -1, "width", "is this a checkpoint of another model size?"),
    SizeHint("pos_1LC", 1, "token count", "is this a checkpoint of another resolution?"),
    SizeHint("head.weight", 0, "codebook size", "is this a checkpoint for another VQ-VAE?"),
    SizeHint("feat_emb.weight", 1, "global vector size", "are the trunks of another ResNet width?"),
)

# VAR key suffix -> the StyleVAR keys it initialises (`train/train_sft.py`)
_VAR_ATTN_COPIES = {
    "attn.mat_qkv.weight": ("attn.mat_qkv_guide.weight", "attn.mat_qkv_target.weight"),
    "attn.q_bias": ("attn.q_bias_guide", "attn.q_bias_target"),
    "attn.v_bias": ("attn.v_bias_guide", "attn.v_bias_target"),
}
_VAR_DROPPED = ("class_emb.weight",)
_VAR_DROPPED_SUFFIX = ".attn.zero_k_bias"
# StyleVAR keys that a VAR file cannot give: the new modules and the zero key-bias buffers
_NOT_FROM_VAR = ("style_encoder.", "content_encoder.", "feat_emb.")
_ZERO_K_BIASES = (".attn.zero_k_bias_guide", ".attn.zero_k_bias_target")


def load_stylevar_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load a released StyleVAR state dict (or one saved from :class:`StyleVAR`) into ``model``
    strictly, in place; a model on the meta device is materialized on the CPU once the keys fit."""
    _load_strict(model, state, source=source, hints=STYLEVAR_HINTS)


def var_to_stylevar_state(var_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The StyleVAR keys a plain VAR state dict initialises, as the authors' vanilla transfer maps them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in var_state.items():
        if key in _VAR_DROPPED or key.endswith(_VAR_DROPPED_SUFFIX):
            continue
        prefix, _, suffix = key.partition(".attn.")
        targets = _VAR_ATTN_COPIES.get("attn." + suffix) if suffix else None
        if targets is None:
            out[key] = value
        else:
            for target in targets:
                out[f"{prefix}.{target}"] = value
    return out


def init_from_var(model: StyleVAR, var_state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Initialise ``model`` (materialized, e.g. after :meth:`StyleVAR.init_weights`) from a plain VAR of
    the same size: strict about the VAR file (every key it must give is there, none is left over), while
    the ResNet trunks, ``feat_emb`` and the zero key-bias buffers keep the model's own values."""
    targets = _model_state(model)
    if any(t.is_meta for t in targets.values()):
        raise WeightsError(
            f"{source}: initialising from VAR needs a materialized StyleVAR (the ResNet trunks and feat_emb "
            "are not in a VAR file): build it on a device and call init_weights first"
        )
    mapped = var_to_stylevar_state(var_state)
    own = [k for k in targets if k.startswith(_NOT_FROM_VAR) or k.endswith(_ZERO_K_BIASES)]
    clash = [k for k in own if k in mapped]
    if clash:
        raise WeightsError(f"{source}: not a plain VAR checkpoint: it holds StyleVAR keys such as {clash[0]}")
    found = {**_shapes(mapped), **{k: tuple(targets[k].shape) for k in own}}
    check_coverage(_shapes(targets), found, source=source, hints=STYLEVAR_HINTS, filled=own)
    _copy_into({k: targets[k] for k in mapped}, mapped, source)


def trunk_state_from_torchvision(resnet18_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``resnet18`` keys -> the trunk's (``children()[:-1]``: conv1 -> 0, bn1 -> 1,
    layerN -> 3+N; the classifier ``fc`` dropped), for loading ImageNet weights into the trunks."""
    names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    out = {}
    for key, value in resnet18_state.items():
        head, _, rest = key.partition(".")
        if head == "fc":
            continue
        if head not in names:
            raise WeightsError(f"{key}: not a torchvision resnet18 key")
        out[f"{names[head]}.{rest}"] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# Folders and the hub


@dataclass(frozen=True)
class StyleVARFiles:
    """The files of a StyleVAR folder: the transformer of one variant and the VQ-VAE."""

    transformer: Path
    vae: Path
    preset: StyleVARPreset


def resolve_stylevar_files(model_dir: str | Path, variant: str = "grpo") -> StyleVARFiles:
    """Which file is which in a StyleVAR folder: one made by :func:`download_stylevar`
    (``scalestyle_model.json``), or the hub repo's layout (``vae_ch160v4096z32.pth`` beside the released
    ``StyleVAR_SFT.pth`` / ``StyleVAR-GRPO.pth``). ``variant``: ``"grpo"`` or ``"sft"``."""
    if variant not in STYLEVAR_CHECKPOINTS:
        raise WeightsError(f"StyleVAR variant must be one of {sorted(STYLEVAR_CHECKPOINTS)}, got {variant!r}")
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such model folder")
    preset_name, names, vae = STYLEVAR_PRESET, dict(STYLEVAR_CHECKPOINTS), VQVAE_FILE
    layout = folder / LAYOUT_FILE
    if layout.is_file():
        data = _read_json(layout)
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
            raise WeightsError(f"{layout}: not a StyleVAR layout (no 'checkpoints' of variant -> file)")
        preset_name, names, vae = str(data.get("preset")), dict(data["checkpoints"]), str(data.get("vae"))
    try:
        preset = get_stylevar_preset(preset_name)
    except ValueError as err:
        raise WeightsError(f"{layout}: {_brief(err)}") from None
    if variant not in names:
        raise WeightsError(f"{folder}: has no {variant} checkpoint (it lists {', '.join(sorted(names))})")
    files = StyleVARFiles(folder / str(names[variant]), folder / vae, preset)
    for part in (files.transformer, files.vae):
        if not part.is_file():
            raise WeightsError(f"{folder}: {part.name} is missing")
    return files


def load_stylevar_models(files: StyleVARFiles) -> tuple[StyleVAR, VQVAE]:
    """(StyleVAR, VQVAE) of a resolved folder, on the CPU in eval mode, loaded strictly: both are built
    on the meta device, so nothing is initialised only to be overwritten."""
    with torch.device("meta"):
        model, vqvae = StyleVAR(files.preset.transformer), VQVAE(files.preset.vae)
    load_vqvae_weights(vqvae, read_state_dict(files.vae), source=str(files.vae))
    load_stylevar_weights(model, read_state_dict(files.transformer), source=str(files.transformer))
    return model.eval(), vqvae.eval()


def download_stylevar(dest: str | Path, *, token: str | None = None) -> Path:
    """The released VQ-VAE, SFT and GRPO checkpoints from ``Senfier-LiqiJing/StyleVAR`` into ``dest``.

    The hub writes into a temporary folder inside ``dest``; the files move into place only once all are
    complete (:func:`scalestyle.weights.download_staged`), then ``scalestyle_model.json`` records them.
    """
    parts = (VQVAE_FILE, *STYLEVAR_CHECKPOINTS.values())
    record = {
        "format_version": FORMAT_VERSION,
        "preset": STYLEVAR_PRESET,
        "checkpoints": STYLEVAR_CHECKPOINTS,
        "vae": VQVAE_FILE,
        "source": STYLEVAR_HUB_REPO,
    }
    return download_staged(STYLEVAR_HUB_REPO, parts, parts, Path(dest).expanduser(), record, token)
