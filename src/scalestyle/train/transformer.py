"""Training the Infinity transformer: teacher-forced next-scale bit prediction.

As upstream `trainer.py`: the frozen VAE turns each image into per-scale bits and transformer inputs
(:meth:`BSQVAE.encode_multiscale`), the model predicts every scale's bits from the earlier scales under the
block-causal mask in one forward, and the loss is the bitwise cross-entropy averaged over all tokens and
bits. Captions are replaced by the model's learned empty caption (``cfg_uncond``, truncated to the
caption's length) with probability ``cond_drop`` so that classifier-free guidance works at inference.

``scale_weighting`` spreads the loss over scales: ``"token"`` averages all tokens (the last scales dominate),
``"sqrt"`` weighs each token by ``side_last / side_k`` (upstream Infinity's ``reweight_loss_by_scale``), and
``"scale"`` gives every scale the same total weight (VAR's ``loss_eq_weight`` with ``eq_loss=2``). The coarse
scales decide what the image shows, and only the caption tells the model which object to draw there, so the
demo uses ``"scale"``.

``bsc_strength`` > 0 turns on Bitwise Self-Correction (Infinity, Han et al. 2025, upstream
``bitwise_self_correction.py``, ``--noise_apply_strength``): each image draws a flip rate uniformly from
[0, strength] (in steps of 0.01, as upstream), bits of the first ``bsc_scales`` scales are flipped at that
rate, and the later scales are re-quantized against the flipped tokens, so the model learns to correct
its own mistakes instead of compounding them at inference.

``prefix_scales`` with ``full_rows`` trains rows ``[0, full_rows)`` of each batch on every scale and the
other rows on the first ``prefix_scales`` scales only; each scale's loss averages over the rows that
trained it. The coarse scales, where the layout and the object are decided, are about a tenth of the
tokens (57 of 521 at 64x64), so they see several times more images for the same compute. The schedules of
lower pixel budgets are prefixes of the higher ones, so this is Infinity's low-resolution stage run
alongside the full one instead of before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm import tqdm

from scalestyle.config import InfinityConfig
from scalestyle.models.bsq_vae import BSQVAE
from scalestyle.models.infinity import Infinity
from scalestyle.models.text_encoder import PackedText, TextEncoder
from scalestyle.schedules import Schedule
from scalestyle.train.common import (
    JsonlLog,
    check_range,
    load_checkpoint,
    save_checkpoint,
    step_generator,
    use_amp,
)
from scalestyle.train.vae import lr_at

BatchFn = Callable[[int, int, torch.Generator], tuple[torch.Tensor, list[str]]]
"""(step, batch_size, generator) -> (images (B, 3, P, P) in [-1, 1], captions)."""
TextFn = Callable[[Sequence[str]], PackedText]
SCALE_WEIGHTINGS = ("token", "sqrt", "scale")


@dataclass(frozen=True)
class TransformerTrainConfig:
    steps: int = 6000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 200
    grad_clip: float = 2.0
    cond_drop: float = 0.1
    scale_weighting: str = "token"
    bsc_strength: float = 0.0
    bsc_scales: int | None = None
    prefix_scales: int | None = None
    full_rows: int | None = None
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 250
    # bf16 autocast: about 3x faster matmuls on CPUs with AVX512-BF16 as well as on GPUs, but emulated and
    # 45x slower on a CPU without; None decides by machine (train.common.bf16_pays)
    amp: bool | None = None

    def __post_init__(self) -> None:
        check_range(self, ("steps", "batch_size"), 1)
        check_range(self, ("cond_drop",), 0, 1, "[)")
        check_range(self, ("lr",), 0, 1, "()")
        check_range(self, ("bsc_strength",), 0, 0.5, note="0 disables it")
        if self.bsc_scales is not None and self.bsc_scales < 1:
            raise ValueError(f"bsc_scales must be >= 1 or None (every scale), got {self.bsc_scales}")
        if self.scale_weighting not in SCALE_WEIGHTINGS:
            raise ValueError(
                f"scale_weighting must be one of {SCALE_WEIGHTINGS}, got {self.scale_weighting!r}"
            )
        if (self.prefix_scales is None) != (self.full_rows is None):
            raise ValueError(
                f"prefix_scales and full_rows go together, got {self.prefix_scales} and {self.full_rows}"
            )
        if self.prefix_scales is not None and self.prefix_scales < 1:
            raise ValueError(f"prefix_scales must be >= 1 or None (off), got {self.prefix_scales}")
        if self.full_rows is not None and not 1 <= self.full_rows <= self.batch_size:
            raise ValueError(
                f"full_rows must be in [1, batch_size = {self.batch_size}], got {self.full_rows}"
            )


def scale_loss_weights(schedule: Schedule, weighting: str) -> torch.Tensor:
    """Per-token loss weights ``(L,)`` over all scales of ``schedule``, summing to 1 (see module doc)."""
    if weighting not in SCALE_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {SCALE_WEIGHTINGS}, got {weighting!r}")
    last = math.sqrt(schedule.tokens_per_scale[-1])
    per_scale = {
        "token": [1.0] * schedule.num_scales,
        "sqrt": [last / math.sqrt(n) for n in schedule.tokens_per_scale],
        "scale": [1.0 / n for n in schedule.tokens_per_scale],
    }[weighting]
    w_L = torch.cat([torch.full((n,), w) for n, w in zip(schedule.tokens_per_scale, per_scale, strict=True)])
    return w_L / w_L.sum()


class BitObjective(nn.Module):
    """Bitwise cross-entropy of the teacher-forced forward, as a module so DDP sees one forward.

    With ``prefix_scales`` and ``full_rows``, rows from ``full_rows`` on are run on the first
    ``prefix_scales`` scales only (one more forward on the shorter sequence); each scale's loss is the mean
    over the rows that have it. A batch of at most ``full_rows`` rows trains every scale of every row.
    """

    weights_L: torch.Tensor

    def __init__(
        self,
        model: Infinity,
        schedule: Schedule,
        weighting: str = "token",
        prefix_scales: int | None = None,
        full_rows: int | None = None,
    ) -> None:
        super().__init__()
        if (prefix_scales is None) != (full_rows is None):
            raise ValueError(f"prefix_scales and full_rows go together, got {prefix_scales} and {full_rows}")
        if prefix_scales is not None and not 1 <= prefix_scales < schedule.num_scales:
            raise ValueError(
                f"prefix_scales must be in [1, {schedule.num_scales - 1}] (fewer than the schedule's "
                f"{schedule.num_scales} scales), got {prefix_scales}"
            )
        self.model, self.schedule, self.full_rows = model, schedule, full_rows
        self.prefix = None
        if prefix_scales is not None:
            self.prefix = replace(schedule, grids=schedule.grids[:prefix_scales])
        self.register_buffer("weights_L", scale_loss_weights(schedule, weighting), persistent=False)

    def forward(
        self,
        inputs_BLD: torch.Tensor,
        bits_BLD: torch.Tensor,
        text: PackedText,
        drop_B: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        feats = []
        start = 0
        for b, n in enumerate(text.lens):
            row = text.feats_NE[start : start + n]
            feats.append(self.model.cfg_uncond[:n] if bool(drop_B[b]) else row)
            start += n
        packed = PackedText(torch.cat(feats), text.lens)
        B = len(text.lens)
        n_full = B if self.full_rows is None else min(self.full_rows, B)
        logits = self.model(
            inputs_BLD[:n_full], self.model.condition([packed.rows(range(n_full))]), self.schedule
        )
        ce_FL, acc = bit_ce(logits, bits_BLD[:n_full])
        if n_full == B or self.prefix is None:
            return {"loss": (ce_FL * self.weights_L).sum(-1).mean(), "bit_acc": acc}
        Lp = self.prefix.total_tokens
        short = self.model(
            inputs_BLD[n_full:, : Lp - 1], self.model.condition([packed.rows(range(n_full, B))]), self.prefix
        )
        ce_PL, _ = bit_ce(short, bits_BLD[n_full:, :Lp])
        rows_L = torch.full_like(self.weights_L, n_full)
        rows_L[:Lp] = B
        w_L = self.weights_L / rows_L
        return {"loss": (ce_FL * w_L).sum() + (ce_PL * w_L[:Lp]).sum(), "bit_acc": acc}


def bit_ce(logits_BLV: torch.Tensor, bits_BLD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy per token averaged over its bits (B, L), bit accuracy) of logits over (0, 1) pairs."""
    logits = rearrange(logits_BLV, "b l (d two) -> b l d two", two=2)
    ce_BLD = F.cross_entropy(rearrange(logits.float(), "b l d two -> b two l d"), bits_BLD, reduction="none")
    with torch.no_grad():
        acc = (logits.argmax(-1) == bits_BLD).float().mean()
    return ce_BLD.mean(-1), acc


