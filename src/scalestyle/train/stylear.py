"""Training a StyleAR adapter (arXiv 2505.19874; `scalestyle train stylear`): binary data, each image its
own style reference, a frozen transformer with a LoRA and the perceiver resampler trained.

The authors publish no training code (``../shared/research/wave2_methods.md`` §2): what is theirs is the
data recipe (stylized and raw images mixed 1:3, the image being its own reference) and the LoRA
(rank 4, no alpha scaling). The rest follows our transformer trainer (:mod:`scalestyle.train.transformer`):
teacher-forced bitwise cross-entropy over all scales under the block-causal mask, the frozen VAE's bits,
``cond_drop`` replacing a row's caption with the learned empty caption and dropping its style tokens
together, as the unconditional rows of sampling have neither. Training captions should not name the
style (the world's read ``"<content> in style"``, the inference default), so that the tokens must
carry it.

Rows are assigned to the stylized or the raw source by position (``mix`` = (1, 3): rows 0, 4, 8, ... of
the run are stylized), images drawn from generators seeded by (seed, step) (:func:`step_generator`), so
a resumed run draws the same batches; a checkpoint holds the resampler, the LoRA weights and the optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from scalestyle.data import procedural as world
from scalestyle.data.folder import ImageFolder
from scalestyle.images import preprocess, to_pil
from scalestyle.models.bsq_vae import BSQVAE
from scalestyle.models.infinity import Infinity
from scalestyle.models.stylear import (
    LORA_ADAPTER_NAME,
    ImageEncoder,
    PathStyle,
    StyleARAdapter,
    StyleTokenController,
)
from scalestyle.models.text_encoder import PackedText
from scalestyle.pipeline import Pipeline
from scalestyle.schedules import Schedule
from scalestyle.train.common import (
    JsonlLog,
    check_range,
    load_checkpoint,
    save_checkpoint,
    step_generator,
)
from scalestyle.train.transformer import (
    SCALE_WEIGHTINGS,
    CachedText,
    bit_ce,
    encode_batch,
    scale_loss_weights,
)
from scalestyle.train.vae import lr_at

CHECKPOINT = "stylear.ckpt"
WORLD_CAPTION_STYLE = "style"


@dataclass(frozen=True)
class StyleARTrainConfig:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 100
    grad_clip: float = 1.0
    cond_drop: float = 0.1
    mix: tuple[int, int] = (1, 3)
    scale_weighting: str = "scale"
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 100

    def __post_init__(self) -> None:
        check_range(self, ("steps", "batch_size", "log_every", "ckpt_every"), 1)
        check_range(self, ("lr",), 0, 1, "()")
        check_range(self, ("cond_drop",), 0, 1, "[)")
        if len(self.mix) != 2 or min(self.mix) < 0 or sum(self.mix) < 1:
            raise ValueError(f"mix (stylized, raw) must be two integers >= 0, not both 0, got {self.mix}")
        if self.scale_weighting not in SCALE_WEIGHTINGS:
            raise ValueError(
                f"scale_weighting must be one of {SCALE_WEIGHTINGS}, got {self.scale_weighting!r}"
            )


class Source(Protocol):
    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """``n`` images (n, 3, P, P) in [-1, 1] and their captions, drawn with ``g``."""
        ...


@dataclass(frozen=True)
class WorldSource:
    """Training-split renders: ``styles`` (training styles only) at ``size`` px, captioned
    ``"<content> in style"``."""

    styles: tuple[str, ...]
    size: int = 64

    def __post_init__(self) -> None:
        held = [s for s in self.styles if s not in world.TRAIN_STYLES]
        if held or not self.styles:
            raise ValueError(
                f"styles must be training styles (held out: {list(world.HELD_OUT_STYLES)}), got {held}"
            )

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        seeds = world.SPLIT_SEEDS["train"]
        images, captions = [], []
        for _ in range(n):
            content = world.CONTENTS[int(torch.randint(len(world.CONTENTS), (1,), generator=g))]
            style = self.styles[int(torch.randint(len(self.styles), (1,), generator=g))]
            seed = seeds.start + int(torch.randint(1 << 30, (1,), generator=g))
            sample = world.render(content, style, seed, self.size)
            images.append(preprocess(sample.image, (self.size, self.size)))
            captions.append(f"{world.content_caption(content)} in {WORLD_CAPTION_STYLE}")
        return torch.stack(images) if images else torch.zeros(0, 3, self.size, self.size), captions


@dataclass(frozen=True)
class FolderSource:
    """Images of an :class:`ImageFolder` drawn uniformly with replacement, with their own captions."""

    folder: ImageFolder

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        idx = torch.randint(len(self.folder), (n,), generator=g).tolist()
        h, w = self.folder.size_hw
        images = [self.folder.image(i) for i in idx]
        return torch.stack(images) if images else torch.zeros(0, 3, h, w), [
            self.folder.items[i].caption for i in idx
        ]


def world_sources(size: int = 64) -> tuple[WorldSource, WorldSource]:
    """(stylized, raw) of the world: every training style but the neutral one, and the neutral one."""
    stylized = tuple(s for s in world.TRAIN_STYLES if s != world.NEUTRAL_STYLE)
    return WorldSource(stylized, size), WorldSource((world.NEUTRAL_STYLE,), size)


def stylized_rows(step: int, batch_size: int, mix: tuple[int, int]) -> int:
    """How many rows of ``step`` are stylized: row k of the run is when ``k % (a + b) < a``."""
    a, b = mix
    return sum((step * batch_size + i) % (a + b) < a for i in range(batch_size))


def mixed_batch(
    stylized: Source, raw: Source | None, step: int, batch_size: int, mix: tuple[int, int], g: torch.Generator
) -> tuple[torch.Tensor, list[str]]:
    """A batch of the stylized source's and the raw source's images in the ``mix`` ratio (all stylized
    without a raw source)."""
    n = batch_size if raw is None else stylized_rows(step, batch_size, mix)
    img_s, cap_s = stylized.draw(n, g)
    if raw is None or n == batch_size:
        return img_s, cap_s
    img_r, cap_r = raw.draw(batch_size - n, g)
    return torch.cat((img_s, img_r)), cap_s + cap_r


class StyleARObjective(nn.Module):
    """Bitwise cross-entropy with the images' own style tokens in the cross-attention (one forward, so
    DDP sees one module)."""

    weights_L: torch.Tensor

    def __init__(
        self, transformer: Infinity, adapter: StyleARAdapter, schedule: Schedule, weighting: str
    ) -> None:
        super().__init__()
        self.transformer, self.adapter, self.schedule = transformer, adapter, schedule
        self.register_buffer("weights_L", scale_loss_weights(schedule, weighting), persistent=False)

    def forward(
        self,
        inputs_BLD: torch.Tensor,
        bits_BLD: torch.Tensor,
        text: PackedText,
        drop_B: torch.Tensor,
        feats_BNW: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        feats, start = [], 0
        for b, n in enumerate(text.lens):
            row = text.feats_NE[start : start + n]
            feats.append(self.transformer.cfg_uncond[:n] if bool(drop_B[b]) else row)
            start += n
        cond = self.transformer.condition([PackedText(torch.cat(feats), text.lens)])
        tokens = self.adapter.resampler(feats_BNW)
        style = PathStyle(tokens, keep_B=~drop_B)
        controller = StyleTokenController(
            self.transformer, {"gen": style}, scale=1.0, join=self.adapter.cfg.join
        )
        with self.transformer.control.install(controller):
            logits = self.transformer(inputs_BLD, cond, self.schedule)
        ce_BL, acc = bit_ce(logits, bits_BLD)
        return {"loss": (ce_BL * self.weights_L).sum(-1).mean(), "bit_acc": acc}


def encoder_features(encoder: ImageEncoder, img_B3PP: torch.Tensor) -> torch.Tensor:
    """The frozen encoder's features of a batch given as tensors (the references are the images)."""
    images: Sequence[Image.Image] = [to_pil(im) for im in img_B3PP]
    with torch.no_grad():
        return encoder(images)


