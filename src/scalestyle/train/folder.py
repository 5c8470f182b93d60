"""Train or fine-tune a model on a folder of captioned images: `scalestyle train folder --data DIR`.

Two starting points:

- from scratch (``preset``): the BSQ VAE is trained on the folder's images, the text encoder is the
  given T5 (``text_encoder``: hub id or directory) or, for the small presets, a frozen word-level demo
  T5 built over the captions' words (:mod:`scalestyle.models.demo_text`), and the transformer is trained
  from :meth:`Infinity.init_weights`;
- fine-tuning (``init``, a model folder such as the bundled demo or a downloaded Infinity): its VAE and
  text encoder are kept frozen and its transformer is the starting point.

Images are prepared square at the schedule's last grid times the VAE stride (64x64 for the demo,
1024x1024 for Infinity at 1M). Checkpoints and logs go to ``work_dir`` and every stage resumes; the
result is a model folder that every command loads with ``--model``.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from scalestyle.config import ModelPreset, TextEncoderConfig, get_preset
from scalestyle.data.folder import ImageFolder
from scalestyle.models.bsq_vae import BSQVAE
from scalestyle.models.demo_text import build_demo_text_encoder
from scalestyle.models.infinity import Infinity
from scalestyle.models.text_encoder import TextEncoder
from scalestyle.schedules import get_schedule
from scalestyle.train.transformer import CachedText, TransformerTrainConfig, train_transformer
from scalestyle.train.vae import VAETrainConfig, train_vae
from scalestyle.weights import (
    load_infinity_weights,
    load_vae_weights,
    read_state_dict,
    resolve_model_files,
    save_model_dir,
)

# a built word-level encoder is for the small presets; the real models read Flan-T5 features
_DEMO_TEXT_MAX_CHANNELS = 512


@dataclass(frozen=True)
class FolderTrainConfig:
    vae: VAETrainConfig = field(default_factory=lambda: VAETrainConfig(steps=2000, batch_size=16))
    transformer: TransformerTrainConfig = field(
        default_factory=lambda: TransformerTrainConfig(steps=2000, batch_size=16, scale_weighting="scale")
    )
    preset: str = "demo"
    init: str | None = None
    text_encoder: str | None = None
    pn: str | None = None
    uncaptioned: Literal["error", "empty"] = "error"

    def __post_init__(self) -> None:
        if self.init is not None and self.text_encoder is not None:
            raise ValueError("text_encoder is for models trained from scratch; --init brings its own")
        if self.uncaptioned not in ("error", "empty"):
            raise ValueError(f"uncaptioned must be 'error' or 'empty', got {self.uncaptioned!r}")


def caption_words(captions: list[str]) -> list[str]:
    """The words of ``captions`` as the demo tokenizer's pre-tokenizer splits them."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Whitespace()
    return sorted({w for c in captions for w, _ in pre.pre_tokenize_str(c)} | {"a", "in", "style"})


def train_on_folder(
    data_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    cfg: FolderTrainConfig,
    *,
    progress: bool = True,
) -> Path:
    """Train every stage that ``cfg`` asks for and write the model folder ``out_dir``; returns it."""
    start = time.perf_counter()
    work, out = Path(work_dir), Path(out_dir)
    files = resolve_model_files(cfg.init) if cfg.init is not None else None
    base = files.preset if files is not None else get_preset(cfg.preset)
    schedule = get_schedule(1.0, cfg.pn or base.default_pn)
    h, w = schedule.last_grid
    size = (h * base.vae.stride, w * base.vae.stride)
    # read (and checked) before any weights load or any training starts
    data = ImageFolder(data_dir, size, seed=cfg.transformer.seed, uncaptioned=cfg.uncaptioned)
    work.mkdir(parents=True, exist_ok=True)
    if files is not None:
        text_src = files.text_encoder
        given = BSQVAE(base.vae)
        load_vae_weights(given, read_state_dict(files.vae), source=str(files.vae))
        vae: BSQVAE | None = given
        state = read_state_dict(files.transformer)

        def init(model: Infinity) -> None:
            load_infinity_weights(model, state, source=str(files.transformer))

        init_fn = init
    else:
        vae, init_fn = None, None
        if cfg.text_encoder is not None:
            text_src = cfg.text_encoder
        elif base.transformer.text_channels <= _DEMO_TEXT_MAX_CHANNELS:
            text_src = str(
                build_demo_text_encoder(
                    caption_words([i.caption for i in data.items]),
                    work / "text_encoder",
                    d_model=base.transformer.text_channels,
                    max_length=base.transformer.text_maxlen,
                )
            )
        else:
            raise ValueError(
                f"preset {base.name!r} reads {base.transformer.text_channels}-channel T5 features: pass "
                "--text-encoder (e.g. google/flan-t5-xl or its local folder)"
            )
    t0 = time.perf_counter()
    if vae is None:
        vae = train_vae(
            base.vae, cfg.vae, lambda s, b, g: data.batch(s, b, g)[0], schedule.grids, work, progress=progress
        )
    t_vae = time.perf_counter() - t0
    text = CachedText(TextEncoder.from_pretrained(text_src))
    t0 = time.perf_counter()
    transformer = train_transformer(
        base.transformer,
        cfg.transformer,
        vae,
        text,
        data.batch,
        schedule,
        work,
        init=init_fn,
        progress=progress,
    )
    t_transformer = time.perf_counter() - t0

    text_dir = Path(text_src)
    local_text = not text_src.startswith("bundled:") and text_dir.is_dir()
    if local_text:
        dest = out / "text_encoder"
        if dest.resolve() != text_dir.resolve():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(text_dir, dest)
    text_cfg = TextEncoderConfig("text_encoder" if local_text else text_src, base.text.max_length)
    preset = ModelPreset(base.name, base.transformer, base.vae, text_cfg, schedule.pn)
    info = {
        "trained_by": "scalestyle train folder",
        "data": str(Path(data_dir).resolve()),
        "images": len(data),
        "config": asdict(cfg),
        "seconds": {
            "vae": round(t_vae, 1),
            "transformer": round(t_transformer, 1),
            "total": round(time.perf_counter() - start, 1),
        },
        "device": str(transformer.pos_start.device),
        "torch": torch.__version__,
    }
    shipped = copy.deepcopy(transformer).cpu()
    return save_model_dir(out, preset=preset, transformer=shipped, vae=vae.cpu(), extra={"training": info})
