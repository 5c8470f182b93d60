"""Build the bundled demo text encoder: a small, frozen, randomly initialised T5 encoder and its tokenizer.

Stands in for Flan-T5-XL (loaded upstream by `tools/run_infinity.py::load_tokenizer` and used by
`::encode_prompt`) so that the demo model runs offline from a few megabytes. The directory it writes has the
same layout as a Hugging Face T5 checkpoint (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``), so :class:`scalestyle.models.text_encoder.TextEncoder` loads it through the very
code path used for the real encoder.

The encoder is never trained: a random T5 already gives every word and every caption distinct features,
and the demo transformer learns to read them. The tokenizer is a word-level one over the procedural world's
vocabulary with T5's special ids (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) and an appended ``</s>``, like
T5's, so that lengths count the EOS exactly as upstream's do.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5's sentencepiece vocabulary
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEMO_LAYERS = 2
DEMO_HEADS = 4

# The files a build writes; anything else in ``out_dir`` would be loaded alongside them, so it is refused.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
BUILD_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)


def normalize_word(word: str) -> str:
    """The form the tokenizer's normalizer gives a word (NFKC, then lowercase)."""
    return unicodedata.normalize("NFKC", word).lower().strip()


def demo_vocabulary(vocabulary: Iterable[str]) -> list[str]:
    """Special tokens then the normalised, de-duplicated, sorted words: the id of every token.

    Sorting makes the ids (and so the weights) depend only on the set of words, not on the order in which
    the caller happened to list them.
    """
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for raw in vocabulary:
        if not isinstance(raw, str):
            raise TypeError(f"vocabulary entries must be strings, got {type(raw).__name__}")
        word = normalize_word(raw)
        if not word:
            raise ValueError(f"vocabulary entry {raw!r} is empty after normalisation")
        if word in SPECIAL_TOKENS:
            raise ValueError(f"vocabulary entry {raw!r} is a special token")
        # A word the pre-tokenizer splits (``don't``, ``sci-fi``) could never be looked up whole.
        pieces = [p for p, _ in pre.pre_tokenize_str(word)]
        if pieces != [word]:
            raise ValueError(f"vocabulary entry {raw!r} is not a single token: it splits into {pieces}")
        words.add(word)
    if not words:
        raise ValueError("the vocabulary is empty")
    return [*SPECIAL_TOKENS, *sorted(words)]


def _build_tokenizer(tokens: list[str]) -> Any:
    """A `tokenizers.Tokenizer`: lowercase word-level lookup, punctuation split off, ``</s>`` appended."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Whitespace = split on \w+|[^\w\s]+, so "star, neon" -> ["star", ",", "neon"].
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS_ID)]
    )
    # Registered as special so that they are never split and are skipped when decoding; their ids stay put.
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def demo_t5_config(vocab_size: int, d_model: int = 128) -> Any:
    """A `transformers.T5Config` for the demo encoder: Flan-T5's architecture (gated GELU) at toy size."""
    from transformers import T5Config

    if d_model < DEMO_HEADS or d_model % DEMO_HEADS:
        raise ValueError(f"d_model must be a positive multiple of {DEMO_HEADS}, got {d_model}")
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // DEMO_HEADS,
        d_ff=2 * d_model,
        num_layers=DEMO_LAYERS,
        num_decoder_layers=0,
        num_heads=DEMO_HEADS,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        architectures=["T5EncoderModel"],
    )


def _t5_init_std(name: str, d_model: int, d_kv: int, heads: int, d_ff: int) -> float | None:
    """Std of T5's initialisation (HF `T5PreTrainedModel._init_weights`, factor 1); None = ones (norms)."""
    leaf = name.removesuffix(".weight").rsplit(".", 1)[-1]
    stds = {
        "shared": 1.0,
        "q": (d_model * d_kv) ** -0.5,
        "k": d_model**-0.5,
        "v": d_model**-0.5,
        "o": (heads * d_kv) ** -0.5,
        "relative_attention_bias": d_model**-0.5,
        "wi_0": d_model**-0.5,
        "wi_1": d_model**-0.5,
        "wo": d_ff**-0.5,
    }
    if leaf in stds:
        return stds[leaf]
    if leaf in ("layer_norm", "final_layer_norm"):
        return None
    raise ValueError(f"no initialisation rule for T5 parameter {name!r}")


def demo_t5_weights(config: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights for ``config``, keyed as HF saves a `T5EncoderModel` (tied embedding once).

    Drawn here from a private generator, parameter by parameter in sorted name order, rather than by
    transformers' own initialisation: the weights then depend on the seed alone (not on the transformers
    version's init code), and the caller's global RNG is left untouched.
    """
    from transformers import T5EncoderModel

    with torch.device("meta"):  # names and shapes only: no memory, no RNG use
        shapes = {name: tuple(p.shape) for name, p in T5EncoderModel(config).named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        std = _t5_init_std(name, config.d_model, config.d_kv, config.num_heads, config.d_ff)
        if std is None:
            weights[name] = torch.ones(shapes[name])
        else:
            weights[name] = torch.randn(shapes[name], generator=gen) * std
    return weights


def build_demo_text_encoder(
    vocabulary: Iterable[str], out_dir: Path, *, seed: int = 0, d_model: int = 128, max_length: int = 32
) -> Path:
    """Write a frozen random T5 encoder and its word-level tokenizer over ``vocabulary`` to ``out_dir``.

    Words are NFKC-normalised and lowercased; each must be one token of the pre-tokenizer (no spaces,
    no punctuation inside a word); punctuation marks may be listed as words of their own. Unknown words
    map to ``<unk>`` at encoding time. The same vocabulary (as a set) and seed give byte-identical files.
    Returns ``out_dir``, which `TextEncoder.from_pretrained` loads.
    """
    from safetensors.torch import save_file

    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir():
        stray = sorted(p.name for p in out_dir.iterdir() if p.name not in BUILD_FILES)
        if stray:
            raise FileExistsError(f"{out_dir} holds files a build does not write, remove them first: {stray}")

    tokens = demo_vocabulary(vocabulary)
    config = demo_t5_config(len(tokens), d_model)
    weights = demo_t5_weights(config, seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    config.to_json_file(out_dir / CONFIG_FILE)
    save_file(weights, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    _build_tokenizer(tokens).save(str(out_dir / TOKENIZER_FILE), pretty=True)
    # Written by hand rather than by `save_pretrained`: transformers 5 would name its own class
    # ("TokenizersBackend"), which transformers 4 cannot load; PreTrainedTokenizerFast loads in both.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    config_text = json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n"
    (out_dir / TOKENIZER_CONFIG_FILE).write_text(config_text)
    return out_dir
