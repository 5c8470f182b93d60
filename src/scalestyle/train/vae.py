"""Training the BSQ multi-scale VAE (Infinity's visual tokenizer) on images.

The loss follows the BSQ-ViT / Infinity tokenizer recipe minus the GAN: L1 + L2 reconstruction through
the straight-through multi-scale quantizer (so the decoder learns what the transformer will produce),
a commitment term pulling the encoder's latent towards its quantized sum, and a Gram-matrix texture term
on the features of a fixed random conv net (random features capture texture statistics well, Ustyuzhaninov
et al. 2017; no pretrained network can be downloaded here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from scalestyle.config import BSQVAEConfig
from scalestyle.models.bsq_vae import BSQVAE
from scalestyle.train.common import (
    JsonlLog,
    check_range,
    load_checkpoint,
    save_checkpoint,
    step_generator,
    use_amp,
)

BatchFn = Callable[[int, int, torch.Generator], torch.Tensor]
"""(step, batch_size, generator) -> images (B, 3, P, P) in [-1, 1]."""
VAE_PARTS = ("all", "decoder")


@dataclass(frozen=True)
class VAETrainConfig:
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    l1: float = 1.0
    l2: float = 1.0
    gram: float = 2.0
    commit: float = 0.25
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 250
    # bf16 autocast: about 3x faster matmuls on CPUs with AVX512-BF16 as well as on GPUs, but emulated and
    # 45x slower on a CPU without; None decides by machine (train.common.bf16_pays)
    amp: bool | None = None
    # "decoder": the encoder and the quantizer stay frozen, so the codes (and any transformer trained on
    # them) stay valid while the decoder is retrained
    part: str = "all"

    def __post_init__(self) -> None:
        check_range(self, ("steps", "batch_size"), 1)
        check_range(self, ("lr",), 0, 1, "()")
        if self.part not in VAE_PARTS:
            raise ValueError(f"part must be one of {VAE_PARTS}, got {self.part!r}")


class RandomFeatures(nn.Module):
    """A fixed, seeded random conv net whose activations give Gram matrices for the texture loss."""

    def __init__(self, seed: int = 1234, channels: Sequence[int] = (32, 64, 64)) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        layers: list[nn.Conv2d] = []
        c_in = 3
        for c_out in channels:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, stride=2, bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (c_in * 9) ** 0.5)
            layers.append(conv)
            c_in = c_out
        self.layers = nn.ModuleList(layers)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for conv in self.layers:
            x = F.relu(conv(x))
            feats.append(x)
        return feats


def gram_BCC(f_BCHW: torch.Tensor) -> torch.Tensor:
    f = f_BCHW.flatten(2)
    return f @ f.transpose(1, 2) / f.shape[-1]


class VAEObjective(nn.Module):
    """The training loss as a module, so that DDP (through accelerate) sees one forward per step."""

    def __init__(self, vae: BSQVAE, grids: Sequence[tuple[int, int]], cfg: VAETrainConfig) -> None:
        super().__init__()
        self.vae, self.features, self.cfg = vae, RandomFeatures(), cfg
        factor = 2 if vae.cfg.spatial_patchify else 1
        self.vae_grids = [(h * factor, w * factor) for h, w in grids]

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.vae.encode_latent(img)
        _, q_sum = self.vae.quantizer(z, self.vae_grids)
        recon = self.vae.decoder(q_sum).float()
        gram = torch.zeros((), device=img.device)
        for a, b in zip(self.features(recon), self.features(img), strict=True):
            gram = gram + F.mse_loss(gram_BCC(a), gram_BCC(b))
        out = {
            "l1": F.l1_loss(recon, img),
            "l2": F.mse_loss(recon, img),
            "commit": F.mse_loss(z, q_sum.detach()),
            "gram": gram,
        }
        c = self.cfg
        out["loss"] = c.l1 * out["l1"] + c.l2 * out["l2"] + c.gram * out["gram"] + c.commit * out["commit"]
        return out


def lr_at(step: int, cfg_lr: float, warmup: int, steps: int) -> float:
    """Linear warm-up then cosine decay to 10%."""
    if step < warmup:
        return cfg_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return cfg_lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(t * torch.pi)).item()))


def train_vae(
    vae_cfg: BSQVAEConfig,
    cfg: VAETrainConfig,
    batches: BatchFn,
    grids: Sequence[tuple[int, int]],
    out_dir: Path,
    *,
    init: Callable[[BSQVAE], None] | None = None,
    progress: bool = True,
) -> BSQVAE:
    """Train (or resume from ``out_dir/vae.ckpt``) and return the VAE; logs to ``out_dir/vae_log.jsonl``.

    ``init`` loads starting weights into the freshly built VAE (needed with ``cfg.part == "decoder"``,
    whose frozen encoder must come from somewhere); a checkpoint, when present, overrides it.
    """
    from scalestyle.train.common import make_accelerator

    if cfg.part == "decoder" and init is None:
        raise ValueError("part='decoder' trains on a frozen encoder: give init to load it")
    accelerator = make_accelerator()
    amp = use_amp(cfg.amp, accelerator.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # conv layers initialise from the global RNG
        vae = BSQVAE(vae_cfg)
    if init is not None:
        init(vae)
    trained: nn.Module = vae
    if cfg.part == "decoder":
        vae.requires_grad_(False)
        trained = vae.decoder.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    ckpt, start = out_dir / "vae.ckpt", 0
    if ckpt.is_file():
        start = int(load_checkpoint(ckpt, model=vae, optimizer=optimizer)["step"])
    objective, optimizer = accelerator.prepare(VAEObjective(vae, grids, cfg), optimizer)
    log = JsonlLog(out_dir / "vae_log.jsonl")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="vae", disable=not progress)
    for step in bar:
        img = batches(step, cfg.batch_size, step_generator(cfg.seed, step)).to(accelerator.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
        with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=amp):
            losses = objective(img)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_(trained.parameters(), cfg.grad_clip)
        optimizer.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {k: round(float(v.detach()), 5) for k, v in losses.items()}
            log.write(step=step + 1, **row)
            bar.set_postfix(loss=row["loss"])
        if accelerator.is_main_process and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(ckpt, model=vae, optimizer=optimizer, step=step + 1, config=cfg)
    return vae.eval()
