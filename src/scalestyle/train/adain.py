"""Training a small AdaIN on the procedural world (the demo baseline of style transfer).

Stage 1, the encoder: no small pretrained VGG is at hand offline (the public ``vgg_normalised.pth`` is
VGG-19 sized and a download), and the shipped world classifiers (:mod:`scalestyle.eval.classifier`) have
another layout (GroupNorm, SiLU) and were trained on the held-out styles. So the narrow
:class:`~scalestyle.models.adain.VGGEncoder` is pretrained briefly as a classifier of the world's labels: a
content head on relu4_1 (mean and max pooled) and a style head on the mean and std of relu1_1 .. relu4_1,
the statistics AdaIN's style loss compares, so every stage learns to carry style. Its stages are then
brought to one scale (:func:`equalise_stages`, an exact rescaling) so that no stage dominates the losses.

Stage 2, the decoder, with the encoder frozen, as naoto0804/pytorch-AdaIN `train.py` and
`net.py::Net.forward` do: ``t = adain(f(c), f(s))``, content loss ``MSE(f(g(t)), t)`` at relu4_1, style
loss the MSE of the per-channel mean and std at relu1_1 .. relu4_1 against the style image, style weight
10, Adam with ``lr / (1 + lr_decay * step)``. Upstream's data (COCO contents, WikiArt styles, 256-pixel
crops, lr 1e-4, 160k steps) become world renders at 64 pixels: contents are every content in random
training styles, style images other renders in training styles, and a higher lr for the short run (the
model card of the result records it). :data:`~scalestyle.data.procedural.HELD_OUT_STYLES` enter neither
stage.

Both stages resume exactly from their checkpoints (:mod:`scalestyle.train.common`): each step's images come
from a generator seeded by (seed, step, stream).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from scalestyle.adain_weights import save_adain_dir
from scalestyle.data import procedural as world
from scalestyle.models.adain import AdaIN, AdaINConfig, adain_BCHW, mean_std_BC11
from scalestyle.train.common import (
    JsonlLog,
    check_range,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    step_generator,
)

LabelledBatchFn = Callable[[int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""(step, batch_size, generator) -> (images (B, 3, P, P) in [0, 1], content labels, style labels)."""
PairBatchFn = Callable[[int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
"""(step, batch_size, generator) -> (content images, style images), each (B, 3, P, P) in [0, 1]."""

ENCODER_STREAM, DECODER_STREAM, CALIBRATION_STREAM = 11, 12, 13


@dataclass(frozen=True)
class AdaINTrainConfig:
    widths: tuple[int, int, int, int] = (8, 16, 32, 64)
    size: int = 64
    encoder_steps: int = 200
    encoder_batch_size: int = 16
    encoder_lr: float = 2e-3
    steps: int = 3000
    batch_size: int = 8
    lr: float = 5e-4
    lr_decay: float = 5e-5
    content_weight: float = 1.0
    style_weight: float = 10.0
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 100

    def __post_init__(self) -> None:
        AdaINConfig(widths=self.widths)  # the widths' own checks
        if not world.MIN_SIZE <= self.size <= world.MAX_SIZE:
            raise ValueError(f"size must be in [{world.MIN_SIZE}, {world.MAX_SIZE}], got {self.size}")
        check_range(self, ("encoder_steps", "steps", "lr_decay", "content_weight", "style_weight"), 0)
        check_range(self, ("encoder_batch_size", "batch_size", "log_every", "ckpt_every"), 1)
        check_range(self, ("encoder_lr", "lr"), 0, 1, "()")

    @classmethod
    def quick(cls) -> AdaINTrainConfig:
        """A few steps of each stage at 32 pixels (smoke tests)."""
        return cls(widths=(4, 4, 8, 8), size=32, encoder_steps=2, encoder_batch_size=4, steps=2, batch_size=2)


def _renders_B3PP(contents: list[int], styles: list[int], seeds: list[int], size: int) -> torch.Tensor:
    imgs = [
        world.to_tensor(world.render(world.CONTENTS[c], world.TRAIN_STYLES[s], seed, size).image)
        for c, s, seed in zip(contents, styles, seeds, strict=True)
    ]
    return torch.stack(imgs).add(1).div(2)


def _draw(batch_size: int, g: torch.Generator) -> tuple[list[int], list[int], list[int]]:
    c = torch.randint(len(world.CONTENTS), (batch_size,), generator=g).tolist()
    s = torch.randint(len(world.TRAIN_STYLES), (batch_size,), generator=g).tolist()
    seeds = torch.randint(len(world.TRAIN_SEEDS), (batch_size,), generator=g).tolist()
    return c, s, [world.TRAIN_SEEDS[k] for k in seeds]


def world_labelled_batch(
    step: int, batch_size: int, g: torch.Generator, size: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-split renders of random contents in random training styles, with content indices (into
    CONTENTS) and style indices (into TRAIN_STYLES)."""
    c, s, seeds = _draw(batch_size, g)
    return _renders_B3PP(c, s, seeds, size), torch.tensor(c), torch.tensor(s)


def world_pair_batch(
    step: int, batch_size: int, g: torch.Generator, size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Content images and style images: two independent draws of training-split renders."""
    content = _renders_B3PP(*_draw(batch_size, g), size)
    return content, _renders_B3PP(*_draw(batch_size, g), size)


class EncoderClassifier(nn.Module):
    """The encoder with the two heads of its pretraining (stage 1)."""

    def __init__(self, model: AdaIN, contents: int, styles: int) -> None:
        super().__init__()
        self.encoder = model.encoder
        widths = model.cfg.widths
        self.content_head = nn.Linear(2 * widths[3], contents)
        self.style_head = nn.Linear(2 * sum(widths), styles)
        self.eps = model.cfg.eps

    def forward(self, img_B3PP: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(content logits, style logits)."""
        feats = self.encoder.features(img_B3PP)
        last = feats[-1]
        content = self.content_head(torch.cat((last.mean(dim=(2, 3)), last.amax(dim=(2, 3))), dim=1))
        stats = [torch.cat(mean_std_BC11(f, self.eps), dim=1).flatten(1) for f in feats]
        return content, self.style_head(torch.cat(stats, dim=1))


class AdaINObjective(nn.Module):
    """Stage 2's loss as a module, so that DDP (through accelerate) sees one forward per step."""

    def __init__(self, model: AdaIN, cfg: AdaINTrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, content_B3PP: torch.Tensor, style_B3PP: torch.Tensor) -> dict[str, torch.Tensor]:
        encoder, eps = self.model.encoder, self.model.cfg.eps
        with torch.no_grad():
            style_feats = encoder.features(style_B3PP)
            target_BCHW = adain_BCHW(encoder(content_B3PP), style_feats[-1], eps)
        out_feats = encoder.features(self.model.decoder(target_BCHW))
        content = F.mse_loss(out_feats[-1], target_BCHW)
        style = torch.zeros((), device=content.device)
        for out_f, style_f in zip(out_feats, style_feats, strict=True):
            (o_mean, o_std), (s_mean, s_std) = mean_std_BC11(out_f, eps), mean_std_BC11(style_f, eps)
            style = style + F.mse_loss(o_mean, s_mean) + F.mse_loss(o_std, s_std)
        loss = self.cfg.content_weight * content + self.cfg.style_weight * style
        return {"loss": loss, "content": content, "style": style}


def _pretrain_encoder(
    model: AdaIN, cfg: AdaINTrainConfig, batches: LabelledBatchFn, work_dir: Path, progress: bool
) -> None:
    accelerator = make_accelerator()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the heads initialise from the global RNG
        classifier = EncoderClassifier(model, len(world.CONTENTS), len(world.TRAIN_STYLES))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=cfg.encoder_lr, weight_decay=1e-4)
    ckpt, start = work_dir / "encoder.ckpt", 0
    if ckpt.is_file():
        start = int(load_checkpoint(ckpt, model=classifier, optimizer=optimizer)["step"])
    wrapped, optimizer = accelerator.prepare(classifier, optimizer)
    log = JsonlLog(work_dir / "encoder_log.jsonl")
    steps = range(start, cfg.encoder_steps)
    bar = tqdm(steps, initial=start, total=cfg.encoder_steps, desc="adain encoder", disable=not progress)
    for step in bar:
        img, c_idx, s_idx = batches(
            step, cfg.encoder_batch_size, step_generator(cfg.seed, step, ENCODER_STREAM)
        )
        for group in optimizer.param_groups:
            # cosine from encoder_lr to 5% of it: a function of the step alone, so resuming is exact
            t = torch.tensor(step / max(1, cfg.encoder_steps))
            group["lr"] = cfg.encoder_lr * float(0.05 + 0.95 * 0.5 * (1 + torch.cos(t * torch.pi)))
        content_logits, style_logits = wrapped(img.to(accelerator.device))
        loss_c = F.cross_entropy(content_logits, c_idx.to(accelerator.device))
        loss_s = F.cross_entropy(style_logits, s_idx.to(accelerator.device))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss_c + loss_s)
        optimizer.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.encoder_steps:
            hits_c = (content_logits.argmax(1).cpu() == c_idx).float().mean()
            hits_s = (style_logits.argmax(1).cpu() == s_idx).float().mean()
            row = {"content_loss": round(loss_c.item(), 4), "style_loss": round(loss_s.item(), 4)}
            log.write(
                step=done, **row, content_acc=round(float(hits_c), 3), style_acc=round(float(hits_s), 3)
            )
            bar.set_postfix(row)
        if accelerator.is_main_process and (done % cfg.ckpt_every == 0 or done == cfg.encoder_steps):
            save_checkpoint(ckpt, model=classifier, optimizer=optimizer, step=done, config=cfg)


# per stage of VGGEncoder (relu1_1 .. relu4_1): its last conv, and the conv that reads its output first
STAGE_LAST_CONV, STAGE_NEXT_CONV = (2, 9, 16, 29), (5, 12, 19, None)


@torch.no_grad()
def equalise_stages(model: AdaIN, img_B3PP: torch.Tensor) -> list[float]:
    """Scale each stage's output to a mean square of 1 on ``img_B3PP`` without changing what the
    network computes otherwise; returns the factors.

    A short classifier pretraining leaves the stages at very different scales (on the demo relu3_1 about
    800 times relu4_1 in mean square), so AdaIN's style loss would be all relu3_1 and its content loss
    would vanish. ReLU, max pooling and padding commute with a positive factor, so multiplying a stage's
    last conv (weight and bias) by k and dividing the next stage's first conv weight by k scales that
    stage's output by k and leaves every later pre-activation as it was.
    """
    encoder, factors = model.encoder, []
    feats = encoder.features(img_B3PP)
    for feat, last, nxt in zip(feats, STAGE_LAST_CONV, STAGE_NEXT_CONV, strict=True):
        k = float(feat.pow(2).mean().clamp_min(1e-12).rsqrt())
        conv = encoder[last]
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        conv.weight.mul_(k)
        conv.bias.mul_(k)
        if nxt is not None:
            following = encoder[nxt]
            assert isinstance(following, nn.Conv2d)
            following.weight.div_(k)
        factors.append(k)
    return factors


def _train_decoder(
    model: AdaIN, cfg: AdaINTrainConfig, batches: PairBatchFn, work_dir: Path, progress: bool
) -> None:
    accelerator = make_accelerator()
    model.encoder.requires_grad_(False)
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=cfg.lr)
    ckpt, start = work_dir / "decoder.ckpt", 0
    if ckpt.is_file():
        start = int(load_checkpoint(ckpt, model=model.decoder, optimizer=optimizer)["step"])
    objective, optimizer = accelerator.prepare(AdaINObjective(model, cfg), optimizer)
    log = JsonlLog(work_dir / "decoder_log.jsonl")
    bar = tqdm(
        range(start, cfg.steps), initial=start, total=cfg.steps, desc="adain decoder", disable=not progress
    )
    for step in bar:
        content, style = batches(step, cfg.batch_size, step_generator(cfg.seed, step, DECODER_STREAM))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr / (1 + cfg.lr_decay * step)  # train.py's adjust_learning_rate
        losses = objective(content.to(accelerator.device), style.to(accelerator.device))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(losses["loss"])
        optimizer.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            row = {k: round(float(v.detach()), 5) for k, v in losses.items()}
            log.write(step=done, **row)
            bar.set_postfix(loss=row["loss"])
        if accelerator.is_main_process and (done % cfg.ckpt_every == 0 or done == cfg.steps):
            save_checkpoint(ckpt, model=model.decoder, optimizer=optimizer, step=done, config=cfg)


def train_adain(
    out_dir: Path | None,
    work_dir: Path,
    cfg: AdaINTrainConfig,
    *,
    encoder_batches: LabelledBatchFn | None = None,
    pair_batches: PairBatchFn | None = None,
    progress: bool = True,
) -> AdaIN:
    """Pretrain the encoder, then train the decoder (each resumed from ``work_dir`` when checkpointed), and
    write the AdaIN folder to ``out_dir`` (None: not written). Batches default to the world's renders."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # torch's default init draws from the global RNG first
        model = AdaIN(AdaINConfig(widths=cfg.widths))
    model.init_weights(torch.Generator().manual_seed(cfg.seed))
    encoder_batches = encoder_batches or partial(world_labelled_batch, size=cfg.size)
    _pretrain_encoder(model, cfg, encoder_batches, work_dir, progress)
    g = step_generator(cfg.seed, 0, CALIBRATION_STREAM)
    equalise_stages(model, encoder_batches(0, cfg.encoder_batch_size, g)[0])
    _train_decoder(model, cfg, pair_batches or partial(world_pair_batch, size=cfg.size), work_dir, progress)
    model.eval()
    if out_dir is not None:
        extra = {
            "name": "adain-demo",
            "trained_on": "scalestyle procedural world, training styles only",
            "held_out_styles": list(world.HELD_OUT_STYLES),
            "train_config": asdict(cfg),
        }
        save_adain_dir(out_dir, model, extra=extra)
    return model
