"""Training the class-conditional VAR transformer: teacher-forced next-scale prediction of codebook indices.

As FoundationVision/VAR `trainer.py::VARTrainer.train_step` and `train.py`: the frozen VQ-VAE turns each
image into its per-scale indices and the teacher-forcing inputs (``img_to_idxBl``, ``idxBl_to_var_input``:
:meth:`VQVAE.encode_indices`, :meth:`VQVAE.teacher_inputs`), the model predicts every scale from the earlier
ones under the block-causal mask in one forward, and the loss is the per-token cross-entropy with label
smoothing (0.1 in the official run) averaged over the tokens (``scale_weighting="token"``, upstream; the
other weightings of :func:`scalestyle.train.transformer.scale_loss_weights` are there for small runs).
Labels are replaced by the null class ``num_classes`` with probability ``class_drop`` (0.1, upstream's
``cond_drop_rate``) so that classifier-free guidance works at inference. AdamW with betas (0.9, 0.95) and
weight decay 0.05 on the weight matrices, none on biases, positions, level embeddings and the attention
scales (upstream ``filter_params`` with its ``nowd_keys``).

The demo trains it on the procedural world with class = the content (:mod:`scalestyle.train.demo_stylevar`
says why).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

from scalestyle.config import VARConfig, VARPreset
from scalestyle.models.var import VAR, ClassLabels
from scalestyle.models.vqvae import VQVAE
from scalestyle.schedules import var_schedule
from scalestyle.train.common import JsonlLog, check_range, load_checkpoint, save_checkpoint, step_generator
from scalestyle.train.transformer import SCALE_WEIGHTINGS, scale_loss_weights
from scalestyle.train.vae import lr_at

BatchFn = Callable[[int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
"""(step, batch_size, generator) -> (images (B, 3, P, P) in [-1, 1], class labels (B,) int64)."""

# upstream `utils/lr_control.py::filter_params` keys that take no weight decay (besides every 1-D tensor)
NO_DECAY_KEYS = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul", "ada_gss")
VAR_FILE = "var.safetensors"
VQVAE_FILE = "vqvae.safetensors"


@dataclass(frozen=True)
class VARTrainConfig:
    steps: int = 4000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 200
    grad_clip: float = 2.0
    class_drop: float = 0.1
    label_smoothing: float = 0.1
    scale_weighting: str = "token"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 25
    amp: bool = False

    def __post_init__(self) -> None:
        check_range(self, ("steps", "batch_size", "log_every", "ckpt_every"), 1)
        check_range(self, ("lr",), 0, 1, "()")
        check_range(self, ("class_drop", "label_smoothing"), 0, 1, "[)")
        check_range(self, ("weight_decay",), 0)
        if self.scale_weighting not in SCALE_WEIGHTINGS:
            raise ValueError(
                f"scale_weighting must be one of {SCALE_WEIGHTINGS}, got {self.scale_weighting!r}"
            )


def var_optimizer(model: VAR, cfg: VARTrainConfig) -> torch.optim.AdamW:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or any(k in name for k in NO_DECAY_KEYS) else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )


@torch.no_grad()
def encode_targets(vqvae: VQVAE, img_B3PP: torch.Tensor, model: VAR) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher-forcing inputs x_BLd of scales 1.., target indices idx_BL of all scales) of images."""
    indices = vqvae.encode_indices(img_B3PP, model.schedule)
    target_BL = torch.cat([rearrange(i, "b h w -> b (h w)") for i in indices], dim=1)
    return vqvae.teacher_inputs(indices, model.schedule), target_BL


def var_loss(
    model: VAR,
    inputs_BLd: torch.Tensor,
    target_BL: torch.Tensor,
    labels_B: torch.Tensor,
    weights_L: torch.Tensor,
    label_smoothing: float,
) -> dict[str, torch.Tensor]:
    """Weighted cross-entropy of the teacher-forced logits (``weights_L`` sums to 1) and token accuracy."""
    logits_BLV = model(inputs_BLd, model.condition([ClassLabels(labels_B)]), model.schedule)
    ce_BL = F.cross_entropy(
        rearrange(logits_BLV.float(), "b l v -> b v l"),
        target_BL,
        label_smoothing=label_smoothing,
        reduction="none",
    )
    with torch.no_grad():
        acc = (logits_BLV.argmax(-1) == target_BL).float().mean()
    return {"loss": (ce_BL * weights_L.to(ce_BL.device)).sum(-1).mean(), "acc": acc}


