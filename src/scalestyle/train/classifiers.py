"""Training the content and style classifiers of the procedural world (the demo benchmark's judges).

They train on the world's "classifier" split (its own seeds, every style including the held-out ones) and,
when a VAE is given, on its reconstructions too, so that tokenizer artefacts do not decide the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier
from scalestyle.models.bsq_vae import BSQVAE
from scalestyle.schedules import Schedule
from scalestyle.train.common import JsonlLog, check_range, step_generator


@dataclass(frozen=True)
class ClassifierTrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    recon_fraction: float = 0.5
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        check_range(self, ("steps",), 1)
        check_range(self, ("batch_size",), 2)
        check_range(self, ("recon_fraction",), 0, 1)


def classifier_batch(
    step: int,
    batch_size: int,
    g: torch.Generator,
    size: int = 64,
    shapes: tuple[str, ...] = world.CONTENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images of random ``shapes`` (contents, or subjects too) in random styles (all styles), with shape
    and style indices."""
    seeds = world.SPLIT_SEEDS["classifier"]
    c_idx = torch.randint(len(shapes), (batch_size,), generator=g)
    s_idx = torch.randint(len(world.STYLES), (batch_size,), generator=g)
    imgs = []
    for i, (c, s) in enumerate(zip(c_idx.tolist(), s_idx.tolist(), strict=True)):
        render = world.render_subject if shapes[c] in world.SUBJECTS else world.render
        imgs.append(
            world.to_tensor(render(shapes[c], world.STYLES[s], seeds[step * batch_size + i], size).image)
        )
    return torch.stack(imgs), c_idx, s_idx


def augment(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Small shifts and flips: generated images are not pixel-aligned with renders."""
    shift = torch.randint(-3, 4, (2,), generator=g).tolist()
    img = torch.roll(img, shifts=shift, dims=(2, 3))
    if bool(torch.rand((), generator=g) < 0.5):
        img = img.flip(3)
    return img


def train_classifiers(
    cfg: ClassifierTrainConfig,
    out_dir: Path,
    *,
    vae: BSQVAE | None = None,
    schedule: Schedule | None = None,
    progress: bool = True,
    shapes: tuple[str, ...] = world.CONTENTS,
) -> tuple[WorldClassifier, WorldClassifier]:
    """Train both classifiers jointly on the same batches; returns (content, style). ``shapes`` are the
    content classifier's labels: the world's contents, or with :data:`~scalestyle.data.procedural.
    SUBJECTS` added the shape judge of proxy-tuning (:mod:`scalestyle.eval.subject`)."""
    content, style = _train(cfg, out_dir, vae, schedule, progress, shapes, with_style=True)
    assert style is not None
    return content, style


def train_shape_classifier(
    cfg: ClassifierTrainConfig,
    out_dir: Path,
    *,
    vae: BSQVAE | None = None,
    schedule: Schedule | None = None,
    progress: bool = True,
    shapes: tuple[str, ...] = world.CONTENTS,
) -> WorldClassifier:
    """The content classifier of :func:`train_classifiers` alone (the same weights, bit for bit), without
    the cost of the style classifier trained beside it."""
    return _train(cfg, out_dir, vae, schedule, progress, shapes, with_style=False)[0]


def _train(
    cfg: ClassifierTrainConfig,
    out_dir: Path,
    vae: BSQVAE | None,
    schedule: Schedule | None,
    progress: bool,
    shapes: tuple[str, ...],
    *,
    with_style: bool,
) -> tuple[WorldClassifier, WorldClassifier | None]:
    g0 = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=g0)))
        # the content classifier is built first, so its initial weights do not depend on with_style
        content = WorldClassifier(shapes)
        style = WorldClassifier(world.STYLES) if with_style else None
    params = [*content.parameters(), *(style.parameters() if style is not None else ())]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.steps)
    log = JsonlLog(out_dir / "classifier_log.jsonl")
    for step in tqdm(range(cfg.steps), desc="classifiers", disable=not progress):
        g = step_generator(cfg.seed, step, stream=7)
        img, c_idx, s_idx = classifier_batch(step, cfg.batch_size, g, shapes=shapes)
        if vae is not None and schedule is not None and cfg.recon_fraction > 0:
            n = round(cfg.batch_size * cfg.recon_fraction)
            with torch.no_grad():
                enc = vae.encode_multiscale(img[:n], schedule.grids)
                img[:n] = vae.decode(enc.summed_codes_BdHW)
        img = augment(img, g)
        loss_c = F.cross_entropy(content(img), c_idx)
        loss_s = F.cross_entropy(style(img), s_idx) if style is not None else None
        optimizer.zero_grad(set_to_none=True)
        (loss_c if loss_s is None else loss_c + loss_s).backward()
        optimizer.step()
        sched.step()
        if (step + 1) % cfg.log_every == 0:
            row = {"content_loss": round(loss_c.item(), 4)}
            if loss_s is not None:
                row["style_loss"] = round(loss_s.item(), 4)
            log.write(step=step + 1, **row)
    return content.eval(), style.eval() if style is not None else None


@torch.no_grad()
def accuracy(classifier: WorldClassifier, img: torch.Tensor, labels: torch.Tensor) -> float:
    return float((classifier(img).argmax(1) == labels).float().mean())
