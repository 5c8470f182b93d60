"""A training checkpoint as git-friendly files, so a long CPU run continues in a later session.

A sandbox session keeps nothing but git between sessions, and a file in git must stay under 16 MiB. A
checkpoint of :func:`scalestyle.train.common.save_checkpoint` (model, AdamW state, step, config) is
therefore written as safetensors shards of at most ``shard_bytes`` each plus one JSON file with everything
that is not a tensor. The model's tensors keep their dtype bit for bit; the optimizer's moment tensors are
stored in bfloat16, which halves the bytes (AdamW's two moments are twice the model) at a relative error of
2^-8 in a running average: the continued run is not bit-identical to an uninterrupted one, but close.

:func:`unpack_checkpoint` rebuilds the ``torch.save`` file that the trainers resume from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT = "scalestyle-packed-checkpoint/1"
# under the 16 MiB a file may have in git, with room for the safetensors header
DEFAULT_SHARD_BYTES = 15 * 2**20
# the optimizer's state sits under this key of a checkpoint (train.common.save_checkpoint)
_OPTIMIZER = "optimizer"


def _split(obj: Any, path: str, tensors: dict[str, torch.Tensor], lossy: bool) -> Any:
    """``obj`` as JSON with each tensor replaced by a reference to its name in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        # a clone: safetensors refuses tensors that share memory (a VAE registers one mask under two names)
        t = obj.detach().cpu().clone()
        ref: dict[str, Any] = {"tensor": path, "dtype": str(t.dtype).removeprefix("torch.")}
        # AdamW's per-step counter is a 0-d float tensor: it stays exact
        if lossy and t.is_floating_point() and t.ndim > 0 and t.dtype != torch.bfloat16:
            t = t.to(torch.bfloat16)
        tensors[path] = t
        return ref
    if isinstance(obj, dict):
        # optimizer state is keyed by int: JSON keys are strings, so the keys keep their type here
        return {"dict": [[k, _split(v, f"{path}/{k}", tensors, lossy)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"tuple": [_split(v, f"{path}/{i}", tensors, lossy) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, f"{path}/{i}", tensors, lossy) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(
        f"a packed checkpoint holds tensors, dicts, lists and JSON scalars, got {type(obj)} at {path}"
    )


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "tensor" in obj:
            return tensors[obj["tensor"]].to(getattr(torch, obj["dtype"]))
        if "tuple" in obj:
            return tuple(_join(v, tensors) for v in obj["tuple"])
        return {k: _join(v, tensors) for k, v in obj["dict"]}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def pack_checkpoint(ckpt: Path, out_dir: Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """Write ``ckpt`` as ``out_dir/<stem>.json`` and ``<stem>-NNNNN.safetensors`` shards; returns the files.

    Shards of an earlier pack of the same stem are removed first, so the folder holds one checkpoint.
    """
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    state: dict[str, Any] = torch.load(ckpt, map_location="cpu", weights_only=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = {k: _split(v, k, tensors, lossy=k == _OPTIMIZER) for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{ckpt.stem}-*.safetensors"):
        old.unlink()
    names = [f"{ckpt.stem}-{i + 1:05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, out_dir / name)
    index = out_dir / f"{ckpt.stem}.json"
    index.write_text(json.dumps({"format": FORMAT, "shards": names, "state": tree}, indent=1) + "\n")
    return [index, *(out_dir / n for n in names)]


def unpack_checkpoint(index: Path, ckpt: Path) -> dict[str, Any]:
    """Rebuild the checkpoint file ``ckpt`` from a pack's ``index`` JSON; returns the state it wrote."""
    meta = json.loads(index.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{index} is not a packed checkpoint ({FORMAT}), its format is {meta.get('format')!r}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in meta["shards"]:
        tensors.update(load_file(index.parent / name))
    state = {k: _join(v, tensors) for k, v in meta["state"].items()}
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_name(f".{ckpt.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, ckpt)
    return state


def _log_step(line: str) -> int:
    return int(json.loads(line)["step"])


def pack_run(work_dir: Path, out_dir: Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """Pack every ``*.ckpt`` of a trainer's work folder with its ``*_log.jsonl``; returns the files written.

    A log keeps only the rows up to its checkpoint's step (``x.ckpt`` goes with ``x_log.jsonl``): the run
    continued from the pack does those later steps again and logs them anew.
    """
    written: list[Path] = []
    for ckpt in sorted(work_dir.glob("*.ckpt")):
        files = pack_checkpoint(ckpt, out_dir, shard_bytes=shard_bytes)
        written += files
        log = work_dir / f"{ckpt.stem}_log.jsonl"
        if log.is_file():
            step = int(json.loads(files[0].read_text())["state"]["step"])
            rows = [x for x in log.read_text().splitlines() if x.strip() and _log_step(x) <= step]
            (out_dir / log.name).write_text("".join(r + "\n" for r in rows))
            written.append(out_dir / log.name)
    if not written:
        raise FileNotFoundError(f"no *.ckpt in {work_dir}")
    return written


def unpack_run(src_dir: Path, work_dir: Path) -> list[Path]:
    """Restore the checkpoints and logs of :func:`pack_run` into ``work_dir``; returns the checkpoints.

    A checkpoint already in ``work_dir`` at the same or a later step is kept (with its log): unpacking never
    takes a run back.
    """
    restored = []
    for index in sorted(src_dir.glob("*.json")):
        ckpt = work_dir / f"{index.stem}.ckpt"
        packed_step = int(json.loads(index.read_text())["state"]["step"])
        if ckpt.is_file():
            here = torch.load(ckpt, map_location="cpu", weights_only=True)
            if int(here["step"]) >= packed_step:
                continue
        unpack_checkpoint(index, ckpt)
        log = src_dir / f"{index.stem}_log.jsonl"
        if log.is_file():
            (work_dir / log.name).write_text(log.read_text())
        restored.append(ckpt)
    return restored
