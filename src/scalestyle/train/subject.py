"""Training a subject adapter (proxy-tuning, arXiv 2503.10125; `scalestyle train subject`): a LoRA on the
frozen Infinity transformer from images of one subject (a teacher's proxy images, or the user's own),
DreamBooth-style, with optional prior preservation.

The paper publishes no code and none of its student settings (``../shared/research/wave2_methods.md``
§3), so the recipe is DreamBooth's (Ruiz et al., 2023) on our transformer trainer
(:mod:`scalestyle.train.transformer`): teacher-forced bitwise cross-entropy over all scales, the frozen
VAE's bits. Captions:

- a subject image's own caption, with :data:`~scalestyle.models.subject.SUBJECT_PLACEHOLDER`
  (``{subject}``) replaced by ``"<token> <class word>"`` (the teacher writes ``"a {subject} in neon
  style"``); an image without a caption gets one of :data:`SUBJECT_TEMPLATES`, drawn per row;
- a class image (prior preservation) its own caption, or one of :data:`CLASS_TEMPLATES`.

The loss is ``L_subject + prior_weight * L_class`` (DreamBooth's prior-preservation loss), each the mean
over its rows. ``cond_drop`` (default 0) swaps a caption for the learned empty caption, as the base
model's training did, for those who want the unconditional rows tuned too.

Batches are pure functions of (seed, step): the folders' own epoch permutations pick the images
(:meth:`ImageFolder.indices`), and a generator seeded by (seed, step) draws templates and drops, so a
resumed run (``work_dir/subject.ckpt``: LoRA weights, optimizer, step) ends with the same weights as an
uninterrupted one. ``accelerate launch`` runs it data-parallel, as every trainer here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from scalestyle.data.folder import ImageFolder
from scalestyle.models.bsq_vae import BSQVAE
from scalestyle.models.infinity import Infinity
from scalestyle.models.subject import (
    SUBJECT_PLACEHOLDER,
    SubjectAdapter,
    adapter_names,
    lora_applied,
    with_added_tokens,
)
from scalestyle.models.text_encoder import PackedText, TextEncoder
from scalestyle.pipeline import Pipeline
from scalestyle.schedules import Schedule
from scalestyle.train.common import JsonlLog, check_range, save_checkpoint, step_generator
from scalestyle.train.transformer import (
    SCALE_WEIGHTINGS,
    CachedText,
    bit_ce,
    encode_batch,
    scale_loss_weights,
)
from scalestyle.train.vae import lr_at

CHECKPOINT = "subject.ckpt"
LOG = "subject_log.jsonl"
SUBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of {subject}",
    "a picture of {subject}",
    "a {subject}",
    "{subject}",
)
CLASS_TEMPLATES: tuple[str, ...] = ("a photo of a {cls}", "a picture of a {cls}", "a {cls}")


@dataclass(frozen=True)
class SubjectTrainConfig:
    """DreamBooth-LoRA settings. ``class_batch_size`` rows of class images join each step when there are
    class images (0: the same as ``batch_size``). ``prefix_scales`` trains the first K scales only: the
    coarse scales decide the object's shape (:mod:`scalestyle.train.transformer`), and at 64 px the first
    5 scales are 121 of 521 tokens, so a step costs about a quarter; the later scales keep the base
    model's rendering of whatever shape the coarse ones drew."""

    steps: int = 300
    batch_size: int = 4
    class_batch_size: int = 0
    lr: float = 3e-3  # 1e-3 left the demo's student near the base model after 300 steps
    weight_decay: float = 0.0
    warmup: int = 20
    grad_clip: float = 1.0
    prior_weight: float = 1.0
    cond_drop: float = 0.0
    scale_weighting: str = "scale"
    prefix_scales: int | None = None
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 100

    def __post_init__(self) -> None:
        check_range(self, ("steps", "log_every", "ckpt_every"), 1, 10_000_000)
        check_range(self, ("warmup",), 0, 10_000_000)
        check_range(self, ("batch_size",), 1, 4096)
        check_range(self, ("class_batch_size",), 0, 4096)
        check_range(self, ("lr",), 0, 1, "()")
        check_range(self, ("weight_decay", "cond_drop"), 0, 1, "[)")
        check_range(self, ("grad_clip",), 0, ends="()")
        check_range(self, ("prior_weight",), 0, 100)
        if self.prefix_scales is not None and not 1 <= self.prefix_scales <= 64:
            raise ValueError(
                f"prefix_scales must be in [1, 64] or None (every scale), got {self.prefix_scales}"
            )
        if self.scale_weighting not in SCALE_WEIGHTINGS:
            raise ValueError(
                f"scale_weighting must be one of {SCALE_WEIGHTINGS}, got {self.scale_weighting!r}"
            )


