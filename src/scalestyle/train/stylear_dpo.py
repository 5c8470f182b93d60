"""DPO post-training of a StyleAR adapter (`scalestyle train stylear-dpo`; issue 16): preference pairs
sampled with the current adapter and ranked by a reward, the DPO loss on bitwise log-likelihoods.

StyleAR's paper uses DPO to improve prompt adherence; their repository has a ``dpo=True`` forward that
returns logits and labels, and nothing else (no pairs, no beta: ``../shared/research/wave2_methods.md``
§2). Ours is online DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7) with fresh pairs
every step. One step:

1. ``pairs`` (prompt, reference) items are drawn from a :class:`PreferenceSource` with the step's
   generator (:func:`~scalestyle.train.common.step_generator`, so a resumed run draws the same ones); on
   the world, a training content's caption (``"<content> in style"``, as `train stylear` captions) and a
   training style's render of another content.
2. Each item is sampled ``samples`` times with the policy (the adapter as it is now, LoRA in), CFG and
   the sampling settings, one batch through :meth:`Pipeline.run_paths`; the style tokens get the
   settings' noise, drawn once per row and kept for the log-likelihoods below.
3. A :class:`PreferenceReward` scores the images (CLIP-T of the content prompt with CLIP weights; on the
   demo the world's content classifier, the probability of the prompt's content). Per item the best
   sample is *chosen* and the worst *rejected* (:func:`preference_pairs`); an item whose best and worst
   rewards differ by no more than ``min_gap`` gives no pair.
4. Log-likelihoods ``log pi(y)`` of the chosen and rejected token sequences, teacher-forced under the
   block-causal mask: the conditional rows' logits (no CFG, no temperature: the model's own
   distribution), per bit, summed over each scale's tokens and bits (:func:`scale_logps_BS`), then over
   scales (``reduce`` "sum", Rafailov's sequence log-likelihood) or averaged per bit ("mean").
5. The same under the frozen reference (the adapter before DPO: its LoRA weights swapped into the
   transformer, its resampler), without gradients; then :func:`dpo_loss`
   ``-log sigmoid(beta ((pi_w - ref_w) - (pi_l - ref_l)))`` averaged over the pairs, backpropagated into
   the LoRA (and the resampler with ``train_resampler``), clipped, one AdamW step.

At the first step policy and reference are one model: every implicit reward margin is 0 and the loss is
``log 2`` exactly (its gradient pushes the chosen sequence up and the rejected one down with weight
``beta / 2``). A checkpoint holds the policy (resampler and LoRA), the reference (to refuse resuming
another adapter's run), AdamW and the step; the result is saved as an ordinary adapter folder.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import nn
from tqdm import tqdm

from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier, judge_batch
from scalestyle.models.bsq_vae import BSQVAE, bits_to_codes, next_scale_input, upsample_codes
from scalestyle.models.infinity import Infinity
from scalestyle.models.stylear import (
    LORA_ADAPTER_NAME,
    ImageEncoder,
    PathStyle,
    StyleARAdapter,
    StyleARSettings,
    StyleTokenController,
)
from scalestyle.models.text_encoder import PackedText
from scalestyle.pipeline import Pipeline
from scalestyle.sampling import PathPlan, ScaleEvent
from scalestyle.schedules import Schedule
from scalestyle.train.common import JsonlLog, check_range, step_generator
from scalestyle.train.stylear import WORLD_CAPTION_STYLE, world_sources
from scalestyle.train.vae import lr_at

CHECKPOINT = "stylear_dpo.ckpt"
LOG_FILE = "stylear_dpo_log.jsonl"
Reduce = Literal["sum", "mean"]
REDUCES: tuple[str, ...] = ("sum", "mean")
# the rollouts' settings: upstream Infinity's sampling (cfg 3, tau 0.5, top-k 900, top-p 0.97)
DPO_SAMPLING = SamplingConfig()


@dataclass(frozen=True)
class StyleARDPOConfig:
    """DPO settings. ``beta``: the KL strength of DPO (Rafailov's; StyleAR's is not published);
    ``pairs`` items per step, each sampled ``samples`` times; ``min_gap``: an item's best and worst
    rewards must differ by more than this to make a pair; ``reduce``: sequence log-likelihood as the sum
    over scales and bits (DPO's) or the mean per bit; ``train_resampler``: the resampler learns too (else
    the LoRA alone, which the adapter then needs)."""

    steps: int = 200
    pairs: int = 4
    samples: int = 4
    beta: float = 0.1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup: int = 10
    grad_clip: float = 1.0
    min_gap: float = 0.0
    reduce: Reduce = "sum"
    train_resampler: bool = False
    sampling: SamplingConfig = field(default_factory=lambda: DPO_SAMPLING)
    style: StyleARSettings = field(default_factory=StyleARSettings)
    seed: int = 0
    log_every: int = 5
    ckpt_every: int = 25

    def __post_init__(self) -> None:
        check_range(self, ("steps", "log_every", "ckpt_every"), 1, 10**7)
        check_range(self, ("pairs",), 1, 4096)
        check_range(self, ("samples",), 2, 256)
        check_range(self, ("warmup",), 0, 10**7)
        check_range(self, ("seed",), 0, 2**62)
        check_range(self, ("beta",), 0.0, 1e4, "(]")
        check_range(self, ("lr",), 0.0, 1.0, "(]")
        check_range(self, ("weight_decay",), 0.0, 10.0)
        check_range(self, ("grad_clip",), 0.0, 1e6, "(]")
        check_range(self, ("min_gap",), 0.0, 1e6)
        if self.reduce not in REDUCES:
            raise ValueError(f"reduce must be one of {REDUCES}, got {self.reduce!r}")
        if self.sampling.h_div_w != 1.0 or self.sampling.pn is not None:
            raise ValueError("DPO samples at the model's default schedule: sampling h_div_w 1, pn None")


# ---- preference data ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreferenceItem:
    """One (prompt, reference) to sample: ``prompt`` is the caption the model gets, ``content_prompt``
    what the image should show (CLIP-T's text), ``content`` the world's content label (None off-world)."""

    prompt: str
    content_prompt: str
    reference: Image.Image
    content: str | None = None


class PreferenceSource(Protocol):
    def draw(self, n: int, g: torch.Generator) -> list[PreferenceItem]:
        """``n`` items drawn with ``g``."""
        ...


@dataclass(frozen=True)
class WorldPreferences:
    """World items: a content's caption ``"<content> in style"`` and a reference showing another content
    in one of ``styles`` (training styles only: the held-out ones stay unseen), training seeds."""

    styles: tuple[str, ...] = field(default_factory=lambda: world_sources()[0].styles)
    size: int = 64

    def __post_init__(self) -> None:
        held = [s for s in self.styles if s not in world.TRAIN_STYLES]
        if held or not self.styles:
            raise ValueError(
                f"styles must be training styles (held out: {list(world.HELD_OUT_STYLES)}), got {held}"
            )

    def draw(self, n: int, g: torch.Generator) -> list[PreferenceItem]:
        items = []
        seeds = world.SPLIT_SEEDS["train"]
        for _ in range(n):
            content = world.CONTENTS[int(torch.randint(len(world.CONTENTS), (1,), generator=g))]
            others = [c for c in world.CONTENTS if c != content]
            ref_content = others[int(torch.randint(len(others), (1,), generator=g))]
            style = self.styles[int(torch.randint(len(self.styles), (1,), generator=g))]
            seed = seeds.start + int(torch.randint(1 << 30, (1,), generator=g))
            ref = world.render(ref_content, style, seed, self.size).image
            caption = world.content_caption(content)
            items.append(PreferenceItem(f"{caption} in {WORLD_CAPTION_STYLE}", caption, ref, content))
        return items


@dataclass(frozen=True, eq=False)
class FolderPreferences:
    """Prompts (what to draw, without the style) crossed with style images, drawn uniformly; the caption
    is ``"<prompt> in style"``."""

    prompts: tuple[str, ...]
    references: tuple[Image.Image, ...]

    def __post_init__(self) -> None:
        if not self.prompts or not self.references:
            raise ValueError(
                f"need prompts and references, got {len(self.prompts)} and {len(self.references)}"
            )

    def draw(self, n: int, g: torch.Generator) -> list[PreferenceItem]:
        p = torch.randint(len(self.prompts), (n,), generator=g).tolist()
        r = torch.randint(len(self.references), (n,), generator=g).tolist()
        return [
            PreferenceItem(f"{self.prompts[i]} in {WORLD_CAPTION_STYLE}", self.prompts[i], self.references[j])
            for i, j in zip(p, r, strict=True)
        ]


class PreferenceReward(Protocol):
    def __call__(self, images: Sequence[Image.Image], items: Sequence[PreferenceItem]) -> torch.Tensor:
        """Rewards ``(B,)`` (higher is better) of generated images, one item each."""
        ...


class ContentJudgeReward:
    """The world's content classifier's probability of the item's content (prompt adherence)."""

    def __init__(self, classifier: WorldClassifier) -> None:
        self.classifier = classifier

    @classmethod
    def load(cls, model_dir: str | Path) -> ContentJudgeReward:
        path = Path(model_dir) / "content_classifier.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no world content classifier at {path}: give --clip weights instead")
        return cls(WorldClassifier.load(path))

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], items: Sequence[PreferenceItem]) -> torch.Tensor:
        missing = [it.prompt for it in items if it.content not in self.classifier.labels]
        if missing:
            raise ValueError(f"the content judge needs world contents; items without one: {missing[:3]}")
        batch = judge_batch(images)
        param = next(self.classifier.parameters())
        probs = self.classifier(batch.to(param.device, param.dtype)).float().softmax(1).cpu()
        index = torch.tensor([self.classifier.labels.index(str(it.content)) for it in items])
        return probs.gather(1, index[:, None])[:, 0]


