"""StyleVAR's GRPO: LoRA on a frozen SFT model, PANW-weighted PPO-clipped loss with a k3 KL, iterative merge.

Follows Senfier-LiqiJing/StyleVAR `train/train_grpo.py` (the order of operations), `utils/lora.py` (adapters,
peak snapshot, merge) and `scripts/run_grpo_v5.sh` (the released run's settings, the defaults of
:class:`GRPOConfig`), research note wave2_methods.md §1.6. One step on B triplets (target, content, style):

1. Rollouts: G serial runs of the current policy (LoRA on), rollout g drawing all B rows from one
   generator seeded ``((seed * 1_000_003 + step * G) mod 2^31 + g) mod 2^31``, top-k 900, top-p 0.96, no
   CFG, in fp32, through :func:`scalestyle.sampling.run_scales` (its ``on_scale`` events give the tokens).
2. Old (LoRA on) and reference (LoRA disabled) log-probabilities of the sampled tokens, teacher-forced,
   without gradients.
3. Rewards ``(G, B)`` (:mod:`scalestyle.train.rewards`) and advantages per triplet over its G rollouts,
   ``(R - mean) / (max(std, 0.01) + 1e-8)`` with the unbiased std.
4. The reward EMA (beta 0.99) and the peak bookkeeping; at a new peak the LoRA weights are snapshot
   (before this step's update, as the authors' code does).
5. Per rollout: new log-probabilities with gradients, per token ``-min(rho A, clip(rho, 0.8, 1.2) A)`` with
   ``rho = exp(clamp(new - old, +-10))`` plus ``beta (e^d - 1 - d)``, ``d = clamp(new - ref, +-10)``
   (Schulman's k3), weighted by PANW (:func:`scalestyle.train.stylevar.panw_weights_L`), summed over the
   tokens, averaged over the batch, divided by G and backpropagated (accumulated over the rollouts). A
   rollout whose raw KL (the weighted KL over beta) exceeds ``kl_skip``, or whose loss is not finite, is not
   backpropagated and, as in the authors' code, drops the gradients the step accumulated before it.
6. Gradient clipping and one AdamW step over the LoRA parameters.
7. The iterative merge: a *normal* merge when at least ``merge_cooldown`` steps passed since the last one,
   the peak EMA beats the EMA at the last merge by ``merge_min_gain`` and no new peak came for
   ``merge_patience`` steps; else an *emergency* merge when the step's raw KL exceeds ``merge_kl``, at
   least ``merge_emergency_cooldown`` steps passed and a peak snapshot exists. A merge restores the peak
   snapshot, folds ``B A alpha / r`` into the base weights, re-initialises the adapters (A
   Kaiming-uniform, B zero) and recreates AdamW; the peak EMA becomes the new baseline.

The model stays in ``eval()`` throughout (the ResNet trunks' batch norms). Adapters come from peft
(:func:`peft.inject_adapter_in_model`), which wraps the targeted linears in place, so the model stays a
:class:`~scalestyle.models.stylevar.StyleVAR` that the sampling loop and :class:`TransferPipeline` run.
Resumption is exact: the data order, the rollouts' noise and every adapter initialisation are seeded by
(seed, step), and a checkpoint holds the model (base and adapters), AdamW, the merge bookkeeping with its
snapshot, and the step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from scalestyle.config import SamplingConfig, StyleVARPreset
from scalestyle.models.stylevar import StyleVAR, TransferInputs
from scalestyle.models.vqvae import VQVAE, IndexCodec
from scalestyle.sampling import PathPlan, ScaleEvent, run_scales
from scalestyle.stylevar_weights import load_stylevar_models, resolve_stylevar_files, save_stylevar_dir
from scalestyle.train.common import JsonlLog, check_range, load_checkpoint, save_checkpoint, step_generator
from scalestyle.train.rewards import Reward
from scalestyle.train.stylevar import init_source, panw_weights_L
from scalestyle.weights import CONFIG_FILE, LAYOUT_FILE

# every block's blended-attention projections and FFN (utils/lora.py LORA_ATTN_ATTRS, LORA_FFN_ATTRS)
LORA_TARGETS = ("attn.mat_qkv_guide", "attn.mat_qkv_target", "attn.proj", "ffn.fc1", "ffn.fc2")
ADAPTER = "default"
# the authors' advantage: (R - mean) / (max(std, 0.01) + 1e-8)
STD_FLOOR, STD_EPS = 0.01, 1e-8
SEED_MODULUS = 2**31
# streams of step_generator: the data order, adapter initialisations
_DATA_STREAM, _LORA_STREAM = 1, 2
CHECKPOINT = "grpo.ckpt"
LOG = "grpo_log.jsonl"

TripletBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(target_B3PP, content_B3PP, style_B3PP), float32 in [-1, 1]."""