def subject_caption(caption: str, phrase: str, g: torch.Generator) -> str:
    """A subject image's training caption: its own with ``{subject}`` filled in, or a template."""
    if not caption:
        caption = SUBJECT_TEMPLATES[int(torch.randint(len(SUBJECT_TEMPLATES), (1,), generator=g))]
    return caption.replace(SUBJECT_PLACEHOLDER, phrase)


def class_caption(caption: str, class_word: str, g: torch.Generator) -> str:
    if caption:
        return caption
    template = CLASS_TEMPLATES[int(torch.randint(len(CLASS_TEMPLATES), (1,), generator=g))]
    return template.format(cls=class_word)


Folders = ImageFolder | Sequence[ImageFolder]
"""One folder per subject of the adapter (a bare folder for a one-subject adapter)."""


def per_subject(folders: Folders | None, adapter: SubjectAdapter, what: str) -> list[ImageFolder] | None:
    """``folders`` as a list matching ``adapter.cfg.subjects`` (None stays None)."""
    if folders is None:
        return None
    out = [folders] if isinstance(folders, ImageFolder) else list(folders)
    if len(out) != len(adapter.cfg.subjects):
        raise ValueError(
            f"{len(out)} {what} folder(s) for the {len(adapter.cfg.subjects)} subject(s) "
            f"{list(adapter.cfg.phrases)}: give one per subject, in the same order"
        )
    return out


def subject_batch(
    images: Folders,
    classes: Folders | None,
    adapter: SubjectAdapter,
    cfg: SubjectTrainConfig,
    step: int,
    g: torch.Generator,
) -> tuple[torch.Tensor, list[str], int]:
    """(images, captions, number of subject rows: the class rows follow them) of ``step``: ``batch_size``
    rows of each subject (and ``class_batch_size`` of each subject's class), subject by subject."""
    folders = per_subject(images, adapter, "image")
    class_folders = per_subject(classes, adapter, "class-image")
    assert folders is not None
    img: list[torch.Tensor] = []
    captions: list[str] = []
    for folder, phrase in zip(folders, adapter.cfg.phrases, strict=True):
        idx = folder.indices(step, cfg.batch_size)
        img += [folder.image(i) for i in idx]
        captions += [subject_caption(folder.items[i].caption, phrase, g) for i in idx]
    n = len(img)
    if class_folders is not None:
        for folder, (_, class_word) in zip(class_folders, adapter.cfg.subjects, strict=True):
            cidx = folder.indices(step, cfg.class_batch_size or cfg.batch_size)
            img += [folder.image(i) for i in cidx]
            captions += [class_caption(folder.items[i].caption, class_word, g) for i in cidx]
    return torch.stack(img), captions, n


class SubjectObjective(nn.Module):
    """``L_subject + prior_weight * L_class`` of one teacher-forced forward (one module for DDP)."""

    weights_L: torch.Tensor

    def __init__(self, model: Infinity, schedule: Schedule, weighting: str, prior_weight: float) -> None:
        super().__init__()
        self.model, self.schedule, self.prior_weight = model, schedule, prior_weight
        self.register_buffer("weights_L", scale_loss_weights(schedule, weighting), persistent=False)

    def forward(
        self, inputs_BLD: torch.Tensor, bits_BLD: torch.Tensor, text: PackedText, drop_B: torch.Tensor, n: int
    ) -> dict[str, torch.Tensor]:
        feats, start = [], 0
        for b, length in enumerate(text.lens):
            row = text.feats_NE[start : start + length]
            feats.append(self.model.cfg_uncond[:length] if bool(drop_B[b]) else row)
            start += length
        cond = self.model.condition([PackedText(torch.cat(feats), text.lens)])
        ce_BL, acc = bit_ce(self.model(inputs_BLD, cond, self.schedule), bits_BLD)
        loss_B = (ce_BL * self.weights_L).sum(-1)
        out = {"loss": loss_B[:n].mean(), "bit_acc": acc, "subject_loss": loss_B[:n].mean().detach()}
        if loss_B.shape[0] > n:
            prior = loss_B[n:].mean()
            out["loss"] = out["loss"] + self.prior_weight * prior
            out["prior_loss"] = prior.detach()
        return out


