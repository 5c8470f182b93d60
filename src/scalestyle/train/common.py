"""What every trainer shares: resumable checkpoints, a JSONL log and the accelerate set-up.

Resumption is exact: each step's data and noise are drawn from generators seeded by (seed, step), so a
checkpoint needs only the model, the optimizer and the step to continue bit-identically. Multi-GPU runs go
through `accelerate launch` (or `torchrun`): :func:`make_accelerator` returns accelerate's `Accelerator`,
which wraps the model in DDP when launched that way and is a no-op wrapper on one device.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn


def check_range(
    cfg: object,
    names: Sequence[str],
    low: float,
    high: float = math.inf,
    ends: Literal["[]", "[)", "(]", "()"] = "[]",
    note: str = "",
) -> None:
    """A ValueError naming the field, its value and the range unless each of ``cfg``'s fields ``names``
    lies between ``low`` and ``high``, ``ends`` saying which bounds are included (NaN never is): the one
    range check of the trainer configs. ``note`` is added to the message in brackets."""
    for name in names:
        value = getattr(cfg, name)
        above = low < value if ends[0] == "(" else low <= value
        below = value < high if ends[1] == ")" else value <= high
        if not (above and below):
            where = (
                f"{'>' if ends[0] == '(' else '>='} {low}"
                if high == math.inf
                else f"in {ends[0]}{low}, {high}{ends[1]}"
            )
            raise ValueError(f"{name} must be {where}{f' ({note})' if note else ''}, got {value}")


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one (seed, step, stream): data and noise never depend on earlier steps."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 97 + stream)


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: Any,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write atomically (temp file + rename), so a run killed mid-save keeps its previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "config": asdict(config) if is_dataclass(config) and not isinstance(config, type) else config,
        **(dict(extra) if extra else {}),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


class JsonlLog:
    """Appends one JSON object per line; a resumed run continues the same file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.perf_counter()

    def write(self, **row: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"time_s": round(time.perf_counter() - self.start, 2), **row}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def make_accelerator(mixed_precision: str = "no") -> Any:
    from accelerate import Accelerator

    return Accelerator(mixed_precision=mixed_precision)


@functools.cache
def bf16_pays(device_type: str) -> bool:
    """Whether bf16 autocast speeds up training on this machine: always on CUDA; timed on the CPU.

    On a CPU without AVX512-BF16 or AMX torch emulates bf16 matmuls: measured on a 2-core AVX2 sandbox at
    1.2 GFLOP/s against 54 in float32, while CPUs with AVX512-BF16 run them about 3x faster than float32.
    Cached per process, so every trainer of one run (and a resumed one's stages) decides alike.
    """
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=g), torch.randn(256, 256, generator=g)
    seconds = []
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # the first call may pick or compile a kernel
        start = time.process_time()  # CPU time: the other jobs on a shared CPU do not count
        for _ in range(3):
            x @ y
        seconds.append(time.process_time() - start)
    return seconds[1] < seconds[0]


def use_amp(amp: bool | None, device: torch.device) -> bool:
    """A trainer's ``amp`` setting resolved: ``None`` is bf16 autocast where it pays (:func:`bf16_pays`)."""
    return bf16_pays(device.type) if amp is None else amp
