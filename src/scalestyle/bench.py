"""Timing of generation: median seconds per image after warm-up, tokens per second and peak memory,
with the machine and configuration recorded beside every figure."""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from scalestyle import __version__
from scalestyle.config import ModelPreset, SamplingConfig, VARPreset, get_preset
from scalestyle.pipeline import Pipeline
from scalestyle.records import source_commit

if TYPE_CHECKING:
    from scalestyle.method.style import StyleConfig


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "scalestyle": __version__,
        "commit": source_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is the process high-water mark in KiB on Linux: it includes loading, so it bounds from above
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_runs(
    run: Callable[[], object],
    device: torch.device,
    *,
    runs: int,
    warmup: int,
    progress: Callable[[], None] | None = None,
) -> list[float]:
    """Seconds of each of ``runs`` calls after ``warmup`` untimed ones; ``progress()`` after every call."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs}, {warmup}")
    for _ in range(warmup):
        run()
        if progress is not None:
            progress()
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
        if progress is not None:
            progress()
    return times


def random_build_summary(name: str) -> str:
    """What ``Pipeline.load(name, random_weights=True)`` builds, counted on the meta device (no memory):
    the preset's parameter counts and the memory its fp32 weights take."""
    preset = get_preset(name, ModelPreset | VARPreset)  # type: ignore[arg-type]
    with torch.device("meta"):
        if isinstance(preset, VARPreset):
            from scalestyle.models.var import VAR
            from scalestyle.models.vqvae import VQVAE

            parts: dict[str, nn.Module] = {"transformer": VAR(preset.transformer), "VAE": VQVAE(preset.vae)}
        else:
            from scalestyle.models.bsq_vae import BSQVAE
            from scalestyle.models.infinity import Infinity

            parts = {"transformer": Infinity(preset.transformer), "VAE": BSQVAE(preset.vae)}
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    nbytes = sum(t.numel() * 4 for m in parts.values() for t in (*m.parameters(), *m.buffers()))
    listed = ", ".join(f"{k} {_count(n)}" for k, n in counts.items())
    return (
        f"building {name} with random weights: {listed} parameters, {_size(nbytes)} of fp32 weights "
        "(initialising them takes a while on CPU)"
    )


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _reference_image(size_hw: tuple[int, int]) -> Image.Image:
    """A synthetic reference (colour ramps and stripes) so that timing needs no image file."""
    h, w = size_hw
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx // 8 % 2) * 255], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def bench_generate(
    pipe: Pipeline,
    *,
    prompt: str,
    cfg: float,
    pn: str | None,
    runs: int,
    warmup: int,
    batch: int = 1,
    class_label: int = 207,
    top_k: int = SamplingConfig.top_k,
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Median seconds per image of ``runs`` batches of ``batch`` images (of ``prompt``, or of
    ``class_label`` on a class-conditional model); ``progress()`` after each batch."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1 (images per timed call), got {batch}")
    device = pipe.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    schedule = pipe.schedule_for(pn=pn)
    inputs: dict[str, Any] = (
        {"class_label": [class_label] * batch}
        if pipe.conditioning == "class"
        else {"prompt": [prompt] * batch}
    )
    times = time_runs(
        lambda: pipe(**inputs, sampling=SamplingConfig(cfg=cfg, pn=pn, top_k=top_k)),
        device,
        runs=runs,
        warmup=warmup,
        progress=progress,
    )
    median = statistics.median(times)
    side = [s * pipe.stride for s in schedule.last_grid]
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


def bench_stylize(
    pipe: Pipeline,
    *,
    prompt: str,
    style_prompt: str,
    cfg: float,
    pn: str | None,
    runs: int,
    warmup: int,
    style: StyleConfig | None = None,
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Plain generation and style personalization timed in one run, same model, size and CFG; the ratio is
    what the method costs over plain generation (reference encoding included). ``progress()`` after each
    call (2 x (runs + warmup) in all)."""
    from scalestyle.method.style import StyleConfig, StylePipeline

    style = style or StyleConfig()
    styler = StylePipeline(pipe)
    schedule = pipe.schedule_for(pn=pn)
    side = (schedule.last_grid[0] * pipe.stride, schedule.last_grid[1] * pipe.stride)
    ref = _reference_image(side)
    gen_prompt = f"{prompt} in {style_prompt}"
    device = pipe.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sampling = SamplingConfig(cfg=cfg, pn=pn)
    plain = time_runs(
        lambda: pipe(gen_prompt, sampling=sampling), device, runs=runs, warmup=warmup, progress=progress
    )
    plain_peak = _peak_memory_mb(device)
    stylized = time_runs(
        lambda: styler(prompt, ref, style_prompt=style_prompt, style=style, sampling=sampling),
        device,
        runs=runs,
        warmup=warmup,
        progress=progress,
    )
    t_plain, t_style = statistics.median(plain), statistics.median(stylized)
    return {
        "mode": "stylize",
        "model": pipe.model_name,
        "size_hw": list(side),
        "pn": schedule.pn,
        "cfg": cfg,
        "runs": runs,
        "warmup": warmup,
        "style": {
            "key_steps": style.key_steps,
            "fine_steps": style.fine_steps,
            "convention": style.convention,
            "prune": style.prune,
        },
        "plain_seconds_per_image": t_plain,
        "stylize_seconds_per_image": t_style,
        "ratio": t_style / t_plain,
        "plain_seconds_all_runs": plain,
        "stylize_seconds_all_runs": stylized,
        "plain_peak_memory_mb": plain_peak,
        "peak_memory_mb": _peak_memory_mb(device),
        "dtype": "bf16 blocks + autocast" if device.type == "cuda" else "fp32",
        "machine": machine_info(device),
    }


def bench_transfer(
    pipe: Callable[..., Any],
    *,
    model_name: str,
    device: torch.device,
    size: int,
    runs: int,
    warmup: int,
) -> dict[str, Any]:
    """Median seconds per image of a transfer pipeline (:class:`scalestyle.transfer.TransferPipeline`,
    :class:`scalestyle.adain_transfer.AdaINPipeline`: anything called as ``pipe(content, style)``) on a
    synthetic content and style image of ``size`` x ``size``, at the pipeline's own settings."""
    content = _reference_image((size, size))
    style = content.transpose(Image.Transpose.ROTATE_90)
    times = time_runs(lambda: pipe(content, style), device, runs=runs, warmup=warmup)
    return {
        "mode": "transfer",
        "model": model_name,
        "size_hw": [size, size],
        "runs": runs,
        "warmup": warmup,
        "seconds_per_image": statistics.median(times),
        "seconds_all_runs": times,
        "machine": machine_info(device),
    }
