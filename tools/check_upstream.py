"""Check scalestyle's Infinity and VAR backbones and the sampling loop against upstream FoundationVision code.

Usage::

    python tools/check_upstream.py --upstream /path/to/Infinity [--threads N] [--seed S]
    python tools/check_upstream.py --upstream-var /path/to/VAR
    python tools/check_upstream.py --upstream-stylevar /path/to/StyleVAR

``--upstream-var`` is a checkout of https://github.com/FoundationVision/VAR (code only), imported the same
way; its section (near the end of this file) builds upstream's VQVAE and VAR at the "var-tiny" size (spec
§5.5), loads their randomised weights into ours from ``torch.save``'d files through ``scalestyle.weights``
(built on the meta device), and compares VQ-VAE indices, reconstructions and teacher-forcing inputs,
teacher-forced logits (per-block and shared AdaLN) and seeded generation through ``run_scales`` with the
index codec (logits, indices, f_hat, image), with and without CFG, top-k/top-p variants and Gumbel
smoothing. Everything there must agree exactly, but the cfg-0 logits (see the table's notes).

``--upstream-stylevar`` is a checkout of https://github.com/Senfier-LiqiJing/StyleVAR (code only): their
StyleVAR and VQVAE at the "stylevar-tiny" size with random weights, saved as they release them (the state
dict under ``model``) and loaded strictly on the meta device; guide latents, teacher-forced logits and
seeded sampling (``autoregressive_infer`` against ``run_scales`` with ``double_append=True``, their KV
cache; strengths, top-k/top-p, Gumbel smoothing, B = 1..3) must agree exactly. A last table, for
information, sets our default single append against the double one on the same weights and seeds.

``--upstream`` is a checkout of https://github.com/FoundationVision/Infinity (code only; no weights are
needed). Nothing of upstream is copied into this repository: this script imports it from that directory at
run time, after installing CPU stand-ins for what upstream needs and CPU torch lacks (spec §4):

- ``flash_attn``: imported unconditionally upstream, and its varlen kernel is upstream's only
  cross-attention and text-pool implementation. The stand-in is a per-sequence softmax attention that, like
  the kernel, takes the bf16 q/kv upstream hands it, accumulates in fp32 and returns bf16.
- ``fused_op.py`` wraps its norms in ``torch.compile(fullgraph=True)``: it is imported with ``torch.compile``
  made the identity, so the eager functions run.
- ``timm``, ``pytz``, ``imageio`` and ``torchvision`` get empty stand-ins when not installed (upstream imports
  them, the inference path never calls them).
- ``run_infinity.py``'s loaders call ``.cuda()``, so ``Infinity(...)`` and the VAE are built directly, with
  the official inference flags (spec §1.1) at the "tiny" preset's size and ``cond_drop_rate=0``.

Both transformers get the same random weights (upstream's are randomised, then loaded into ours with
``load_state_dict(strict=True)``), far from the training init so that every path matters (AdaLN gates and
head at std 0.5, one attention scale above its clamp). The VAEs are ours with random weights loaded into
upstream's. The tiny preset's own VAE has 16 base channels, which upstream's factory (base_ch 128, 2 res
blocks hard-coded) and GroupNorm (32 or 24 groups) do not allow, so two VAEs with upstream's base_ch stand
in: d=8 with patch 4, and d=2 with patch 2 and 2x2 spatial patchify (the 8B layout, 4*2 = 8 bits/token).
Compared, as tables:

- weights: state_dict keys and shapes identical; ``scalestyle.weights.load_infinity_weights`` (if present)
  loads the same tensors as ``load_state_dict``;
- schedules and RoPE-2D: our grids and cos/sin tables against upstream's for every template and pn;
- text path: cond_BD (the pooled SOS), the cross-attention memory ca_kv, the AdaLN and head tables, for
  captions of different lengths and for the ``cfg_uncond`` rows;
- teacher-forced forward logits (upstream ``forward`` with its block-causal mask, padded to 128), for every
  aspect template, two captions of different lengths;
- seeded KV-cached generation (cfg 3, tau 0.5, top_k 900, top_p 0.97, CFG on the logits): upstream
  ``autoregressive_infer_cfg`` against our ``run_scales`` plus VAE decode, for one and two captions,
  negative captions, 1:2 and 3:1 templates, no CFG, given bits (upstream's ``gt_leak``) and patchify. The
  logits of every scale (while the sampled bits agree), the bits per scale, the summed codes and the final
  uint8 image (upstream's BGR flipped to RGB) and, for information, the share of bits top-p left random.

Both sides round q/kv and the output of the two varlen attentions to bf16, so an fp32-ulp difference in
the attention kernel's float order (the stand-in's vs ours, as real flash-attn's would be) now and then
flips one bf16 rounding: the "logits" and "bf16 CA" columns have a tolerance relative to the logit scale.
Two diagnostics take that noise away. "logits, our kernel" reruns generation with the stand-in evaluating
the varlen attention in our kernel's float order: logits must then agree exactly, so any formula
difference shows. "fp32 CA" reruns the forward without the bf16 rounding on both sides (upstream's
``basic.py`` sees ``torch.bfloat16`` as float32, ours gets an unrounded kernel): float noise only. Bits,
summed codes and pixels must be identical.

Prints one table per section and exits 1 if any check is outside its tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import math
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import scalestyle.attention as attention
from scalestyle.config import (
    BSQVAEConfig,
    InfinityConfig,
    SamplingConfig,
    StyleVARPreset,
    VARPreset,
    get_preset,
    get_stylevar_preset,
)
from scalestyle.images import to_pil
from scalestyle.models.bsq_vae import BSQVAE, BitwiseCodec, bits_to_codes, next_scale_input, upsample_codes
from scalestyle.models.infinity import Infinity
from scalestyle.models.stylevar import StyleVAR, TransferInputs, guide_latents
from scalestyle.models.text_encoder import PackedText
from scalestyle.models.var import VAR, ClassLabels
from scalestyle.models.vqvae import VQVAE, IndexCodec
from scalestyle.sampling import PathPlan, ScaleEvent, run_scales
from scalestyle.schedules import ASPECT_TEMPLATES, PN_NUM_SCALES, Schedule, get_schedule
from scalestyle.stylevar_weights import load_stylevar_weights
from scalestyle.weights import load_var_weights, load_vqvae_weights, read_state_dict

PN = "0.06M"
VAE_CFG = BSQVAEConfig(codebook_dim=8, patch_size=4, ch_mult=(1, 1, 2))
# the 8B-style path: d 2 latents, 2x2 spatial patchify into the same 8 bits per token
VAE_PATCHIFY_CFG = BSQVAEConfig(codebook_dim=2, patch_size=2, ch_mult=(1, 1), spatial_patchify=True)
TOP_K, TOP_P = 900, 0.97
TEXT_ATOL = 1e-5
# Logit tolerances relative to the largest |logit| (~10-15 here). With bf16 rounding in the cross-attentions
# an fp32-ulp difference of the attention kernel now and then flips one rounding (2^-8 relative), which the
# sharp cosine attention (scale up to 100) and the std-0.5 head amplify: we see up to 5e-4 relative. Without
# it what remains is float32 reassociation, amplified likewise: up to 3e-6 relative. A wrong formula (RoPE
# position, eps, a swapped AdaLN chunk) moves logits by 1e-2 or more.
BF16_RTOL = 2e-3
FP32_RTOL = 1e-5


# ---- CPU stand-ins for upstream's imports -------------------------------------------------------------


def _varlen_kvpacked(
    q: torch.Tensor,
    kv: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    **_: Any,
) -> torch.Tensor:
    """flash_attn_varlen_kvpacked_func: q (Nq, H, c), kv (Nk, 2, H, c); sequence b's queries attend only to
    sequence b's keys. Accumulates in fp32 and returns q's dtype, as the kernel does."""
    if causal or dropout_p:
        raise NotImplementedError("the stand-in only covers upstream's inference calls")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    qs, ks = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(qs) - 1):
        q_b = q[qs[b] : qs[b + 1]].float()
        k_b, v_b = kv[ks[b] : ks[b + 1]].float().unbind(1)
        p = (torch.einsum("qhc,khc->hqk", q_b, k_b) * scale).softmax(dim=-1)
        out[qs[b] : qs[b + 1]] = torch.einsum("hqk,khc->qhc", p, v_b).to(q.dtype)
    return out


def _varlen_like_ours(
    q: torch.Tensor,
    kv: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    **_: Any,
) -> torch.Tensor:
    """The same varlen attention evaluated in the float order of scalestyle's kernel (sequences padded to
    the longest, an additive -inf key mask, one SDPA call). With it, upstream and ours must agree exactly:
    whatever differs then is a formula, not float noise."""
    lens = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).tolist()
    B, (Nq, H, c) = len(lens), q.shape
    k, v = (t.split(lens) for t in kv.float().unbind(1))
    k_pad = nn.utils.rnn.pad_sequence(list(k), batch_first=True).transpose(1, 2)  # (B, H, T, c)
    v_pad = nn.utils.rnn.pad_sequence(list(v), batch_first=True).transpose(1, 2)
    hidden = torch.arange(k_pad.shape[2])[None, :] >= torch.tensor(lens)[:, None]
    bias = torch.zeros(hidden.shape).masked_fill(hidden, -math.inf)[:, None, None, :]
    q_BHLc = q.float().view(B, Nq // B, H, c).transpose(1, 2)
    o = F.scaled_dot_product_attention(q_BHLc, k_pad, v_pad, attn_mask=bias, scale=softmax_scale)
    return o.transpose(1, 2).reshape(Nq, H, c).to(q.dtype)


def _flash_attn_func(*args: Any, **kwargs: Any) -> torch.Tensor:
    raise NotImplementedError("upstream's self-attention uses SDPA unless customized_flash_attn=True")


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    sys.modules[name] = mod
    return mod


def _missing(name: str) -> bool:
    return name not in sys.modules and importlib.util.find_spec(name) is None


class _DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def install_shims() -> None:
    # always the stand-in: a real flash_attn needs CUDA tensors
    _module("flash_attn", flash_attn_func=_flash_attn_func, flash_attn_varlen_kvpacked_func=_varlen_kvpacked)
    if _missing("timm"):
        timm = _module("timm")
        timm.models = _module("timm.models", register_model=lambda fn: fn)  # type: ignore[attr-defined]
        timm.models.layers = _module(  # type: ignore[attr-defined]
            "timm.models.layers", DropPath=_DropPath, drop_path=lambda x, *a, **k: x
        )
        timm.loss = _module("timm.loss", SoftTargetCrossEntropy=nn.Module)  # type: ignore[attr-defined]
    if _missing("pytz"):
        _module("pytz", timezone=lambda name: None)
    if _missing("imageio"):
        _module("imageio")
    if _missing("torchvision"):
        tv = _module("torchvision")
        tv.transforms = _module("torchvision.transforms")  # type: ignore[attr-defined]


@contextlib.contextmanager
def _eager_compile() -> Iterator[None]:
    """``torch.compile`` as the identity decorator (fused_op.py compiles its norms at import)."""
    real = torch.compile

    def identity(fn: Any = None, **_: Any) -> Any:
        return fn if fn is not None else (lambda f: f)

    torch.compile = identity  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = real


class _TorchWithoutBf16(types.ModuleType):
    """``torch`` as upstream's basic.py sees it in the fp32 diagnostic: ``bfloat16`` is float32, so the
    cross-attentions' ``.to(torch.bfloat16)`` rounds nothing."""

    def __getattr__(self, name: str) -> Any:
        return torch.float32 if name == "bfloat16" else getattr(torch, name)


