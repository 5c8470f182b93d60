"""Embedding similarities: CLIP-T and CLIP-I (CLIP), DINO, and DreamSim.

Images reach the models as 8-bit RGB PIL images through the checkpoint's own image processor (resize,
centre crop, normalisation from its ``preprocessor_config.json``): the same input as when scoring saved PNG
files, which is how published numbers are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from scalestyle.metrics._common import (
    DEFAULT_BATCH_SIZE,
    check_batch_size,
    check_images,
    check_refs,
    chunks,
    dtype_kwarg,
    finish,
    load_pretrained,
    pooled,
    resolve_device,
    to_pil_list,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""CLIP ViT-L/14, the encoder of the evaluation protocol this project follows."""

DEFAULT_DINO = "facebook/dinov2-base"
"""DINOv2 ViT-B/14; ``facebook/dino-vits16`` is the DINO (v1) ViT-S/16 of DreamBooth's DINO score."""


def _cosine_rows(a_BD: torch.Tensor, b_RD: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of unit embeddings; R = 1 broadcasts the single reference."""
    return (a_BD * b_RD).sum(-1)


class _ImageEmbedder:
    """A frozen vision model and its image processor, turning ``img_B3HW`` into unit embeddings."""

    def __init__(
        self,
        model: nn.Module,
        image_processor: Any,
        *,
        device: torch.device | str | None,
        dtype: torch.dtype,
        batch_size: int,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype
        self.batch_size = check_batch_size(batch_size)
        # Any: transformers models are reached through attributes (config, get_image_features) nn.Module lacks
        self.model: Any = model.eval().requires_grad_(False).to(device=self.device, dtype=dtype)
        self.image_processor = image_processor

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _embed_chunk(self, img_b3HW: torch.Tensor) -> torch.Tensor:
        pixels = self.image_processor(images=to_pil_list(img_b3HW), return_tensors="pt")["pixel_values"]
        feats = self._image_features(pixels.to(device=self.device, dtype=self.dtype))
        # cosine in float32 whatever the model dtype: fp16 rounding of the norms would show in the 3rd digit
        return F.normalize(feats.float(), dim=-1)

    def _embed_checked(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            parts = [self._embed_chunk(img_B3HW[rows]) for rows in chunks(len(img_B3HW), self.batch_size)]
            return torch.cat(parts)

    def embed_images(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``(B, D)``, float32 on CPU."""
        return finish(self._embed_checked(check_images(img_B3HW)))

    def _image_similarity(self, img_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> torch.Tensor:
        img_B3HW = check_images(img_B3HW)
        ref_B3HW = check_refs(img_B3HW, ref_B3HW, same_size=False)
        a, b = self._embed_checked(img_B3HW), self._embed_checked(ref_B3HW)
        return finish(_cosine_rows(a, b))


class CLIPScorer(_ImageEmbedder):
    """CLIP-T (image-prompt) and CLIP-I (image-reference) cosine similarities (Radford et al. 2021).

    Scores are plain cosine similarities in [-1, 1]. Papers commonly print them x100 (``100 * cos``;
    e.g. 0.31 -> 31.0); CLIPScore proper (Hessel et al. 2021) is ``2.5 * max(cos, 0)``. Prompts longer
    than the text encoder's position table (77 tokens for OpenAI CLIP) are truncated, as every CLIP
    evaluation must.
    """

    def __init__(
        self,
        model: nn.Module,
        image_processor: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        super().__init__(model, image_processor, device=device, dtype=dtype, batch_size=batch_size)
        self.tokenizer = tokenizer
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_CLIP,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = DEFAULT_BATCH_SIZE,
        local_files_only: bool = False,
    ) -> CLIPScorer:
        """Load a CLIP checkpoint (model, image processor, tokenizer) from a local directory or a hub id.

        ``device=None`` picks CUDA when present. ``dtype=torch.float16`` halves memory and time on CUDA;
        embeddings are normalised and compared in float32 either way.
        """
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        def load(src: Path | str, local: bool) -> tuple[Any, Any, Any]:
            model = CLIPModel.from_pretrained(src, local_files_only=local, **dtype_kwarg(dtype))
            processor = AutoImageProcessor.from_pretrained(src, local_files_only=local)
            tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local)
            return model, processor, tokenizer

        model, processor, tokenizer = load_pretrained(
            load, source, local_files_only=local_files_only, what="CLIP model"
        )
        return cls(model, processor, tokenizer, device=device, dtype=dtype, batch_size=batch_size)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return pooled(self.model.get_image_features(pixel_values=pixels))

    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(N, D)``, float32 on CPU."""
        return finish(self._embed_texts(_check_prompts(prompts)))

    def _embed_texts(self, prompts: list[str]) -> torch.Tensor:
        parts = []
        with torch.inference_mode():
            for rows in chunks(len(prompts), self.batch_size):
                tokens = self.tokenizer(
                    prompts[rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                feats = pooled(
                    self.model.get_text_features(
                        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                    )
                )
                parts.append(F.normalize(feats.float(), dim=-1))
            return torch.cat(parts)

    def clip_t(self, img_B3HW: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP-T: cosine of each image with its prompt, ``(B,)``; one prompt is shared by all images."""
        img_B3HW = check_images(img_B3HW)
        prompts = _check_prompts(prompts)
        if len(prompts) not in (1, len(img_B3HW)):
            raise ValueError(f"need 1 prompt or one per image ({len(img_B3HW)}), got {len(prompts)}")
        a, t = self._embed_checked(img_B3HW), self._embed_texts(prompts)
        return finish(_cosine_rows(a, t))

    def clip_i(self, img_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> torch.Tensor:
        """CLIP-I: cosine of each image with its reference, ``(B,)``; one reference may serve all images."""
        return self._image_similarity(img_B3HW, ref_B3HW)


class DINOScorer(_ImageEmbedder):
    """DINO similarity: cosine of CLS embeddings (Caron et al. 2021; Oquab et al. 2023 for DINOv2).

    The CLS token of the last hidden state, after the backbone's final layer norm, is the embedding (the
    torch.hub DINO models return the same); ViT's extra pooler head is not used: DINO checkpoints never
    trained it.
    """

    def __init__(
        self,
        model: nn.Module,
        image_processor: Any,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        super().__init__(model, image_processor, device=device, dtype=dtype, batch_size=batch_size)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = DEFAULT_DINO,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        batch_size: int = DEFAULT_BATCH_SIZE,
        local_files_only: bool = False,
    ) -> DINOScorer:
        """Load a DINO/DINOv2 checkpoint (``AutoModel`` and its image processor); loading as CLIP's."""
        from transformers import AutoImageProcessor, AutoModel

        def load(src: Path | str, local: bool) -> tuple[Any, Any]:
            model = AutoModel.from_pretrained(src, local_files_only=local, **dtype_kwarg(dtype))
            return model, AutoImageProcessor.from_pretrained(src, local_files_only=local)

        model, processor = load_pretrained(load, source, local_files_only=local_files_only, what="DINO model")
        return cls(model, processor, device=device, dtype=dtype, batch_size=batch_size)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]

    def embed(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLS embeddings ``(B, D)``, float32 on CPU."""
        return self.embed_images(img_B3HW)

    def similarity(self, img_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> torch.Tensor:
        """Cosine of each image's CLS embedding with its reference's, ``(B,)``."""
        return self._image_similarity(img_B3HW, ref_B3HW)


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    # a bare string is a Sequence[str] too, and would be scored character by character
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string; wrap it in a list")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError("every prompt must be a string")
    return prompts


class DreamSim:
    """DreamSim perceptual distance (Fu et al. 2023): 1 - cosine of tuned ViT-ensemble embeddings.

    Lower is more similar; 0 for identical images. Needs the optional ``dreamsim`` package, whose
    weights download on first use. Its preprocessing (resize to 224x224, bicubic) is done here on tensors,
    with antialiasing as PIL does it.
    """

    def __init__(
        self,
        model: Any,
        *,
        device: torch.device | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        image_size: int = 224,
    ) -> None:
        """``model(img_a, img_b) -> (B,)``: distances, on [0, 1] images of ``image_size`` (as DreamSim's)."""
        self.device = resolve_device(device)
        self.batch_size = check_batch_size(batch_size)
        self.image_size = image_size
        if isinstance(model, nn.Module):
            model = model.eval().requires_grad_(False).to(self.device)
        self.model = model

    @classmethod
    def from_pretrained(
        cls,
        dreamsim_type: str = "ensemble",
        *,
        cache_dir: str | Path | None = None,
        device: torch.device | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> DreamSim:
        """DreamSim of ``dreamsim_type`` (``ensemble``, ``dino_vitb16``, ...); weights go to ``cache_dir``
        (default: ``<torch hub dir>/dreamsim``, not DreamSim's own default of ``./models``)."""
        try:
            from dreamsim import dreamsim
        except ImportError as err:
            raise ImportError(
                "DreamSim needs the optional `dreamsim` package (pip install dreamsim)"
            ) from err
        dev = resolve_device(device)
        if cache_dir is None:
            cache_dir = Path(torch.hub.get_dir()) / "dreamsim"
        # only the newer releases take dreamsim_type; the default works with every release
        kwargs = {} if dreamsim_type == "ensemble" else {"dreamsim_type": dreamsim_type}
        model, _ = dreamsim(pretrained=True, device=str(dev), cache_dir=str(cache_dir), **kwargs)
        return cls(model, device=dev, batch_size=batch_size)

    def _resize(self, img: torch.Tensor) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        if img.shape[2:] == size:
            return img
        return F.interpolate(img, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)

    def __call__(self, img_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> torch.Tensor:
        """DreamSim distance of each image to its reference, ``(B,)``; one reference may serve all."""
        img_B3HW = check_images(img_B3HW)
        ref_B3HW = check_refs(img_B3HW, ref_B3HW, same_size=False)
        out = []
        with torch.inference_mode():
            ref = self._resize(ref_B3HW.to(self.device))
            for rows in chunks(len(img_B3HW), self.batch_size):
                a = self._resize(img_B3HW[rows].to(self.device))
                b = ref.expand(len(a), -1, -1, -1) if len(ref) == 1 else ref[rows]
                out.append(self.model(a, b).reshape(len(a)).float())
        return finish(torch.cat(out))