class Triplets(Protocol):
    """A sized, indexable set of (target_3PP, content_3PP, style_3PP) in [-1, 1] at the model's size."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class GRPOConfig:
    """The GRPO run; defaults are the authors' released v5 run (`scripts/run_grpo_v5.sh`)."""

    steps: int = 1000
    batch_size: int = 16
    group_size: int = 16
    clip_eps: float = 0.2
    log_ratio_clamp: float = 10.0
    kl_beta: float = 0.1
    kl_skip: float = 5.0
    panw_gamma: float = 0.7
    lora_rank: int = 256
    lora_alpha: int = 512
    lora_targets: tuple[str, ...] = LORA_TARGETS
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ema_beta: float = 0.99
    iterative_merge: bool = True
    merge_cooldown: int = 300
    merge_min_gain: float = 0.05
    merge_patience: int = 50
    merge_kl: float = 2.0
    merge_emergency_cooldown: int = 50
    top_k: int = 900
    top_p: float = 0.96
    seed: int = 42
    log_every: int = 1
    ckpt_every: int = 100

    def __post_init__(self) -> None:
        check_range(
            self, ("steps", "batch_size", "lora_rank", "merge_cooldown", "log_every", "ckpt_every"), 1
        )
        check_range(self, ("group_size",), 2, note="advantages need a group's std")
        check_range(self, ("clip_eps", "lr"), 0, 1, "()")
        check_range(self, ("log_ratio_clamp", "kl_beta", "kl_skip", "lora_alpha", "grad_clip"), 0, ends="(]")
        check_range(self, ("panw_gamma",), 0, 4)
        if not self.lora_targets or any(not t for t in self.lora_targets):
            raise ValueError(f"lora_targets must name at least one module, got {self.lora_targets}")
        check_range(self, ("weight_decay",), 0, 1, "[)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        check_range(self, ("ema_beta",), 0, 1, "[)")
        check_range(self, ("merge_min_gain", "merge_patience", "merge_kl", "merge_emergency_cooldown"), 0)
        check_range(self, ("top_k",), 0, note="0 disables it")
        check_range(self, ("top_p",), 0, 1, "(]")
        check_range(self, ("seed",), 0, SEED_MODULUS, "[)")

    @classmethod
    def quick(cls) -> GRPOConfig:
        """Two steps of one triplet, two rollouts and rank-4 adapters (a smoke test)."""
        return cls(steps=2, batch_size=1, group_size=2, lora_rank=4, lora_alpha=8, log_every=1, ckpt_every=1)

    def sampling(self, seed: int) -> SamplingConfig:
        """The rollouts' sampling: no CFG (``cfg`` 0), the run's top-k and top-p, one rollout's seed."""
        return SamplingConfig(cfg=0.0, top_k=self.top_k, top_p=self.top_p, seed=seed)


def rollout_seed(seed: int, step: int, group_size: int, rollout: int) -> int:
    """The authors' per-rollout seed: ``((seed * 1_000_003 + step * G) mod 2^31 + g) mod 2^31``."""
    base = (seed * 1_000_003 + step * group_size) % SEED_MODULUS
    return (base + rollout) % SEED_MODULUS


# ---------------------------------------------------------------------------------------------------------
# LoRA through peft


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """peft initialises adapters from the global RNG: seed it there without leaking the change."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _lora_seed(seed: int, step: int) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=step_generator(seed, step, _LORA_STREAM)))


def add_lora(model: StyleVAR, cfg: GRPOConfig) -> list[nn.Parameter]:
    """Freeze ``model`` and wrap ``cfg.lora_targets`` of every block in LoRA adapters (A Kaiming-uniform
    from a generator seeded by ``cfg.seed``, B zero, scaling alpha / r); returns the adapter parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    if lora_layers(model):
        raise ValueError("the model already carries LoRA adapters")
    model.requires_grad_(False)
    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        target_modules=list(cfg.lora_targets),
        lora_dropout=0.0,
        bias="none",
    )
    with _seeded(_lora_seed(cfg.seed, -1), model.device):
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    return lora_parameters(model)