class CachedText:
    """Encodes captions for the trainer, each distinct caption once (up to ``limit`` kept; the demo
    world's captions are a few hundred, a user's folder may hold one per image)."""

    def __init__(self, encoder: TextEncoder, limit: int = 100_000) -> None:
        self.encoder, self.limit, self.cache = encoder, limit, dict[str, PackedText]()

    def __call__(self, captions: Sequence[str]) -> PackedText:
        missing = sorted({c for c in captions if c not in self.cache})
        fresh: dict[str, PackedText] = {}
        if missing:
            packed = self.encoder.encode(missing)
            fresh = {c: packed.rows([i]) for i, c in enumerate(missing)}
            if len(self.cache) + len(fresh) <= self.limit:
                self.cache |= fresh
        return PackedText.concat([self.cache[c] if c in self.cache else fresh[c] for c in captions])


class BitwiseSelfCorrection:
    """The bit flips of one batch: a :data:`scalestyle.models.bsq_vae.BitFlip` for ``encode_multiscale``.

    Row b flips each bit of scales ``< scales`` with probability ``rate_B[b]``, drawn from ``generator`` so
    that a resumed run flips the same bits.
    """

    def __init__(self, rate_B: torch.Tensor, scales: int | None, generator: torch.Generator) -> None:
        self.rate_B, self.scales, self.generator = rate_B, scales, generator

    @classmethod
    def draw(
        cls, batch: int, strength: float, scales: int | None, generator: torch.Generator
    ) -> BitwiseSelfCorrection:
        steps = round(strength * 100)
        rate_B = torch.randint(0, steps + 1, (batch,), generator=generator).float() / 100
        return cls(rate_B, scales, generator)

    def __call__(self, scale: int, bits_BhwD: torch.Tensor) -> torch.Tensor:
        if self.scales is not None and scale >= self.scales:
            return bits_BhwD
        u = torch.rand(bits_BhwD.shape, generator=self.generator).to(bits_BhwD.device)
        flip = u < self.rate_B.to(bits_BhwD.device).view(-1, 1, 1, 1)
        return torch.where(flip, 1 - bits_BhwD, bits_BhwD)


