"""Subject adapters (proxy-tuning, arXiv 2503.10125; issue 18): a peft LoRA on the Infinity transformer
that teaches it one subject, named in prompts by an identifier and a class word ("a <sks> star").

What the paper says (``../shared/research/wave2_methods.md`` §3, from its abstract and secondary notes):
a DreamBooth-tuned diffusion teacher makes "proxy" images of the subject for many prompts, and the AR
student is tuned on them. Whether the student is tuned with LoRA or in full is not found; ours is LoRA
(peft), on the same block modules as StyleAR's (:data:`scalestyle.models.stylear.LORA_TARGETS`: the
modules the blocks call as modules), so that an adapter is a few hundred KB and adapters combine.

An adapter's weights live outside the transformer (:attr:`SubjectAdapter.lora`, a peft state dict) and
enter it only inside a context manager, which gives the transformer back as it was:

- :func:`lora_applied`: peft's LoRA layers, unmerged (training, and several adapters summed by peft);
- :func:`merged`: each adapter's ``scale * B @ A`` added to the weights in float32; on exit the saved
  weights are copied back, so the model afterwards is the base model to the bit. Merged and unmerged
  agree up to float rounding (tests/test_subject.py). Merging is what lets a subject adapter sit under
  another method's own LoRA (StyleAR's :meth:`~scalestyle.models.stylear.StyleARAdapter.lora_applied`)
  and under the training-free method's attention edits, which see an ordinary transformer.

An identifier the text encoder's vocabulary cannot spell (``add_token``; on the demo's word-level
vocabulary ``<sks>`` and ``<zwx>`` are both the one ``<unk>``, and two adapters bound to one identifier
measurably drown each other, docs/proxy_tuning.md) is added to the encoder as a token of its own, its
input embedding saved with the adapter (:meth:`scalestyle.models.text_encoder.TextEncoder.with_tokens`).
:func:`subjects_applied` installs both halves on a pipeline and takes both back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from scalestyle.models.stylear import LORA_TARGETS, TEXT_LORA_TARGETS, block_lora_config

if TYPE_CHECKING:
    from scalestyle.models.infinity import Infinity
    from scalestyle.pipeline import Pipeline

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "adapter.safetensors"
TOKEN_FILE = "identifier.safetensors"
TOKEN_KEY = "embedding"
SECTION = "subject"
# the caption memory's projection too: the only place a LoRA can change what the identifier's tokens say
# to the blocks (:data:`~scalestyle.models.stylear.TEXT_LORA_TARGETS`); docs/proxy_tuning.md measures it
DEFAULT_TARGETS: tuple[str, ...] = LORA_TARGETS + TEXT_LORA_TARGETS
SUBJECT_PLACEHOLDER = "{subject}"
"""In a training caption, stands for ``"<token> <class word>"`` (the teacher writes its captions so)."""


@dataclass(frozen=True)
class SubjectConfig:
    """What a subject adapter is (saved in its ``config.json``): the words that name the subject and the
    LoRA's shape. ``lora_alpha`` None is ``lora_rank`` (scale 1). ``add_token``: the identifiers are tokens
    added to the text encoder, their embeddings saved with the adapter (see the module docstring).
    ``others``: further ``(token, class word)`` subjects trained into the same LoRA together with the
    first (one LoRA that knows several subjects, where separately trained LoRAs summed interfere)."""

    token: str
    class_word: str
    text_width: int
    lora_rank: int = 8
    lora_alpha: int | None = None
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    add_token: bool = False
    others: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for token, class_word in self.subjects:
            if not token.strip() or token != token.strip():
                raise ValueError(f"token must be non-empty text without surrounding spaces, got {token!r}")
            if self.add_token and any(c.isspace() for c in token):
                raise ValueError(f"an added token must be one word, got {token!r}")
            if not class_word.strip():
                raise ValueError(f"class_word must be non-empty text, got {class_word!r}")
        tokens = [t.lower() for t, _ in self.subjects]
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"each subject needs its own token, got {[t for t, _ in self.subjects]}")
        if not 1 <= self.text_width <= 1 << 16:
            raise ValueError(f"text_width must be in [1, 65536], got {self.text_width}")
        if not 1 <= self.lora_rank <= 1024:
            raise ValueError(f"lora_rank must be in [1, 1024], got {self.lora_rank}")
        if self.lora_alpha is not None and not 1 <= self.lora_alpha <= 1 << 16:
            raise ValueError(f"lora_alpha must be in [1, 65536] or None (= rank), got {self.lora_alpha}")
        allowed = LORA_TARGETS + TEXT_LORA_TARGETS
        bad = [t for t in self.lora_targets if t not in allowed]
        if bad or not self.lora_targets:
            raise ValueError(f"lora_targets must be a non-empty subset of {allowed}, got {self.lora_targets}")

    @property
    def subjects(self) -> tuple[tuple[str, str], ...]:
        """``(token, class word)`` of every subject, the first one's first."""
        return ((self.token, self.class_word), *self.others)

    @property
    def phrase(self) -> str:
        """``"<sks> star"``: how prompts name the (first) subject."""
        return f"{self.token} {self.class_word}"

    @property
    def phrases(self) -> tuple[str, ...]:
        return tuple(f"{t} {c}" for t, c in self.subjects)

    @property
    def scale(self) -> float:
        return (self.lora_alpha if self.lora_alpha is not None else self.lora_rank) / self.lora_rank

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubjectConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "lora_targets" in known:
            known["lora_targets"] = tuple(known["lora_targets"])
        if "others" in known:
            known["others"] = tuple((str(t), str(c)) for t, c in known["others"])
        return cls(**known)