def lora_layers(model: nn.Module) -> dict[str, Any]:
    """The adapter-wrapped linears by module name (peft ``LoraLayer``), in module order."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable A and B of every adapter, in module order."""
    params: list[nn.Parameter] = []
    for layer in lora_layers(model).values():
        params += [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]
    return params


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The reference policy: every adapter off (the base weights alone), back on afterwards."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def lora_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every adapter weight, by state-dict key (the peak snapshot)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if ".lora_" in k}


@torch.no_grad()
def restore_lora(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    params = {k: p for k, p in model.named_parameters() if ".lora_" in k}
    if params.keys() != snapshot.keys():
        raise ValueError(f"the snapshot holds {len(snapshot)} adapter tensors, the model {len(params)}")
    for key, value in snapshot.items():
        params[key].copy_(value)


@torch.no_grad()
def merge_lora(model: nn.Module, seed: int) -> None:
    """Fold every adapter into its base weight (peft's delta ``B A alpha / r``) and re-initialise it (A
    Kaiming-uniform from ``seed``, B zero): the model computes the same function before and after."""
    layers = lora_layers(model)
    for layer in layers.values():
        base = layer.get_base_layer()
        base.weight.add_(layer.get_delta_weight(ADAPTER).to(base.weight.dtype))
    device = next(model.parameters()).device
    with _seeded(seed, device):
        for layer in layers.values():
            layer.reset_lora_parameters(ADAPTER, init_lora_weights=True)


@torch.no_grad()
def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under StyleVAR's own keys, every adapter folded into its base weight: what a
    released GRPO checkpoint (LoRA merged) holds."""
    deltas = {f"{name}.weight": layer.get_delta_weight(ADAPTER) for name, layer in lora_layers(model).items()}
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        state[plain] = value + deltas[plain].to(value.dtype) if plain in deltas else value
    return state


# ---------------------------------------------------------------------------------------------------------
# The objective


def group_advantages_GB(rewards_GB: torch.Tensor) -> torch.Tensor:
    """Advantages ``(G, B)``: each triplet's rewards over its G rollouts, centred and divided by their
    unbiased std floored at 0.01 (plus 1e-8)."""
    if rewards_GB.ndim != 2 or rewards_GB.shape[0] < 2:
        raise ValueError(f"rewards must be (G >= 2, B), got {tuple(rewards_GB.shape)}")
    mean_1B = rewards_GB.mean(dim=0, keepdim=True)
    std_1B = rewards_GB.std(dim=0, keepdim=True)
    return (rewards_GB - mean_1B) / (std_1B.clamp(min=STD_FLOOR) + STD_EPS)


def token_logprobs_BL(
    model: StyleVAR, inputs_BLD: torch.Tensor, target_BL: torch.Tensor, raw: TransferInputs
) -> torch.Tensor:
    """Log-probabilities (B, L) of the tokens ``target_BL`` under the teacher-forced forward, in fp32."""
    logits_BLV = model(inputs_BLD, model.condition([raw]), model.schedule)
    logp_BLV = F.log_softmax(logits_BLV.float(), dim=-1)
    return logp_BLV.gather(2, rearrange(target_BL, "b l -> b l 1"))[..., 0]


def grpo_terms_B(
    new_BL: torch.Tensor,
    old_BL: torch.Tensor,
    ref_BL: torch.Tensor,
    adv_B: torch.Tensor,
    weights_L: torch.Tensor,
    cfg: GRPOConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy loss, KL loss) per image ``(B,)``: the PPO-clipped surrogate and beta times Schulman's k3,
    each per token, summed over the tokens with the PANW weights ``weights_L``."""
    c = cfg.log_ratio_clamp
    ratio_BL = (new_BL.float() - old_BL.float()).clamp(-c, c).exp()
    adv_B1 = rearrange(adv_B.float(), "b -> b 1")
    clipped_BL = ratio_BL.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)
    policy_BL = -torch.min(ratio_BL * adv_B1, clipped_BL * adv_B1)
    d_BL = (new_BL.float() - ref_BL.float()).clamp(-c, c)
    kl_BL = cfg.kl_beta * (d_BL.exp() - 1 - d_BL)
    w_1L = rearrange(weights_L.float(), "l -> 1 l")
    return (policy_BL * w_1L).sum(dim=1), (kl_BL * w_1L).sum(dim=1)


@dataclass(frozen=True)
class RolloutLoss:
    """One rollout's batch-mean policy and KL losses, its raw KL (KL loss over beta) and whether it was
    backpropagated."""

    policy: float
    kl: float
    raw_kl: float
    applied: bool


