"""A stand-in text encoder for random-weight models: deterministic random features per word.

Used only with ``--random-weights``, where no real text encoder is available and the point is timing the
image model; the features have the text encoder's width and one token per word plus EOS, like T5.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from scalestyle.models.text_encoder import PackedText


class RandomTextEncoder:
    def __init__(self, width: int, max_length: int) -> None:
        if width < 1 or max_length < 1:
            raise ValueError(f"width and max_length must be >= 1, got {width}, {max_length}")
        self.width, self.max_length = width, max_length

    def _token(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little") >> 1
        return torch.randn(self.width, generator=torch.Generator().manual_seed(seed)) * 0.2

    def encode(self, prompts: Sequence[str]) -> PackedText:
        rows = []
        for prompt in prompts:
            words = [*prompt.lower().split()[: self.max_length - 1], "</s>"]
            rows.append(torch.stack([self._token(w) for w in words]))
        return PackedText(torch.cat(rows), tuple(len(r) for r in rows))