class ClipTReward:
    """CLIP-T: the cosine of each image with its item's content prompt (:class:`CLIPScorer`)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], items: Sequence[PreferenceItem]) -> torch.Tensor:
        from scalestyle.metrics import pil_to_batch

        scores = self.scorer.clip_t(pil_to_batch(list(images)), [it.content_prompt for it in items])
        return torch.as_tensor(scores, dtype=torch.float32).reshape(len(images))


@dataclass(frozen=True)
class Pairs:
    """Per item: the chosen and rejected sample's index among its ``samples``, and whether it makes a
    pair (its rewards differ by more than ``min_gap``)."""

    chosen_P: torch.Tensor
    rejected_P: torch.Tensor
    valid_P: torch.Tensor


def preference_pairs(rewards_PK: torch.Tensor, min_gap: float = 0.0) -> Pairs:
    """Chosen = the highest reward of each row of ``rewards_PK`` (item x sample), rejected = the lowest
    (first of equals either way)."""
    if rewards_PK.ndim != 2 or rewards_PK.shape[1] < 2:
        raise ValueError(f"rewards must be (items, samples >= 2), got {tuple(rewards_PK.shape)}")
    r = rewards_PK.float()
    chosen, rejected = r.argmax(1), r.argmin(1)
    gap = r.max(1).values - r.min(1).values
    return Pairs(chosen, rejected, gap > min_gap)


# ---- log-likelihoods and the loss ----------------------------------------------------------------------
def teacher_inputs(bits: Sequence[torch.Tensor], schedule: Schedule, patchify: bool) -> torch.Tensor:
    """The teacher-forcing inputs (B, L - first scale, D) of per-scale bits ``bits_BhwD``: the codes
    summed and resized as the sampling loop and :meth:`BSQVAE.encode_multiscale` do."""
    if len(bits) != schedule.num_scales:
        raise ValueError(f"need bits of all {schedule.num_scales} scales, got {len(bits)}")
    factor = 2 if patchify else 1
    last_h, last_w = schedule.last_grid
    latent_hw = (last_h * factor, last_w * factor)
    inputs, summed = [], None
    for k, bits_BhwD in enumerate(bits[:-1]):
        codes = upsample_codes(bits_to_codes(bits_BhwD, patchify), latent_hw)
        summed = codes if summed is None else summed + codes
        inputs.append(next_scale_input(summed, schedule.grids[k + 1], patchify))
    return torch.cat(inputs, dim=1)


def scale_logps_BS(logits_BLV: torch.Tensor, bits_BLD: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Log-likelihood (B, S) of the bits of each scale: per-bit log-probabilities of the (0, 1) logit
    pairs, summed over the scale's tokens and bits, in fp32."""
    logp = F.log_softmax(rearrange(logits_BLV.float(), "b l (d two) -> b l d two", two=2), dim=-1)
    per_token_BL = logp.gather(-1, bits_BLD.long()[..., None])[..., 0].sum(-1)
    return torch.stack([part.sum(1) for part in per_token_BL.split(schedule.tokens_per_scale, dim=1)], 1)


