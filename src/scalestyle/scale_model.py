"""The seam between the next-scale loop (:mod:`scalestyle.sampling`) and a backbone.

Both families follow the same loop (Infinity `autoregressive_infer_cfg`, VAR `autoregressive_infer_cfg`):
compute the condition once, feed the start token, then per scale run the blocks over the cached history,
mix conditional and unconditional logits, draw tokens, add their codes to the running latent and resize
that latent into the next scale's input. What differs is split in two:

- :class:`ScaleModel`, the transformer: conditions (captions for Infinity, class labels for VAR) are
  opaque to the loop, which only concatenates them in batch-layout order and selects rows of the
  computed condition; the guidance rule (Infinity's constant CFG with temperature, VAR's linear ramp)
  belongs to the model too.
- :class:`TokenCodec`, the tokenizer side: how tokens are drawn from logits (bits for BSQ, codebook
  indices for VAR's VQ-VAE), what codes they add to the latent, and the next scale's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from scalestyle.attention import BatchLayout, ControlSlot, KVCache
from scalestyle.config import SamplingConfig
from scalestyle.schedules import Schedule


class Condition(Protocol):
    """A condition computed for every row of a batch (opaque to the loop but for row selection)."""

    def rows(self, index: torch.Tensor) -> Any: ...


class ScaleModel(Protocol):
    """A next-scale transformer as the loop drives it. ``raw`` conditions are per-path inputs (a
    :class:`~scalestyle.models.text_encoder.PackedText`, class labels); their ``batch`` is the row count."""

    control: ControlSlot

    @property
    def device(self) -> torch.device: ...

    def null_condition(self, raw: Any) -> Any:
        """The CFG rows' condition for ``raw`` when a path gives none (the learned empty caption, the
        null class)."""
        ...

    def condition(self, raws: Sequence[Any]) -> Condition:
        """Concatenate raw conditions (in batch-row order) and compute what the blocks and head need."""
        ...

    def uses_uncond(self, sampling: SamplingConfig) -> bool:
        """Whether these settings need unconditional rows at all."""
        ...

    def positions(self, schedule: Schedule, device: torch.device) -> Any:
        """The per-schedule position table that :meth:`forward_scale` slices (RoPE, learned positions)."""
        ...

    def new_cache(self) -> KVCache: ...

    def start_tokens(self, cond: Any) -> torch.Tensor:
        """Scale 0's input ``x_B1C``."""
        ...

    def embed(self, inputs_BLD: torch.Tensor) -> torch.Tensor:
        """The next scale's input tokens from the codec's ``inputs_BLD``."""
        ...

    def forward_scale(
        self,
        x_BLC: torch.Tensor,
        cond: Any,
        *,
        scale: int,
        schedule: Schedule,
        positions: Any,
        cache: KVCache,
        layout: BatchLayout,
    ) -> torch.Tensor:
        """Hidden states of one scale's tokens, attending to the cached earlier scales."""
        ...

    def logits(self, hidden_BLC: torch.Tensor, cond: Any) -> torch.Tensor: ...

    def guide(
        self,
        logits_cond_BLV: torch.Tensor,
        logits_uncond_BLV: torch.Tensor | None,
        *,
        scale: int,
        schedule: Schedule,
        sampling: SamplingConfig,
    ) -> torch.Tensor:
        """The logits to sample from: CFG mixing (None: no unconditional rows) and any temperature."""
        ...


@dataclass(frozen=True)
class Draw:
    """Tokens of one scale for one path, as a grid (``bits_BhwD`` or ``idx_Bhw``). ``codes_BdhW`` replaces
    the tokens' own codes when set (VAR's Gumbel smoothing adds soft codes while the tokens stay hard)."""

    tokens: torch.Tensor
    codes: torch.Tensor | None = None


class TokenCodec(Protocol):
    """Tokens <-> latent codes of one tokenizer, for the loop and for teacher forcing alike."""

    def token_shape(self, rows: int, hw: tuple[int, int]) -> tuple[int, ...]:
        """The shape of one scale's token grid for ``rows`` rows."""
        ...

    def sample(
        self,
        logits_BLV: torch.Tensor,
        hw: tuple[int, int],
        *,
        scale: int,
        schedule: Schedule,
        sampling: SamplingConfig,
        generator: torch.Generator,
    ) -> Draw:
        """Draw one scale's tokens (one multinomial call on ``generator``) from guided logits."""
        ...

    def accumulate(
        self, summed: torch.Tensor | None, draw: Draw, *, scale: int, schedule: Schedule
    ) -> torch.Tensor:
        """The running latent with this scale's codes added (``summed`` None at scale 0)."""
        ...

    def next_input(self, summed: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The transformer input ``inputs_BLD`` of the next scale, of grid ``hw``."""
        ...