def train_var(
    model_cfg: VARConfig,
    cfg: VARTrainConfig,
    vqvae: VQVAE,
    batches: BatchFn,
    out_dir: Path,
    *,
    progress: bool = True,
) -> VAR:
    """Train (or resume from ``out_dir/var.ckpt``) with the frozen ``vqvae``; logs to
    ``out_dir/var_log.jsonl`` (loss, token accuracy ``acc``)."""
    from scalestyle.train.common import make_accelerator

    accelerator = make_accelerator()
    model = VAR(model_cfg)
    model.init_weights(torch.Generator().manual_seed(cfg.seed))
    optimizer = var_optimizer(model, cfg)
    ckpt, start = out_dir / "var.ckpt", 0
    if ckpt.is_file():
        start = int(load_checkpoint(ckpt, model=model, optimizer=optimizer)["step"])
    vqvae = vqvae.eval().requires_grad_(False).to(accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    core: VAR = accelerator.unwrap_model(model)
    weights_L = scale_loss_weights(var_schedule(model_cfg.patch_nums), cfg.scale_weighting)
    log = JsonlLog(out_dir / "var_log.jsonl")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="var", disable=not progress)
    for step in bar:
        g = step_generator(cfg.seed, step)
        img, labels = batches(step, cfg.batch_size, g)
        drop = torch.rand(labels.shape[0], generator=g) < cfg.class_drop
        labels = torch.where(drop, model_cfg.num_classes, labels).to(accelerator.device)
        inputs, target = encode_targets(vqvae, img.to(accelerator.device), core)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            out = var_loss(core, inputs, target, labels, weights_L, cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(out["loss"])
        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {k: round(float(v.detach()), 5) for k, v in out.items()}
            log.write(step=step + 1, **row)
            bar.set_postfix(loss=row["loss"], acc=row["acc"])
        if accelerator.is_main_process and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(ckpt, model=core, optimizer=optimizer, step=step + 1, config=cfg)
    return core.eval()


def _cpu_copy(state: dict[str, torch.Tensor], *, half: bool) -> dict[str, torch.Tensor]:
    # safetensors refuses views that share storage; the integer buffer lvl_1L keeps its dtype
    out = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    return {k: v.half() if half and v.is_floating_point() else v for k, v in out.items()}


def save_var_folder(
    out_dir: Path, preset: VARPreset, var: VAR, vqvae: VQVAE, *, extra: dict[str, Any] | None = None
) -> Path:
    """A VAR model folder that :meth:`scalestyle.pipeline.Pipeline.load` reads: ``var.safetensors``
    (fp16: the loader casts back to the model's fp32), ``vqvae.safetensors`` (fp32) and the layout file
    naming ``preset``, which must be a VAR preset of :data:`scalestyle.config.PRESETS`; the layout file is
    written last, so an interrupted export is never taken for a model folder."""
    from safetensors.torch import save_file

    from scalestyle.config import PRESETS
    from scalestyle.weights import FORMAT_VERSION, LAYOUT_FILE

    if PRESETS.get(preset.name) != preset:
        raise ValueError(f"preset {preset.name!r} is not a VAR preset of scalestyle.config.PRESETS")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_cpu_copy(var.state_dict(), half=True), str(out_dir / VAR_FILE), metadata={"format": "pt"})
    save_file(_cpu_copy(vqvae.state_dict(), half=False), str(out_dir / VQVAE_FILE), metadata={"format": "pt"})
    record = {
        "format_version": FORMAT_VERSION,
        "preset": preset.name,
        "transformer": VAR_FILE,
        "vae": VQVAE_FILE,
        **({"extra": extra} if extra else {}),
    }
    (out_dir / LAYOUT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir
