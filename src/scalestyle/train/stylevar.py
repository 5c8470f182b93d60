"""StyleVAR's training: the SFT cross-entropy, GRPO's Per-Action Normalization Weights, and the SFT trainer.

Follows Senfier-LiqiJing/StyleVAR: `train/sft_trainer.py` (per-token cross-entropy over all L tokens,
each weighted 1/L, averaged over the batch; label smoothing 0 in the released runs) and
`train/train_grpo.py` (PANW: token t of a scale with an h x w grid weighs ``(h w)^-gamma``, normalised so
that one image's weights sum to 1; gamma 0.7), research note wave2_methods.md §1.4 and §1.6.

The SFT trainer (:func:`train_stylevar_sft`) follows `train/train_sft.py` and `utils/lr_control.py`:
AdamW with betas (0.9, 0.95), weight decay 0.05 on every parameter but the 1-D ones, the biases and the
position, level and attention-scale tensors (their ``filter_params`` with its ``nowd_keys``), gradients
clipped at norm 2, and the ``lin0`` schedule (a linear warm-up from 0.005 x peak over the first 2 % of the
steps, the peak for the next 5 % of the rest, then a linear decay to 0.01 x peak). No condition dropout and
no augmentation (their label dropout is commented out; the images are only resized). ``alpha_jitter`` is
their released v2 run's global shift of every alpha, one uniform draw per step, clamped to [0.01, 0.99]
(it rides on the style strength, which shifts the alphas by half its value). The VQ-VAE stays frozen; the
ResNet trunks, ``feat_emb`` and the transformer train, the trunks' batch norms in training mode.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm import tqdm

from scalestyle.config import STYLEVAR_PRESETS, StyleVARPreset, get_stylevar_preset
from scalestyle.data.triplets import TripletData, TripletTensors
from scalestyle.locate import model_folder
from scalestyle.models.stylevar import StyleVAR, TransferInputs
from scalestyle.models.vqvae import VQVAE
from scalestyle.schedules import Schedule
from scalestyle.stylevar_weights import (
    init_from_var,
    is_stylevar_folder,
    load_stylevar_models,
    resolve_stylevar_files,
    save_stylevar_dir,
    stylevar_preset_for_var,
)
from scalestyle.train.common import (
    JsonlLog,
    check_range,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    step_generator,
)
from scalestyle.train.transformer import SCALE_WEIGHTINGS, scale_loss_weights
from scalestyle.weights import is_var_folder, load_var_models, resolve_var_files

PANW_GAMMA = 0.7


def panw_weights_L(schedule: Schedule, gamma: float = PANW_GAMMA) -> torch.Tensor:
    """Per-token weights (L,) in fp64: ``(h w)^-gamma`` for every token of a scale of grid h x w, divided
    by their sum over the L tokens (coarse tokens weigh more: 1x1 / 16x16 = 256^gamma)."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    per_token = [float(h * w) ** -gamma for h, w in schedule.grids for _ in range(h * w)]
    weights = torch.tensor(per_token, dtype=torch.float64)
    return weights / weights.sum()


def token_ce_BL(
    logits_BLV: torch.Tensor, target_BL: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of every token (B, L), in fp32."""
    ce = F.cross_entropy(
        rearrange(logits_BLV.float(), "b l v -> (b l) v"),
        rearrange(target_BL, "b l -> (b l)"),
        label_smoothing=label_smoothing,
        reduction="none",
    )
    return rearrange(ce, "(b l) -> b l", b=logits_BLV.shape[0])


def sft_loss(
    model: StyleVAR,
    vqvae: VQVAE,
    target_B3PP: torch.Tensor,
    content_B3PP: torch.Tensor,
    style_B3PP: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    strength: float = 0.0,
    weights_L: torch.Tensor | None = None,
) -> torch.Tensor:
    """The SFT objective of one triplet batch (images in [-1, 1]): teacher-forced logits of the target's
    tokens given its content and style, mean cross-entropy over all L tokens and the batch (or weighted
    by ``weights_L``, summing to 1). The frozen VQ-VAE runs without gradients; the ResNet trunks and the
    transformer get them. ``strength`` shifts every alpha by half its value (the trainer's alpha
    jitter)."""
    schedule = model.schedule
    # the frozen tokenizer runs in float32 under mixed precision too: bf16 features would move tokens
    # across nearest-entry ties (and the quantizer's in-place addmm refuses mixed dtypes)
    with torch.no_grad(), torch.autocast(target_B3PP.device.type, enabled=False):
        indices = vqvae.encode_indices(target_B3PP.float(), schedule)
        inputs_BLD = vqvae.teacher_inputs(indices, schedule)
        raw = TransferInputs.encode(vqvae, content_B3PP.float(), style_B3PP.float(), schedule, strength)
    target_BL = torch.cat([rearrange(i, "b h w -> b (h w)") for i in indices], dim=1)
    logits_BLV = model(inputs_BLD, model.condition([raw]), schedule)
    ce_BL = token_ce_BL(logits_BLV, target_BL, label_smoothing)
    if weights_L is not None:
        return (ce_BL * weights_L.to(ce_BL.device)).sum(dim=-1).mean()
    # upstream: loss.mul(1 / L).sum(dim=-1).mean()
    return ce_BL.mul(1 / target_BL.shape[1]).sum(dim=-1).mean()


# ---------------------------------------------------------------------------------------------------------
# Supervised fine-tuning

# `utils/lr_control.py::lr_wd_annealing` as `utils/arg_util.py` sets it: warm-up from wp0, lin0's hold of
# T = 5 % of the post-warm-up steps, decay to wpe
LIN0_WARMUP_START = 0.005
LIN0_HOLD = 0.05
LIN0_END = 0.01
# `train/train_sft.py`'s nowd_keys that name our parameters (besides every 1-D tensor and bias)
NO_DECAY_KEYS = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul")
MIXED_PRECISIONS = ("no", "bf16")
CHECKPOINT = "stylevar_sft.ckpt"
RANDOM_INIT = "random:"
LOG = "stylevar_sft_log.jsonl"


@dataclass(frozen=True)
class StyleVARTrainConfig:
    """SFT settings; the defaults are the authors' (their v2 run: batch 14 per GPU, peak lr 2.19e-4,
    warm-up 1/50 of training), but for ``alpha_jitter`` (their code's default 0; the v2 run used 0.15).
    ``mixed_precision`` "bf16" autocasts through accelerate (the authors train in bf16 on GPUs); "no" is
    the default because bf16 is about 45x slower on AVX2-only CPUs."""

    steps: int = 20_000
    batch_size: int = 14
    lr: float = 2.19e-4
    warmup: float = 0.02
    weight_decay: float = 0.05
    grad_clip: float = 2.0
    label_smoothing: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    alpha_jitter: float = 0.0
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    num_workers: int = 0
    mixed_precision: str = "no"
    # "token": the authors' mean over tokens; "scale" weighs every scale alike. Teacher forcing shows the
    # target's own coarse scales, which carry its colours, so under the token mean (the first scale is 1
    # of 155 tokens on the demo) a short run learns to copy them and never to read the style image
    # (measured: docs/evaluation.md, StyleVAR section)
    scale_weighting: str = "token"

    def __post_init__(self) -> None:
        check_range(self, ("steps", "batch_size", "log_every", "ckpt_every"), 1)
        if self.scale_weighting not in SCALE_WEIGHTINGS:
            raise ValueError(
                f"scale_weighting must be one of {SCALE_WEIGHTINGS}, got {self.scale_weighting!r}"
            )
        check_range(self, ("lr",), 0, 1, "()")
        check_range(self, ("warmup",), 0, 1, "[)", note="a fraction of the steps")
        check_range(self, ("weight_decay", "num_workers"), 0)
        check_range(self, ("grad_clip",), 0, ends="(]")
        check_range(self, ("label_smoothing",), 0, 1, "[)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        check_range(self, ("alpha_jitter",), 0, 0.5, note="0: off")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}"
            )

    @classmethod
    def quick(cls) -> StyleVARTrainConfig:
        """Two steps of two triplets, for tests and smoke runs."""
        return cls(steps=2, batch_size=2, log_every=1, ckpt_every=1)


def lin0_lr(step: int, cfg: StyleVARTrainConfig) -> float:
    """The learning rate of ``step`` (0-based) under the authors' ``lin0`` schedule (module docstring)."""
    warmup = round(cfg.warmup * cfg.steps)
    if step < warmup:
        return cfg.lr * (LIN0_WARMUP_START + (1 - LIN0_WARMUP_START) * step / warmup)
    passed = (step - warmup) / max(1, cfg.steps - 1 - warmup)
    if passed < LIN0_HOLD:
        return cfg.lr
    return cfg.lr * (LIN0_END + (1 - LIN0_END) * (1 - passed) / (1 - LIN0_HOLD))


def sft_optimizer(model: StyleVAR, cfg: StyleVARTrainConfig) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        skip = p.ndim == 1 or name.endswith("bias") or any(k in name for k in NO_DECAY_KEYS)
        (no_decay if skip else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )


def step_indices(n: int, batch_size: int, seed: int, step: int, stream: int = 0) -> list[int]:
    """The triplets of one step: drawn uniformly from ``n`` with :func:`step_generator`, so a resumed run
    reads the batches it would have read uninterrupted (``stream``: the process's rank)."""
    return torch.randint(n, (batch_size,), generator=step_generator(seed, step, stream)).tolist()


class _StepBatches:
    """A batch sampler over steps ``start .. stop - 1`` (the data loader's workers only read images)."""

    def __init__(self, n: int, cfg: StyleVARTrainConfig, start: int, stream: int) -> None:
        self.n, self.cfg, self.start, self.stream = n, cfg, start, stream

    def __len__(self) -> int:
        return self.cfg.steps - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.cfg.steps):
            yield step_indices(self.n, self.cfg.batch_size, self.cfg.seed, step, self.stream)


class SFTObjective(nn.Module):
    """:func:`sft_loss` as one module, so that DDP sees the whole forward (trunks included); the VQ-VAE
    stays in eval mode whatever mode the objective is put in."""

    weights_L: torch.Tensor | None

    def __init__(
        self, model: StyleVAR, vqvae: VQVAE, label_smoothing: float = 0.0, scale_weighting: str = "token"
    ) -> None:
        super().__init__()
        self.model, self.vqvae, self.label_smoothing = model, vqvae.requires_grad_(False), label_smoothing
        weights = None if scale_weighting == "token" else scale_loss_weights(model.schedule, scale_weighting)
        self.register_buffer("weights_L", weights, persistent=False)

    def train(self, mode: bool = True) -> SFTObjective:
        super().train(mode)
        self.vqvae.eval()
        return self

    def forward(
        self, target_B3PP: torch.Tensor, content_B3PP: torch.Tensor, style_B3PP: torch.Tensor, strength: float
    ) -> torch.Tensor:
        return sft_loss(
            self.model,
            self.vqvae,
            target_B3PP,
            content_B3PP,
            style_B3PP,
            label_smoothing=self.label_smoothing,
            strength=strength,
            weights_L=self.weights_L,
        )


@dataclass(frozen=True)
class SFTStart:
    """Where a run starts: the preset, a builder of (StyleVAR, VQ-VAE) and what to record about it."""

    preset: StyleVARPreset
    build: Callable[[int], tuple[StyleVAR, VQVAE]]
    origin: dict[str, str]
    history: tuple[dict[str, Any], ...]


def init_source(init: str | Path) -> StyleVARPreset | Path:
    """What ``--init`` names: a folder (a path, or the name of the shipped demo or of a downloaded model) or
    a StyleVAR preset whose random weights to start from. A name that is both a model folder and a preset
    (``stylevar-demo``) is the folder, as everywhere else a model is named; ``random:NAME`` is the
    preset's random weights."""
    text = str(init)
    folder = model_folder(Path(text).expanduser())
    if text.startswith(RANDOM_INIT) or (text in STYLEVAR_PRESETS and not folder.is_dir()):
        name = text.removeprefix(RANDOM_INIT)
        if name not in STYLEVAR_PRESETS:
            raise ValueError(
                f"--init {text}: {name!r} is not a StyleVAR preset ({', '.join(STYLEVAR_PRESETS)})"
            )
        return get_stylevar_preset(name)
    return folder


def sft_start(init: str) -> SFTStart:
    """Resolve ``init`` (:func:`init_source`) without loading weights: a StyleVAR folder to continue from
    (native or released: its own variant, else GRPO), a plain VAR folder (its VQ-VAE, and its transformer
    through :func:`init_from_var`), or a StyleVAR preset (random weights, random frozen VQ-VAE: for tests
    and timing)."""
    source = init_source(init)
    if isinstance(source, StyleVARPreset):
        preset = source

        def random(seed: int) -> tuple[StyleVAR, VQVAE]:
            model = StyleVAR(preset.transformer)
            model.init_weights(torch.Generator().manual_seed(seed))
            with torch.random.fork_rng(devices=[]):
                # PyTorch's default conv init draws from the global RNG: seed it without leaking the change
                torch.manual_seed(seed)
                vqvae = VQVAE(preset.vae)
            return model, vqvae

        return SFTStart(preset, random, {"kind": "preset", "init": preset.name}, ())
    folder = source
    if folder.is_dir() and is_stylevar_folder(folder):
        files = resolve_stylevar_files(folder)
        origin = {"kind": "stylevar", "init": str(folder.resolve()), "variant": files.variant}
        return SFTStart(files.preset, lambda seed: load_stylevar_models(files), origin, files.history)
    if folder.is_dir() and is_var_folder(folder):
        var_files = resolve_var_files(folder)
        preset = stylevar_preset_for_var(var_files.preset)

        def from_var(seed: int) -> tuple[StyleVAR, VQVAE]:
            var, vqvae = load_var_models(var_files)
            model = StyleVAR(preset.transformer)
            model.init_weights(torch.Generator().manual_seed(seed))
            init_from_var(model, var.state_dict(), source=str(var_files.transformer))
            return model, vqvae

        origin = {"kind": "var", "init": str(folder.resolve()), "var_preset": var_files.preset.name}
        return SFTStart(preset, from_var, origin, ())
    raise ValueError(
        f"--init {init}: neither a StyleVAR preset ({', '.join(STYLEVAR_PRESETS)}) nor a StyleVAR or VAR "
        "model folder"
    )


