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

A StyleVAR trained here is a native folder, laid out as scalestyle's other model folders
(:func:`scalestyle.weights.save_model_dir`)::

    config.json                 format_version, "family": "stylevar", the variant ("sft"), the
                                StyleVARPreset as JSON, and "extra" (its training history)
    transformer.safetensors     (sharded with an index when large) and vae.safetensors

:func:`resolve_stylevar_files` reads it, the hub layout and a folder made by :func:`download_stylevar`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalestyle.config import (
    STYLEVAR_PRESETS,
    StyleVARConfig,
    StyleVARPreset,
    VARPreset,
    VQVAEConfig,
    get_stylevar_preset,
)
from scalestyle.hub_layouts import VQVAE_FILE
from scalestyle.models.stylevar import StyleVAR
from scalestyle.models.vqvae import VQVAE
from scalestyle.weights import (
    CONFIG_FILE,
    DEFAULT_MAX_SHARD_BYTES,
    FORMAT_VERSION,
    LAYOUT_FILE,
    TRANSFORMER_STEM,
    VAE_STEM,
    SizeHint,
    WeightsError,
    _brief,
    _build,
    _copy_into,
    _load_strict,
    _model_state,
    _read_json,
    _saveable,
    _shapes,
    _weights_path,
    _write_weights,
    check_coverage,
    download_staged,
    load_vqvae_weights,
    read_state_dict,
)

STYLEVAR_HUB_REPO = "Senfier-LiqiJing/StyleVAR"
STYLEVAR_PRESET = "stylevar-d20"
# the released transformers by variant: SFT, and GRPO with its LoRA merged
STYLEVAR_CHECKPOINTS = {"sft": "StyleVAR_SFT.pth", "grpo": "StyleVAR-GRPO.pth"}
# the "family" of a native folder's config.json (Infinity folders have none)
STYLEVAR_FAMILY = "stylevar"
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


def stylevar_preset_for_var(var: VARPreset) -> StyleVARPreset:
    """The StyleVAR preset that a VAR of ``var``'s sizes initialises (the same blocks, grids, codebook and
    VQ-VAE; `build_vae_stylevar` builds StyleVAR-d20 for VAR-d20 so). Of several that fit, the one named
    after the VAR (``var-X`` -> ``stylevar-X``)."""
    t = var.transformer
    want = (t.depth, t.width, t.heads, t.patch_nums, t.vocab_size, t.z_channels, t.attn_l2_norm, t.mlp_ratio)
    fits = [
        preset
        for preset in STYLEVAR_PRESETS.values()
        if preset.vae == var.vae
        and not t.shared_aln
        and preset.transformer.norm_eps == t.norm_eps
        and want
        == (
            preset.transformer.depth,
            preset.transformer.width,
            preset.transformer.heads,
            preset.transformer.patch_nums,
            preset.transformer.vocab_size,
            preset.transformer.z_channels,
            preset.transformer.attn_l2_norm,
            preset.transformer.mlp_ratio,
        )
    ]
    named = [p for p in fits if p.name == f"style{var.name}"]
    if len(fits) == 1 or named:
        return (named or fits)[0]
    if fits:
        raise WeightsError(
            f"several StyleVAR presets fit the VAR preset {var.name!r} ({', '.join(p.name for p in fits)}), "
            f"none of them named style{var.name}"
        )
    raise WeightsError(
        f"no StyleVAR preset fits the VAR preset {var.name!r} (depth {t.depth}, width {t.width}, patch_nums "
        f"{t.patch_nums}, its VQ-VAE); StyleVAR presets: {', '.join(STYLEVAR_PRESETS)}"
    )


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
    """The files of a StyleVAR folder: the transformer of one variant and the VQ-VAE, and the training
    history a native folder records (one entry per run, oldest first; empty for the released files)."""

    transformer: Path
    vae: Path
    preset: StyleVARPreset
    variant: str
    history: tuple[dict[str, Any], ...] = ()


def stylevar_preset_from_dict(data: Any, where: str) -> StyleVARPreset:
    """A :class:`StyleVARPreset` from its JSON (``asdict``); ``where`` names the file in errors."""
    preset: StyleVARPreset = _build(
        StyleVARPreset,
        data,
        where,
        {
            "transformer": lambda v, w: _build(StyleVARConfig, v, w),
            "vae": lambda v, w: _build(VQVAEConfig, v, w),
        },
    )
    return preset