class SubjectAdapter:
    """A subject's LoRA weights (peft state-dict keys, adapter name stripped), its config and, with
    ``cfg.add_token``, its identifiers' input embeddings ``tokens_NE`` (row n: subject n's token)."""

    def __init__(
        self,
        cfg: SubjectConfig,
        lora: Mapping[str, torch.Tensor] | None = None,
        tokens_NE: torch.Tensor | None = None,
    ) -> None:
        if tokens_NE is not None:
            if not cfg.add_token:
                raise ValueError("token embeddings are for an adapter whose config has add_token")
            if tokens_NE.ndim != 2 or tokens_NE.shape[0] != len(cfg.subjects):
                shape = tuple(tokens_NE.shape)
                raise ValueError(f"token embeddings must be ({len(cfg.subjects)} subjects, E), got {shape}")
        self.cfg = cfg
        self.lora: dict[str, torch.Tensor] = dict(lora or {})
        self.tokens_NE = tokens_NE

    def lora_config(self) -> Any:
        return block_lora_config(self.cfg.lora_rank, self.cfg.lora_alpha, self.cfg.lora_targets)

    def check_fits(self, transformer: Infinity) -> None:
        if self.cfg.text_width != transformer.cfg.text_channels:
            raise ValueError(
                f"the subject adapter was trained on a model of text width {self.cfg.text_width}; this "
                f"model's is {transformer.cfg.text_channels}"
            )

    def deltas(self) -> dict[str, torch.Tensor]:
        """``module name -> scale * B @ A`` (float32), the change the LoRA makes to each weight."""
        out: dict[str, torch.Tensor] = {}
        for key, a in self.lora.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
            b = self.lora[key.replace(".lora_A.", ".lora_B.")]
            out[module] = self.cfg.scale * (b.float() @ a.float())
        return out

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.lora.items()}, str(out / WEIGHTS_FILE))
        if self.cfg.add_token:
            if self.tokens_NE is None:
                raise ValueError(
                    f"adapter {self.cfg.phrase!r} adds its tokens but has no embeddings for them"
                )
            save_file({TOKEN_KEY: self.tokens_NE.detach().float().contiguous()}, str(out / TOKEN_FILE))
        (out / CONFIG_FILE).write_text(json.dumps({SECTION: asdict(self.cfg)}, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> SubjectAdapter:
        path = Path(folder)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not an adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        data = json.loads((path / CONFIG_FILE).read_text())
        if SECTION not in data:
            kinds = ", ".join(sorted(data)) or "nothing"
            raise ValueError(f"{path} is not a subject adapter (its {CONFIG_FILE} holds {kinds})")
        cfg = SubjectConfig.from_dict(data[SECTION])
        tokens_NE = None
        if cfg.add_token:
            if not (path / TOKEN_FILE).is_file():
                raise FileNotFoundError(f"{path}: the adapter adds its tokens but has no {TOKEN_FILE}")
            tokens_NE = load_file(str(path / TOKEN_FILE))[TOKEN_KEY]
        return cls(cfg, load_file(str(path / WEIGHTS_FILE)), tokens_NE)


def added_tokens(adapters: Sequence[SubjectAdapter]) -> dict[str, torch.Tensor]:
    """``identifier -> input embedding`` of the adapters that add their token (two adapters adding the
    same identifier are an error: one identifier cannot name two subjects)."""
    tokens: dict[str, torch.Tensor] = {}
    for adapter in adapters:
        if not adapter.cfg.add_token:
            continue
        if adapter.tokens_NE is None:
            raise ValueError(f"adapter {adapter.cfg.phrase!r} adds its tokens but has no embeddings for them")
        for (token, _), vector in zip(adapter.cfg.subjects, adapter.tokens_NE, strict=True):
            if token.lower() in (t.lower() for t in tokens):
                raise ValueError(f"two subject adapters add the identifier {token!r}")
            tokens[token] = vector
    return tokens


ADD_TOKEN_CHOICES = ("auto", "yes", "no")


def wants_added_tokens(choice: str, text_encoder: object, tokens: Sequence[str]) -> bool:
    """``--add-token``: ``"yes"``, ``"no"``, or ``"auto"``: when the T5 encoder's vocabulary cannot spell
    one of ``tokens`` (a text encoder without a vocabulary adds nothing)."""
    from scalestyle.models.text_encoder import TextEncoder

    if choice not in ADD_TOKEN_CHOICES:
        raise ValueError(f"add_token must be one of {ADD_TOKEN_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice == "yes"
    return isinstance(text_encoder, TextEncoder) and not all(text_encoder.spells(t) for t in tokens)


def adapter_kind(folder: str | Path) -> str:
    """The section of an adapter folder's ``config.json`` (``"subject"``, ``"stylear"``)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--adapter {folder}: no adapter there (no {CONFIG_FILE})")
    data = json.loads(path.read_text())
    kinds = [k for k in ("subject", "stylear") if k in data]
    if len(kinds) != 1:
        raise ValueError(f"--adapter {folder}: {path} is neither a subject nor a StyleAR adapter")
    return kinds[0]


def adapter_names(adapters: Sequence[SubjectAdapter]) -> list[str]:
    """The peft adapter names of ``adapters`` inside :func:`lora_applied`."""
    return [f"subject{i}" for i in range(len(adapters))]


@contextmanager
def lora_applied(
    transformer: Infinity, adapters: Sequence[SubjectAdapter], *, seed: int = 0
) -> Iterator[None]:
    """``transformer`` with peft LoRA layers for ``adapters`` (all active, summed; an adapter without
    weights gets a fresh LoRA seeded by ``seed``: B is zero, so it starts as the base model). On exit each
    adapter's weights, trained or not, are read back into its :attr:`SubjectAdapter.lora`, and the
    transformer gets its own modules and ``requires_grad`` flags back."""
    if not adapters:
        yield
        return
    from peft import LoraModel, get_peft_model_state_dict, set_peft_model_state_dict

    for adapter in adapters:
        adapter.check_fits(transformer)
    names = adapter_names(adapters)
    flags = {name: p.requires_grad for name, p in transformer.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # peft draws lora_A from the global generator
        tuner = LoraModel(transformer, adapters[0].lora_config(), names[0])
        for name, adapter in zip(names[1:], adapters[1:], strict=True):
            tuner.peft_config[name] = adapter.lora_config()
            tuner.inject_adapter(transformer, name)
    try:
        for name, adapter in zip(names, adapters, strict=True):
            if adapter.lora:
                result: Any = set_peft_model_state_dict(transformer, adapter.lora, adapter_name=name)
                if result.unexpected_keys:
                    raise ValueError(f"LoRA weights that fit no module: {result.unexpected_keys[:3]}")
        tuner.set_adapter(names)
        yield
    finally:
        for name, adapter in zip(names, adapters, strict=True):
            state = get_peft_model_state_dict(transformer, adapter_name=name)
            adapter.lora = {k: v.detach().clone() for k, v in state.items()}
        tuner.unload()
        for name, p in transformer.named_parameters():
            p.requires_grad_(flags[name])


def _total_deltas(
    transformer: Infinity, adapters: Sequence[SubjectAdapter]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``module name -> (its weight, the adapters' summed delta)``, checked against the model."""
    modules = dict(transformer.named_modules())
    total: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for adapter in adapters:
        adapter.check_fits(transformer)
        for name, delta in adapter.deltas().items():
            weight = getattr(modules.get(name), "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.shape != delta.shape:
                raise ValueError(f"the subject adapter's LoRA names {name!r}, which this model lacks")
            total[name] = (weight, total[name][1] + delta if name in total else delta)
    return total


@torch.no_grad()
def fold_into(transformer: Infinity, adapters: Sequence[SubjectAdapter]) -> None:
    """Add the adapters' deltas to ``transformer``'s weights for good, in float32 then cast to each
    weight's dtype (a process that only uses the adapted model, such as one CLI command, needs no way
    back)."""
    for weight, delta in _total_deltas(transformer, adapters).values():
        weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))


@contextmanager
def merged(transformer: Infinity, adapters: Sequence[SubjectAdapter]) -> Iterator[None]:
    """``transformer`` with every adapter folded in (:func:`fold_into`); on exit the original weights
    are copied back bit for bit."""
    total = _total_deltas(transformer, adapters)
    saved = [(weight, weight.detach().clone()) for weight, _ in total.values()]
    try:
        fold_into(transformer, adapters)
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


def with_added_tokens(pipe: Pipeline, adapters: Sequence[SubjectAdapter]) -> Any:
    """``pipe``'s text encoder, knowing the adapters' added identifiers (itself when none adds one)."""
    from scalestyle.models.text_encoder import TextEncoder

    tokens = added_tokens(adapters)
    if not tokens:
        return pipe.text_encoder
    if not isinstance(pipe.text_encoder, TextEncoder):
        raise ValueError(
            f"adapters that add their identifier need a T5 text encoder; {pipe.model_name} has none"
        )
    return pipe.text_encoder.with_tokens(tokens)


@contextmanager
def subjects_applied(
    pipe: Pipeline, adapters: Sequence[SubjectAdapter], *, merge: bool = True
) -> Iterator[None]:
    """``pipe`` with the adapters' LoRAs in its transformer (:func:`merged`, the default: no per-call
    cost; or :func:`lora_applied`) and their added identifiers in its text encoder; both given back on
    exit."""
    from scalestyle.models.infinity import Infinity

    transformer = pipe.transformer
    if not isinstance(transformer, Infinity):
        raise ValueError(f"subject adapters are for Infinity models; {pipe.model_name} is not one")
    encoder = pipe.text_encoder
    pipe.text_encoder = with_added_tokens(pipe, adapters)
    try:
        with merged(transformer, adapters) if merge else lora_applied(transformer, adapters):
            yield
    finally:
        pipe.text_encoder = encoder
