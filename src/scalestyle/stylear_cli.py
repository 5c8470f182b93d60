"""The StyleAR commands (issue 16): ``scalestyle train stylear``, ``scalestyle train stylear-dpo`` and
``scalestyle stylize --method stylear``.

Kept apart from :mod:`scalestyle.cli`, which only registers the parser and dispatches here; errors are
``ValueError`` lines, as the CLI prints them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scalestyle.config import SamplingConfig


def parse_weighted_style(text: str) -> tuple[str, float]:
    """``"a.png"`` -> ("a.png", 1.0); ``"a.png:0.7"`` -> ("a.png", 0.7): a weight is what follows the last
    colon when it reads as a number (so paths with colons still work)."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            weight = float(tail)
        except ValueError:
            return text, 1.0
        if not weight >= 0:
            raise ValueError(f"--style {text!r}: a reference weight must be >= 0, got {tail}")
        return path, weight
    return text, 1.0


def parse_mix(text: str) -> tuple[int, int]:
    """``"1:3"`` -> (1, 3): stylized rows to raw rows."""
    a, sep, b = text.partition(":")
    try:
        mix = (int(a), int(b)) if sep else (0, 0)
    except ValueError:
        mix = (0, 0)
    if min(mix) < 0 or sum(mix) < 1:
        raise ValueError(
            f"--mix must read STYLIZED:RAW with integers >= 0, not both 0 (e.g. 1:3), got {text!r}"
        )
    return mix


def add_stylize_args(p: argparse.ArgumentParser) -> None:
    """The flags ``stylize`` gains for trained methods."""
    p.add_argument(
        "--method",
        default="training-free",
        choices=["training-free", "stylear"],
        help="training-free: the three-path method; stylear: a trained StyleAR adapter (--adapter); "
        "with stylear, --style PATH:WEIGHT references are mixed into one style",
    )
    from scalestyle.subject_cli import ADAPTER_HELP

    p.add_argument("--adapter", action="append", default=None, metavar="DIR", help=ADAPTER_HELP)
    p.add_argument(
        "--style-scale", type=float, default=1.0, help="StyleAR: strength of the style tokens (0: off)"
    )
    p.add_argument(
        "--noise-strength", type=float, default=0.3, help="StyleAR: noise on the style tokens (upstream: 0.3)"
    )
    p.add_argument("--no-se", action="store_true", help="StyleAR: plain tokens even where a mask is given")
    p.add_argument(
        "--style-mask",
        default=None,
        help="StyleAR: a mask image (white = the reference's object) for style-enhanced tokens; "
        "one reference only",
    )


def stylize(
    args: argparse.Namespace, prompts: list[str], sampling: SamplingConfig, load: Callable[[], Any]
) -> int:
    """``stylize --method stylear``: one image (``--out``) of the prompt in the mixed references' style."""
    import numpy as np

    from scalestyle.images import load_image
    from scalestyle.metadata import write_png
    from scalestyle.method.stylear import StyleARPipeline
    from scalestyle.models.stylear import Reference, StyleARAdapter, StyleARSettings

    if not args.adapter:
        raise ValueError(
            "--method stylear needs --adapter DIR (a folder written by `scalestyle train stylear`)"
        )
    if args.out_dir or not args.out or len(prompts) != 1:
        raise ValueError("--method stylear makes one image: give one --prompt and --out FILE.png")
    if not args.style:
        raise ValueError("--method stylear needs at least one --style REF.png[:WEIGHT]")
    weighted = [parse_weighted_style(s) for s in args.style]
    mask = None
    if args.style_mask:
        if len(weighted) != 1:
            raise ValueError("--style-mask goes with a single --style reference")
        mask = np.asarray(load_image(args.style_mask).convert("L")) >= 128
    settings = StyleARSettings(scale=args.style_scale, noise_strength=args.noise_strength)
    references = [
        Reference(load_image(path), weight, None if args.no_se else mask) for path, weight in weighted
    ]
    adapter = StyleARAdapter.load(args.adapter)  # a bad folder is an error before the model loads
    styler = StyleARPipeline.load(load(), adapter)
    result = styler(
        prompts[0], style_images=references, style_prompt=args.style_prompt, style=settings, sampling=sampling
    )
    meta = {**result.metadata[0], "style_file": ",".join(path for path, _ in weighted)}
    write_png(result.images[0], Path(args.out), meta)
    if not args.quiet:
        sys.stderr.write(f"wrote {args.out}\n")
    return 0