def rollout_backward(
    new_BL: torch.Tensor,
    old_BL: torch.Tensor,
    ref_BL: torch.Tensor,
    adv_B: torch.Tensor,
    weights_L: torch.Tensor,
    cfg: GRPOConfig,
) -> RolloutLoss:
    """Backpropagate ``(policy + kl) / G`` of one rollout unless its raw KL exceeds ``cfg.kl_skip`` or its
    loss is not finite."""
    policy_B, kl_B = grpo_terms_B(new_BL, old_BL, ref_BL, adv_B, weights_L, cfg)
    policy, kl = policy_B.mean(), kl_B.mean()
    loss = (policy + kl) / cfg.group_size
    raw_kl = float(kl.detach()) / cfg.kl_beta
    applied = bool(torch.isfinite(loss)) and not raw_kl > cfg.kl_skip
    if applied:
        loss.backward()
    return RolloutLoss(float(policy.detach()), float(kl.detach()), raw_kl, applied)


# ---------------------------------------------------------------------------------------------------------
# Rollouts


@dataclass(frozen=True)
class Rollout:
    """One sampled image per row: its tokens per scale (``idx_Bhw``), their teacher-forcing inputs of
    scales 1.. and flat targets, and the decoded images in [-1, 1]."""

    indices: tuple[torch.Tensor, ...]
    inputs_BLD: torch.Tensor
    target_BL: torch.Tensor
    images_B3PP: torch.Tensor


@torch.no_grad()
def sample_rollout(model: StyleVAR, vqvae: VQVAE, raw: TransferInputs, sampling: SamplingConfig) -> Rollout:
    """Sample every row of ``raw`` with the model as it is (adapters included) through the next-scale loop."""
    tokens: list[torch.Tensor] = []

    def on_scale(event: ScaleEvent) -> None:
        tokens.append(event.tokens["gen"])

    schedule = model.schedule
    f_hat = run_scales(
        model, IndexCodec(vqvae), [PathPlan("gen", raw)], schedule, sampling, on_scale=on_scale
    )["gen"]
    target_BL = torch.cat([rearrange(t, "b h w -> b (h w)") for t in tokens], dim=1)
    return Rollout(
        tuple(tokens), vqvae.teacher_inputs(tokens, schedule), target_BL, vqvae.decode_fhat(f_hat.float())
    )


# ---------------------------------------------------------------------------------------------------------
# The iterative merge's bookkeeping


@dataclass
class MergeTracker:
    """Reward EMA, the peak since the last merge with its LoRA snapshot, and the counters of the merge
    rules (``train_grpo.py``: ``reward_ema``, ``ref_reward_ema``, ``peak_since_merge``, ...)."""

    reward_ema: float | None = None
    baseline: float | None = None
    peak: float = -math.inf
    steps_at_peak: int = 0
    steps_since_merge: int = 0
    merges: int = 0
    peak_lora: dict[str, torch.Tensor] | None = None

    def observe(
        self, reward_mean: float, beta: float, snapshot: Callable[[], dict[str, torch.Tensor]]
    ) -> None:
        """A step's mean reward: update the EMA, and the peak (snapshot taken at a new one)."""
        ema = reward_mean if self.reward_ema is None else beta * self.reward_ema + (1 - beta) * reward_mean
        self.reward_ema = ema
        if self.baseline is None:
            self.baseline = ema
        self.steps_since_merge += 1
        if ema > self.peak:
            self.peak, self.steps_at_peak, self.peak_lora = ema, 0, snapshot()
        else:
            self.steps_at_peak += 1

    def merge_reason(self, raw_kl: float, cfg: GRPOConfig) -> str | None:
        """``"peak"`` (the normal rule), ``"kl"`` (the emergency rule) or None."""
        if self.baseline is None:
            return None
        if (
            self.steps_since_merge >= cfg.merge_cooldown
            and self.peak - self.baseline >= cfg.merge_min_gain
            and self.steps_at_peak >= cfg.merge_patience
        ):
            return "peak"
        if (
            cfg.merge_kl > 0
            and raw_kl > cfg.merge_kl
            and self.steps_since_merge >= cfg.merge_emergency_cooldown
            and self.peak_lora is not None
        ):
            return "kl"
        return None

    def merged(self) -> None:
        self.baseline = self.peak
        self.peak, self.steps_at_peak, self.steps_since_merge, self.peak_lora = -math.inf, 0, 0, None
        self.merges += 1

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# ---------------------------------------------------------------------------------------------------------
# The trainer