def train_stylear(
    pipe: Pipeline,
    adapter: StyleARAdapter,
    encoder: ImageEncoder,
    cfg: StyleARTrainConfig,
    stylized: Source,
    raw: Source | None,
    work_dir: Path,
    *,
    progress: bool = True,
) -> StyleARAdapter:
    """Train ``adapter`` (its resampler freshly initialised from ``cfg.seed``) on ``pipe``'s frozen model,
    or resume from ``work_dir/stylear.ckpt``; logs to ``work_dir/stylear_log.jsonl``. Returns the adapter
    with the trained resampler and LoRA weights (the transformer is left as it was)."""
    from peft import get_peft_model_state_dict

    from scalestyle.train.common import make_accelerator

    transformer = pipe.transformer
    if not isinstance(transformer, Infinity) or pipe.text_encoder is None:
        raise ValueError(f"StyleAR trains on text-to-image Infinity models; {pipe.model_name} is not one")
    if not isinstance(pipe.vae, BSQVAE):
        raise ValueError(f"{pipe.model_name} has no BSQ VAE")
    vae = pipe.vae
    adapter.check_fits(transformer)
    accelerator = make_accelerator()
    adapter.resampler.init_weights(torch.Generator().manual_seed(cfg.seed))
    ckpt, start = work_dir / CHECKPOINT, 0
    state: dict[str, Any] | None = None
    if ckpt.is_file():
        state = load_checkpoint(ckpt, model=adapter.resampler, optimizer=None)
        adapter.lora = dict(state["lora"])
        start = int(state["step"])
    transformer.requires_grad_(False)
    adapter.train().requires_grad_(True)
    schedule = pipe.schedule_for()
    text_fn = CachedText(pipe.text_encoder)  # type: ignore[arg-type]  # any encoder with .encode
    log = JsonlLog(work_dir / "stylear_log.jsonl")
    with adapter.lora_applied(transformer, seed=cfg.seed):
        lora_params = [p for n, p in transformer.named_parameters() if ".lora_" in n]
        optimizer = torch.optim.AdamW(
            [*adapter.resampler.parameters(), *lora_params], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
        objective = StyleARObjective(transformer, adapter, schedule, cfg.scale_weighting)
        objective, optimizer = accelerator.prepare(objective, optimizer)
        params = [*adapter.resampler.parameters(), *lora_params]
        bar = tqdm(
            range(start, cfg.steps), initial=start, total=cfg.steps, desc="stylear", disable=not progress
        )
        for step in bar:
            g = step_generator(cfg.seed, step)
            img, captions = mixed_batch(stylized, raw, step, cfg.batch_size, cfg.mix, g)
            drop = torch.rand(len(captions), generator=g) < cfg.cond_drop
            img = img.to(accelerator.device)
            inputs, bits = encode_batch(vae, img, schedule)
            feats = encoder_features(encoder, img).to(accelerator.device)
            text = text_fn(captions).to(accelerator.device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
            out = objective(inputs, bits, text, drop.to(accelerator.device), feats)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(out["loss"])
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                row = {k: round(float(v.detach()), 5) for k, v in out.items()}
                log.write(step=step + 1, **row)
                bar.set_postfix(loss=row["loss"], bit_acc=row["bit_acc"])
            if accelerator.is_main_process and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
                lora = {}
                if adapter.cfg.lora_rank:
                    lora = get_peft_model_state_dict(transformer, adapter_name=LORA_ADAPTER_NAME)
                save_checkpoint(
                    ckpt, model=adapter.resampler, optimizer=optimizer, step=step + 1, config=cfg,
                    extra={"lora": {k: v.detach().clone() for k, v in lora.items()}},
                )  # fmt: skip
    return adapter.eval().requires_grad_(False)