def add_train_parser(train_sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = train_sub.add_parser(
        "stylear",
        help="a StyleAR adapter (resampler + LoRA) on a frozen model; each image its own reference",
        formatter_class=formatter,
    )
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument("--work-dir", default="runs/stylear", help="checkpoint and log (resumable)")
    p.add_argument("--model", default=None, help="the frozen base model folder; default: the bundled demo")
    p.add_argument(
        "--data",
        default=None,
        help="stylized images (captions as in `train folder`); default: the world's training styles",
    )
    p.add_argument("--raw-data", default=None, help="raw images mixed in by --mix (world: the neutral style)")
    p.add_argument("--mix", type=parse_mix, default=(1, 3), help="stylized:raw rows")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps; default: 2000")
    p.add_argument("--batch-size", type=int, default=None, help="images per step; default: 16")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate; default: 1e-4")
    p.add_argument("--cond-drop", type=float, default=None, help="caption + tokens dropped; default: 0.1")
    p.add_argument("--lora-rank", type=int, default=4, help="LoRA rank on the transformer (0: none)")
    p.add_argument("--queries", type=int, default=16, help="style tokens per reference")
    p.add_argument("--depth", type=int, default=4, help="resampler layers")
    p.add_argument("--heads", type=int, default=4, help="resampler heads")
    p.add_argument("--width", type=int, default=256, help="resampler width")
    p.add_argument("--join", default="decoupled", choices=["decoupled", "joint"], help="how tokens join")
    p.add_argument("--encoder", default="vae", choices=["vae", "clip"], help="vae: the model's own VAE")
    p.add_argument("--encoder-source", default=None, help="clip: hub id or folder of the vision model")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data seed")
    p.add_argument("--quick", action="store_true", help="a 2-step smoke run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="cpu, cuda; default: cuda if available")
    p.set_defaults(func=cmd_train)
    add_dpo_parser(train_sub, formatter)


def add_dpo_parser(train_sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """``train stylear-dpo`` (registered with ``train stylear``)."""
    p = train_sub.add_parser(
        "stylear-dpo",
        help="DPO post-training of a StyleAR adapter: pairs sampled with it, ranked by a reward",
        formatter_class=formatter,
    )
    p.add_argument("--adapter", required=True, help="the adapter to improve (`train stylear` output)")
    p.add_argument("--out", required=True, help="adapter folder to write (same format)")
    p.add_argument("--work-dir", default="runs/stylear-dpo", help="checkpoint and log (resumable)")
    p.add_argument("--model", default=None, help="the frozen base model folder; default: the bundled demo")
    p.add_argument(
        "--prompts-file",
        default=None,
        help="prompts (what to draw, one per line) crossed with --style-images; default: the world's "
        "training contents and styles",
    )
    p.add_argument(
        "--style-images", default=None, help="folder of style reference images (with --prompts-file)"
    )
    p.add_argument(
        "--reward",
        default="auto",
        choices=["auto", "world", "clip"],
        help="world: the model folder's content classifier; clip: CLIP-T (--clip); auto: clip with --clip",
    )
    p.add_argument("--clip", default=None, help="CLIP folder or hub id for the CLIP-T reward")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps; default: 200")
    p.add_argument("--pairs", type=int, default=None, help="(prompt, reference) items per step; default: 4")
    p.add_argument("--samples", type=int, default=None, help="images sampled per item; default: 4")
    p.add_argument("--beta", type=float, default=None, help="DPO beta; default: 0.1")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate; default: 1e-5")
    p.add_argument("--min-gap", type=float, default=None, help="least reward gap of a pair; default: 0")
    p.add_argument(
        "--reduce", default=None, choices=["sum", "mean"], help="sequence log-likelihood; default: sum"
    )
    p.add_argument("--train-resampler", action="store_true", help="train the resampler too (else LoRA only)")
    p.add_argument("--cfg", type=float, default=None, help="rollouts' guidance; default: 3")
    p.add_argument(
        "--noise-strength", type=float, default=None, help="noise on the style tokens; default: 0.3"
    )
    p.add_argument("--seed", type=int, default=0, help="data and sampling seed")
    p.add_argument("--quick", action="store_true", help="a 2-step smoke run (2 items x 2 samples)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="cpu, cuda; default: cuda if available")
    p.set_defaults(func=cmd_train_dpo)


def cmd_train_dpo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from scalestyle.eval import protocols
    from scalestyle.images import load_image
    from scalestyle.locate import model_folder
    from scalestyle.method.stylear import make_encoder
    from scalestyle.models.stylear import StyleARAdapter, StyleARSettings
    from scalestyle.pipeline import Pipeline
    from scalestyle.train.stylear_dpo import (
        ClipTReward,
        ContentJudgeReward,
        FolderPreferences,
        PreferenceReward,
        PreferenceSource,
        StyleARDPOConfig,
        WorldPreferences,
        train_stylear_dpo,
    )

    cfg = StyleARDPOConfig(seed=args.seed)
    if args.quick:
        cfg = replace(cfg, steps=2, pairs=2, samples=2, log_every=1, ckpt_every=1)
    overrides = {
        "steps": args.steps,
        "pairs": args.pairs,
        "samples": args.samples,
        "beta": args.beta,
        "lr": args.lr,
        "min_gap": args.min_gap,
        "reduce": args.reduce,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.train_resampler:
        cfg = replace(cfg, train_resampler=True)
    if args.cfg is not None:
        cfg = replace(cfg, sampling=replace(cfg.sampling, cfg=args.cfg))
    if args.noise_strength is not None:
        cfg = replace(cfg, style=StyleARSettings(noise_strength=args.noise_strength))
    if bool(args.prompts_file) != bool(args.style_images):
        raise ValueError("--prompts-file and --style-images go together (without both: the world)")
    kind = args.reward
    if kind == "auto":
        kind = "clip" if args.clip else "world"
    if kind == "clip" and not args.clip:
        raise ValueError("--reward clip needs --clip (a CLIP folder or hub id)")
    if kind == "world" and args.prompts_file:
        raise ValueError("--reward world judges world contents: with --prompts-file give --clip")
    source: PreferenceSource = WorldPreferences()
    if args.prompts_file:
        prompts = protocols.read_prompt_file(args.prompts_file)
        images = [load_image(path) for path, _ in protocols.style_folder(args.style_images).values()]
        source = FolderPreferences(tuple(prompts), tuple(images))
    adapter = StyleARAdapter.load(args.adapter)  # a bad folder is an error before the model loads
    reward: PreferenceReward
    if kind == "world":
        reward = ContentJudgeReward.load(model_folder(args.model))
    pipe = Pipeline.load(args.model, device=args.device)
    if kind == "clip":
        from scalestyle.metrics import CLIPScorer

        reward = ClipTReward(CLIPScorer.from_pretrained(args.clip, device=pipe.device))
    adapter = adapter.to(pipe.device)
    encoder = make_encoder(adapter, pipe)
    trained = train_stylear_dpo(
        pipe, adapter, encoder, cfg, source, reward, Path(args.work_dir), progress=not args.quiet
    )
    out = trained.save(args.out)
    if not args.quiet:
        sys.stderr.write(f"wrote the DPO StyleAR adapter {out} ({cfg.steps} steps, beta {cfg.beta})\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from scalestyle.data.folder import ImageFolder
    from scalestyle.models.bsq_vae import BSQVAE
    from scalestyle.models.infinity import Infinity
    from scalestyle.models.stylear import (
        CLIP_VIT_H,
        CLIPImageEncoder,
        ImageEncoder,
        StyleARAdapter,
        StyleARConfig,
        VAEImageEncoder,
    )
    from scalestyle.pipeline import Pipeline
    from scalestyle.train.stylear import (
        FolderSource,
        Source,
        StyleARTrainConfig,
        train_stylear,
        world_sources,
    )

    cfg = StyleARTrainConfig(mix=args.mix, seed=args.seed)
    if args.quick:
        cfg = replace(cfg, steps=2, batch_size=2, log_every=1, ckpt_every=1)
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "cond_drop": args.cond_drop,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    pipe = Pipeline.load(args.model, device=args.device)
    if not isinstance(pipe.transformer, Infinity) or not isinstance(pipe.vae, BSQVAE):
        raise ValueError(f"StyleAR trains on Infinity models; {pipe.model_name} is not one")
    h, w = pipe.schedule_for().last_grid
    size_hw = (h * pipe.stride, w * pipe.stride)
    raw: Source | None
    if args.data:
        stylized: Source = FolderSource(ImageFolder(args.data, size_hw))
        raw = FolderSource(ImageFolder(args.raw_data, size_hw)) if args.raw_data else None
    else:
        if args.raw_data:
            raise ValueError("--raw-data goes with --data (the world brings its own raw images)")
        stylized, raw = world_sources(size_hw[0])
    source = None
    encoder: ImageEncoder = VAEImageEncoder(pipe.vae, size_hw[0])
    if args.encoder == "clip":
        source = args.encoder_source or CLIP_VIT_H
        encoder = CLIPImageEncoder.from_pretrained(source, device=pipe.device)
    adapter_cfg = StyleARConfig(
        text_width=pipe.transformer.cfg.text_channels,
        encoder=args.encoder,
        encoder_width=encoder.width,
        encoder_source=source,
        num_queries=args.queries,
        depth=args.depth,
        heads=args.heads,
        dim_head=max(1, args.width // args.heads),
        width=args.width,
        join=args.join,
        lora_rank=args.lora_rank,
    )
    adapter = StyleARAdapter(adapter_cfg).to(pipe.device)
    trained = train_stylear(
        pipe, adapter, encoder, cfg, stylized, raw, Path(args.work_dir), progress=not args.quiet
    )
    out = trained.save(args.out)
    if not args.quiet:
        sys.stderr.write(f"wrote the StyleAR adapter {out} ({cfg.steps} steps)\n")
    return 0
