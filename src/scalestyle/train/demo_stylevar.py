"""The demo StyleVAR's recipe (issue 15): a VQ-VAE and a class-conditional VAR on the procedural world, the
base that StyleVAR's supervised fine-tuning (and later GRPO) starts from.

Stages, each resumable from its checkpoint in the work folder and skipped once finished:

1. ``vqvae``: :func:`scalestyle.train.vqvae.train_vqvae` on training-style renders.
2. ``var``: :func:`scalestyle.train.var.train_var` with the frozen VQ-VAE, then the VAR model folder
   ``<work>/var_model`` (:func:`scalestyle.train.var.save_var_folder`, loadable by ``Pipeline.load``).
3. ``stylevar-sft``: :func:`scalestyle.train.stylevar.train_stylevar_sft` initialised from that folder
   (:func:`scalestyle.stylevar_weights.init_from_var`) on the world's training triplets
   (:class:`scalestyle.data.triplets.WorldTriplets`), writing the StyleVAR folder ``<work>/stylevar_model``
   (:meth:`scalestyle.transfer.TransferPipeline.load` opens it), with the authors' mean over tokens.
4. ``trunks``: :func:`pretrain_trunks` on that model's two ResNet trunks (the authors start from
   ImageNet-pretrained ones; the demo's were random), written as ``<work>/trunks_model``.
5. ``stylevar-sft2``: SFT again from ``trunks_model`` with every scale weighed alike
   (``scale_weighting="scale"``), checkpoint and log in ``<work>/sft2``, the final folder
   ``<work>/stylevar_final``. Stages 4 and 5 exist because stage 3 alone left the style image unused
   (teacher-forced loss 3.211 with the right style image, 3.209 with another's; docs/evaluation.md); they
   were added after it had run, which is why the trunks are pretrained after a first SFT rather than
   before it (the order not tried).
6. ``stylevar-remix``: SFT stages from ``stylevar_final`` on triplets of which ``remix_share`` are in
   remixed looks (:func:`scalestyle.data.procedural.remix`: unnamed styles assembled from the training
   looks' parts, every colour hue-turned), one per entry of ``remix``: stage i keeps its checkpoint and
   log in ``<work>/remix<i>`` and writes ``<work>/stylevar_remix<i>``, which the next continues; the last
   is the shipped folder. After stage 5 the model transferred its 21 training styles (style accuracy
   0.76) but not held-out ones (0.045): it had learned 21 names, not the parts a look is made of
   (docs/evaluation.md). Each stage draws with a seed of its own, so that none replays another's triplets.

GRPO (``train stylevar-grpo``) is measured on top but not part of the recipe: on CPU its world reward rose
on training styles while held-out style fell (the model card).

The VAR's class is the image's content, not the (content, style) pair. StyleVAR keeps everything of the
VAR but its class embedding (the authors' vanilla transfer drops ``class_emb``) and is told the style by
its style image, so the base should model every training style under one label: then it learns the
styles as the variation of each class instead of binding them to labels that held-out styles could never
have, and 16 classes (against 16 x 21 pairs) give each label many images. The content labels also let the
world's content classifier check the VAR's samples.

Held-out styles (:data:`scalestyle.data.procedural.HELD_OUT_STYLES`) enter no stage: the VQ-VAE and the
VAR see the train split's styles and seeds only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from scalestyle.config import StyleVARPreset, VARPreset, get_preset, get_stylevar_preset
from scalestyle.data import procedural as world
from scalestyle.data.triplets import WorldTriplets, world_triplets
from scalestyle.models.stylevar import StyleVAR
from scalestyle.schedules import var_schedule
from scalestyle.stylevar_weights import load_stylevar_models, resolve_stylevar_files, save_stylevar_dir
from scalestyle.train.common import check_range, step_generator
from scalestyle.train.stylevar import StyleVARTrainConfig, train_stylevar_sft
from scalestyle.train.var import VARTrainConfig, save_var_folder, train_var
from scalestyle.train.vqvae import VQVAETrainConfig, train_vqvae

STAGES = ("vqvae", "var", "stylevar-sft", "trunks", "stylevar-sft2", "stylevar-remix")
"""The stages :func:`train_demo_stylevar` runs, in order."""
VAR_MODEL_DIR = "var_model"
STYLEVAR_MODEL_DIR = "stylevar_model"
TRUNKS_MODEL_DIR = "trunks_model"
SFT2_DIR = "sft2"
FINAL_MODEL_DIR = "stylevar_final"
REMIX_DIR = "remix"  # + the stage's number from 1
REMIX_MODEL_DIR = "stylevar_remix"  # likewise
# The VAR draws other images than the VQ-VAE: its stream starts this many steps further into the seeds.
VAR_STREAM_OFFSET = 10_000_000


@dataclass(frozen=True)
class DemoStyleVARTrainConfig:
    # One step costs about 1 CPU-second for the VQ-VAE at batch 16, 0.7 for the VAR (155 tokens a row) and
    # 0.65 for the SFT at batch 8, on one idle core of the 2-core sandbox (tools/train_demo_stylevar.py
    # --status gives a run's wall rates): the three stages take about 80 minutes there. Dead-code restarts
    # keep the codebook in use (scalestyle.train.vqvae). The VAR weighs every scale alike, as the shipped
    # Infinity demo converged to: the coarse scales, a few percent of the tokens, decide the object, which
    # is all the class says.
    vqvae: VQVAETrainConfig = field(
        default_factory=lambda: VQVAETrainConfig(steps=1500, batch_size=16, restart_every=20)
    )
    var: VARTrainConfig = field(
        default_factory=lambda: VARTrainConfig(steps=3000, batch_size=16, scale_weighting="scale")
    )
    # the authors' SFT settings but the length and batch, sized for a CPU (a row is three images)
    sft: StyleVARTrainConfig = field(
        default_factory=lambda: StyleVARTrainConfig(steps=2000, batch_size=8, ckpt_every=25)
    )
    trunks: TrunkPretrainConfig = field(default_factory=lambda: TrunkPretrainConfig())
    sft2: StyleVARTrainConfig = field(
        default_factory=lambda: StyleVARTrainConfig(
            steps=1500, batch_size=8, ckpt_every=50, scale_weighting="scale"
        )
    )
    # bf16 as run on the AVX512-BF16 sandbox (about 0.75 s a step); on an AVX2-only CPU give "no"
    remix: tuple[StyleVARTrainConfig, ...] = field(
        default_factory=lambda: tuple(
            StyleVARTrainConfig(
                steps=steps,
                batch_size=8,
                ckpt_every=50,
                scale_weighting="scale",
                seed=seed,
                mixed_precision="bf16",
            )
            for steps, seed in ((5000, 1), (1500, 2))
        )
    )
    remix_share: float = 0.75
    triplets: int = 100_000
    var_preset: str = "var-demo"
    stylevar_preset: str = "stylevar-demo"

    def __post_init__(self) -> None:
        var, stylevar = get_preset(self.var_preset, VARPreset), get_stylevar_preset(self.stylevar_preset)
        if var.vae != stylevar.vae or var.transformer.patch_nums != stylevar.transformer.patch_nums:
            raise ValueError(
                f"StyleVAR preset {self.stylevar_preset!r} must share the VQ-VAE and patch_nums of the VAR "
                f"preset {self.var_preset!r} it starts from"
            )
        if self.triplets < 1:
            raise ValueError(f"triplets must be >= 1, got {self.triplets}")
        check_range(self, ("remix_share",), 0, 1, "[)")
        if var.transformer.num_classes != len(world.CONTENTS):
            raise ValueError(
                f"VAR preset {self.var_preset!r} has {var.transformer.num_classes} classes, the world "
                f"{len(world.CONTENTS)} contents"
            )

    @property
    def var_model(self) -> VARPreset:
        return get_preset(self.var_preset, VARPreset)

    @property
    def stylevar_model(self) -> StyleVARPreset:
        return get_stylevar_preset(self.stylevar_preset)

    @classmethod
    def quick(cls) -> DemoStyleVARTrainConfig:
        """A few steps of every stage on the tiny presets, for tests and smoke runs."""
        return cls(
            VQVAETrainConfig(steps=2, batch_size=2, log_every=1, ckpt_every=1),
            VARTrainConfig(steps=2, batch_size=2, log_every=1, ckpt_every=1),
            StyleVARTrainConfig(steps=2, batch_size=2, log_every=1, ckpt_every=1),
            TrunkPretrainConfig(steps=2, batch_size=2),
            StyleVARTrainConfig(steps=2, batch_size=2, log_every=1, ckpt_every=1, scale_weighting="scale"),
            (StyleVARTrainConfig(steps=2, batch_size=2, log_every=1, ckpt_every=1, seed=1),),
            triplets=4,
        )


def world_images(
    step: int, batch_size: int, g: torch.Generator, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(renders (B, 3, 64, 64) in [-1, 1], content indices (B,)) of training styles, content and style drawn
    from ``g``, each row its own train seed (row i of step s: seed index ``(offset + s) * B + i``)."""
    seeds = world.SPLIT_SEEDS["train"]
    c_idx = torch.randint(len(world.CONTENTS), (batch_size,), generator=g)
    s_idx = torch.randint(len(world.TRAIN_STYLES), (batch_size,), generator=g).tolist()
    base = (offset + step) * batch_size
    imgs = [
        world.to_tensor(world.render(world.CONTENTS[c], world.TRAIN_STYLES[s], seeds[base + i]).image)
        for i, (c, s) in enumerate(zip(c_idx.tolist(), s_idx, strict=True))
    ]
    return torch.stack(imgs), c_idx


