"""Text conditioning: the T5 encoder and packed caption features for the Infinity transformer.

Loading follows upstream `tools/run_infinity.py::load_tokenizer` (``AutoTokenizer.from_pretrained(dir,
legacy=True)`` and ``T5EncoderModel.from_pretrained``), encoding `tools/run_infinity.py::encode_prompt`
(truncation at ``max_length``, the EOS appended by the tokenizer and counted, ``last_hidden_state.float()``).
Packing keeps only each caption's real tokens (EOS included), concatenated along one axis with their
lengths; the transformer never sees padding.

Upstream pads every caption to ``max_length`` (512) and runs T5 with fp16 weights (under bf16 autocast on
CUDA in `run_infinity.py`'s ``__main__``); the official presets do exactly that
(:class:`scalestyle.config.TextEncoderConfig` ``padding="max_length", dtype="float16"``, on CPU too, where
upstream's CUDA autocast is a no-op), which reproduces upstream's features bit for bit. The demo and
user-trained folders default to padding a batch to its longest caption, in fp32: T5 masks padded keys out
of every attention and has no absolute positions, so the features of real tokens do not depend on the
amount of padding, up to float rounding of the reductions (about 1e-6 relative in fp32, 1e-3 in fp16; see
tests/test_text_encoder.py). For Flan-T5-XL and a 30-token prompt that is ~17x less work, but the rounding
is enough to flip a sampled bit now and then, so it is not used where upstream is to be reproduced.

Words a tokenizer cannot represent (``<unk>``) and captions cut at ``max_length`` are reported with a
:class:`CaptionWarning` naming the words lost and the tokens kept.

Added tokens (:meth:`TextEncoder.with_tokens`): a subject adapter's identifier that the vocabulary cannot
spell (on the demo's word-level vocabulary every unknown word is the one ``<unk>``, so ``<sks>`` and
``<zwx>`` would be the same tokens) becomes a token of its own with its own input embedding, as
DreamBooth's and textual inversion's new tokens do. The encoder's weights are not touched: the added rows
are looked up beside the embedding table and fed as ``inputs_embeds``, which T5 embeds no differently.

transformers is imported inside functions: importing it costs ~0.7 s, which commands that never encode
text should not pay.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, T5EncoderModel

from scalestyle.config import TextEncoderConfig

Padding = Literal["longest", "max_length"]

# "bundled:<name>" sources: directories shipped inside the package (built by `models/demo_text.py`).
BUNDLED_ENCODERS = {"demo-t5": "demo_t5"}
BUNDLED_PREFIX = "bundled:"

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
# owner/name or name, as the hub spells repository ids; anything else is read as a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


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
            raise ValueError(
                f"sum(lens) = {sum(self.lens)} != number of packed tokens {self.feats_NE.shape[0]}"
            )

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


def bundled_encoder_dir(name: str) -> Path:
    """The package directory of a bundled encoder (``bundled:demo-t5`` -> ``scalestyle/assets/demo_t5``)."""
    if name not in BUNDLED_ENCODERS:
        raise ValueError(f"unknown bundled text encoder {name!r}; choose one of {sorted(BUNDLED_ENCODERS)}")
    # The package is installed as plain files (editable or wheel), so the traversable is a real directory.
    path = Path(str(resources.files("scalestyle") / "assets" / BUNDLED_ENCODERS[name]))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"bundled text encoder {name!r} is not built: {path} has no config.json "
            "(build it with scalestyle.models.demo_text.build_demo_text_encoder)"
        )
    return path


def resolve_text_source(source: str | Path) -> Path | str:
    """A local directory for paths and ``bundled:<name>``, or the string itself for a hub id.

    A string is a hub id when no such local path exists and it is spelled like one (``name`` or
    ``owner/name``), as `from_pretrained` itself decides.
    """
    if isinstance(source, Path):
        return source
    if source.startswith(BUNDLED_PREFIX):
        return bundled_encoder_dir(source.removeprefix(BUNDLED_PREFIX))
    path = Path(source).expanduser()
    if path.exists() or not _HUB_ID.fullmatch(source):
        return path
    return source


def check_t5_dir(path: Path) -> None:
    """Raise a one-line error unless ``path`` looks like a saved T5 encoder with its tokenizer.

    Checked before transformers is asked, whose errors for these cases are long and about the hub.
    """
    if not path.exists():
        raise FileNotFoundError(f"text encoder directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"text encoder source {path} is not a directory")
    not_t5 = f"{path} is not a T5 encoder directory"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{not_t5}: it has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{not_t5}: config.json is not a JSON object ({err})") from None
    if model_type != "t5":
        raise ValueError(f"{not_t5}: config.json has model_type {model_type!r}, not 't5'")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise ValueError(f"{not_t5}: no weights ({', '.join(_WEIGHT_FILES)})")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(f"{not_t5}: no tokenizer ({', '.join(_TOKENIZER_FILES)})")


@contextmanager
def _no_transformers_progress_bar() -> Iterator[None]:
    """Silence transformers 5's "Loading weights" bar (stderr, every load) for the duration.

    Used for local directories only: for hub ids the same switch would also hide the download bars of
    huggingface_hub, which are worth seeing for a 10 GB checkpoint.
    """
    import warnings

    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            with warnings.catch_warnings():  # huggingface_hub warns when HF_HUB_DISABLE_PROGRESS_BARS wins
                warnings.simplefilter("ignore")
                hf_logging.enable_progress_bar()


def _load_tokenizer(source: Path | str, local_files_only: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        # legacy=True as upstream; it only changes how T5's sentencepiece treats text after special tokens.
        return AutoTokenizer.from_pretrained(source, legacy=True, local_files_only=local_files_only)
    except TypeError as err:
        if "legacy" not in str(err):
            raise
        # A tokenizer class whose __init__ takes no `legacy` (none in transformers 4.46-5.x; kept for safety).
        return AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """``dtype=`` from transformers 4.56 on (PR #39782 deprecated ``torch_dtype=``), else ``torch_dtype=``.

    Older versions would take ``dtype=`` as an unknown config attribute and silently load in fp32.
    """
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


class CaptionWarning(UserWarning):
    """Part of a caption does not reach the encoder: unknown words, or tokens past ``max_length``."""


class TextEncoder:
    """A frozen T5 encoder and its tokenizer, turning captions into :class:`PackedText`.

    ``cuda_autocast``: on a CUDA device, encode under bf16 autocast, as upstream's `run_infinity.py` does
    (its fp16 T5 then runs its matmuls in bf16)."""

    def __init__(
        self,
        model: T5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int = 512,
        padding: Padding = "longest",
        cuda_autocast: bool = False,
        added_NE: torch.Tensor | None = None,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        n_added = 0 if added_NE is None else added_NE.shape[0]
        if len(tokenizer) - n_added > model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer) - n_added} tokens but the encoder embeds only "
                f"{model.config.vocab_size}"
            )
        if added_NE is not None and (added_NE.ndim != 2 or added_NE.shape[1] != model.config.d_model):
            raise ValueError(
                f"added token embeddings must be (N, {model.config.d_model}), got {tuple(added_NE.shape)}"
            )
        # Every caption must keep >= 1 token (PackedText needs it); T5's tokenizer guarantees it with EOS.
        if not tokenizer("")["input_ids"]:
            raise ValueError("the tokenizer appends no EOS: an empty caption would have no tokens")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding: Padding = padding
        self.cuda_autocast = cuda_autocast
        # the last N token ids of the tokenizer are the added tokens, embedded by these rows
        self.added_NE = added_NE

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        local_files_only: bool = False,
        max_length: int | None = None,
        padding: Padding = "longest",
    ) -> TextEncoder:
        """Load from a local directory, ``bundled:<name>``, or a hub id (e.g. ``google/flan-t5-xl``).

        Local directories never touch the network. ``dtype`` is explicit because transformers 5 otherwise
        loads in the checkpoint's dtype (upstream: fp16 on CUDA; fp16 T5 on CPU is slow and can overflow).
        ``max_length`` defaults to the tokenizer's ``model_max_length`` (512 for Flan-T5).
        """
        from transformers import T5EncoderModel

        resolved = resolve_text_source(source)
        if isinstance(resolved, Path):
            check_t5_dir(resolved)
            with _no_transformers_progress_bar():
                tokenizer = _load_tokenizer(resolved, local_files_only=True)
                try:
                    model = T5EncoderModel.from_pretrained(
                        resolved, local_files_only=True, **_dtype_kwarg(dtype)
                    )
                except Exception as err:  # transformers' and torch's errors are many lines
                    from scalestyle.weights import pickle_refusal

                    found = [resolved / f for f in _WEIGHT_FILES if (resolved / f).is_file()]
                    refused = pickle_refusal(found[0] if found else resolved, err)
                    if refused is not None:
                        raise refused from None
                    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    raise ValueError(f"{resolved}: cannot load the T5 encoder ({first[:200]})") from None
        else:
            try:
                tokenizer = _load_tokenizer(resolved, local_files_only=local_files_only)
                model = T5EncoderModel.from_pretrained(
                    resolved, local_files_only=local_files_only, **_dtype_kwarg(dtype)
                )
            except OSError as err:
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise FileNotFoundError(
                    f"text encoder {resolved!r} is neither a local directory nor loadable from the hub "
                    f"(cache or download): {first_line}"
                ) from err
        if max_length is None:
            # Tokenizers without a limit report a huge sentinel (int(1e30)); T5 encoders were trained at 512.
            max_length = tokenizer.model_max_length if tokenizer.model_max_length <= 4096 else 512
        # transformers types `PreTrainedModel.to` through a decorator that mypy misreads.
        model = model.to(device)  # type: ignore[arg-type]
        return cls(model, tokenizer, max_length=max_length, padding=padding)

    @classmethod
    def from_config(
        cls,
        cfg: TextEncoderConfig,
        *,
        source: str | Path | None = None,
        device: torch.device | str = "cpu",
        local_files_only: bool = False,
    ) -> TextEncoder:
        """The encoder a preset describes: its ``max_length``, ``padding`` and ``dtype`` (fp16 also runs
        under bf16 autocast on CUDA, upstream's path), loaded from ``source`` (default: ``cfg.source``;
        a model folder passes its resolved text encoder directory)."""
        encoder = cls.from_pretrained(
            cfg.source if source is None else source,
            device=device,
            dtype=torch.float16 if cfg.dtype == "float16" else torch.float32,
            local_files_only=local_files_only,
            max_length=cfg.max_length,
            padding="max_length" if cfg.padding == "max_length" else "longest",
        )
        encoder.cuda_autocast = cfg.dtype == "float16"
        return encoder

    @property
    def width(self) -> int:
        """E: the encoder's d_model (2048 for Flan-T5-XL, 128 for the demo encoder)."""
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def spells(self, word: str) -> bool:
        """Whether the tokenizer represents ``word`` without ``<unk>``."""
        unk = self.tokenizer.unk_token_id
        return unk is None or unk not in self.tokenizer(word)["input_ids"]

    def new_token_embedding(self, token: str) -> torch.Tensor:
        """A starting embedding (E,) for an added ``token``: drawn from a normal with the embedding
        table's per-channel mean and standard deviation, seeded by the token's text, so that different
        identifiers get different vectors and the same one the same vector everywhere."""
        table = self.model.get_input_embeddings().weight.detach().float()[: len(self.tokenizer)]
        seed = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "little") >> 1
        noise = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(seed))
        return (table.mean(0) + table.std(0) * noise.to(table.device)).cpu()

    def with_tokens(self, tokens: Mapping[str, torch.Tensor]) -> TextEncoder:
        """A copy that also knows ``tokens`` (word -> input embedding (E,)) as tokens of their own; this
        encoder is left as it was (its model is shared, its tokenizer copied)."""
        if not tokens:
            return self
        vocab = self.tokenizer.get_vocab()
        clash = [t for t in tokens if t in vocab or t.lower() in vocab]
        if clash:
            raise ValueError(f"cannot add {clash}: the tokenizer already has them")
        bad = [t for t in tokens if not t.strip() or any(c.isspace() for c in t)]
        if bad:
            raise ValueError(f"an added token must be one word without spaces, got {bad}")
        tokenizer = copy.deepcopy(self.tokenizer)
        if tokenizer.add_tokens(list(tokens)) != len(tokens):
            raise ValueError(f"the tokenizer would not add all of {list(tokens)}")
        rows = [v.detach().float().reshape(-1) for v in tokens.values()]
        added = torch.stack(rows).to(self.device)
        if self.added_NE is not None:
            added = torch.cat([self.added_NE, added])
        return TextEncoder(
            self.model,
            tokenizer,
            max_length=self.max_length,
            padding=self.padding,
            cuda_autocast=self.cuda_autocast,
            added_NE=added,
        )

    def _embed(self, ids_BT: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, T, E) of token ids, the added tokens' from :attr:`added_NE`."""
        assert self.added_NE is not None
        table = self.model.get_input_embeddings().weight
        first = len(self.tokenizer) - self.added_NE.shape[0]
        emb_BTE = torch.nn.functional.embedding(ids_BT.clamp(max=first - 1), table)
        new_BT = ids_BT >= first
        added_BTE = self.added_NE.to(table.dtype)[(ids_BT - first).clamp(min=0)]
        return torch.where(new_BT.unsqueeze(-1), added_BTE, emb_BTE)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids_BT, attention_mask_BT)`` on the encoder's device, EOS appended, truncated."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not a single string")
        self._warn_lost(prompts)
        tokens = self.tokenizer(
            list(prompts),
            max_length=self.max_length,
            padding=self.padding,
            truncation=True,
            return_tensors="pt",
        )
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)

    def _warn_lost(self, prompts: Sequence[str]) -> None:
        """A :class:`CaptionWarning` per caption that loses words: unknown to the vocabulary, or cut."""
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        # verbose=False: transformers' own multi-line notice about long inputs is replaced by ours
        full = self.tokenizer(list(prompts), truncation=False, return_offsets_mapping=fast, verbose=False)
        unk = self.tokenizer.unk_token_id
        for i, prompt in enumerate(prompts):
            ids = full["input_ids"][i]
            lost = []
            if unk is not None and unk in ids:
                if fast:
                    spans = [full["offset_mapping"][i][j] for j, t in enumerate(ids) if t == unk]
                    words = [prompt[a:b] for a, b in spans]
                else:
                    words = ["?"] * ids.count(unk)
                lost.append(f"unknown to the vocabulary (read as {self.tokenizer.unk_token}): {words}")
            if len(ids) > self.max_length:
                # truncation keeps the first max_length - 1 tokens and the EOS
                cut = self.tokenizer.decode(ids[self.max_length - 1 : -1], skip_special_tokens=True)
                lost.append(f"cut at {self.max_length} of its {len(ids)} tokens, dropping {cut[:80]!r}")
            if lost:
                kept = min(len(ids), self.max_length)
                warnings.warn(
                    f"caption {prompt[:60]!r}: {'; '.join(lost)}; the encoder reads {kept} tokens",
                    CaptionWarning,
                    stacklevel=4,
                )

    def encode(self, prompts: Sequence[str], batch_size: int = 32) -> PackedText:
        """Packed fp32 features of every caption's real tokens (EOS included), in ``batch_size`` chunks.

        An empty caption is one token, the EOS; callers that want to forbid it do so themselves.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not a single string")
        if not prompts:
            raise ValueError("no prompts to encode")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        parts = []
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.cuda_autocast and self.device.type == "cuda"
            else nullcontext()
        )
        for start in range(0, len(prompts), batch_size):
            ids_BT, mask_BT = self.tokenize(prompts[start : start + batch_size])
            with torch.inference_mode(), autocast:
                if self.added_NE is None:
                    feats_BTE = self.model(input_ids=ids_BT, attention_mask=mask_BT).last_hidden_state
                else:
                    embeds = self._embed(ids_BT)
                    feats_BTE = self.model(inputs_embeds=embeds, attention_mask=mask_BT).last_hidden_state
            # Packed outside inference mode, so the result is an ordinary tensor: inference tensors cannot
            # be saved for backward, and training feeds these features to layers that need their gradients.
            parts.append(pack_padded(feats_BTE.float(), mask_BT))
        return parts[0] if len(parts) == 1 else PackedText.concat(parts)