def _unrounded_attend(scale: float) -> attention.AttendFn:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias, scale=scale)

    return attend


@dataclass
class Upstream:
    infinity_cls: type
    vae_model: Callable[..., nn.Module]
    dynamic_resolution_h_w: dict[float, Any]
    basic: types.ModuleType

    @contextlib.contextmanager
    def kernel_like_ours(self) -> Iterator[None]:
        """Upstream's varlen attentions through :func:`_varlen_like_ours` (diagnostic only)."""
        real = self.basic.flash_attn_varlen_kvpacked_func
        self.basic.flash_attn_varlen_kvpacked_func = _varlen_like_ours  # type: ignore[attr-defined]
        try:
            yield
        finally:
            self.basic.flash_attn_varlen_kvpacked_func = real  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def fp32_cross_attention(self) -> Iterator[None]:
        """Both sides without the bf16 rounding of the varlen attentions (diagnostic only)."""
        real_torch, real_attend = self.basic.torch, attention.bf16_rounded_attend
        self.basic.torch = _TorchWithoutBf16("torch")  # type: ignore[attr-defined]
        attention.bf16_rounded_attend = _unrounded_attend  # type: ignore[assignment]
        try:
            yield
        finally:
            self.basic.torch = real_torch  # type: ignore[attr-defined]
            attention.bf16_rounded_attend = real_attend  # type: ignore[assignment]


def import_upstream(root: Path) -> Upstream:
    if not (root / "infinity" / "models" / "infinity.py").is_file():
        raise SystemExit(
            f"{root} is not a FoundationVision/Infinity checkout (no infinity/models/infinity.py)"
        )
    install_shims()
    sys.path.insert(0, str(root))
    with _eager_compile(), contextlib.redirect_stdout(io.StringIO()):
        importlib.import_module("infinity.models.fused_op")
        inf_mod = importlib.import_module("infinity.models.infinity")
        vae_mod = importlib.import_module("infinity.models.bsq_vae.vae")
        dyn = importlib.import_module("infinity.utils.dynamic_resolution")
        basic = importlib.import_module("infinity.models.basic")
    if inf_mod.fused_ada_layer_norm is None:
        raise SystemExit("upstream's fused_op did not import: fused_norm=True would silently fall back")
    return Upstream(inf_mod.Infinity, vae_mod.vae_model, dyn.dynamic_resolution_h_w, basic)


# ---- models -------------------------------------------------------------------------------------------


def build_upstream_vae(up: Upstream, cfg: BSQVAEConfig) -> nn.Module:
    d = cfg.codebook_dim
    with contextlib.redirect_stdout(io.StringIO()):
        vae = up.vae_model(
            None,
            "dynamic",
            d,
            2**d,
            patch_size=cfg.patch_size,
            encoder_ch_mult=list(cfg.ch_mult),
            decoder_ch_mult=list(cfg.ch_mult),
        )
    return vae.eval()


def build_upstream_infinity(up: Upstream, cfg: InfinityConfig, vae: nn.Module, patchify: bool) -> nn.Module:
    """``run_infinity.py::load_infinity``'s flags at ``cfg``'s size."""
    with contextlib.redirect_stdout(io.StringIO()):
        model = up.infinity_cls(
            vae_local=vae,
            text_channels=cfg.text_channels,
            text_maxlen=cfg.text_maxlen,
            embed_dim=cfg.width,
            depth=cfg.depth,
            num_heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            block_chunks=cfg.block_chunks,
            norm_eps=cfg.norm_eps,
            drop_path_rate=0.0,
            shared_aln=True,
            checkpointing="full-block",
            customized_flash_attn=False,
            fused_norm=True,
            pad_to_multiplier=128,
            use_flex_attn=False,
            add_lvl_embeding_only_first_block=1,
            use_bit_label=1,
            rope2d_each_sa_layer=1,
            rope2d_normalized_by_hw=2,
            pn=PN,
            apply_spatial_patchify=int(patchify),
            inference_mode=True,
            train_h_div_w_list=[1.0],
            cond_drop_rate=0.0,  # forward() drops captions at random even in eval otherwise (spec §1.11)
        )
    return model.eval().requires_grad_(False)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> None:
    """Weights far from upstream's init so that every path matters: AdaLN gates and the head at std 0.5,
    non-trivial biases and norm affines, and one attention head's log-scale above its clamp."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    for name, p in sorted(model.named_parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "ada_gss" or name.startswith("head."):
            p.copy_(normal(p.shape, 0.5))
        elif leaf == "scale_mul_1H11":
            p.copy_(math.log(4.0) + normal(p.shape, 0.3))
            p.view(-1)[0] = 5.0  # above log(100): exercises the clamp
        elif name.startswith("text_norm.") or ".ca_norm." in name:
            p.copy_((1.0 if leaf == "weight" else 0.0) + normal(p.shape, 0.2))
        elif leaf in ("cfg_uncond", "pos_start") or name.startswith("lvl_embed."):
            p.copy_(normal(p.shape, 1.0 if leaf == "cfg_uncond" else 0.5))
        elif p.ndim >= 2:  # linear weights and the pool's query: fan-in scaled
            p.copy_(normal(p.shape, 1.0 / math.sqrt(p.shape[-1])))
        else:  # biases (q_bias, v_bias, linear biases)
            p.copy_(normal(p.shape, 0.1))


@torch.no_grad()
def randomize_vae_(vae: nn.Module, seed: int) -> None:
    """Default conv init, with perturbed GroupNorm affines so that they matter."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(vae.named_parameters()):
        if ".norm." in name:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


# ---- result tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One measured value; ``tol`` None means informational. ``total`` makes it a count ``value/total``."""

    value: float
    tol: float | None = 0.0
    total: int | None = None
    percent: bool = False

    @property
    def ok(self) -> bool:
        return self.tol is None or self.value <= self.tol

    def text(self) -> str:
        if self.total is not None:
            return f"{int(self.value)}/{self.total}"
        if self.percent:
            return f"{self.value:.0%}"
        return "0" if self.value == 0 else f"{self.value:.2e}"


