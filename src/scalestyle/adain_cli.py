"""The AdaIN commands (issue 15): ``scalestyle transfer --method adain`` and ``scalestyle train adain``.

Kept apart from :mod:`scalestyle.cli`, which registers the flags and dispatches here; errors are
:class:`scalestyle.cli.CliError` or ``ValueError`` lines, as the CLI prints them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from scalestyle.cli import CliError, _at_least, _device, _Formatter, _out_png, _quiet


def add_transfer_args(p: argparse.ArgumentParser) -> None:
    """The flags ``transfer`` gains for AdaIN."""
    p.add_argument(
        "--method",
        choices=["stylevar", "adain"],
        default="stylevar",
        help="stylevar, or adain (Huang & Belongie 2017: --model a folder with vgg_normalised.pth + "
        "decoder.pth or from `scalestyle train adain`, default $SCALESTYLE_HOME/adain; --strength in "
        "[-1, 0] is alpha - 1)",
    )
    p.add_argument(
        "--size",
        type=_at_least(16),
        default=None,
        help="AdaIN: resize content and style to this shorter side first; default: the images' own sizes",
    )


def run_transfer(args: argparse.Namespace) -> int:
    """``transfer --method adain``; with ``--method stylevar`` it only refuses AdaIN's ``--size``."""
    from scalestyle.adain_transfer import AdaINPipeline, adain_alpha
    from scalestyle.images import load_image
    from scalestyle.locate import model_folder
    from scalestyle.metadata import write_png

    if args.double_append:
        raise CliError("--double-append is a StyleVAR setting, not AdaIN's")
    adain_alpha(args.strength)  # the range check, before anything loads
    out = _out_png(args.out, args.overwrite)
    args.device = _device(args.device)
    content, style = load_image(args.content), load_image(args.style)
    if args.random_weights:
        if args.model:
            raise CliError("--method adain --random-weights builds the public model's size; drop --model")
        pipe = AdaINPipeline.random(seed=args.seed, device=args.device, size=args.size)
    else:
        pipe = AdaINPipeline.load(model_folder(args.model or "adain"), device=args.device, size=args.size)
    result = pipe(content, style, strength=args.strength)
    write_png(result.images[0], out, result.metadata[0])
    if not args.quiet:
        sys.stderr.write(f"wrote {out} ({result.images[0].width}x{result.images[0].height})\n")
    return 0


def check_stylevar_args(args: argparse.Namespace) -> None:
    """What ``transfer --method stylevar`` must not be given."""
    if args.size is not None:
        raise CliError("--size is an AdaIN setting (--method adain); StyleVAR draws at its model's size")


def add_train_parser(train_sub: Any) -> None:
    """``train adain`` under the ``train`` subcommands."""
    p = train_sub.add_parser(
        "adain",
        help="the AdaIN baseline on the procedural world (training styles)",
        formatter_class=_Formatter,
    )
    p.add_argument("--out", required=True, help="AdaIN folder to write (config.json + adain.safetensors)")
    p.add_argument("--work-dir", default="runs/adain", help="checkpoints and logs (resumable)")
    p.add_argument(
        "--encoder-steps",
        type=_at_least(0),
        default=None,
        help="encoder pretraining steps; default: the recipe's",
    )
    p.add_argument("--steps", type=_at_least(0), default=None, help="decoder steps; default: the recipe's")
    p.add_argument(
        "--batch-size", type=_at_least(1), default=None, help="decoder images per step; default: the recipe's"
    )
    p.add_argument("--quick", action="store_true", help="a few steps of each stage, tiny widths (smoke test)")
    _quiet(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from scalestyle.train.adain import AdaINTrainConfig, train_adain

    cfg = AdaINTrainConfig.quick() if args.quick else AdaINTrainConfig()
    given = {"encoder_steps": args.encoder_steps, "steps": args.steps, "batch_size": args.batch_size}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    train_adain(Path(args.out), Path(args.work_dir), cfg, progress=not args.quiet)
    sys.stderr.write(f"wrote the AdaIN folder {args.out}\n")
    return 0