def train_subject(
    pipe: Pipeline,
    adapter: SubjectAdapter,
    cfg: SubjectTrainConfig,
    images: Folders,
    work_dir: Path,
    *,
    classes: Folders | None = None,
    progress: bool = True,
) -> SubjectAdapter:
    """Train ``adapter``'s LoRA (fresh, seeded by ``cfg.seed``) on ``pipe``'s frozen model, or resume
    from ``work_dir/subject.ckpt``; logs to ``work_dir/subject_log.jsonl``. Returns the adapter with its
    trained weights; the transformer is left as it was. ``images`` (and ``classes``) hold one folder per
    subject of the adapter: an adapter of several subjects learns them all in one LoRA."""
    from peft import get_peft_model_state_dict

    from scalestyle.train.common import make_accelerator

    transformer = pipe.transformer
    if not isinstance(transformer, Infinity) or pipe.text_encoder is None or not isinstance(pipe.vae, BSQVAE):
        raise ValueError(
            f"subject adapters train on text-to-image Infinity models; {pipe.model_name} is not one"
        )
    adapter.check_fits(transformer)
    # one folder per subject, checked before any work
    per_subject(images, adapter, "image")
    per_subject(classes, adapter, "class-image")
    vae = pipe.vae
    accelerator = make_accelerator()
    ckpt, start = work_dir / CHECKPOINT, 0
    state: dict[str, Any] | None = None
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        adapter.lora = dict(state["lora"])
        start = int(state["step"])
    else:
        adapter.lora = {}
    transformer.requires_grad_(False)
    schedule = pipe.schedule_for()
    trained = schedule
    if cfg.prefix_scales is not None:
        if cfg.prefix_scales > schedule.num_scales:
            raise ValueError(
                f"prefix_scales {cfg.prefix_scales} exceeds the schedule's {schedule.num_scales} scales"
            )
        trained = replace(schedule, grids=schedule.grids[: cfg.prefix_scales])
    if adapter.cfg.add_token and adapter.tokens_NE is None:
        if not isinstance(pipe.text_encoder, TextEncoder):
            raise ValueError(f"an added identifier needs a T5 text encoder; {pipe.model_name} has none")
        # fixed, not learned: a function of each token's text, so a resumed run needs nothing saved
        encoder = pipe.text_encoder
        adapter.tokens_NE = torch.stack([encoder.new_token_embedding(t) for t, _ in adapter.cfg.subjects])
    text_fn = CachedText(with_added_tokens(pipe, [adapter]))
    log = JsonlLog(work_dir / LOG)
    (name,) = adapter_names([adapter])
    with lora_applied(transformer, [adapter], seed=cfg.seed):
        params = [p for n, p in transformer.named_parameters() if ".lora_" in n]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
        objective = SubjectObjective(transformer, trained, cfg.scale_weighting, cfg.prior_weight)
        objective, optimizer = accelerator.prepare(objective, optimizer)
        bar = tqdm(
            range(start, cfg.steps), initial=start, total=cfg.steps, desc="subject", disable=not progress
        )
        for step in bar:
            g = step_generator(cfg.seed, step)
            img, captions, n = subject_batch(images, classes, adapter, cfg, step, g)
            drop = torch.rand(len(captions), generator=g) < cfg.cond_drop
            inputs, bits = encode_batch(vae, img.to(accelerator.device), schedule)
            # the prefix's tokens of the full encoding (a shorter schedule would quantise differently)
            inputs, bits = inputs[:, : trained.total_tokens - 1], bits[:, : trained.total_tokens]
            text = text_fn(captions).to(accelerator.device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
            out = objective(inputs, bits, text, drop.to(accelerator.device), n)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(out["loss"])
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                row = {k: round(float(v.detach()), 5) for k, v in out.items()}
                log.write(step=step + 1, **row)
                bar.set_postfix(loss=row["loss"], bit_acc=row["bit_acc"])
            if accelerator.is_main_process and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
                lora = get_peft_model_state_dict(transformer, adapter_name=name)
                save_checkpoint(
                    ckpt, model=nn.Module(), optimizer=optimizer, step=step + 1, config=cfg,
                    extra={"lora": {k: v.detach().clone() for k, v in lora.items()}},
                )  # fmt: skip
    return adapter