def sequence_logp_B(
    scale_logps_BS: torch.Tensor, bits_per_token: int, schedule: Schedule, reduce: str
) -> torch.Tensor:
    """The sequence log-likelihood: the sum over scales, or with ``"mean"`` that divided by the bits."""
    total = scale_logps_BS.sum(1)
    if reduce == "mean":
        return total / (schedule.total_tokens * bits_per_token)
    return total


def dpo_loss(
    policy_chosen_B: torch.Tensor,
    policy_rejected_B: torch.Tensor,
    ref_chosen_B: torch.Tensor,
    ref_rejected_B: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss (B,), implicit reward margin (B,)): ``margin = beta ((pi_w - ref_w) - (pi_l - ref_l))``,
    ``loss = -log sigmoid(margin)`` (Rafailov et al. 2023, eq. 7)."""
    margin = beta * ((policy_chosen_B - ref_chosen_B) - (policy_rejected_B - ref_rejected_B))
    return -F.logsigmoid(margin), margin


class SequenceLogp(nn.Module):
    """Teacher-forced per-scale log-likelihoods (B, S) of token sequences under the style tokens of
    ``resampler`` (one module, so DDP sees one forward)."""

    def __init__(
        self, transformer: Infinity, resampler: nn.Module, join: str, schedule: Schedule, scale: float
    ) -> None:
        super().__init__()
        self.transformer, self.resampler = transformer, resampler
        self.join, self.schedule, self.scale = join, schedule, scale

    def forward(
        self,
        inputs_BLD: torch.Tensor,
        bits_BLD: torch.Tensor,
        text: PackedText,
        feats_BNW: torch.Tensor,
        noise_BQE: torch.Tensor,
    ) -> torch.Tensor:
        tokens = self.resampler(feats_BNW) + noise_BQE
        controller = StyleTokenController(
            self.transformer,
            {"gen": PathStyle(tokens)},
            scale=self.scale,
            join=self.join,  # type: ignore[arg-type]
        )
        with self.transformer.control.install(controller):
            logits = self.transformer(inputs_BLD, self.transformer.condition([text]), self.schedule)
        return scale_logps_BS(logits, bits_BLD, self.schedule)


# ---- the run -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rollouts:
    """``rows`` samples: their per-scale bits (B, h, w, D), decoded images, style-token noise (B, Q, E)."""

    bits: tuple[torch.Tensor, ...]
    images: list[Image.Image]
    noise_BQE: torch.Tensor


@torch.no_grad()
def sample_rollouts(
    pipe: Pipeline,
    adapter: StyleARAdapter,
    text: PackedText,
    feats_BNW: torch.Tensor,
    noise_BQE: torch.Tensor,
    sampling: SamplingConfig,
    scale: float,
) -> Rollouts:
    """One image per row with the adapter as it is (its LoRA already in the transformer)."""
    transformer = pipe.transformer
    assert isinstance(transformer, Infinity)
    schedule = pipe.schedule_for()
    bits: list[torch.Tensor] = []

    def on_scale(event: ScaleEvent) -> None:
        bits.append(event.tokens["gen"].detach())

    tokens = adapter.resampler(feats_BNW) + noise_BQE
    with pipe.autocast():
        controller = StyleTokenController(
            transformer, {"gen": PathStyle(tokens)}, scale=scale, join=adapter.cfg.join
        )
    summed = pipe.run_paths([PathPlan("gen", text)], sampling, schedule, controller, on_scale)["gen"]
    return Rollouts(tuple(bits), pipe.decode(summed), noise_BQE)


@contextmanager
def swapped(params: dict[str, nn.Parameter], values: dict[str, torch.Tensor]) -> Iterator[None]:
    """``params`` hold ``values`` inside the block (the reference), their own values again after."""
    own = {k: p.detach().clone() for k, p in params.items()}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(values[k])
    try:
        yield
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(own[k])


def _lora_params(transformer: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in transformer.named_parameters() if ".lora_" in n}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def train_stylear_dpo(
    pipe: Pipeline,
    adapter: StyleARAdapter,
    encoder: ImageEncoder,
    cfg: StyleARDPOConfig,
    source: PreferenceSource,
    reward: PreferenceReward,
    work_dir: Path,
    *,
    progress: bool = True,
) -> StyleARAdapter:
    """DPO of ``adapter`` (its weights are the reference) on ``pipe``'s frozen model, or resume from
    ``work_dir/stylear_dpo.ckpt`` (of the same reference adapter); logs to ``work_dir/stylear_dpo_log.jsonl``.
    Returns a new adapter with the policy's weights (``adapter`` is left as it was)."""
    from scalestyle.train.common import make_accelerator

    transformer = pipe.transformer
    if not isinstance(transformer, Infinity) or pipe.text_encoder is None:
        raise ValueError(f"StyleAR DPO runs on text-to-image Infinity models; {pipe.model_name} is not one")
    if not isinstance(pipe.vae, BSQVAE):
        raise ValueError(f"{pipe.model_name} has no BSQ VAE")
    if not adapter.cfg.lora_rank and not cfg.train_resampler:
        raise ValueError("the adapter has no LoRA (lora_rank 0): DPO needs train_resampler to train anything")
    if adapter.cfg.lora_rank and not adapter.lora:
        raise ValueError("the adapter's LoRA is untrained (no weights): train it with `train stylear` first")
    adapter.check_fits(transformer)
    accelerator = make_accelerator()
    policy = copy.deepcopy(adapter).to(pipe.device)
    ref_resampler = copy.deepcopy(adapter.resampler).to(pipe.device).eval().requires_grad_(False)
    ckpt, start = work_dir / CHECKPOINT, 0
    state: dict[str, Any] | None = None
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if not _same(state["ref_resampler"], adapter.resampler.state_dict()) or not _same(
            state["ref_lora"], adapter.lora
        ):
            raise ValueError(f"{ckpt} is a DPO run of another adapter: use another --work-dir")
        policy.resampler.load_state_dict(state["resampler"])
        start = int(state["step"])
    transformer.requires_grad_(False)
    policy.eval().requires_grad_(False)
    policy.resampler.requires_grad_(cfg.train_resampler)
    schedule = pipe.schedule_for()
    patchify = pipe.vae.cfg.spatial_patchify
    log = JsonlLog(work_dir / LOG_FILE)
    rank = accelerator.process_index
    with policy.lora_applied(transformer, seed=cfg.seed):
        lora = _lora_params(transformer)
        # the transformer holds the reference's LoRA now; a resumed run's policy goes in after the copy
        ref_lora = {k: p.detach().clone() for k, p in lora.items()}
        if state is not None and state["lora"]:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(transformer, state["lora"], adapter_name=LORA_ADAPTER_NAME)
        for p in lora.values():
            p.requires_grad_(True)
        params = [*lora.values(), *(policy.resampler.parameters() if cfg.train_resampler else [])]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
        join = policy.cfg.join
        objective = SequenceLogp(transformer, policy.resampler, join, schedule, cfg.style.scale)
        reference = SequenceLogp(transformer, ref_resampler, join, schedule, cfg.style.scale)
        objective, optimizer = accelerator.prepare(objective, optimizer)
        bar = tqdm(
            range(start, cfg.steps), initial=start, total=cfg.steps, desc="stylear-dpo", disable=not progress
        )
        for step in bar:
            g = step_generator(cfg.seed, step, stream=rank)
            items = source.draw(cfg.pairs, g)
            K = cfg.samples
            with torch.no_grad():
                feats = encoder([it.reference for it in items]).to(pipe.device)
            feats_BNW = feats.repeat_interleave(K, dim=0)
            q, e = policy.cfg.num_queries, policy.cfg.text_width
            noise = torch.randn(len(items) * K, q, e, generator=g) * cfg.style.noise_strength
            noise_BQE = noise.to(pipe.device)
            captions = [it.prompt for it in items for _ in range(K)]
            text = pipe.encode_text(captions)
            seed = int(torch.randint(1 << 62, (1,), generator=g))
            rollouts = sample_rollouts(
                pipe, policy, text, feats_BNW, noise_BQE, replace(cfg.sampling, seed=seed), cfg.style.scale
            )
            rewards_PK = (
                reward(rollouts.images, [it for it in items for _ in range(K)]).float().reshape(-1, K)
            )
            pairs = preference_pairs(rewards_PK, cfg.min_gap)
            P = len(items)
            rows = torch.cat((torch.arange(P) * K + pairs.chosen_P, torch.arange(P) * K + pairs.rejected_P))
            rows_dev = rows.to(pipe.device)
            bits = [b[rows_dev] for b in rollouts.bits]
            inputs_BLD = teacher_inputs(bits, schedule, patchify)
            bits_BLD = torch.cat([rearrange(b, "b h w d -> b (h w) d") for b in bits], dim=1)
            text_pair = text.rows(rows.tolist())
            feats_pair, noise_pair = feats_BNW[rows_dev], noise_BQE[rows_dev]
            d = bits_BLD.shape[-1]
            with torch.no_grad(), swapped(lora, ref_lora):
                ref_S = reference(inputs_BLD, bits_BLD, text_pair, feats_pair, noise_pair)
            pol_S = objective(inputs_BLD, bits_BLD, text_pair, feats_pair, noise_pair)
            pol_B = sequence_logp_B(pol_S, d, schedule, cfg.reduce)
            ref_B = sequence_logp_B(ref_S, d, schedule, cfg.reduce)
            loss_P, margin_P = dpo_loss(pol_B[:P], pol_B[P:], ref_B[:P], ref_B[P:], cfg.beta)
            valid = pairs.valid_P.to(loss_P.device).float()
            # an item with no preference contributes nothing (a zero loss keeps DDP's graph whole)
            loss = (loss_P * valid).sum() / valid.sum().clamp(min=1)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            logs = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
            if logs and accelerator.is_main_process:
                n = max(int(valid.sum()), 1)
                m = margin_P.detach().float()
                row = {
                    "loss": round(float(loss.detach()), 5),
                    "margin": round(float((m * valid).sum() / n), 5),
                    "margin_acc": round(float(((m > 0).float() * valid).sum() / n), 5),
                    "pairs": int(valid.sum()),
                    "reward_chosen": round(float(rewards_PK.max(1).values.mean()), 5),
                    "reward_rejected": round(float(rewards_PK.min(1).values.mean()), 5),
                    "reward_mean": round(float(rewards_PK.mean()), 5),
                }
                log.write(step=step + 1, **row)
                bar.set_postfix(loss=row["loss"], reward=row["reward_mean"])
            if accelerator.is_main_process and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
                _save(ckpt, transformer, policy, adapter, optimizer, step + 1, cfg)
    return policy.eval().requires_grad_(False)


def _save(
    path: Path,
    transformer: Infinity,
    policy: StyleARAdapter,
    reference: StyleARAdapter,
    optimizer: torch.optim.Optimizer,
    step: int,
    cfg: StyleARDPOConfig,
) -> None:
    """Atomically (temp file + rename), the policy's LoRA in the adapter's own (peft) key format."""
    lora: dict[str, torch.Tensor] = {}
    if policy.cfg.lora_rank:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(transformer, adapter_name=LORA_ADAPTER_NAME)
        lora = {k: v.detach().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(
        {
            "resampler": policy.resampler.state_dict(),
            "lora": lora,
            "ref_resampler": reference.resampler.state_dict(),
            "ref_lora": reference.lora,
            "optimizer": optimizer.state_dict(),
            "step": step,
            "config": asdict(cfg),
        },
        tmp,
    )
    os.replace(tmp, path)
