"""Text conditioning: packed caption features for the Infinity transformer.

Packing follows upstream `tools/run_infinity.py::encode_prompt`: captions are encoded padded to
``max_length``, and only each caption's real tokens (EOS included) are kept, concatenated along one axis
with their lengths; the transformer never sees padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedText:
    """Real-token features of a batch of captions, concatenated: row b owns ``lens[b]`` tokens."""

    feats_NE: torch.Tensor
    lens: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.feats_NE.ndim != 2:
            raise ValueError(f"feats_NE must be 2-D (N, E), got shape {tuple(self.feats_NE.shape)}")
        if any(n < 1 for n in self.lens):
            raise ValueError(f"every caption needs at least one token, got lens {self.lens}")
        if sum(self.lens) != self.feats_NE.shape[0]:
            raise ValueError(f"sum(lens) = {sum(self.lens)} != number of packed tokens {self.feats_NE.shape[0]}")

    @property
    def batch(self) -> int:
        return len(self.lens)

    def cu_seqlens(self) -> torch.Tensor:
        """int32 prefix sums with a leading 0, shape (B+1,)."""
        lens = torch.tensor((0, *self.lens), dtype=torch.int32, device=self.feats_NE.device)
        return lens.cumsum(0, dtype=torch.int32)

    def rows(self, index: Sequence[int]) -> PackedText:
        """The captions at ``index``, in that order (rows may repeat)."""
        starts = self.cu_seqlens().tolist()
        parts = [self.feats_NE[starts[i] : starts[i + 1]] for i in index]
        return PackedText(torch.cat(parts), tuple(self.lens[i] for i in index))

    @staticmethod
    def concat(items: Sequence[PackedText]) -> PackedText:
        return PackedText(torch.cat([t.feats_NE for t in items]), tuple(n for t in items for n in t.lens))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PackedText:
        return PackedText(self.feats_NE.to(device=device, dtype=dtype), self.lens)


def pack_padded(feats_BTE: torch.Tensor, mask_BT: torch.Tensor) -> PackedText:
    """Keep each row's real tokens (mask row sum, counted from the start) and concatenate them."""
    if feats_BTE.shape[:2] != mask_BT.shape:
        raise ValueError(f"features {tuple(feats_BTE.shape)} and mask {tuple(mask_BT.shape)} disagree")
    lens = tuple(int(n) for n in mask_BT.sum(1).tolist())
    feats = torch.cat([feats_BTE[b, :n] for b, n in enumerate(lens)])
    return PackedText(feats.float(), lens)