def encode_batch(
    vae: BSQVAE, img: torch.Tensor, schedule: Schedule, flip: BitwiseSelfCorrection | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_BLD of scales 1.., bits_BLD of all scales) of images, with the frozen VAE."""
    with torch.no_grad():
        enc = vae.encode_multiscale(img, schedule.grids, flip=flip)
    bits = torch.cat([rearrange(b, "b h w d -> b (h w) d") for b in enc.bits], dim=1)
    return torch.cat(enc.inputs, dim=1), bits


def train_transformer(
    model_cfg: InfinityConfig,
    cfg: TransformerTrainConfig,
    vae: BSQVAE,
    text_fn: TextFn,
    batches: BatchFn,
    schedule: Schedule,
    out_dir: Path,
    *,
    init: Callable[[Infinity], None] | None = None,
    progress: bool = True,
) -> Infinity:
    """Train (or resume from ``out_dir/transformer.ckpt``); logs to ``out_dir/transformer_log.jsonl``.

    ``init`` loads starting weights into the freshly built model (fine-tuning); without it the model
    starts from :meth:`Infinity.init_weights`. A checkpoint, when present, overrides both.
    """
    from scalestyle.train.common import make_accelerator

    accelerator = make_accelerator()
    amp = use_amp(cfg.amp, accelerator.device)
    model = Infinity(model_cfg)
    model.init_weights(torch.Generator().manual_seed(cfg.seed))
    if init is not None:
        init(model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "cfg_uncond" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "cfg_uncond" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.97),
    )
    ckpt, start = out_dir / "transformer.ckpt", 0
    if ckpt.is_file():
        start = int(load_checkpoint(ckpt, model=model, optimizer=optimizer)["step"])
    vae = vae.eval().requires_grad_(False).to(accelerator.device)
    objective = BitObjective(model, schedule, cfg.scale_weighting, cfg.prefix_scales, cfg.full_rows)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    log = JsonlLog(out_dir / "transformer_log.jsonl")
    bar = tqdm(
        range(start, cfg.steps), initial=start, total=cfg.steps, desc="transformer", disable=not progress
    )
    for step in bar:
        g = step_generator(cfg.seed, step)
        img, captions = batches(step, cfg.batch_size, g)
        drop = torch.rand(len(captions), generator=g) < cfg.cond_drop
        flip = None
        if cfg.bsc_strength > 0:
            flip = BitwiseSelfCorrection.draw(len(captions), cfg.bsc_strength, cfg.bsc_scales, g)
        inputs, bits = encode_batch(vae, img.to(accelerator.device), schedule, flip)
        text = text_fn(captions).to(accelerator.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=amp):
            out = objective(inputs, bits, text, drop)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(out["loss"])
        accelerator.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
        optimizer.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {k: round(float(v.detach()), 5) for k, v in out.items()}
            log.write(step=step + 1, **row)
            bar.set_postfix(loss=row["loss"], bit_acc=row["bit_acc"])
        if accelerator.is_main_process and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(ckpt, model=model, optimizer=optimizer, step=step + 1, config=cfg)
    return model.eval()