def train_stylevar_sft(
    out_dir: str | Path,
    work_dir: str | Path,
    cfg: StyleVARTrainConfig,
    data: TripletData,
    *,
    init: str,
    progress: bool = True,
) -> Path:
    """Fine-tune a StyleVAR on ``data`` (triplets at the model's image size, e.g.
    :class:`scalestyle.data.triplets.WorldTriplets`) and write the StyleVAR folder ``out_dir``, which
    :meth:`scalestyle.transfer.TransferPipeline.load` opens; returns it.

    ``init``: see :func:`sft_start`. ``work_dir`` holds the checkpoint (every ``cfg.ckpt_every`` steps and
    at the end) and the JSONL log; a run started again resumes from it exactly (same batches, same
    weights as uninterrupted), and refuses a checkpoint of another ``init``. Multi-GPU through
    ``accelerate launch``: each process draws its own batch (the effective batch is ``batch_size`` times
    the process count).
    """
    t0 = time.perf_counter()
    out, work = Path(out_dir), Path(work_dir)
    start = sft_start(init)
    if data.size != start.preset.image_size:
        raise ValueError(
            f"the triplets are {data.size} px; {start.preset.name} takes {start.preset.image_size} px images"
        )
    if len(data) < 1:
        raise ValueError("the triplet dataset is empty")
    accelerator = make_accelerator(cfg.mixed_precision)
    model, vqvae = start.build(cfg.seed)
    optimizer = sft_optimizer(model, cfg)
    ckpt, first = work / CHECKPOINT, 0
    if ckpt.is_file():
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer)
        if state.get("origin") != start.origin:
            raise ValueError(
                f"{ckpt} continues a run from {state.get('origin', {}).get('init')}, not from {init}: "
                "use another --work-dir"
            )
        first = int(state["step"])
    objective = SFTObjective(model, vqvae, cfg.label_smoothing, cfg.scale_weighting).train()
    objective, optimizer = accelerator.prepare(objective, optimizer)
    loader: torch.utils.data.DataLoader[TripletTensors] = torch.utils.data.DataLoader(
        data,  # type: ignore[arg-type]
        batch_sampler=_StepBatches(len(data), cfg, first, accelerator.process_index),
        num_workers=cfg.num_workers,
    )
    log = JsonlLog(work / LOG)
    bar = tqdm(total=cfg.steps, initial=first, desc="stylevar sft", disable=not progress)
    last: dict[str, float] = {}
    for step, (target, content, style) in zip(range(first, cfg.steps), loader, strict=True):
        strength = 0.0
        if cfg.alpha_jitter:
            # a stream of its own: the batches stay those of a run without jitter
            g = step_generator(cfg.seed, step, stream=1_000 + accelerator.process_index)
            strength = float(torch.empty(()).uniform_(-1, 1, generator=g)) * 2 * cfg.alpha_jitter
        lr = lin0_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        device = accelerator.device
        loss = objective(target.to(device), content.to(device), style.to(device), strength)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        bar.update()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mean_loss = accelerator.reduce(loss.detach(), "mean")
            last = {"loss": round(float(mean_loss), 5), "grad_norm": round(float(grad_norm), 4)}
            if accelerator.is_main_process:
                log.write(step=step + 1, lr=lr, **last)
            bar.set_postfix(loss=last["loss"])
        if accelerator.is_main_process and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
            extra = {"origin": start.origin}
            save_checkpoint(ckpt, model=model, optimizer=optimizer, step=step + 1, config=cfg, extra=extra)
    bar.close()
    if accelerator.is_main_process:
        run = {
            "trained_by": "scalestyle train stylevar-sft",
            "origin": start.origin,
            "data": data.description,
            "triplets": len(data),
            "config": asdict(cfg),
            "resumed_at": first,
            "last": last,
            "processes": accelerator.num_processes,
            "seconds": round(time.perf_counter() - t0, 1),
            "device": str(accelerator.device),
            "torch": torch.__version__,
        }
        shipped = copy.deepcopy(model).cpu().eval()
        save_stylevar_dir(
            out, preset=start.preset, model=shipped, vqvae=vqvae.cpu(), history=(*start.history, run)
        )
    accelerator.wait_for_everyone()
    return out