@dataclass
class Table:
    title: str
    columns: Sequence[str]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, *cells: Cell) -> None:
        self.rows.append((name, list(cells)))

    @property
    def failures(self) -> int:
        return sum(not c.ok for _, cells in self.rows for c in cells)

    def print(self) -> None:
        head = ["", *self.columns, ""]
        body = [
            [
                name,
                *(c.text() + ("" if c.ok else " !") for c in cells),
                "ok" if all(c.ok for c in cells) else "FAIL",
            ]
            for name, cells in self.rows
        ]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        print(f"\n== {self.title}")
        for r in [head, *body]:
            print(
                "  ".join(
                    s.ljust(w) if i == 0 else s.rjust(w)
                    for i, (s, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        for note in self.notes:
            print(f"   {note}")


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# ---- inputs -------------------------------------------------------------------------------------------


def random_text(lens: tuple[int, ...], channels: int, seed: int) -> PackedText:
    g = torch.Generator().manual_seed(seed)
    return PackedText(torch.randn(sum(lens), channels, generator=g), lens)


def label_tuple(text: PackedText) -> tuple[torch.Tensor, list[int], torch.Tensor, int]:
    """Upstream's packed caption argument (kv_compact, lens, cu_seqlens_k, max_seqlen_k)."""
    return text.feats_NE.clone(), list(text.lens), text.cu_seqlens(), max(text.lens)


def upstream_schedule(up: Upstream, schedule: Schedule) -> list[tuple[int, int, int]]:
    """Upstream's own table for the template (t replaced by 1, as at inference); must equal ours."""
    grids = [(1, h, w) for _, h, w in up.dynamic_resolution_h_w[schedule.template][schedule.pn]["scales"]]
    if [(h, w) for _, h, w in grids] != list(schedule.grids):
        raise SystemExit(f"schedule mismatch for template {schedule.template}: {grids} vs {schedule.grids}")
    return grids


def random_bits(schedule: Schedule, batch: int, bits: int, seed: int) -> list[torch.Tensor]:
    """Random bits (B, h, w, D) for every scale, as an encoded image would give (the VAE's bits were checked
    bit-exact against upstream's separately, so random ones test the transformer as well)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2, (batch, h, w, bits), generator=g) for h, w in schedule.grids]


def teacher_inputs(bits: Sequence[torch.Tensor], schedule: Schedule) -> torch.Tensor:
    """Transformer inputs x_BLD of scales 1..S-1 from per-scale bits (the inference rule, spec §1.8: codes
    upsampled to the last grid and summed, then resized to the next grid). The same tensor goes to both
    models; the rule itself is compared through generation (summed codes, next-scale logits)."""
    inputs, summed = [], None
    for k, b in enumerate(bits[:-1]):
        codes = upsample_codes(bits_to_codes(b, False), schedule.last_grid)
        summed = codes if summed is None else summed + codes
        inputs.append(next_scale_input(summed, schedule.grids[k + 1], False))
    return torch.cat(inputs, dim=1)


# ---- comparisons --------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    """A VAE (ours, and upstream's with the same weights) and upstream's transformer built around it."""

    upm: nn.Module
    up_vae: nn.Module
    vae: BSQVAE

    @property
    def patchify(self) -> bool:
        return self.vae.cfg.spatial_patchify


@dataclass
class Models:
    up: Upstream
    ours: Infinity
    plain: Pipeline
    patchified: Pipeline

    @property
    def upm(self) -> nn.Module:
        return self.plain.upm


@torch.no_grad()
def compare_schedules(table: Table, m: Models, pn: str) -> None:
    """Our schedules and RoPE tables against upstream's ``dynamic_resolution_h_w`` and
    ``rope2d_freqs_grid`` (keyed by schedule, built from each template's 1M grids), for every template."""
    bad_grids, rope_d = 0, 0.0
    for template in ASPECT_TEMPLATES:
        schedule = get_schedule(template, pn)
        grids = [(1, h, w) for _, h, w in m.up.dynamic_resolution_h_w[template][pn]["scales"]]
        bad_grids += [(h, w) for _, h, w in grids] != list(schedule.grids)
        table_up = m.upm.rope2d_freqs_grid[str(tuple(grids))][:, 0, 0, 0, : schedule.total_tokens]
        cos, sin = m.ours.rope_table(schedule, torch.device("cpu"))
        rope_d = max(rope_d, maxdiff(table_up, torch.stack((cos, sin))))
    table.add(f"{pn}, {len(ASPECT_TEMPLATES)} templates", Cell(bad_grids), Cell(rope_d))


@torch.no_grad()
def compare_text(table: Table, m: Models, text: PackedText, name: str) -> None:
    upm, ours = m.upm, m.ours
    kv = upm.text_norm(text.feats_NE.clone())
    cond = upm.text_proj_for_sos((kv, text.cu_seqlens(), max(text.lens))).float()
    ca_kv = upm.text_proj_for_ca(kv)
    gss = upm.shared_ada_lin(cond)
    head_ss = upm.head_nm.ada_lin(cond).view(-1, 1, 2, ours.cfg.width)
    mine = ours.condition([text])
    table.add(
        name,
        Cell(maxdiff(cond, mine.cond_BC), TEXT_ATOL),
        Cell(maxdiff(ca_kv, mine.memory.kv_NC), TEXT_ATOL),
        Cell(maxdiff(gss, mine.gss_B16C), TEXT_ATOL),
        Cell(maxdiff(head_ss, mine.head_ss_B12C), TEXT_ATOL),
    )


def _logit_scale(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return max((a.abs().max().item() for a, _ in pairs), default=0.0)


def _logit_diff(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return max((maxdiff(a, b) for a, b in pairs), default=0.0)


@torch.no_grad()
def compare_forward(table: Table, m: Models, text: PackedText, schedule: Schedule, name: str) -> None:
    grids = upstream_schedule(m.up, schedule)
    inputs_BLD = teacher_inputs(random_bits(schedule, text.batch, m.ours.cfg.bits, seed=7), schedule)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        ref = m.upm(label_tuple(text), inputs_BLD.clone(), grids)
        return ref, m.ours(inputs_BLD, m.ours.condition([text]), schedule)

    bf16 = both()
    with m.up.fp32_cross_attention():
        fp32 = both()
    scale = _logit_scale([bf16])
    table.add(
        name,
        Cell(_logit_diff([bf16]), BF16_RTOL * scale),
        Cell(_logit_diff([fp32]), FP32_RTOL * scale),
        Cell(scale, None),
    )


@dataclass(frozen=True)
class GenCase:
    name: str
    lens: tuple[int, ...]
    h_div_w: float = 1.0
    negative_lens: tuple[int, ...] | None = None
    cfg: float = 3.0
    tau: float = 0.5
    seed: int = 0
    given_scales: int = 0  # upstream's gt_leak: the bits of the first scales are given
    patchify: bool = False


@dataclass
class Trace:
    bits: list[torch.Tensor] = field(default_factory=list)  # (B, h, w, d) per scale
    logits: list[torch.Tensor] = field(default_factory=list)  # every head call, (rows, l, 2d)
    summed: torch.Tensor | None = None
    image: np.ndarray | None = None  # (B, H, W, 3) uint8 RGB


@contextlib.contextmanager
def _recording(obj: Any, name: str, store: list[Any], pick: Callable[..., torch.Tensor]) -> Iterator[None]:
    """Shadow method ``name`` of ``obj`` with an instance attribute that stores ``pick(out, *args)``."""
    fn = getattr(obj, name)

    def inner(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        store.append(pick(out, *args).detach().clone())
        return out

    setattr(obj, name, inner)
    try:
        yield
    finally:
        delattr(obj, name)


@torch.no_grad()
def run_upstream(
    m: Models,
    case: GenCase,
    text: PackedText,
    neg: PackedText | None,
    given: Sequence[torch.Tensor],
    decode: bool = True,
) -> Trace:
    grids = upstream_schedule(m.up, get_schedule(case.h_div_w, PN))
    p = m.patchified if case.patchify else m.plain
    trace, summed = Trace(), []

    def token_bits(out: torch.Tensor, idx_B1HWd: torch.Tensor, *args: Any) -> torch.Tensor:
        # upstream pixel-shuffles patchified bits to VAE resolution first; back to (B, h, w, 4d) tokens
        if not p.patchify:
            return idx_B1HWd[:, 0]
        return F.pixel_unshuffle(idx_B1HWd[:, 0].permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)

    def vae_bits(bits_BhwD: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(bits_BhwD.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)

    with (
        _recording(p.upm, "get_logits", trace.logits, lambda out, *a: out),
        _recording(p.up_vae.quantizer.lfq, "indices_to_codes", trace.bits, token_bits),
        _recording(p.up_vae, "decode", summed, lambda out, z, *a: z),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        _, _, img = p.upm.autoregressive_infer_cfg(
            vae=p.up_vae,
            scale_schedule=grids,
            label_B_or_BLT=label_tuple(text),
            B=text.batch,
            negative_label_B_or_BLT=None if neg is None else label_tuple(neg),
            g_seed=case.seed,
            cfg_list=[case.cfg] * len(grids),
            tau_list=[case.tau] * len(grids),
            top_k=TOP_K,
            top_p=TOP_P,
            returns_vemb=1,
            cfg_insertion_layer=[0],  # the official setting: CFG on the logits
            vae_type=p.vae.cfg.codebook_dim,  # any value but 0 selects the bitwise path
            ret_img=decode,
            gt_leak=len(given),
            # upstream takes given bits as they are, at VAE resolution (B, 1, H, W, d) (spec §1.8 step 4)
            gt_ls_Bl=[(vae_bits(b) if p.patchify else b).unsqueeze(1) for b in given],
            inference_mode=True,
        )
    if decode:
        trace.summed = summed[0]
        trace.image = img.flip(dims=(3,)).numpy()  # upstream returns BGR for cv2
    return trace


@torch.no_grad()
def run_ours(
    m: Models,
    case: GenCase,
    text: PackedText,
    neg: PackedText | None,
    given: Sequence[torch.Tensor],
    decode: bool = True,
) -> Trace:
    sampling = SamplingConfig(cfg=case.cfg, tau=case.tau, top_k=TOP_K, top_p=TOP_P, seed=case.seed)
    plan = PathPlan("gen", text, given_tokens=tuple(given), uncond=neg)
    p = m.patchified if case.patchify else m.plain
    trace = Trace()

    def on_scale(event: ScaleEvent) -> None:
        trace.bits.append(event.tokens["gen"].clone())

    with _recording(m.ours, "logits", trace.logits, lambda out, *a: out):
        schedule = get_schedule(case.h_div_w, PN)
        codec = BitwiseCodec(m.ours.cfg.bits, p.patchify)
        summed = run_scales(m.ours, codec, [plan], schedule, sampling, on_scale=on_scale)["gen"]
    trace.summed = summed
    if decode:
        trace.image = np.stack([np.asarray(to_pil(im)) for im in p.vae.decode(summed)])
    return trace


def random_share(logits: Sequence[torch.Tensor], batch: int, cfg: float) -> float:
    """Share of sampled bits that top-p leaves random (minority probability > 1 - top_p): how much of the
    bit comparison rests on the RNG stream rather than on forced majority bits."""
    free = total = 0
    for ell in logits:
        mixed = cfg * ell[:batch] + (1 - cfg) * ell[batch:] if cfg != 1.0 else ell
        p = mixed.reshape(-1, 2).softmax(-1).amin(-1)
        free += int((p > 1 - TOP_P).sum())
        total += p.numel()
    return free / max(total, 1)


def _agreeing_logits(ref: Trace, mine: Trace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-scale logits pairs up to and including the first scale whose sampled bits differ: after that the
    two runs condition on different histories."""
    pairs = []
    for k, (a, b) in enumerate(zip(ref.logits, mine.logits, strict=False)):
        pairs.append((a, b))
        if k >= len(ref.bits) or k >= len(mine.bits) or not torch.equal(ref.bits[k], mine.bits[k]):
            break
    return pairs


def compare_generation(table: Table, m: Models, case: GenCase, seed: int) -> None:
    C = m.ours.cfg.text_channels
    text = random_text(case.lens, C, seed=100 + seed)
    neg = None if case.negative_lens is None else random_text(case.negative_lens, C, seed=200 + seed)
    schedule = get_schedule(case.h_div_w, PN)
    given = random_bits(schedule, text.batch, m.ours.cfg.bits, seed=300 + seed)[: case.given_scales]

    ref = run_upstream(m, case, text, neg, given)
    mine = run_ours(m, case, text, neg, given)
    with m.up.kernel_like_ours():
        ref_k = run_upstream(m, case, text, neg, given, decode=False)
    mine_k = run_ours(m, case, text, neg, given, decode=False)

    bit_bad = sum(
        int((a != b).sum()) if a.shape == b.shape else a.numel()
        for a, b in zip(ref.bits, mine.bits, strict=False)
    ) + abs(len(ref.bits) - len(mine.bits))
    assert ref.summed is not None and mine.summed is not None
    assert ref.image is not None and mine.image is not None
    px_bad = int((ref.image != mine.image).sum()) if ref.image.shape == mine.image.shape else ref.image.size
    pairs = _agreeing_logits(ref, mine)
    scale = _logit_scale(pairs)
    table.add(
        case.name,
        Cell(_logit_diff(pairs), BF16_RTOL * scale),
        Cell(_logit_diff(_agreeing_logits(ref_k, mine_k)), 0.0),
        Cell(scale, None),
        Cell(bit_bad, 0, total=sum(a.numel() for a in ref.bits)),
        Cell(maxdiff(ref.summed, mine.summed), 0.0),
        Cell(px_bad, 0, total=ref.image.size),
        Cell(random_share(ref.logits, text.batch, case.cfg), None, percent=True),
    )
    for label, r, o in (("stand-in kernel", ref, mine), ("our kernel", ref_k, mine_k)):
        first = next(
            (k for k, (a, b) in enumerate(zip(r.bits, o.bits, strict=False)) if not torch.equal(a, b)), None
        )
        if first is not None:
            table.notes.append(f"{case.name} ({label}): sampled bits first differ at scale {first}")


GEN_CASES = (
    GenCase("1:1 B=1", (5,)),
    GenCase("1:1 B=2 lens 7,3", (7, 3), seed=1),
    GenCase("1:1 B=2 negative", (7, 3), negative_lens=(4, 6), seed=2),
    GenCase("1:2 B=1", (6,), h_div_w=0.5, seed=3),
    GenCase("1:2 B=2 negative", (8, 2), h_div_w=0.5, negative_lens=(3, 3), seed=4),
    GenCase("1:1 B=2 no CFG, tau 1", (7, 3), cfg=1.0, tau=1.0, seed=5),
    GenCase("1:1 B=2 given bits x3", (4, 9), given_scales=3, seed=6),
    GenCase("3:1 B=2", (3, 5), h_div_w=3.0, seed=7),
    GenCase("1:1 B=2 patchify (8B-style)", (7, 3), patchify=True, seed=8),
    GenCase("1:2 B=1 patchify, given bits x2", (5,), h_div_w=0.5, patchify=True, given_scales=2, seed=9),
)


# ---- VAR (FoundationVision/VAR) -----------------------------------------------------------------------
#
# Upstream's VAR runs unmodified on the CPU (spec §5.5): ``models.VQVAE`` and ``models.VAR`` are built
# directly with `build_vae_var`'s arguments at the "var-tiny" size (not through `build_vae_var`, which
# disables ``reset_parameters`` process-wide), given random weights far from the training init, saved with
# ``torch.save(state_dict)`` as upstream's released files are, and loaded into ours (built on the meta device)
# through ``scalestyle.weights``. Ours generates through ``run_scales`` with the index codec; upstream through
# ``autoregressive_infer_cfg`` with the same seed. Everything is compared exactly.

VAR_PRESET = "var-tiny"


@dataclass(frozen=True)
class VarUpstream:
    vqvae_cls: type
    var_cls: type
    var_module: types.ModuleType  # models.var: its ``sample_with_top_k_top_p_`` is where tokens are drawn


def import_upstream_var(root: Path) -> VarUpstream:
    if not (root / "models" / "var.py").is_file():
        raise SystemExit(f"{root} is not a FoundationVision/VAR checkout (no models/var.py)")
    sys.path.insert(0, str(root))
    with contextlib.redirect_stdout(io.StringIO()):
        var_mod = importlib.import_module("models.var")
        vqvae_mod = importlib.import_module("models.vqvae")
    return VarUpstream(vqvae_mod.VQVAE, var_mod.VAR, var_mod)


def build_upstream_var(up: VarUpstream, preset: VARPreset) -> tuple[nn.Module, nn.Module]:
    """(VQVAE, VAR) with `build_vae_var`'s arguments at ``preset``'s size (``cond_drop_rate`` 0: upstream's
    ``forward`` drops labels at random otherwise)."""
    t, v = preset.transformer, preset.vae
    with contextlib.redirect_stdout(io.StringIO()):
        vae = up.vqvae_cls(
            vocab_size=v.vocab_size,
            z_channels=v.z_channels,
            ch=v.ch,
            test_mode=True,
            share_quant_resi=v.share_quant_resi,
            v_patch_nums=t.patch_nums,
        )
        var = up.var_cls(
            vae_local=vae,
            num_classes=t.num_classes,
            depth=t.depth,
            embed_dim=t.width,
            num_heads=t.heads,
            drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=0.1 * t.depth / 24,
            norm_eps=t.norm_eps,
            shared_aln=t.shared_aln,
            cond_drop_rate=0.0,
            attn_l2_norm=t.attn_l2_norm,
            patch_nums=t.patch_nums,
        )
        var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    return vae.eval(), var.eval().requires_grad_(False)


@torch.no_grad()
def randomize_var_(model: nn.Module, seed: int) -> None:
    """Weights far from upstream's init: AdaLN (per-block, shared and ada_gss) and the head large enough that
    gates and logits matter, embeddings at std 0.5-1, one attention log-scale above its clamp."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    for name, p in sorted(model.named_parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "ada_gss":
            p.copy_(normal(p.shape, 0.5))
        elif leaf == "scale_mul_1H11":
            p.copy_(math.log(4.0) + normal(p.shape, 0.3))
            p.view(-1)[0] = 5.0  # above log(100): exercises the clamp
        elif name.startswith("class_emb."):
            p.copy_(normal(p.shape, 1.0))
        elif leaf in ("pos_start", "pos_1LC") or name.startswith("lvl_embed."):
            p.copy_(normal(p.shape, 0.5))
        elif name == "head.weight":
            p.copy_(normal(p.shape, 0.2))
        elif p.ndim >= 2:
            p.copy_(normal(p.shape, 1.0 / math.sqrt(p.shape[-1])))
        else:
            p.copy_(normal(p.shape, 0.1))


def _saved_and_loaded(
    module: nn.Module, build: Callable[[], nn.Module], load: Callable[..., None], folder: Path, name: str
) -> nn.Module:
    """``module`` saved as upstream saves its weights, read back and loaded strictly into ``build()`` on
    the meta device."""
    path = folder / name
    torch.save(module.state_dict(), path)
    with torch.device("meta"):
        ours = build()
    load(ours, read_state_dict(path), source=str(path))
    return ours.eval().requires_grad_(False)


@dataclass
class VarModels:
    up: VarUpstream
    up_vae: nn.Module
    up_var: nn.Module
    vae: VQVAE
    var: VAR


def var_images(batch: int, seed: int) -> torch.Tensor:
    """Half noise, half smooth colour ramps: the quantizer sees both rough and smooth residuals."""
    g = torch.Generator().manual_seed(seed)
    size = get_preset(VAR_PRESET, VARPreset).image_size
    noise = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    ramp = torch.linspace(-1, 1, size)
    smooth = torch.stack(
        (ramp[None, :].expand(size, -1), ramp[:, None].expand(-1, size), -ramp[None, :] * ramp[:, None])
    )
    mix = torch.rand(batch, 1, 1, 1, generator=g)
    return torch.where(torch.arange(batch)[:, None, None, None] % 2 == 0, noise, smooth * mix)


@torch.no_grad()
def compare_vqvae(table: Table, m: VarModels, img: torch.Tensor, name: str) -> None:
    schedule = m.var.schedule
    up_idx = m.up_vae.img_to_idxBl(img)
    idx = m.vae.encode_indices(img, schedule)
    bad = sum(int((a.flatten() != b.flatten()).sum()) for a, b in zip(up_idx, idx, strict=True))
    total = sum(a.numel() for a in up_idx)
    used = len({int(i) for t in idx for i in t.flatten()})
    up_rec = m.up_vae.img_to_reconstructed_img(img, last_one=True)
    up_dec = m.up_vae.idxBl_to_img(up_idx, same_shape=True, last_one=True)
    up_inputs = m.up_vae.quantize.idxBl_to_var_input(up_idx)
    table.add(
        name,
        Cell(bad, 0, total=total),
        Cell(used, None),
        Cell(maxdiff(up_rec, m.vae.reconstruct(img, schedule)), 0.0),
        Cell(maxdiff(up_dec, m.vae.decode_indices(idx, schedule)), 0.0),
        Cell(maxdiff(up_inputs, m.vae.teacher_inputs(idx, schedule)), 0.0),
    )


@torch.no_grad()
def compare_var_forward(table: Table, m: VarModels, labels: list[int], seed: int, name: str) -> None:
    img = var_images(len(labels), seed)
    idx = m.up_vae.img_to_idxBl(img)
    inputs = m.up_vae.quantize.idxBl_to_var_input(idx)
    label_B = torch.tensor(labels)
    ref = m.up_var(label_B, inputs.clone())
    mine = m.var(inputs, m.var.condition([ClassLabels(label_B)]), m.var.schedule)
    table.add(name, Cell(maxdiff(ref, mine), 0.0), Cell(ref.abs().max().item(), None))


@dataclass(frozen=True)
class VarCase:
    name: str
    labels: tuple[int, ...]
    cfg: float
    top_k: int
    top_p: float
    more_smooth: bool = False
    seed: int = 0


@contextlib.contextmanager
def _recording_function(
    module: types.ModuleType, name: str, store: list[Any], pick: Callable[..., Any]
) -> Iterator[None]:
    """Shadow the module-level function ``name`` (looked up as a global by its callers)."""
    real = getattr(module, name)

    def inner(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        store.append(pick(out).detach().clone())
        return out

    setattr(module, name, inner)
    try:
        yield
    finally:
        setattr(module, name, real)


@torch.no_grad()
def run_upstream_var(m: VarModels, case: VarCase, upm: nn.Module, up_vae: nn.Module) -> Trace:
    trace, f_hat = Trace(), []
    grids = m.var.schedule.grids

    def tokens(idx_Bl1: torch.Tensor) -> torch.Tensor:
        h, w = grids[len(trace.bits)]
        return idx_Bl1[:, :, 0].reshape(-1, h, w)

    with (
        _recording(upm, "get_logits", trace.logits, lambda out, *a: out),
        _recording_function(m.up.var_module, "sample_with_top_k_top_p_", trace.bits, tokens),
        _recording(up_vae, "fhat_to_img", f_hat, lambda out, f, *a: f),
    ):
        img = upm.autoregressive_infer_cfg(
            B=len(case.labels),
            label_B=torch.tensor(case.labels),
            g_seed=case.seed,
            cfg=case.cfg,
            top_k=case.top_k,
            top_p=case.top_p,
            more_smooth=case.more_smooth,
        )
    trace.summed = f_hat[0]
    trace.image = img.numpy()
    return trace


@torch.no_grad()
def run_ours_var(m: VarModels, case: VarCase, model: VAR, vae: VQVAE) -> Trace:
    sampling = SamplingConfig(
        cfg=case.cfg, top_k=case.top_k, top_p=case.top_p, seed=case.seed, more_smooth=case.more_smooth
    )
    trace = Trace()

    def on_scale(event: ScaleEvent) -> None:
        trace.bits.append(event.tokens["gen"].clone())

    plan = PathPlan("gen", ClassLabels(torch.tensor(case.labels)))
    with _recording(model, "logits", trace.logits, lambda out, *a: out):
        f_hat = run_scales(model, IndexCodec(vae), [plan], model.schedule, sampling, on_scale=on_scale)["gen"]
    trace.summed = f_hat
    trace.image = vae.decode_fhat(f_hat).add(1).mul(0.5).numpy()
    return trace


def compare_var_generation(
    table: Table, m: VarModels, case: VarCase, shared: tuple[nn.Module, VAR] | None
) -> None:
    upm, model = (m.up_var, m.var) if shared is None else shared
    ref = run_upstream_var(m, case, upm, m.up_vae)
    mine = run_ours_var(m, case, model, m.vae)
    B = len(case.labels)
    # without CFG ours computes no unconditional rows (the ramp at cfg 0 is the conditional logits);
    # upstream always runs them: compare the conditional rows
    rows = slice(None) if case.cfg != 0 else slice(0, B)
    pairs = []
    for k, (a, b) in enumerate(zip(ref.logits, mine.logits, strict=False)):
        pairs.append((a[rows], b))
        if not torch.equal(ref.bits[k], mine.bits[k]):
            break
    bad = sum(
        int((a != b).sum()) if a.shape == b.shape else a.numel()
        for a, b in zip(ref.bits, mine.bits, strict=True)
    )
    assert ref.image is not None and mine.image is not None and ref.summed is not None
    px_bad = int((_uint8(ref.image) != _uint8(mine.image)).sum())
    scale = _logit_scale(pairs)
    table.add(
        case.name,
        Cell(_logit_diff(pairs), 0.0 if case.cfg != 0 else FP32_RTOL * scale),
        Cell(scale, None),
        Cell(bad, 0, total=sum(a.numel() for a in ref.bits)),
        Cell(maxdiff(ref.summed, mine.summed), 0.0),
        Cell(maxdiff(torch.from_numpy(ref.image), torch.from_numpy(mine.image)), 0.0),
        Cell(px_bad, 0, total=ref.image.size),
    )


def _uint8(img_B3PP: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img_B3PP, 0, 1) * 255).astype(np.uint8)


VAR_CASES = (
    VarCase("cfg 1.5, no top-k, top-p 1, B=2", (3, 999), cfg=1.5, top_k=0, top_p=1.0),
    VarCase("cfg 4, top-k 20, top-p 0.95, B=2", (207, 1000), cfg=4.0, top_k=20, top_p=0.95, seed=1),
    VarCase("cfg 0 (no CFG rows), top-k 30, top-p 0.96, B=1", (88,), cfg=0.0, top_k=30, top_p=0.96, seed=2),
    VarCase(
        "cfg 3, top-k 40, top-p 0.95, more_smooth, B=2",
        (1, 2),
        cfg=3.0,
        top_k=40,
        top_p=0.95,
        more_smooth=True,
        seed=3,
    ),
    VarCase("cfg 1.5, top-k 64 (= V), top-p 0.5, B=3", (10, 20, 30), cfg=1.5, top_k=64, top_p=0.5, seed=4),
    VarCase(
        "cfg 4, top-k 50, top-p 0.9, more_smooth, B=1",
        (42,),
        cfg=4.0,
        top_k=50,
        top_p=0.9,
        more_smooth=True,
        seed=7,
    ),
)
SHARED_CASES = (
    VarCase("shared AdaLN: cfg 1.5, top-k 10, top-p 0.9, B=2", (5, 6), cfg=1.5, top_k=10, top_p=0.9, seed=5),
    VarCase(
        "shared AdaLN: cfg 3, more_smooth, B=2",
        (7, 1000),
        cfg=3.0,
        top_k=50,
        top_p=0.97,
        more_smooth=True,
        seed=6,
    ),
)


def var_tables(root: Path, seed: int) -> list[Table]:
    """Every VAR comparison against the checkout at ``root``."""
    up = import_upstream_var(root)
    preset = get_preset(VAR_PRESET, VARPreset)
    shared_preset = replace(preset, transformer=replace(preset.transformer, shared_aln=True))
    torch.manual_seed(seed)
    up_vae, up_var = build_upstream_var(up, preset)
    _, up_shared = build_upstream_var(up, shared_preset)
    randomize_var_(up_var, seed)
    randomize_var_(up_shared, seed + 1)
    with torch.no_grad():
        for name, p in up_vae.named_parameters():
            if ".norm" in name:  # GroupNorm affines away from 1 and 0, so that they matter
                p.add_(torch.randn(p.shape) * 0.1)
    up_shared.vae_proxy = (up_vae,)
    up_shared.vae_quant_proxy = (up_vae.quantize,)

    weights = Table(
        "VAR weights (saved as upstream saves them, loaded on meta by scalestyle.weights)", ["count"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vae = _saved_and_loaded(up_vae, lambda: VQVAE(preset.vae), load_vqvae_weights, folder, "vae.pth")
        var = _saved_and_loaded(up_var, lambda: VAR(preset.transformer), load_var_weights, folder, "var.pth")
        shared = _saved_and_loaded(
            up_shared, lambda: VAR(shared_preset.transformer), load_var_weights, folder, "var_shared.pth"
        )
    assert isinstance(vae, VQVAE) and isinstance(var, VAR) and isinstance(shared, VAR)
    for label, a, b in (
        ("VQ-VAE", up_vae, vae),
        ("VAR", up_var, var),
        ("VAR shared AdaLN", up_shared, shared),
    ):
        up_sd, our_sd = a.state_dict(), b.state_dict()
        weights.add(f"{label}: keys only upstream has", Cell(len(set(up_sd) - set(our_sd))))
        weights.add(f"{label}: keys only ours has", Cell(len(set(our_sd) - set(up_sd))))
        common = set(up_sd) & set(our_sd)
        weights.add(
            f"{label}: tensors differing", Cell(sum(not torch.equal(up_sd[k], our_sd[k]) for k in common))
        )
    m = VarModels(up, up_vae, up_var, vae, var)

    vq = Table(
        "VQ-VAE: noise and smooth images (max |d|)",
        ["indices differing", "codes used", "reconstruction", "decode from indices", "teacher inputs"],
    )
    for i, batch in enumerate((2, 1, 3)):
        compare_vqvae(vq, m, var_images(batch, seed=40 + i), f"B={batch}, seed {40 + i}")

    forward = Table("VAR teacher-forced forward logits (max |d|)", ["logits", "max |logit|"])
    compare_var_forward(forward, m, [3, 1000], 50, "per-block AdaLN, labels 3, null")
    shared_m = VarModels(up, up_vae, up_shared, vae, shared)
    compare_var_forward(forward, shared_m, [17, 400, 999], 51, "shared AdaLN (d36 layout), B=3")

    gen = Table(
        "VAR KV-cached generation (upstream autoregressive_infer_cfg vs run_scales + IndexCodec)",
        ["logits", "max |logit|", "indices differing", "f_hat", "image max |d|", "uint8 pixels differing"],
    )
    for case in VAR_CASES:
        compare_var_generation(gen, m, case, None)
    for case in SHARED_CASES:
        compare_var_generation(gen, m, case, (up_shared, shared))
    gen.notes.append(
        "cfg 0: ours computes no unconditional rows (the ramp leaves the conditional logits), upstream "
        f"does; GEMMs over 1 and 2 rows round differently: logits agree there to {FP32_RTOL:g} x max |logit|"
    )
    return [weights, vq, forward, gen]


# ---- StyleVAR (Senfier-LiqiJing/StyleVAR) -------------------------------------------------------------
# Upstream's StyleVAR and VQVAE at the "stylevar-tiny" size, their random weights saved as the authors
# release them (the state dict under ``model``) and loaded into ours on the meta device through
# ``scalestyle.stylevar_weights``. Compared: guide latents, teacher-forced logits, and seeded sampling
# (``autoregressive_infer`` against ``run_scales`` with ``double_append=True``, their KV cache). Their code
# imports ``dist`` (a module of their training setup, absent from the repository) and torchvision's
# ``resnet18`` with ImageNet weights: stand-ins for both, the latter a separate transcription of
# torchvision's ResNet-18 (same children and key names) at the tiny preset's trunk width, no download.

STYLEVAR_PRESET = "stylevar-tiny"


class _TVBasicBlock(nn.Module):
    """torchvision ``BasicBlock`` (resnet.py), transcribed for the stand-in."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class _TVResNet18(nn.Module):
    """torchvision ``resnet18`` (children: conv1, bn1, relu, maxpool, layer1-4, avgpool, fc) at ``width``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        planes = [width * 2**i for i in range(4)]
        inplanes = width
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            setattr(
                self,
                f"layer{i + 1}",
                nn.Sequential(_TVBasicBlock(inplanes, p, stride), _TVBasicBlock(p, p, 1)),
            )
            inplanes = p
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, 1000)


def install_stylevar_shims(trunk_width: int) -> None:
    _module("dist", get_device=lambda: "cpu")
    tv = sys.modules.get("torchvision") or _module("torchvision")
    tv.models = _module(  # type: ignore[attr-defined]
        "torchvision.models",
        resnet18=lambda weights=None, **_: _TVResNet18(trunk_width),
        ResNet18_Weights=types.SimpleNamespace(IMAGENET1K_V1=None),
    )


@dataclass(frozen=True)
class StyleVarUpstream:
    vqvae_cls: type
    stylevar_cls: type
    module: types.ModuleType  # models.style_var, where tokens are drawn (``sample_with_top_k_top_p_``)


def import_upstream_stylevar(root: Path, trunk_width: int) -> StyleVarUpstream:
    if not (root / "models" / "style_var.py").is_file():
        raise SystemExit(f"{root} is not a Senfier-LiqiJing/StyleVAR checkout (no models/style_var.py)")
    install_stylevar_shims(trunk_width)
    # FoundationVision/VAR's package is also called ``models``: forget it if its check ran first
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    with contextlib.redirect_stdout(io.StringIO()):
        sv_mod = importlib.import_module("models.style_var")
        vqvae_mod = importlib.import_module("models.vqvae")
    return StyleVarUpstream(vqvae_mod.VQVAE, sv_mod.StyleVAR, sv_mod)


def build_upstream_stylevar(up: StyleVarUpstream, preset: StyleVARPreset) -> tuple[nn.Module, nn.Module]:
    """(VQVAE, StyleVAR) with `build_vae_stylevar`'s arguments at ``preset``'s size."""
    t, v = preset.transformer, preset.vae
    with contextlib.redirect_stdout(io.StringIO()):
        vae = up.vqvae_cls(
            vocab_size=v.vocab_size,
            z_channels=v.z_channels,
            ch=v.ch,
            test_mode=True,
            share_quant_resi=v.share_quant_resi,
            v_patch_nums=t.patch_nums,
        )
        model = up.stylevar_cls(
            vae_local=vae,
            depth=t.depth,
            embed_dim=t.width,
            num_heads=t.heads,
            drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=0.1 * t.depth / 24,
            norm_eps=t.norm_eps,
            shared_aln=False,
            cond_drop_rate=0.1,
            style_enc_dim=t.global_dim,
            attn_l2_norm=t.attn_l2_norm,
            patch_nums=t.patch_nums,
            alpha_nums=t.alphas,
        )
        model.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    return vae.eval(), model.eval().requires_grad_(False)


@torch.no_grad()
def randomize_stylevar_(model: nn.Module, seed: int) -> None:
    """As :func:`randomize_var_`, with the trunks' convs at std 1/sqrt(fan-in) (a vector of moderate size)
    and their batch norms away from identity (affines and running statistics)."""
    randomize_var_(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    for p in model.parameters():
        if p.ndim == 4:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(1 + torch.randn(module.weight.shape, generator=g) * 0.1)
            module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))


@dataclass
class StyleVarModels:
    up: StyleVarUpstream
    up_vae: nn.Module
    up_model: nn.Module
    vae: VQVAE
    single: StyleVAR
    double: StyleVAR


def stylevar_images(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(content, style): smooth ramps and noise, so both quantizer regimes and trunk paths are used."""
    size = get_stylevar_preset(STYLEVAR_PRESET).image_size
    content = var_images(batch, seed)[:, :, :size, :size]
    style = torch.flip(var_images(batch, seed + 1000), dims=(0,))[:, :, :size, :size]
    return content, style


@torch.no_grad()
def compare_guides(table: Table, m: StyleVarModels, batch: int, seed: int) -> None:
    content, _ = stylevar_images(batch, seed)
    schedule = m.single.schedule
    quant = m.up_vae.quantize
    up_list = quant.msBllist_to_BlCv_list(m.up_vae.img_to_idxBl(content))
    up_cat = quant.msBllist_to_BlCvae(m.up_vae.img_to_idxBl(content))
    mine = guide_latents(m.vae, content, schedule)
    table.add(
        f"B={batch}, seed {seed}",
        Cell(max(maxdiff(a, b) for a, b in zip(up_list, mine, strict=True)), 0.0),
        Cell(maxdiff(up_cat, torch.cat(mine, dim=1)), 0.0),
    )


@torch.no_grad()
def compare_stylevar_forward(table: Table, m: StyleVarModels, batch: int, seed: int) -> None:
    content, style = stylevar_images(batch, seed)
    target = var_images(batch, seed + 7)[:, :, : content.shape[2], : content.shape[3]]
    quant = m.up_vae.quantize
    inputs = quant.idxBl_to_var_input(m.up_vae.img_to_idxBl(target))
    style_BLd = quant.msBllist_to_BlCvae(m.up_vae.img_to_idxBl(style))
    content_BLd = quant.msBllist_to_BlCvae(m.up_vae.img_to_idxBl(content))
    ref = m.up_model(inputs.clone(), style_BLd, content_BLd, style, content)
    raw = TransferInputs.encode(m.vae, content, style, m.single.schedule)
    cells = [
        Cell(maxdiff(ref, model(inputs, model.condition([raw]), model.schedule)), 0.0)
        for model in (m.single, m.double)
    ]
    table.add(f"B={batch}, seed {seed}", *cells, Cell(ref.abs().max().item(), None))


@dataclass(frozen=True)
class StyleVarCase:
    name: str
    batch: int
    top_k: int
    top_p: float
    strength: float = 0.0
    more_smooth: bool = False
    seed: int = 0


@torch.no_grad()
def run_upstream_stylevar(m: StyleVarModels, case: StyleVarCase) -> Trace:
    trace, f_hat = Trace(), []
    grids = m.single.schedule.grids
    content, style = stylevar_images(case.batch, case.seed + 20)

    def tokens(idx_Bl1: torch.Tensor) -> torch.Tensor:
        h, w = grids[len(trace.bits)]
        return idx_Bl1[:, :, 0].reshape(-1, h, w)

    with (
        _recording(m.up_model, "get_logits", trace.logits, lambda out, *a: out),
        _recording_function(m.up.module, "sample_with_top_k_top_p_", trace.bits, tokens),
        _recording(m.up_vae, "fhat_to_img", f_hat, lambda out, f, *a: f),
    ):
        img = m.up_model.autoregressive_infer(
            case.batch,
            style,
            content,
            g_seed=case.seed,
            top_k=case.top_k,
            top_p=case.top_p,
            more_smooth=case.more_smooth,
            style_strength=case.strength,
        )
    trace.summed = f_hat[0]
    trace.image = img.numpy()
    return trace


@torch.no_grad()
def run_ours_stylevar(m: StyleVarModels, case: StyleVarCase, model: StyleVAR) -> Trace:
    sampling = SamplingConfig(
        cfg=0.0, top_k=case.top_k, top_p=case.top_p, seed=case.seed, more_smooth=case.more_smooth
    )
    content, style = stylevar_images(case.batch, case.seed + 20)
    raw = TransferInputs.encode(m.vae, content, style, model.schedule, case.strength)
    trace = Trace()

    def on_scale(event: ScaleEvent) -> None:
        trace.bits.append(event.tokens["gen"].clone())

    with _recording(model, "logits", trace.logits, lambda out, *a: out):
        f_hat = run_scales(
            model, IndexCodec(m.vae), [PathPlan("gen", raw)], model.schedule, sampling, on_scale=on_scale
        )["gen"]
    trace.summed = f_hat
    trace.image = m.vae.decode_fhat(f_hat).add(1).mul(0.5).numpy()
    return trace


def _token_diff(a: Trace, b: Trace) -> int:
    return sum(
        int((x != y).sum()) if x.shape == y.shape else x.numel() for x, y in zip(a.bits, b.bits, strict=True)
    )


def compare_stylevar_generation(table: Table, m: StyleVarModels, case: StyleVarCase) -> None:
    ref = run_upstream_stylevar(m, case)
    mine = run_ours_stylevar(m, case, m.double)
    pairs = []
    for k, (a, b) in enumerate(zip(ref.logits, mine.logits, strict=False)):
        pairs.append((a, b))
        if not torch.equal(ref.bits[k], mine.bits[k]):
            break
    assert ref.image is not None and mine.image is not None and ref.summed is not None
    table.add(
        case.name,
        Cell(_logit_diff(pairs), 0.0),
        Cell(_logit_scale(pairs), None),
        Cell(_token_diff(ref, mine), 0, total=sum(a.numel() for a in ref.bits)),
        Cell(maxdiff(ref.summed, mine.summed), 0.0),
        Cell(int((_uint8(ref.image) != _uint8(mine.image)).sum()), 0, total=ref.image.size),
    )


def compare_appends(table: Table, m: StyleVarModels, case: StyleVarCase) -> None:
    """Informational: the correct single append against the authors' double append, same weights."""
    double, single = run_ours_stylevar(m, case, m.double), run_ours_stylevar(m, case, m.single)
    assert double.image is not None and single.image is not None
    table.add(
        case.name,
        Cell(_token_diff(double, single), None, total=sum(a.numel() for a in double.bits)),
        Cell(maxdiff(double.logits[0], single.logits[0]), None),
        Cell(maxdiff(double.logits[1], single.logits[1]) if len(double.logits) > 1 else 0.0, None),
        Cell(int((_uint8(double.image) != _uint8(single.image)).sum()), None, total=double.image.size),
        Cell(float(np.abs(_uint8(double.image).astype(float) - _uint8(single.image)).mean()), None),
    )


STYLEVAR_CASES = (
    StyleVarCase("B=1, top-k 30, top-p 0.96", 1, top_k=30, top_p=0.96, seed=0),
    StyleVarCase("B=2, no top-k, top-p 1", 2, top_k=0, top_p=1.0, seed=1),
    StyleVarCase(
        "B=2, top-k 64 (= V), top-p 0.5, strength 0.6", 2, top_k=64, top_p=0.5, strength=0.6, seed=2
    ),
    StyleVarCase("B=3, top-k 20, top-p 0.9, strength -1", 3, top_k=20, top_p=0.9, strength=-1.0, seed=3),
    StyleVarCase("B=2, top-k 40, top-p 0.95, more_smooth", 2, top_k=40, top_p=0.95, more_smooth=True, seed=4),
)


def stylevar_tables(root: Path, seed: int) -> list[Table]:
    """Every StyleVAR comparison against the checkout at ``root``."""
    preset = get_stylevar_preset(STYLEVAR_PRESET)
    up = import_upstream_stylevar(root, preset.transformer.resnet_width)
    torch.manual_seed(seed)
    up_vae, up_model = build_upstream_stylevar(up, preset)
    randomize_stylevar_(up_model, seed)
    with torch.no_grad():
        for name, p in up_vae.named_parameters():
            if ".norm" in name:
                p.add_(torch.randn(p.shape) * 0.1)

    weights = Table(
        "StyleVAR weights (saved as the authors release them, loaded on meta by scalestyle.stylevar_weights)",
        ["count"],
    )
    double_cfg = replace(preset.transformer, double_append=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vae = _saved_and_loaded(up_vae, lambda: VQVAE(preset.vae), load_vqvae_weights, folder, "vae.pth")
        path = folder / "StyleVAR_SFT.pth"
        torch.save({"model": up_model.state_dict(), "optimizer": {"state": {}, "param_groups": []}}, path)
        models = []
        for cfg in (preset.transformer, double_cfg):
            with torch.device("meta"):
                ours = StyleVAR(cfg)
            load_stylevar_weights(ours, read_state_dict(path), source=str(path))
            models.append(ours.eval().requires_grad_(False))
    assert isinstance(vae, VQVAE)
    up_sd, our_sd = up_model.state_dict(), models[0].state_dict()
    weights.add("StyleVAR: keys only upstream has", Cell(len(set(up_sd) - set(our_sd))))
    weights.add("StyleVAR: keys only ours has", Cell(len(set(our_sd) - set(up_sd))))
    weights.add(
        "StyleVAR: tensors differing",
        Cell(sum(not torch.equal(up_sd[k], our_sd[k]) for k in set(up_sd) & set(our_sd))),
    )
    m = StyleVarModels(up, up_vae, up_model, vae, models[0], models[1])

    guides = Table("guide latents (cumulative f_hat per scale, max |d|)", ["per scale", "concatenated"])
    for i, batch in enumerate((1, 2, 3)):
        compare_guides(guides, m, batch, 60 + i)

    forward = Table(
        "StyleVAR teacher-forced forward logits (max |d|)", ["single append", "double append", "max |logit|"]
    )
    for i, batch in enumerate((1, 2, 3)):
        compare_stylevar_forward(forward, m, batch, 70 + i)
    forward.notes.append("teacher forcing has no KV cache: both settings compute the same logits")

    gen = Table(
        "StyleVAR sampling (upstream autoregressive_infer vs run_scales + IndexCodec, double_append=True)",
        ["logits", "max |logit|", "indices differing", "f_hat", "uint8 pixels differing"],
    )
    appends = Table(
        "single vs double append, same weights and seed (information)",
        ["indices differing", "logits scale 0", "logits scale 1", "uint8 pixels differing", "mean |px|"],
    )
    for case in STYLEVAR_CASES:
        compare_stylevar_generation(gen, m, case)
        compare_appends(appends, m, case)
    return [weights, guides, forward, gen, appends]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare scalestyle's Infinity and VAR with upstream's on CPU."
    )
    parser.add_argument("--upstream", type=Path, help="a FoundationVision/Infinity checkout")
    parser.add_argument("--upstream-var", type=Path, help="a FoundationVision/VAR checkout")
    parser.add_argument("--upstream-stylevar", type=Path, help="a Senfier-LiqiJing/StyleVAR checkout")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    if args.upstream is None and args.upstream_var is None and args.upstream_stylevar is None:
        parser.error("give --upstream (Infinity), --upstream-var (VAR), --upstream-stylevar, or several")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # upstream's torch.cuda.amp.autocast calls
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")

    tables: list[Table] = []
    if args.upstream is not None:
        tables += infinity_tables(args.upstream.resolve(), args.seed)
    if args.upstream_var is not None:
        tables += var_tables(args.upstream_var.resolve(), args.seed)
    if args.upstream_stylevar is not None:
        tables += stylevar_tables(args.upstream_stylevar.resolve(), args.seed)
    for t in tables:
        t.print()
    failures = sum(t.failures for t in tables)
    if args.upstream is not None:
        print(
            f"\nlogit tolerances x max |logit|: {BF16_RTOL:g} (bf16 CA), {FP32_RTOL:g} (fp32 CA); exact: "
            "logits with upstream's varlen attention in our kernel's float order, bits, summed codes, pixels"
        )
    if args.upstream_var is not None:
        print("\nVAR: exact everywhere (indices, logits, f_hat, images) but the cfg-0 logits (see the note)")
    if args.upstream_stylevar is not None:
        print(
            "\nStyleVAR: exact everywhere (guides, logits, indices, f_hat, pixels); append table: information"
        )
    print("all checks pass" if not failures else f"{failures} checks FAIL")
    return 1 if failures else 0


def infinity_tables(root: Path, seed: int) -> list[Table]:
    """Every Infinity comparison against the checkout at ``root``."""
    up = import_upstream(root)
    cfg = get_preset("tiny").transformer
    for vae_cfg in (VAE_CFG, VAE_PATCHIFY_CFG):
        if cfg.bits != vae_cfg.bits_per_token:
            raise SystemExit(
                f"tiny preset bits {cfg.bits} != bits per token {vae_cfg.bits_per_token} of {vae_cfg}"
            )

    torch.manual_seed(seed)
    pipes = []
    for vae_cfg in (VAE_CFG, VAE_PATCHIFY_CFG):
        vae = BSQVAE(vae_cfg).eval().requires_grad_(False)
        randomize_vae_(vae, seed)
        up_vae = build_upstream_vae(up, vae_cfg)
        up_vae.load_state_dict(vae.state_dict(), strict=True)
        upm = build_upstream_infinity(up, cfg, up_vae, patchify=vae_cfg.spatial_patchify)
        pipes.append(Pipeline(upm, up_vae, vae))
    upm = pipes[0].upm
    randomize_(upm, seed)
    pipes[1].upm.load_state_dict(upm.state_dict(), strict=True)
    ours = Infinity(cfg).eval()

    weights = Table("weights", ["count"])
    up_sd, our_sd = upm.state_dict(), ours.state_dict()
    weights.add("keys only upstream has", Cell(len(set(up_sd) - set(our_sd))))
    weights.add("keys only ours has", Cell(len(set(our_sd) - set(up_sd))))
    weights.notes += [f"key in one only: {k}" for k in sorted(set(up_sd) ^ set(our_sd))]
    common = set(up_sd) & set(our_sd)
    weights.add("shape mismatches", Cell(sum(up_sd[k].shape != our_sd[k].shape for k in common)))
    ours.load_state_dict(up_sd, strict=True)
    ours.requires_grad_(False)
    try:
        from scalestyle.weights import load_infinity_weights
    except ImportError:
        weights.notes.append("scalestyle.weights.load_infinity_weights is not available")
    else:
        fresh = Infinity(cfg).eval()
        load_infinity_weights(fresh, up_sd, source="upstream tiny model")
        differ = sum(
            not torch.equal(a, b)
            for a, b in zip(fresh.state_dict().values(), ours.state_dict().values(), strict=True)
        )
        weights.add("load_infinity_weights vs load_state_dict: tensors differing", Cell(differ))
    m = Models(up, ours, *pipes)

    schedules = Table("schedules and RoPE-2D tables", ["grid mismatches", "RoPE cos/sin max |d|"])
    for pn in PN_NUM_SCALES:
        compare_schedules(schedules, m, pn)

    C = cfg.text_channels
    text = Table("text path (max |d|)", ["cond_BD", "ca_kv", "AdaLN gss", "head AdaLN"])
    compare_text(text, m, random_text((5,), C, seed=1), "B=1 len 5")
    compare_text(text, m, random_text((7, 3, 12), C, seed=2), "B=3 lens 7,3,12")
    with torch.no_grad():
        compare_text(text, m, ours.uncond_text((7, 3)), "cfg_uncond rows lens 7,3")

    forward = Table(
        "teacher-forced forward logits, B=2 lens 7,3 (max |d|)", ["bf16 CA", "fp32 CA", "max |logit|"]
    )
    for i, template in enumerate(ASPECT_TEMPLATES):
        schedule = get_schedule(template, PN)
        compare_forward(forward, m, random_text((7, 3), C, seed=10 + i), schedule, f"h/w {template}")

    gen = Table(
        f"KV-cached generation, cfg/tau as named (default 3/0.5), top_k {TOP_K}, top_p {TOP_P}",
        [
            "logits",
            "logits, our kernel",
            "max |logit|",
            "bits differing",
            "summed codes",
            "pixels differing",
            "random bits",
        ],
    )
    for i, case in enumerate(GEN_CASES):
        compare_generation(gen, m, case, seed=i)

    return [weights, schedules, text, forward, gen]


if __name__ == "__main__":
    sys.exit(main())