@dataclass(frozen=True)
class StepStats:
    step: int
    reward: float
    reward_ema: float
    policy: float
    kl: float
    raw_kl: float
    skipped: int
    grad_norm: float
    merge: str | None


class GRPOTrainer:
    """GRPO on a StyleVAR that carries adapters (:func:`add_lora`), with its frozen VQ-VAE."""

    def __init__(self, model: StyleVAR, vqvae: VQVAE, cfg: GRPOConfig) -> None:
        if not lora_layers(model):
            raise ValueError("the model carries no LoRA adapters: call add_lora first")
        vocab = model.cfg.vocab_size
        if cfg.top_k > vocab:
            raise ValueError(
                f"top_k must be in [0, {vocab}] (the codebook size; 0 disables it), got {cfg.top_k}"
            )
        self.model, self.vqvae, self.cfg = model.eval(), vqvae.eval().requires_grad_(False), cfg
        self.params = lora_parameters(model)
        self.weights_L = panw_weights_L(model.schedule, cfg.panw_gamma).float().to(model.device)
        self.optimizer = self._optimizer()
        self.tracker = MergeTracker()

    def _optimizer(self) -> torch.optim.AdamW:
        cfg = self.cfg
        return torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    def step(self, step: int, batch: TripletBatch, reward: Reward) -> StepStats:
        cfg, model, device = self.cfg, self.model, self.model.device
        target, content, style = (t.to(device).float() for t in batch)
        G = cfg.group_size
        with torch.no_grad():
            raw = TransferInputs.encode(self.vqvae, content, style, model.schedule)
        rollouts = [
            sample_rollout(model, self.vqvae, raw, cfg.sampling(rollout_seed(cfg.seed, step, G, g)))
            for g in range(G)
        ]
        with torch.no_grad():
            old = [token_logprobs_BL(model, r.inputs_BLD, r.target_BL, raw) for r in rollouts]
            with adapters_disabled(model):
                ref = [token_logprobs_BL(model, r.inputs_BLD, r.target_BL, raw) for r in rollouts]
            rewards_GB = torch.stack(
                [reward(r.images_B3PP, target, content, style).float().to(device) for r in rollouts]
            ).clone()
        adv_GB = group_advantages_GB(rewards_GB)
        reward_mean = float(rewards_GB.mean())
        self.tracker.observe(reward_mean, cfg.ema_beta, lambda: lora_snapshot(model))

        self.optimizer.zero_grad()
        policy = kl = 0.0
        skipped = 0
        for g, r in enumerate(rollouts):
            new = token_logprobs_BL(model, r.inputs_BLD, r.target_BL, raw)
            out = rollout_backward(new, old[g], ref[g], adv_GB[g], self.weights_L, cfg)
            if out.applied:
                policy, kl = policy + out.policy / G, kl + out.kl / G
            else:
                skipped += 1
                self.optimizer.zero_grad()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
        self.optimizer.step()
        raw_kl = kl / cfg.kl_beta if kl > 0 else 0.0
        reason = self.tracker.merge_reason(raw_kl, cfg) if cfg.iterative_merge else None
        if reason is not None:
            self.merge(step)
        assert self.tracker.reward_ema is not None  # observe set it
        return StepStats(
            step + 1, reward_mean, self.tracker.reward_ema, policy, kl, raw_kl, skipped, grad_norm, reason
        )

    def merge(self, step: int) -> None:
        """Restore the peak snapshot (when there is one), fold the adapters in, re-initialise them and
        recreate AdamW."""
        if self.tracker.peak_lora is not None:
            restore_lora(self.model, self.tracker.peak_lora)
        merge_lora(self.model, _lora_seed(self.cfg.seed, step))
        self.optimizer = self._optimizer()
        self.tracker.merged()

    def save(self, path: Path, step: int) -> None:
        save_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            step=step,
            config=self.cfg,
            extra={"tracker": self.tracker.state_dict()},
        )

    def load(self, path: Path) -> int:
        """Resume from a checkpoint of :meth:`save`; returns its step."""
        state = load_checkpoint(path, model=self.model, optimizer=self.optimizer)
        self.tracker.load_state_dict(state["tracker"])
        return int(state["step"])


