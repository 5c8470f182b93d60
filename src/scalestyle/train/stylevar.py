"""StyleVAR's training objectives: the SFT cross-entropy and GRPO's Per-Action Normalization Weights.

Follows Senfier-LiqiJing/StyleVAR: `train/sft_trainer.py` (per-token cross-entropy over all L tokens,
each weighted 1/L, averaged over the batch; label smoothing 0 in the released runs) and
`train/train_grpo.py` (PANW: token t of a scale with an h x w grid weighs ``(h w)^-gamma``, normalised so
that one image's weights sum to 1; gamma 0.7), research note wave2_methods.md §1.4 and §1.6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from scalestyle.models.stylevar import StyleVAR, TransferInputs
from scalestyle.models.vqvae import VQVAE
from scalestyle.schedules import Schedule

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
) -> torch.Tensor:
    """The SFT objective of one triplet batch (images in [-1, 1]): teacher-forced logits of the target's
    tokens given its content and style, mean cross-entropy over all L tokens and the batch. The frozen
    VQ-VAE runs without gradients; the ResNet trunks and the transformer get them."""
    schedule = model.schedule
    with torch.no_grad():
        indices = vqvae.encode_indices(target_B3PP, schedule)
        inputs_BLD = vqvae.teacher_inputs(indices, schedule)
        raw = TransferInputs.encode(vqvae, content_B3PP, style_B3PP, schedule)
    target_BL = torch.cat([rearrange(i, "b h w -> b (h w)") for i in indices], dim=1)
    logits_BLV = model(inputs_BLD, model.condition([raw]), schedule)
    L = target_BL.shape[1]
    # upstream: loss.mul(1 / L).sum(dim=-1).mean()
    return token_ce_BL(logits_BLV, target_BL, label_smoothing).mul(1 / L).sum(dim=-1).mean()
