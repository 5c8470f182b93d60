"""The StyleVAR GRPO command (issue 15): ``scalestyle train stylevar-grpo``.

Kept apart from :mod:`scalestyle.cli`, which only registers the parser and dispatches here
(:func:`add_train_parser`); errors are ``ValueError`` lines, as the CLI prints them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any


def add_train_parser(
    train_sub: Any, formatter: type[argparse.HelpFormatter], at_least: Callable[[int], Callable[[str], int]]
) -> None:
    """``train stylevar-grpo`` on the ``train`` subparsers, with the CLI's formatter and integer check."""
    from scalestyle.cli import add_triplet_source

    p = train_sub.add_parser(
        "stylevar-grpo",
        help="StyleVAR GRPO with LoRA, PANW and the iterative merge on style-transfer triplets",
        formatter_class=formatter,
    )
    add_triplet_source(p)
    p.add_argument(
        "--init",
        default=None,
        help="a StyleVAR folder (its SFT checkpoint where it has one; stylevar-demo: the shipped demo) or a "
        "preset (random weights; random:NAME where a folder has the preset's name); "
        "default with --quick: stylevar-tiny",
    )
    p.add_argument(
        "--reward",
        choices=["dreamsim", "target", "world"],
        default=None,
        help="-5 DreamSim to the target (the authors'; needs the dreamsim package), SSIM minus pixel L2 to "
        "the target, or the world's classifiers; default: world with --world (target with --world-remix), "
        "else dreamsim",
    )
    p.add_argument("--out", required=True, help="StyleVAR folder to write (variant grpo, LoRA merged)")
    p.add_argument("--work-dir", default="runs/stylevar-grpo", help="checkpoint and log (resumable)")
    p.add_argument("--steps", type=at_least(1), default=None, help="optimizer steps; default: 1000")
    p.add_argument("--group-size", type=at_least(2), default=None, help="rollouts per triplet; default: 16")
    p.add_argument("--batch-size", type=at_least(1), default=None, help="triplets per step; default: 16")
    p.add_argument("--lr", type=float, default=None, help="learning rate; default: 1e-5")
    p.add_argument(
        "--top-k",
        type=at_least(0),
        default=None,
        help="rollout top-k; default: 900 (all of a smaller codebook)",
    )
    p.add_argument("--device", default=None, help="cuda or cpu; default: cuda when present")
    p.add_argument("--quick", action="store_true", help="two steps of one triplet, two rollouts (smoke test)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from scalestyle.cli import triplet_source
    from scalestyle.pipeline import bundled_demo_dir, pick_device
    from scalestyle.train.rewards import DreamSimReward, PerceptualTargetReward, Reward, WorldJudgeReward
    from scalestyle.train.stylevar_grpo import GRPOConfig, init_preset, train_stylevar_grpo

    read_triplets = triplet_source(args)
    if args.world_remix and args.reward == "world":
        # the judges would score a remixed look against whichever named style it happens to resemble
        raise ValueError("--world-remix takes --reward target: a remixed look's style has no name to judge")
    if args.init is None and not args.quick:
        raise ValueError("give --init: a StyleVAR folder (GRPO starts from its SFT checkpoint) or a preset")
    init = args.init or "stylevar-tiny"
    cfg = GRPOConfig.quick() if args.quick else GRPOConfig()
    preset = init_preset(init)
    # the authors' top-k 900 is of a 4096-entry codebook; a smaller one keeps every entry
    vocab = preset.transformer.vocab_size
    top_k = args.top_k if args.top_k is not None else (cfg.top_k if cfg.top_k <= vocab else 0)
    overrides = {
        "steps": args.steps,
        "group_size": args.group_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
    }
    cfg = replace(cfg, top_k=top_k, **{k: v for k, v in overrides.items() if v is not None})
    # the data is read (and checked) before any weights load
    data = read_triplets(preset.image_size)
    device = pick_device(args.device)
    kind = args.reward or ("target" if args.world_remix else "world" if args.world else "dreamsim")
    reward: Reward
    if kind == "dreamsim":
        try:
            reward = DreamSimReward.from_pretrained(device=device)
        except ImportError as err:
            raise ValueError(f"--reward dreamsim: {err}") from None
    elif kind == "target":
        reward = PerceptualTargetReward()
    else:
        reward = WorldJudgeReward.load(bundled_demo_dir())
    out = train_stylevar_grpo(
        args.out, args.work_dir, cfg, data, init=init, reward=reward, progress=not args.quiet, device=device
    )
    if not args.quiet:
        sys.stderr.write(f"wrote the StyleVAR folder {out} ({kind} reward, {cfg.steps} steps)\n")
    return 0