def vqvae_images(step: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
    return world_images(step, batch_size, g)[0]


def var_images(step: int, batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return world_images(step, batch_size, g, VAR_STREAM_OFFSET)


@dataclass(frozen=True)
class TrunkPretrainConfig:
    """The world's stand-in for the authors' ImageNet-pretrained ResNet-18 trunks: the content trunk
    learns to classify the world's contents, the style trunk its training styles (held-out ones unseen),
    each through a linear head that is thrown away."""

    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        check_range(self, ("steps", "batch_size"), 1)
        check_range(self, ("lr",), 0, 1, "()")


# trunk pretraining draws its renders from seeds of its own, away from the VQ-VAE's and the VAR's
TRUNK_STREAM_OFFSET = 20_000_000


def pretrain_trunks(model: StyleVAR, cfg: TrunkPretrainConfig) -> dict[str, float]:
    """Pretrain ``model``'s two ResNet trunks in place (see :class:`TrunkPretrainConfig`); returns the
    heads' accuracies on the last batch (``content_acc``, ``style_acc``)."""
    dim = model.cfg.global_dim
    heads = nn.ModuleDict(
        {"content": nn.Linear(dim, len(world.CONTENTS)), "style": nn.Linear(dim, len(world.TRAIN_STYLES))}
    )
    trunks = {"content": model.content_encoder, "style": model.style_encoder}
    params = [p for t in trunks.values() for p in t.parameters()] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    for t in trunks.values():
        t.train()
    seeds = world.SPLIT_SEEDS["train"]
    acc: dict[str, float] = {}
    for step in range(cfg.steps):
        g = step_generator(cfg.seed, step)
        c_idx = torch.randint(len(world.CONTENTS), (cfg.batch_size,), generator=g)
        s_idx = torch.randint(len(world.TRAIN_STYLES), (cfg.batch_size,), generator=g)
        base = (TRUNK_STREAM_OFFSET + step) * cfg.batch_size
        img = torch.stack([
            world.to_tensor(world.render(world.CONTENTS[c], world.TRAIN_STYLES[s], seeds[base + i]).image)
            for i, (c, s) in enumerate(zip(c_idx.tolist(), s_idx.tolist(), strict=True))
        ])  # fmt: skip
        labels = {"content": c_idx, "style": s_idx}
        loss = torch.zeros(())
        for name, trunk in trunks.items():
            logits = heads[name](rearrange(trunk(img), "b c 1 1 -> b c"))
            loss = loss + F.cross_entropy(logits, labels[name])
            acc[f"{name}_acc"] = float((logits.argmax(1) == labels[name]).float().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return acc


def train_demo_stylevar(
    work_dir: Path, cfg: DemoStyleVARTrainConfig, *, progress: bool = True
) -> tuple[Path, Path]:
    """Run the stages into ``work_dir`` (checkpoints, logs, ``var_model/``, ``stylevar_model/``,
    ``trunks_model/``, ``stylevar_final/``, ``stylevar_remix1/``...); returns the VAR and the last StyleVAR
    model folders."""
    preset = cfg.var_model
    schedule = var_schedule(preset.transformer.patch_nums)
    work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vqvae = train_vqvae(preset.vae, cfg.vqvae, vqvae_images, schedule.grids, work_dir, progress=progress)
    t_vqvae = time.perf_counter() - t0
    t0 = time.perf_counter()
    var = train_var(preset.transformer, cfg.var, vqvae, var_images, work_dir, progress=progress)
    info = {
        "trained_by": "tools/train_demo_stylevar.py",
        "config": asdict(cfg),
        "seconds_this_run": {"vqvae": round(t_vqvae, 1), "var": round(time.perf_counter() - t0, 1)},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "classes": list(world.CONTENTS),
        "held_out_styles": list(world.HELD_OUT_STYLES),
    }
    var_folder = save_var_folder(work_dir / VAR_MODEL_DIR, preset, var, vqvae, extra=info)
    data = WorldTriplets(preset.image_size, cfg.triplets)
    stylevar_folder = train_stylevar_sft(
        work_dir / STYLEVAR_MODEL_DIR, work_dir, cfg.sft, data, init=str(var_folder), progress=progress
    )
    trunks_folder = work_dir / TRUNKS_MODEL_DIR
    if not (trunks_folder / "config.json").is_file():
        files = resolve_stylevar_files(stylevar_folder)
        model, vq = load_stylevar_models(files)
        t0 = time.perf_counter()
        acc = pretrain_trunks(model.float(), cfg.trunks)
        done = {
            "stage": "trunks",
            "config": asdict(cfg.trunks),
            "last_batch": acc,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        save_stylevar_dir(
            trunks_folder, preset=files.preset, model=model.eval(), vqvae=vq, history=(*files.history, done)
        )
    final = train_stylevar_sft(
        work_dir / FINAL_MODEL_DIR, work_dir / SFT2_DIR, cfg.sft2, data, init=str(trunks_folder),
        progress=progress,
    )  # fmt: skip
    remixed = world_triplets(preset.image_size, cfg.remix_share, cfg.triplets)
    for i, stage in enumerate(cfg.remix, start=1):
        final = train_stylevar_sft(
            work_dir / f"{REMIX_MODEL_DIR}{i}", work_dir / f"{REMIX_DIR}{i}", stage, remixed, init=str(final),
            progress=progress,
        )  # fmt: skip
    return var_folder, final