def _check_variant(variant: str) -> None:
    if variant not in STYLEVAR_CHECKPOINTS:
        raise WeightsError(f"StyleVAR variant must be one of {sorted(STYLEVAR_CHECKPOINTS)}, got {variant!r}")


def save_stylevar_dir(
    out_dir: str | Path,
    *,
    preset: StyleVARPreset,
    model: StyleVAR,
    vqvae: VQVAE,
    variant: str = "sft",
    history: tuple[dict[str, Any], ...] = (),
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write a native StyleVAR folder (see the module docstring); ``config.json`` last, so a folder
    interrupted mid-save is not taken for a model. Returns the folder."""
    _check_variant(variant)
    out = Path(out_dir).expanduser()
    config = {
        "format_version": FORMAT_VERSION,
        "family": STYLEVAR_FAMILY,
        "variant": variant,
        **asdict(preset),
        "extra": {"training": list(history)},
    }
    try:
        config_text = json.dumps(config, indent=2) + "\n"
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{out / CONFIG_FILE}: history is not JSON-serializable ({_brief(err)})") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_weights(out, TRANSFORMER_STEM, _saveable(model), max_shard_bytes)
        _write_weights(out, VAE_STEM, _saveable(vqvae), max_shard_bytes)
        (out / CONFIG_FILE).write_text(config_text)
    except OSError as err:
        raise WeightsError(f"{out}: cannot write the model folder ({_brief(err)})") from None
    return out


def _native_files(folder: Path, variant: str | None) -> StyleVARFiles:
    path = folder / CONFIG_FILE
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("family") != STYLEVAR_FAMILY:
        raise WeightsError(
            f"{path}: not a StyleVAR model folder (its config has no family {STYLEVAR_FAMILY!r})"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise WeightsError(
            f"{path}: format_version {json.dumps(version)} is not supported (1 to {FORMAT_VERSION})"
        )
    own = data.get("variant")
    if not isinstance(own, str) or own not in STYLEVAR_CHECKPOINTS:
        raise WeightsError(f"{path}: variant must be one of {sorted(STYLEVAR_CHECKPOINTS)}, got {own!r}")
    if variant is not None and variant != own:
        raise WeightsError(f"{folder}: has no {variant} checkpoint (it holds {own})")
    extra = data.get("extra") or {}
    history = extra.get("training", []) if isinstance(extra, dict) else []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise WeightsError(f"{path}: extra.training must be a list of objects")
    fields = {k: v for k, v in data.items() if k not in ("format_version", "family", "variant", "extra")}
    preset = stylevar_preset_from_dict(fields, str(path))
    transformer, vae = _weights_path(folder, TRANSFORMER_STEM), _weights_path(folder, VAE_STEM)
    return StyleVARFiles(transformer, vae, preset, own, tuple(history))


def is_stylevar_folder(model_dir: str | Path) -> bool:
    """Whether a folder holds a StyleVAR (native, downloaded or the hub layout) rather than another model."""
    folder = Path(model_dir).expanduser()
    config, layout = folder / CONFIG_FILE, folder / LAYOUT_FILE
    if config.is_file():
        data = _read_json(config)
        return isinstance(data, dict) and data.get("family") == STYLEVAR_FAMILY
    if layout.is_file():
        data = _read_json(layout)
        return isinstance(data, dict) and isinstance(data.get("checkpoints"), dict)
    return any((folder / name).is_file() for name in STYLEVAR_CHECKPOINTS.values())


def resolve_stylevar_files(model_dir: str | Path, variant: str | None = None) -> StyleVARFiles:
    """Which file is which in a StyleVAR folder: a native one (``config.json``), one made by
    :func:`download_stylevar` (``scalestyle_model.json``), or the hub repo's layout
    (``vae_ch160v4096z32.pth`` beside the released ``StyleVAR_SFT.pth`` / ``StyleVAR-GRPO.pth``).
    ``variant``: ``"grpo"`` or ``"sft"``; None takes the folder's own (native) or ``"grpo"``."""
    if variant is not None:
        _check_variant(variant)
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such model folder")
    if (folder / CONFIG_FILE).is_file():
        return _native_files(folder, variant)
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
    chosen = variant or ("grpo" if "grpo" in names else next(iter(names), "grpo"))
    if chosen not in names:
        raise WeightsError(f"{folder}: has no {chosen} checkpoint (it lists {', '.join(sorted(names))})")
    files = StyleVARFiles(folder / str(names[chosen]), folder / vae, preset, chosen)
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
