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

from scalestyle.cli import _at_least, _Formatter, _quiet


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