def step_batch(data: Triplets, step: int, batch_size: int, seed: int) -> TripletBatch:
    """The triplets of ``step``: epochs of a seeded permutation (the authors' shuffled loader with
    ``drop_last``), so a resumed run reads the same rows."""
    n = len(data)
    if n < batch_size:
        raise ValueError(f"the data holds {n} triplets, fewer than the batch size {batch_size}")
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    order = torch.randperm(n, generator=step_generator(seed, epoch, _DATA_STREAM))
    items = [data[int(i)] for i in order[pos * batch_size : (pos + 1) * batch_size]]
    target, content, style = (torch.stack(parts) for parts in zip(*items, strict=True))
    return target, content, style


def load_init(init: str | Path, *, seed: int = 0) -> tuple[StyleVAR, VQVAE, StyleVARPreset, tuple[Any, ...]]:
    """(model, VQ-VAE, preset, training history) to start from
    (:func:`~scalestyle.train.stylevar.init_source`): a StyleVAR model folder (its SFT checkpoint where it
    has one) or a preset (random weights, as :meth:`TransferPipeline.random`)."""
    source = init_source(init)
    if isinstance(source, StyleVARPreset):
        model = StyleVAR(source.transformer)
        model.init_weights(torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[]):
            # PyTorch's default conv init draws from the global RNG: seed it without leaking the change
            torch.manual_seed(seed)
            vqvae = VQVAE(source.vae)
        return model.eval(), vqvae.eval(), source, ()
    files = resolve_stylevar_files(source, _init_variant(source))
    model, vqvae = load_stylevar_models(files)
    return model, vqvae, files.preset, files.history


def init_preset(init: str | Path) -> StyleVARPreset:
    """The preset :func:`load_init` would start from, without loading weights."""
    source = init_source(init)
    if isinstance(source, StyleVARPreset):
        return source
    return resolve_stylevar_files(source, _init_variant(source)).preset


def _init_variant(folder: Path) -> str | None:
    """SFT where a released or downloaded folder has it (GRPO starts from SFT); a native folder's own."""
    if (folder / CONFIG_FILE).is_file():
        return None
    layout = folder / LAYOUT_FILE
    if layout.is_file():
        names = json.loads(layout.read_text()).get("checkpoints", {})
        return "sft" if "sft" in names else "grpo"
    return "sft"


def train_stylevar_grpo(
    out_dir: str | Path,
    work_dir: str | Path,
    cfg: GRPOConfig,
    data: Triplets,
    *,
    init: str | Path,
    reward: Reward,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> Path:
    """Run (or resume from ``work_dir/grpo.ckpt``) GRPO from ``init`` on ``data``; logs one JSON row per
    ``log_every`` steps to ``work_dir/grpo_log.jsonl``; writes the merged model to ``out_dir`` as a
    StyleVAR folder (variant ``grpo``) that :meth:`TransferPipeline.load` reads. Returns ``out_dir``."""
    from tqdm import tqdm

    work = Path(work_dir)
    model, vqvae, preset, history = load_init(init, seed=cfg.seed)
    add_lora(model, cfg)
    dev = torch.device(device)
    model.to(dev)
    vqvae.to(dev)
    trainer = GRPOTrainer(model, vqvae, cfg)
    ckpt, start = work / CHECKPOINT, 0
    if ckpt.is_file():
        start = trainer.load(ckpt)
    log = JsonlLog(work / LOG)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="grpo", disable=not progress)
    for step in bar:
        stats = trainer.step(step, step_batch(data, step, cfg.batch_size, cfg.seed), reward)
        if stats.step % cfg.log_every == 0 or stats.step == cfg.steps:
            log.write(**asdict(stats))
            bar.set_postfix(reward=round(stats.reward, 4), kl=round(stats.raw_kl, 4))
        if stats.step % cfg.ckpt_every == 0 or stats.step == cfg.steps:
            trainer.save(ckpt, stats.step)
    run = {"kind": "grpo", "init": str(init), "steps": cfg.steps, "config": asdict(cfg)}
    return save_grpo_folder(out_dir, model, vqvae, preset, (*history, run))


def save_grpo_folder(
    out_dir: str | Path,
    model: StyleVAR,
    vqvae: VQVAE,
    preset: StyleVARPreset,
    history: tuple[dict[str, Any], ...] = (),
) -> Path:
    """The model with its adapters folded in as a native StyleVAR folder of variant ``grpo``."""
    with torch.device("meta"):
        plain = StyleVAR(model.cfg)
    state = {k: v.detach().cpu() for k, v in plain_state_dict(model).items()}
    plain.load_state_dict(state, strict=True, assign=True)
    return save_stylevar_dir(
        out_dir, preset=preset, model=plain, vqvae=vqvae.cpu(), variant="grpo", history=history
    )
