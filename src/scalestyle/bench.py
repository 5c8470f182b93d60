"""Timing of generation: median seconds per image after warm-up, tokens per second and peak memory,
with the machine and configuration recorded beside every figure."""

from __future__ import annotations

import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scalestyle import __version__
from scalestyle.pipeline import Pipeline


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "scalestyle": __version__,
        "commit": git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_commit() -> str:
    """The commit of the source tree this runs from, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is the process high-water mark in KiB on Linux: it includes loading, so it bounds from above
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_runs(run: Callable[[], object], device: torch.device, *, runs: int, warmup: int) -> list[float]:
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs}, {warmup}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_generate(
    pipe: Pipeline, *, prompt: str, cfg: float, pn: str | None, runs: int, warmup: int, batch: int = 1
) -> dict[str, Any]:
    device = pipe.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    schedule = pipe.schedule_for(pn=pn)
    times = time_runs(
        lambda: pipe([prompt] * batch, cfg=cfg, pn=pn, seed=0), device, runs=runs, warmup=warmup
    )
    median = statistics.median(times)
    side = [s * pipe.preset.vae.stride for s in schedule.last_grid]
    return {
        "mode": "generate",
        "model": pipe.model_name,
        "size_hw": side,
        "pn": schedule.pn,
        "cfg": cfg,
        "batch": batch,
        "runs": runs,
        "warmup": warmup,
        "seconds_per_image": median / batch,
        "seconds_all_runs": times,
        "tokens_per_second": schedule.total_tokens * batch / median,
        "peak_memory_mb": _peak_memory_mb(device),
        "dtype": "bf16 blocks + autocast" if device.type == "cuda" else "fp32",
        "machine": machine_info(device),
    }
