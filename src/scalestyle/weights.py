"""Reading, checking and writing model weights: official Infinity checkpoints and scalestyle's own folders.

Official checkpoints load the way upstream FoundationVision/Infinity loads them, with the silent parts made
loud:

- `tools/run_infinity.py::load_transformer` (→ `load_infinity`): a plain state dict from ``torch.load`` (2B,
  ``infinity_2b_reg.pth``) or an HF-style sharded folder through transformers' ``load_sharded_checkpoint``
  (8B, ``infinity_8b_weights/``), then ``Infinity.load_state_dict``, which resizes ``cfg_uncond``, drops four
  derived buffers and loads with ``strict=False``. Here the same adaptations run, then a strict check of
  missing, unexpected and mis-shaped keys (spec §1.11 item 3 and §3).
- `tools/run_infinity.py::load_visual_tokenizer` (→ `bsq_vae/vae.py::vae_model`): ``ckpt['vae']`` copied by
  `bsq_vae/vae.py::load_cnn`, which accepts both the plain (``conv1.weight``) and the wrapped
  (``conv1.conv.weight``) naming and is non-strict and silent. Here: the same renaming, then the strict check.
- VAR (FoundationVision/VAR, `demo_sample.ipynb`): ``var_d{depth}.pth`` and ``vae_ch160v4096z32.pth`` are
  plain state dicts loaded with ``strict=True``; `VQVAE.load_state_dict` replaces a
  ``quantize.ema_vocab_hit_SV`` of another scale count by the model's own. Here the same, with the strict
  check naming what is wrong; the models are built on the meta device and materialized once the file fits.

Every failure is a :class:`WeightsError` with one line that names the file and the problem; errors of torch,
safetensors and huggingface_hub are wrapped, never shown as tracebacks.

scalestyle's own model folder (the bundled demo model, user-trained models)::

    config.json                         the ModelPreset as JSON plus ``format_version`` (and ``extra``)
    transformer.safetensors             or transformer-0000k-of-0000N.safetensors + .safetensors.index.json
    vae.safetensors                     idem

A folder made by :func:`download` holds the official files under their upstream names plus
``scalestyle_model.json``, which says which file is which; :func:`resolve_model_files` reads both kinds.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalestyle.config import (
    PRESETS,
    BSQVAEConfig,
    InfinityConfig,
    ModelPreset,
    TextEncoderConfig,
    VARPreset,
    get_preset,
)
from scalestyle.hub_layouts import (
    OFFICIAL_LAYOUTS,
    STYLEVAR_DOWNLOAD,
    VAR_HUB_REPO,
    VAR_LAYOUTS,
    OfficialLayout,
)
from scalestyle.models.var import VAR
from scalestyle.models.vqvae import VQVAE

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
LAYOUT_FILE = "scalestyle_model.json"
TRANSFORMER_STEM = "transformer"
VAE_STEM = "vae"
# 15 MiB: shipped model files must stay under 16 MiB, and a shard also carries its JSON header.
DEFAULT_MAX_SHARD_BYTES = 15 * 2**20

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".index.json"

# Containers that hold a model's state dict, tried in order when a file's top level is not one itself:
# upstream full training checkpoints (``ckpt['trainer']['gpt_fsdp']``, see `save_slim_model`), the BSQ-VAE
# files (``ckpt['vae']``), and the usual Lightning / DeepSpeed / plain wrappers.
DEFAULT_WRAPPERS: tuple[tuple[str, ...], ...] = (
    ("trainer", "gpt_fsdp"),
    ("vae",),
    ("state_dict",),
    ("model",),
    ("module",),
)
# Prefixes on every key of a model saved from DDP (``module.``) or after torch.compile (``_orig_mod.``).
WRAPPING_PREFIXES = ("module.", "_orig_mod.")

# Buffers that upstream `Infinity.load_state_dict` discards: derived at construction, so never loaded.
INFINITY_DROPPED_BUFFERS = (
    "lvl_1L",
    "attn_bias_for_masking",
    "Infinity_visible_kvlen",
    "Infinity_invisible_qlen",
)

HUB_REPO = "FoundationVision/Infinity"
TEXT_ENCODER_REPO = "google/flan-t5-xl"
TEXT_ENCODER_DIR = "flan-t5-xl"
# Only what `T5EncoderModel` / `AutoTokenizer` read: the safetensors variant (the repo also holds the same
# weights as .bin, Flax and TF). Encoder-only is not possible: the two shards mix encoder and decoder tensors.
TEXT_ENCODER_PATTERNS = (
    "config.json",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
)

_MAX_LISTED = 3


class WeightsError(Exception):
    """A model file or folder that cannot be read or does not fit the model; the message is one line."""


@dataclass(frozen=True)
class ModelFiles:
    """Where a model folder keeps each part; ``text_encoder`` is a directory, ``bundled:<name>`` or hub id."""

    transformer: Path
    vae: Path
    text_encoder: str
    preset: ModelPreset


# ---------------------------------------------------------------------------------------------------------
# Messages


def _brief(err: BaseException, limit: int = 160) -> str:
    """The informative head of a library's error message, on one line (torch's run to many lines)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > limit and ". " in text[:limit]:
        text = text[: text.index(". ") + 1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def _shape(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


# ---------------------------------------------------------------------------------------------------------
# Reading


def _sniff(path: Path) -> str:
    """The container format by content, not by name: 'zip', 'pickle', 'safetensors', 'empty' or 'unknown'.

    Sniffing first means a text file named .pth gets a clear message instead of torch's ``KeyError: 101``.
    """
    with path.open("rb") as f:
        head = f.read(9)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":  # pickle protocol >= 2: the legacy (pre-1.6) torch.save format
        return "pickle"
    # safetensors: little-endian u64 header length, then the JSON header
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    return "unknown"


def _load_torch(path: Path, kind: str) -> Any:
    try:
        with warnings.catch_warnings():
            # a plain pickle (not torch.save) is refused or read anyway; the protocol notice adds nothing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # mmap only works for the zip format (torch >= 1.6); legacy pickles are read whole
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
            except (OSError, RuntimeError) as err:
                # a sound zip that cannot be memory-mapped (some network filesystems): read it whole
                if kind != "zip" or "mmap" not in str(err).lower() or not zipfile.is_zipfile(path):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as err:
        refused = pickle_refusal(path, err)
        if refused is not None:
            raise refused from None
        # a zip cut short loses its central directory; a pickle cut short runs out of input
        if kind == "zip" and not zipfile.is_zipfile(path):
            raise WeightsError(f"{path}: truncated or corrupt checkpoint (incomplete zip archive)") from None
        if isinstance(err, EOFError) or "EOF" in str(err):
            raise WeightsError(f"{path}: truncated or corrupt checkpoint ({_brief(err)})") from None
        raise WeightsError(f"{path}: cannot read the checkpoint ({_brief(err)})") from None


_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def pickle_refusal(path: str | Path, err: BaseException) -> WeightsError | None:
    """The one-line error for a checkpoint that torch's safe (``weights_only``) unpickler refused, or None
    for any other error. torch's own text advises turning the safety off, which would run whatever code
    the file carries: it is never passed on."""
    text = str(err)
    if "Weights only load failed" not in text and not _GLOBAL.search(text):
        return None
    found = _GLOBAL.search(text)
    what = found.group(1) if found else "objects the safe unpickler does not allow"
    return WeightsError(
        f"{path}: holds Python objects besides tensors ({what}); refused, nothing in it was run: only "
        "plain tensor checkpoints are loaded: save the model's state dict alone (or as .safetensors)"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise WeightsError(f"{path}: truncated or corrupt safetensors file ({_brief(err)})") from None


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, wrappers: Sequence[Sequence[str]], path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if _is_tensor_dict(obj):
        return dict(obj)
    for keys in wrappers:
        inner: Any = obj
        for key in keys:
            inner = inner.get(key) if isinstance(inner, Mapping) else None
        if _is_tensor_dict(inner):
            return dict(inner)
    top = [str(k) for k in obj]
    tried = ", ".join("/".join(keys) for keys in wrappers)
    if not top:
        raise WeightsError(f"{path}: holds an empty dict, not a state dict")
    raise WeightsError(
        f"{path}: no state dict found: the top-level keys are {_listing(top)}, "
        f"neither all tensors nor a known container ({tried})"
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPING_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _read_file(path: Path, wrappers: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
    try:
        kind = _sniff(path)
    except OSError as err:
        raise WeightsError(f"{path}: cannot open ({_brief(err)})") from None
    if kind == "empty":
        raise WeightsError(f"{path}: empty file")
    if kind == "safetensors":
        return _load_safetensors(path)
    if kind in ("zip", "pickle"):
        return _unwrap(_load_torch(path, kind), wrappers, path)
    if path.suffix == SAFETENSORS_SUFFIX:
        raise WeightsError(f"{path}: not a safetensors file, or a corrupt one (no valid header)")
    raise WeightsError(
        f"{path}: not a weights file (neither a PyTorch checkpoint nor safetensors; "
        f"expected {', '.join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))})"
    )


def _read_index(index: Path, wrappers: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
    """An HF sharded checkpoint: ``weight_map`` names the shard of each key (transformers'
    ``load_sharded_checkpoint``, which upstream uses for the 8B folder)."""
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{index}: unreadable shard index ({_brief(err)})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(v, str) for v in weight_map.values())
    ):
        raise WeightsError(f"{index}: not a shard index (no 'weight_map' of key -> shard file)")
    state: dict[str, torch.Tensor] = {}
    for shard_name in dict.fromkeys(weight_map.values()):
        shard = index.parent / shard_name
        if not shard.is_file():
            raise WeightsError(f"{index}: shard {shard_name} is missing")
        part = _read_file(shard, wrappers)
        listed = [k for k, v in weight_map.items() if v == shard_name]
        absent = [k for k in listed if k not in part]
        if absent:
            raise WeightsError(
                f"{shard}: {len(absent)} keys listed in {index.name} are not in the shard: {_listing(absent)}"
            )
        state.update(part)
    return state


def _pick_in_dir(folder: Path) -> Path:
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as err:
        raise WeightsError(f"{folder}: cannot list the folder ({_brief(err)})") from None
    indexes = [p for p in entries if p.name.endswith(INDEX_SUFFIX)]
    if indexes:
        # an HF folder may index both formats; safetensors is the one to prefer (no pickle, mmap-able)
        preferred = [p for p in indexes if p.name.endswith(SAFETENSORS_SUFFIX + INDEX_SUFFIX)] or indexes
        if len(preferred) > 1:
            raise WeightsError(
                f"{folder}: several shard indexes ({_listing(p.name for p in preferred)}); pass one"
            )
        return preferred[0]
    files = [p for p in entries if p.suffix in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)]
    if len(files) == 1:
        return files[0]
    if not files:
        raise WeightsError(
            f"{folder}: no weights in the folder (no *{INDEX_SUFFIX}, "
            f"{', '.join('*' + s for s in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES))})"
        )
    raise WeightsError(
        f"{folder}: several weight files ({_listing(p.name for p in files)}); pass one of them"
    )


def read_state_dict(
    path: str | Path, *, wrappers: Sequence[Sequence[str]] = DEFAULT_WRAPPERS
) -> dict[str, torch.Tensor]:
    """Read a state dict on the CPU from a file, a shard index, or a folder holding either.

    Files: PyTorch checkpoints (``.pth/.pt/.bin/.ckpt``, read with ``weights_only=True`` and memory-mapped
    when in the zip format) and ``.safetensors``, told apart by content. A folder must hold one
    ``*.index.json`` (HF sharded layout, either shard format) or a single weights file. A container dict is
    unwrapped along the first of ``wrappers`` that leads to a dict of tensors, and a leading ``module.`` /
    ``_orig_mod.`` on every key is removed.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsError(f"{p}: no such file or folder")
    if p.is_dir():
        p = _pick_in_dir(p)
    state = _read_index(p, wrappers) if p.name.endswith(INDEX_SUFFIX) else _read_file(p, wrappers)
    return _strip_prefixes(state)


# ---------------------------------------------------------------------------------------------------------
# Checking and copying


@dataclass(frozen=True)
class SizeHint:
    """A dimension that tells model sizes apart; a mismatch there gets named as the likely cause."""

    key: str
    axis: int
    what: str
    question: str


INFINITY_HINTS = (
    SizeHint("pos_start", -1, "width", "is this a checkpoint of another model size?"),
    SizeHint("word_embed.weight", 1, "bits per token", "is this a checkpoint for another VAE?"),
    SizeHint("cfg_uncond", 1, "text channels", "is this a checkpoint for another text encoder?"),
)
VAE_HINTS = (
    SizeHint("encoder.conv_out.conv.weight", 0, "codebook dim", "is this the VAE of another model size?"),
    SizeHint("encoder.conv_in.conv.weight", 0, "base channels", "is this the VAE of another model size?"),
)
_BLOCK = re.compile(r"^(?:block_chunks\.\d+\.module\.\d+|blocks\.\d+)\.")


def _depth(keys: Iterable[str]) -> int:
    return len({m.group(0) for k in keys if (m := _BLOCK.match(k))})


def check_coverage(
    expected: Mapping[str, Sequence[int]],
    found: Mapping[str, Sequence[int]],
    *,
    source: str,
    hints: Sequence[SizeHint] = (),
    filled: Collection[str] = (),
) -> None:
    """Raise one-line WeightsError unless ``found`` has exactly the keys of ``expected`` with its shapes.

    Both map keys to shapes (``torch.Size`` or tuples), so key dumps can be checked without tensors.
    ``filled``: keys that the loader took from the model itself (constants), not from the file.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [k for k in expected if k in found and tuple(expected[k]) != tuple(found[k])]
    if not (missing or unexpected or mismatched):
        return
    from_file = [k for k in expected if k in found and k not in filled]
    in_file = [k for k in found if k not in filled]
    if expected and in_file and not from_file:
        raise WeightsError(
            f"{source}: none of the model's {len(expected)} keys are in the file (it has {len(in_file)} keys "
            f"such as {_listing(in_file[:_MAX_LISTED])}): is this the right file?"
        )
    problems: list[str] = []
    for hint in hints:
        if hint.key in expected and hint.key in found:
            want, have = tuple(expected[hint.key]), tuple(found[hint.key])
            if len(want) == len(have) and want and want[hint.axis] != have[hint.axis]:
                problems.append(
                    f"checkpoint {hint.what} {have[hint.axis]} but preset {hint.what} {want[hint.axis]}: "
                    f"{hint.question}"
                )
                break
    else:
        depth_want, depth_have = _depth(expected), _depth(found)
        if depth_want and depth_have and depth_want != depth_have:
            problems.append(
                f"checkpoint depth {depth_have} but preset depth {depth_want}: "
                "is this a checkpoint of another model size?"
            )
    if mismatched:
        shown = ", ".join(
            f"{k} expected {_shape(expected[k])} found {_shape(found[k])}" for k in mismatched[:_MAX_LISTED]
        )
        more = f", ... ({len(mismatched) - _MAX_LISTED} more)" if len(mismatched) > _MAX_LISTED else ""
        problems.append(f"{len(mismatched)} keys with the wrong shape: {shown}{more}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    raise WeightsError(f"{source}: " + "; ".join(problems))


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # keep_vars: the live parameters and buffers, so that copying into them updates the model
    return dict(model.state_dict(keep_vars=True))


def _copy_into(targets: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy in place: each target keeps its dtype and device (bf16 blocks get bf16 values, like upstream's
    ``copy_`` in `load_state_dict`), and aliased tensors (the VAE's quantize/quantizer) stay aliased."""
    with torch.no_grad():
        for key, target in targets.items():
            try:
                target.copy_(state[key])
            except RuntimeError as err:
                raise WeightsError(f"{source}: cannot copy {key} ({_brief(err)})") from None


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def adapt_infinity_state(
    targets: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Upstream's load-time adaptations (spec §1.11 item 3 and §3) on a copy of ``state``."""
    out = {k: v for k, v in state.items() if k not in INFINITY_DROPPED_BUFFERS}
    for key, value in out.items():
        want = targets.get(key)
        if key.endswith("scale_mul_1H11") and want is not None and value.shape != want.shape:
            # (1, 1, H, 1) under upstream's customized flash-attn layout (issue #117): same per-head values
            heads = want.shape[1] if want.dim() == 4 else -1
            if value.dim() == 4 and tuple(value.shape) == (1, 1, heads, 1):
                out[key] = value.reshape(want.shape)
    own, ckpt = targets.get("cfg_uncond"), out.get("cfg_uncond")
    if (
        own is not None
        and ckpt is not None
        and ckpt.dim() == own.dim() == 2
        and ckpt.shape[1] == own.shape[1]
    ):
        rows = own.shape[0]
        if ckpt.shape[0] > rows:
            out["cfg_uncond"] = ckpt[:rows]
        elif ckpt.shape[0] < rows:
            if own.is_meta:
                # a meta-device model (shape checks only) has no rows to pad with
                out["cfg_uncond"] = torch.empty(own.shape, device="meta")
            else:
                # upstream's load_state_dict pads with the rows its constructor drew, whatever this
                # model's own rows hold (zeros before init_weights)
                n = ckpt.shape[0]
                pad = upstream_cfg_uncond(rows, own.shape[1])[n:].to(device=ckpt.device, dtype=ckpt.dtype)
                out["cfg_uncond"] = torch.cat((ckpt, pad), dim=0)
                warnings.warn(
                    f"cfg_uncond: the checkpoint has {n} rows, the model {rows} (its text_maxlen); rows "
                    f"{n}..{rows - 1}, the unconditional features of caption tokens past {n}, are upstream's "
                    "initial rows (trunc_normal std 1.2, generator seed 0, / sqrt(text channels)), untrained",
                    stacklevel=2,
                )
    return out


def upstream_cfg_uncond(rows: int, channels: int) -> torch.Tensor:
    """The ``cfg_uncond`` rows upstream's ``Infinity.__init__`` draws: ``trunc_normal_(std=1.2)`` (bounds
    +-2) from a CPU generator seeded 0, divided by sqrt(Ct5)."""
    table = torch.empty(rows, channels)
    torch.nn.init.trunc_normal_(table, std=1.2, generator=torch.Generator().manual_seed(0))
    return table / channels**0.5


def load_infinity_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load an official (or scalestyle) Infinity state dict into ``model`` strictly, in place.

    Drops upstream's derived buffers, accepts ``scale_mul_1H11`` as (1, 1, H, 1), resizes ``cfg_uncond`` to
    the model's rows, checks coverage (persistent buffers such as ``zero_k_bias`` included: the official
    files hold them) and copies with a cast to each parameter's dtype.
    """
    targets = _model_state(model)
    adapted = adapt_infinity_state(targets, state)
    check_coverage(_shapes(targets), _shapes(adapted), source=source, hints=INFINITY_HINTS)
    _copy_into(targets, adapted, source)


def check_infinity_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """:func:`load_infinity_weights`' checks alone, without copying: ``model`` may be on the meta device,
    so a file that does not fit is refused before the model's memory is allocated."""
    targets = _model_state(model)
    check_coverage(
        _shapes(targets), _shapes(adapt_infinity_state(targets, state)), source=source, hints=INFINITY_HINTS
    )


_CONV_MARKERS = ("conv", ".q.", ".k.", ".v.", ".proj_out.", ".nin_shortcut.")


def adapt_vae_state(
    targets: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map upstream's plain conv/norm naming to the wrapped one (`bsq_vae/vae.py::load_cnn`) and take the
    constant ``lfq.mask`` buffers from the model when the file lacks them."""
    out = {k: v for k, v in state.items() if k in targets}
    for key, value in state.items():
        if key in targets:
            continue
        name = key
        stem, _, leaf = key.rpartition(".")
        if leaf in ("weight", "bias"):
            # load_cnn: a conv-like key gains ".conv", a key with "norm" in it gains ".norm", and only when
            # that wrapped name is the model's (a key the model has as it is stays as it is)
            for wrapper, applies in (("conv", any(m in key for m in _CONV_MARKERS)), ("norm", "norm" in key)):
                wrapped = f"{stem}.{wrapper}.{leaf}"
                if applies and wrapped in targets:
                    name = wrapped
                    break
        if name not in out:  # a file holding both namings of a tensor: the exact (wrapped) one wins
            out[name] = value
    for key, own in targets.items():
        if key.endswith("lfq.mask") and key not in out:
            out[key] = own.detach()
    return out


def load_vae_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load an official (or scalestyle) BSQ-VAE state dict into ``model`` strictly, in place."""
    targets = _model_state(model)
    adapted = _checked_vae_state(targets, state, source)
    _copy_into(targets, adapted, source)


def check_vae_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """:func:`load_vae_weights`' checks alone (``model`` may be on the meta device)."""
    _checked_vae_state(_model_state(model), state, source)


def _checked_vae_state(
    targets: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    adapted = adapt_vae_state(targets, state)
    filled = [k for k in adapted if k.endswith("lfq.mask") and k not in state]
    check_coverage(_shapes(targets), _shapes(adapted), source=source, hints=VAE_HINTS, filled=filled)
    return adapted


VAR_HINTS = (
    SizeHint("pos_start", -1, "width", "is this a checkpoint of another model size?"),
    SizeHint("pos_1LC", 1, "token count", "is this a checkpoint of another resolution (d36 is 512px)?"),
    SizeHint("head.weight", 0, "codebook size", "is this a checkpoint for another VQ-VAE?"),
    SizeHint("word_embed.weight", 1, "latent channels", "is this a checkpoint for another VQ-VAE?"),
)
VQVAE_HINTS = (
    SizeHint("quantize.embedding.weight", 0, "codebook size", "is this the VQ-VAE of another model?"),
    SizeHint("quantize.embedding.weight", 1, "latent channels", "is this the VQ-VAE of another model?"),
    SizeHint("encoder.conv_in.weight", 0, "base channels", "is this the VQ-VAE of another model?"),
)
EMA_HITS_KEY = "quantize.ema_vocab_hit_SV"


def _load_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    hints: Sequence[SizeHint],
    filled: Collection[str] = (),
) -> None:
    """Check coverage, then give a model built on the meta device its storage (on the CPU) and copy."""
    targets = _model_state(model)
    check_coverage(_shapes(targets), _shapes(state), source=source, hints=hints, filled=filled)
    if any(t.is_meta for t in targets.values()):
        # strict coverage: every parameter and persistent buffer is overwritten from the file below
        model.to_empty(device="cpu")
        targets = _model_state(model)
    _copy_into(targets, state, source)


def load_var_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load an official ``var_d{depth}.pth`` (or any VAR state dict) into ``model`` strictly, in place.

    The persistent buffers ``lvl_1L`` and ``attn_bias_for_masking`` are in the official files and are
    loaded like the parameters, as upstream's ``load_state_dict(strict=True)`` does. A model on the meta
    device is materialized on the CPU once the keys fit.
    """
    _load_strict(model, state, source=source, hints=VAR_HINTS)


def load_vqvae_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load an official ``vae_ch160v4096z32.pth`` (or any VQ-VAE state dict) into ``model`` strictly.

    As upstream's `VQVAE.load_state_dict`: an ``ema_vocab_hit_SV`` (a training statistic) of another scale
    count is replaced by the model's own (zeros when the model is on the meta device).
    """
    targets = _model_state(model)
    adapted = dict(state)
    own, ckpt = targets.get(EMA_HITS_KEY), state.get(EMA_HITS_KEY)
    filled: list[str] = []
    if own is not None and ckpt is not None and ckpt.dim() == own.dim() and ckpt.shape[0] != own.shape[0]:
        adapted[EMA_HITS_KEY] = torch.zeros(own.shape) if own.is_meta else own.detach()
        filled.append(EMA_HITS_KEY)
    _load_strict(model, adapted, source=source, hints=VQVAE_HINTS, filled=filled)


# ---------------------------------------------------------------------------------------------------------
# scalestyle model folders


def _saveable(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (the VAE's quantize alias) and non-contiguous views
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def _entry_bytes(key: str, tensor: torch.Tensor) -> int:
    # data plus a generous estimate of the tensor's entry in the safetensors JSON header
    return tensor.numel() * tensor.element_size() + len(key) + 96


def _write_weights(out_dir: Path, stem: str, state: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    from safetensors.torch import save_file

    # stale files of an earlier save (another shard count) would make the folder ambiguous
    for old in (
        *out_dir.glob(f"{stem}-*-of-*{SAFETENSORS_SUFFIX}"),
        out_dir / f"{stem}{SAFETENSORS_SUFFIX}",
        out_dir / f"{stem}{SAFETENSORS_SUFFIX}{INDEX_SUFFIX}",
    ):
        old.unlink(missing_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = _entry_bytes(key, tensor)
        # a tensor bigger than the limit cannot be split: it gets a shard of its own
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / f"{stem}{SAFETENSORS_SUFFIX}"), metadata=metadata)
        return
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}{SAFETENSORS_SUFFIX}"
        save_file(shard, str(out_dir / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / f"{stem}{SAFETENSORS_SUFFIX}{INDEX_SUFFIX}").write_text(json.dumps(index, indent=2) + "\n")


def preset_to_dict(preset: ModelPreset) -> dict[str, Any]:
    return asdict(preset)


def save_model_dir(
    out_dir: str | Path,
    *,
    preset: ModelPreset,
    transformer: nn.Module,
    vae: nn.Module,
    extra: dict[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write a scalestyle model folder (``config.json``, ``transformer.safetensors``, ``vae.safetensors``,
    each sharded with an index when over ``max_shard_bytes``); returns the folder."""
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
    out = Path(out_dir).expanduser()
    config: dict[str, Any] = {"format_version": FORMAT_VERSION, **preset_to_dict(preset)}
    if extra is not None:
        config["extra"] = extra
    try:
        config_text = json.dumps(config, indent=2) + "\n"
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{out / CONFIG_FILE}: extra is not JSON-serializable ({_brief(err)})") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_weights(out, TRANSFORMER_STEM, _saveable(transformer), max_shard_bytes)
        _write_weights(out, VAE_STEM, _saveable(vae), max_shard_bytes)
        # config last: a folder interrupted mid-save has no config.json, so it is not taken for a model
        (out / CONFIG_FILE).write_text(config_text)
    except OSError as err:
        raise WeightsError(f"{out}: cannot write the model folder ({_brief(err)})") from None
    return out


_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
}
_Builder = Callable[[Any, str], Any]


def _build(cls: type, data: Any, where: str, nested: Mapping[str, _Builder] | None = None) -> Any:
    """A frozen config dataclass from JSON, checking field names and scalar types (JSON has no tuples)."""
    nested = nested or {}
    if not isinstance(data, dict):
        raise WeightsError(f"{where}: expected an object, got {json.dumps(data)[:40]}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise WeightsError(f"{where}: unknown fields {_listing(unknown)}")
    required = [
        name
        for name, f in known.items()
        if f.default is MISSING and f.default_factory is MISSING and name not in data
    ]
    if required:
        raise WeightsError(f"{where}: missing fields {_listing(required)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        # `from __future__ import annotations` in config.py: field types are the annotation strings
        spec = str(known[name].type)
        field_where = f"{where}.{name}"
        optional = spec.endswith(" | None")
        if optional:
            spec = spec.removesuffix(" | None")
        if name in nested:
            kwargs[name] = nested[name](value, field_where)
        elif optional and value is None:
            kwargs[name] = None
        elif spec in _SCALAR_TYPES:
            ok = isinstance(value, _SCALAR_TYPES[spec]) and (spec == "bool" or not isinstance(value, bool))
            if not ok:
                raise WeightsError(f"{field_where}: expected {spec}, got {json.dumps(value)[:40]}")
            kwargs[name] = float(value) if spec == "float" else value
        elif spec.startswith("tuple[int"):
            ints = isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            )
            if not ints:
                raise WeightsError(
                    f"{field_where}: expected a list of integers, got {json.dumps(value)[:40]}"
                )
            kwargs[name] = tuple(value)
        elif spec.startswith("tuple[float"):
            numbers = isinstance(value, list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value
            )
            if not numbers:
                raise WeightsError(f"{field_where}: expected a list of numbers, got {json.dumps(value)[:40]}")
            kwargs[name] = tuple(float(v) for v in value)
        else:  # a config field type this reader does not know yet: fail loudly rather than guess
            raise WeightsError(f"{field_where}: unsupported field type {spec}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{where}: {_brief(err)}") from None


def preset_from_dict(data: Any, where: str) -> ModelPreset:
    """Inverse of :func:`preset_to_dict`; ``where`` names the file in errors."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ("format_version", "extra")}
    preset: ModelPreset = _build(
        ModelPreset,
        data,
        where,
        {
            "transformer": lambda v, w: _build(InfinityConfig, v, w),
            "vae": lambda v, w: _build(BSQVAEConfig, v, w),
            "text": lambda v, w: _build(TextEncoderConfig, v, w),
        },
    )
    return preset


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: not readable JSON ({_brief(err)})") from None


def read_model_config(model_dir: str | Path) -> ModelPreset:
    """The :class:`ModelPreset` of a scalestyle model folder (or of its ``config.json`` given directly)."""
    path = Path(model_dir).expanduser()
    if path.is_dir():
        path = path / CONFIG_FILE
    data = _read_json(path)
    if not isinstance(data, dict) or "format_version" not in data:
        raise WeightsError(f"{path}: not a scalestyle model config (no format_version)")
    version = data["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise WeightsError(
            f"{path}: format_version {json.dumps(version)} is not supported (this scalestyle reads 1 to "
            f"{FORMAT_VERSION}; a newer scalestyle may read it)"
        )
    return preset_from_dict(data, str(path))


# ---------------------------------------------------------------------------------------------------------
# Resolving folders


def _weights_path(model_dir: Path, stem: str) -> Path:
    single = model_dir / f"{stem}{SAFETENSORS_SUFFIX}"
    index = model_dir / f"{stem}{SAFETENSORS_SUFFIX}{INDEX_SUFFIX}"
    if single.is_file():
        return single
    if index.is_file():
        return index
    raise WeightsError(f"{model_dir}: {CONFIG_FILE} is there but {single.name} (or {index.name}) is missing")


def _text_source(model_dir: Path, source: str) -> str:
    # a relative path is taken relative to the model folder when it exists there, so folders can move
    candidate = model_dir / source
    if not source.startswith("bundled:") and not Path(source).is_absolute() and candidate.is_dir():
        return str(candidate)
    return source


def _resolve_layout(model_dir: Path) -> ModelFiles:
    path = model_dir / LAYOUT_FILE
    data = _read_json(path)
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    try:
        preset = get_preset(str(data["preset"]))
        transformer, vae = model_dir / str(data["transformer"]), model_dir / str(data["vae"])
    except KeyError as err:
        raise WeightsError(f"{path}: missing field {err}") from None
    except ValueError as err:
        raise WeightsError(f"{path}: {_brief(err)}") from None
    for part in (transformer, vae):
        if not part.exists():
            raise WeightsError(f"{path}: lists {part.name}, which is not in {model_dir}")
    text = _text_source(model_dir, str(data.get("text_encoder") or preset.text.source))
    return ModelFiles(transformer, vae, text, preset)


def _guess_official(model_dir: Path) -> ModelFiles | None:
    """A folder laid out as upstream's ``weights/`` (files under their hub names), without our JSON."""
    matches = [
        layout
        for layout in OFFICIAL_LAYOUTS.values()
        if (model_dir / layout.transformer).exists() and (model_dir / layout.vae).is_file()
    ]
    if len(matches) != 1:
        return None
    layout = matches[0]
    preset = get_preset(layout.preset)
    text = preset.text.source
    for name in (TEXT_ENCODER_DIR, "flan-t5-xl-official"):  # the second is the 8B notebooks' name
        if (model_dir / name / "config.json").is_file():
            text = str(model_dir / name)
            break
    return ModelFiles(model_dir / layout.transformer, model_dir / layout.vae, text, preset)


def resolve_model_files(model_dir: str | Path) -> ModelFiles:
    """Which file is which in a model folder: scalestyle's format (``config.json``), a folder made by
    :func:`download` (``scalestyle_model.json``), or upstream's ``weights/`` layout with one model."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such model folder")
    if (folder / LAYOUT_FILE).is_file():
        return _resolve_layout(folder)
    if (folder / CONFIG_FILE).is_file():
        preset = read_model_config(folder)
        return ModelFiles(
            _weights_path(folder, TRANSFORMER_STEM),
            _weights_path(folder, VAE_STEM),
            _text_source(folder, preset.text.source),
            preset,
        )
    guessed = _guess_official(folder)
    if guessed is not None:
        return guessed
    raise WeightsError(
        f"{folder}: not a model folder: it has neither {CONFIG_FILE} (a scalestyle model) nor {LAYOUT_FILE} "
        "(made by `scalestyle download`)"
    )


@dataclass(frozen=True)
class VARFiles:
    """The two files of a VAR model folder."""

    transformer: Path
    vae: Path
    preset: VARPreset


def is_var_folder(model_dir: str | Path) -> bool:
    """Whether a folder holds a VAR model (upstream's file names, or a VAR preset in its layout file),
    rather than an Infinity one."""
    folder = Path(model_dir).expanduser()
    layout = folder / LAYOUT_FILE
    if layout.is_file():
        data = _read_json(layout)
        return isinstance(data, dict) and isinstance(PRESETS.get(str(data.get("preset", ""))), VARPreset)
    return any((folder / v.transformer).is_file() for v in VAR_LAYOUTS.values())


def resolve_var_files(model_dir: str | Path) -> VARFiles:
    """Which file is which in a VAR folder: one made by :func:`download` (``scalestyle_model.json``), or
    upstream's layout (``vae_ch160v4096z32.pth`` beside exactly one ``var_d{depth}.pth``)."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such model folder")
    if (folder / LAYOUT_FILE).is_file():
        path = folder / LAYOUT_FILE
        data = _read_json(path)
        if not isinstance(data, dict):
            raise WeightsError(f"{path}: expected a JSON object")
        try:
            preset = get_preset(str(data["preset"]), VARPreset)
            files = VARFiles(folder / str(data["transformer"]), folder / str(data["vae"]), preset)
        except KeyError as err:
            raise WeightsError(f"{path}: missing field {err}") from None
        except ValueError as err:
            raise WeightsError(f"{path}: {_brief(err)}") from None
    else:
        found = [layout for layout in VAR_LAYOUTS.values() if (folder / layout.transformer).is_file()]
        if len(found) != 1:
            names = ", ".join(layout.transformer for layout in VAR_LAYOUTS.values())
            what = "several of" if found else "none of"
            raise WeightsError(f"{folder}: not a VAR model folder: it holds {what} {names}")
        layout = found[0]
        files = VARFiles(
            folder / layout.transformer, folder / layout.vae, get_preset(layout.preset, VARPreset)
        )
    for part in (files.transformer, files.vae):
        if not part.is_file():
            raise WeightsError(f"{folder}: {part.name} is missing")
    return files


def load_var_models(files: VARFiles) -> tuple[VAR, VQVAE]:
    """(VAR, VQVAE) of a resolved folder, on the CPU in eval mode, loaded strictly: both are built on the
    meta device, so nothing is initialised only to be overwritten."""
    with torch.device("meta"):
        var, vqvae = VAR(files.preset.transformer), VQVAE(files.preset.vae)
    load_vqvae_weights(vqvae, read_state_dict(files.vae), source=str(files.vae))
    load_var_weights(var, read_state_dict(files.transformer), source=str(files.transformer))
    return var.eval(), vqvae.eval()


# ---------------------------------------------------------------------------------------------------------
# Downloading


def _hub_error(err: Exception, repo: str, dest: Path) -> WeightsError:
    names = {
        cls.__name__ for cls in type(err).__mro__
    }  # by name: the hub's error classes move between versions
    status = getattr(getattr(err, "response", None), "status_code", None)
    if names & {"GatedRepoError", "RepositoryNotFoundError"} or status in (401, 403):
        return WeightsError(
            f"the hub refused access to {repo}: {_brief(err)}; check --token (or `huggingface-cli login`)"
        )
    if names & {"EntryNotFoundError", "RemoteEntryNotFoundError", "RevisionNotFoundError"} and not (
        names & {"LocalEntryNotFoundError"}
    ):
        return WeightsError(f"{repo} on the hub lacks an expected file: {_brief(err)}")
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
        return WeightsError(f"cannot write to {dest}: {_brief(err)}")
    return WeightsError(
        f"could not reach the hub: {_brief(err)}; download on a machine with internet and pass --model DIR"
    )


def _snapshot(repo: str, patterns: Sequence[str], dest: Path, token: str | None) -> None:
    import huggingface_hub

    try:
        huggingface_hub.snapshot_download(
            repo_id=repo, allow_patterns=list(patterns), local_dir=str(dest), token=token
        )
    except Exception as err:  # every hub/network failure becomes one line; see _hub_error
        raise _hub_error(err, repo, dest) from None


def download(
    preset_name: str, dest: str | Path, *, token: str | None = None, text_encoder: bool = True
) -> Path:
    """Fetch the official weights of ``preset_name`` (and Flan-T5-XL) into ``dest``; returns ``dest``.

    Upstream file names in ``FoundationVision/Infinity``: ``infinity_2b_reg.pth`` and
    ``infinity_vae_d32reg.pth`` (2B); the folder ``infinity_8b_weights/`` (four safetensors shards and
    ``model.safetensors.index.json``) and ``infinity_vae_d56_f8_14_patchify.pth`` (8B). Writes
    ``scalestyle_model.json`` so that ``--model DEST`` works. VAR presets (``var-d16`` .. ``var-d36``)
    come from ``FoundationVision/var`` (:func:`_download_var`); ``"stylevar"`` is the released StyleVAR
    from ``Senfier-LiqiJing/StyleVAR`` (:func:`scalestyle.stylevar_weights.download_stylevar`).
    """
    if preset_name in VAR_LAYOUTS:
        return _download_var(VAR_LAYOUTS[preset_name], Path(dest).expanduser(), token)
    if preset_name == STYLEVAR_DOWNLOAD:
        # imported here: scalestyle.stylevar_weights builds on this module
        from scalestyle.stylevar_weights import download_stylevar

        return download_stylevar(dest, token=token)
    if preset_name not in OFFICIAL_LAYOUTS:
        known = ", ".join(sorted((*OFFICIAL_LAYOUTS, *VAR_LAYOUTS, STYLEVAR_DOWNLOAD)))
        raise WeightsError(f"no official weights for {preset_name!r}; choose one of {known}")
    layout = OFFICIAL_LAYOUTS[preset_name]
    out = Path(dest).expanduser()
    # everything lands in a hidden sibling first, moved into ``out`` only once complete: a failed download
    # leaves no folder that a later load would take for a broken model (a retry resumes the sibling)
    staging = out.with_name(f".{out.name}.partial")
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WeightsError(f"cannot create {staging}: {_brief(err)}") from None
    try:
        _snapshot(HUB_REPO, layout.allow_patterns, staging, token)
        for part in (layout.transformer, layout.vae):
            if not (staging / part).exists():
                raise WeightsError(
                    f"the hub snapshot of {HUB_REPO} has no {part}; nothing was written to {out}"
                )
        text_dir: str | None = None
        if text_encoder:
            _snapshot(TEXT_ENCODER_REPO, TEXT_ENCODER_PATTERNS, staging / TEXT_ENCODER_DIR, token)
            text_dir = TEXT_ENCODER_DIR
    except WeightsError:
        _remove_if_empty(staging)
        raise
    record = {
        "format_version": FORMAT_VERSION,
        "preset": layout.preset,
        "transformer": layout.transformer,
        "vae": layout.vae,
        # absent: the preset's hub id, which transformers fetches (or finds in its cache) on first use
        "text_encoder": text_dir,
        "source": HUB_REPO,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        for part in (layout.transformer, layout.vae, *([text_dir] if text_dir else [])):
            if (out / part).is_dir():
                shutil.rmtree(out / part)
            os.replace(staging / part, out / part)
        (out / LAYOUT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    except OSError as err:
        raise WeightsError(f"cannot write to {out}: {_brief(err)}") from None
    shutil.rmtree(staging, ignore_errors=True)
    return out


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when the hub wrote nothing into it but its own bookkeeping (``.cache``)."""
    if folder.is_dir() and all(p.name == ".cache" for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def _download_var(layout: OfficialLayout, out: Path, token: str | None) -> Path:
    """``var_d{depth}.pth`` and ``vae_ch160v4096z32.pth`` from ``FoundationVision/var`` into ``out``."""
    record = {
        "format_version": FORMAT_VERSION,
        "preset": layout.preset,
        "transformer": layout.transformer,
        "vae": layout.vae,
        "source": VAR_HUB_REPO,
    }
    parts = (layout.transformer, layout.vae)
    return download_staged(VAR_HUB_REPO, layout.allow_patterns, parts, out, record, token)


def download_staged(
    repo: str,
    patterns: Sequence[str],
    parts: Sequence[str],
    out: Path,
    record: Mapping[str, Any],
    token: str | None,
) -> Path:
    """Fetch ``patterns`` of ``repo`` into a temporary folder inside ``out``, then move ``parts`` into place
    and write ``record`` as the layout file, only once every part is complete: an interrupted download
    leaves no partial model file that a later load would trip on."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=out))
    except OSError as err:
        raise WeightsError(f"cannot create {out}: {_brief(err)}") from None
    try:
        _snapshot(repo, patterns, staging, token)
        for part in parts:
            if not (staging / part).is_file():
                raise WeightsError(f"the hub snapshot of {repo} has no {part}; nothing was written to {out}")
        try:
            for part in parts:
                os.replace(staging / part, out / part)
            (out / LAYOUT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        except OSError as err:
            raise WeightsError(f"cannot write to {out}: {_brief(err)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
