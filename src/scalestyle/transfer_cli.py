"""``scalestyle transfer`` (issue 15): one content image redrawn in a style image's style, or a resumable
batch over folders of contents x styles, with StyleVAR or the AdaIN baseline.

Kept apart from :mod:`scalestyle.cli`, which registers the parser; the batch folder works as `stylize`'s
(:mod:`scalestyle.batch`: one PNG a job named by slugs and a hash, ``manifest.jsonl``, finished images
kept when their recorded settings are the run's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from PIL import Image

from scalestyle.adain_cli import add_transfer_args
from scalestyle.cli import (
    CliError,
    _check_one_job,
    _check_outputs,
    _device,
    _out_png,
    _overwrite,
    _progress,
    _quiet,
    _run_batch_dir,
)
from scalestyle.config import TRANSFER_SAMPLING, SamplingConfig

# (content, style, seed, on_scale) -> (image, its metadata)
Transfer = Callable[
    [Image.Image, Image.Image, int, Callable[..., None]], tuple[Image.Image, Mapping[str, Any]]
]


def add_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    from scalestyle.config import STYLEVAR_PRESETS

    p = sub.add_parser(
        "transfer",
        help="redraw content images in a style image's style (StyleVAR, or the AdaIN baseline)",
        formatter_class=formatter,
    )
    add_transfer_args(p)
    p.add_argument(
        "--content",
        action="append",
        required=True,
        help="a content image, or a folder of them; repeatable (a batch: every content x every style)",
    )
    p.add_argument(
        "--style",
        action="append",
        required=True,
        help="a style reference image, or a folder of them; repeatable",
    )
    p.add_argument("--out", default=None, help="output .png for one content and one style")
    p.add_argument(
        "--out-dir", default=None, help="output folder for a batch (resumable: finished images are kept)"
    )
    p.add_argument(
        "--strength", type=float, default=0.0, help="style strength in [-1, 1] (shifts every alpha)"
    )
    p.add_argument(
        "--model",
        default=None,
        help="StyleVAR folder (from `scalestyle download stylevar`; stylevar-demo: the one shipped for the "
        f"demo world); with --random-weights a preset ({', '.join(STYLEVAR_PRESETS)}); default: "
        "$SCALESTYLE_HOME/stylevar",
    )
    p.add_argument(
        "--variant",
        choices=["grpo", "sft"],
        default=None,
        help="which released checkpoint; default: a trained folder's own, else grpo",
    )
    p.add_argument(
        "--double-append", action="store_true", help="sample with the authors' KV cache (history keys twice)"
    )
    p.add_argument("--random-weights", action="store_true", help="a preset with random weights (timing)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1; default: cuda if available")
    p.add_argument("--seed", type=int, default=TRANSFER_SAMPLING.seed, help="random seed of the sampler")
    p.add_argument("--cfg", type=float, default=TRANSFER_SAMPLING.cfg, help="CFG ramp on the style (0: off)")
    p.add_argument("--top-k", type=int, default=TRANSFER_SAMPLING.top_k, help="top-k sampling (0: off)")
    p.add_argument("--top-p", type=float, default=TRANSFER_SAMPLING.top_p, help="nucleus sampling (1: off)")
    _overwrite(p)
    _quiet(p)
    p.set_defaults(func=cmd_transfer)


def _check(args: argparse.Namespace) -> dict[str, Any]:
    """Every flag checked before a model loads; returns the settings every image depends on but its job."""
    from scalestyle.adain_transfer import adain_alpha

    if args.method == "adain":
        if args.double_append:
            raise CliError("--double-append is a StyleVAR setting, not AdaIN's")
        if args.random_weights and args.model:
            raise CliError("--method adain --random-weights builds the public model's size; drop --model")
        adain_alpha(args.strength)
    else:
        if args.size is not None:
            raise CliError("--size is an AdaIN setting (--method adain); StyleVAR draws at its model's size")
        if not -1 <= args.strength <= 1:
            raise CliError(f"--strength must be in [-1, 1], got {args.strength}")
    model = args.model or ("adain" if args.method == "adain" else "stylevar")
    if Path(model).is_dir():
        model = str(Path(model).resolve())
    settings: dict[str, Any] = {
        "method": args.method,
        "model": f"{model} (random weights)" if args.random_weights else model,
        "strength": args.strength,
    }
    if args.method == "adain":
        settings["size"] = args.size
    else:
        sampling = asdict(_sampling(args, args.seed))
        sampling.pop("seed")  # part of each job
        settings |= {"variant": args.variant, "double_append": args.double_append, "sampling": sampling}
    return settings


def _sampling(args: argparse.Namespace, seed: int) -> SamplingConfig:
    return replace(TRANSFER_SAMPLING, seed=seed, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)


def _load(args: argparse.Namespace) -> tuple[Transfer, int]:
    """The method's transfer function and the scales it draws (AdaIN: none)."""
    from scalestyle.locate import model_folder

    if args.method == "adain":
        from scalestyle.adain_transfer import AdaINPipeline

        if args.random_weights:
            adain = AdaINPipeline.random(seed=args.seed, device=args.device, size=args.size)
        else:
            adain = AdaINPipeline.load(
                model_folder(args.model or "adain"), device=args.device, size=args.size
            )

        def run_adain(
            content: Image.Image, style: Image.Image, seed: int, on_scale: Callable[..., None]
        ) -> tuple[Image.Image, Mapping[str, Any]]:
            result = adain(content, style, strength=args.strength)
            return result.images[0], result.metadata[0]

        return run_adain, 0
    from scalestyle.transfer import TransferPipeline

    if args.random_weights:
        pipe = TransferPipeline.random(args.model or "stylevar-d20", seed=args.seed, device=args.device)
    else:
        pipe = TransferPipeline.load(
            model_folder(args.model or "stylevar"),
            variant=args.variant,
            device=args.device,
            double_append=args.double_append,
        )

    def run_stylevar(
        content: Image.Image, style: Image.Image, seed: int, on_scale: Callable[..., None]
    ) -> tuple[Image.Image, Mapping[str, Any]]:
        result = pipe(
            content, style, strength=args.strength, sampling=_sampling(args, seed), on_scale=on_scale
        )
        return result.images[0], result.metadata[0]

    return run_stylevar, pipe.pipe.schedule_for().num_scales


def cmd_transfer(args: argparse.Namespace) -> int:
    from scalestyle.batch import TransferJob, image_files, make_transfer_jobs
    from scalestyle.images import load_image
    from scalestyle.metadata import write_png

    settings = _check(args)
    _check_outputs(args, "a batch")
    contents, styles = image_files(args.content, "--content"), image_files(args.style, "--style")
    jobs = make_transfer_jobs(contents, styles, args.seed)
    show = not args.quiet
    args.device = _device(args.device)
    loaded: list[tuple[Transfer, int]] = []

    def make(
        job: TransferJob, style: Image.Image | None, bars: bool
    ) -> tuple[Image.Image, Mapping[str, Any]]:
        if not loaded:
            loaded.append(_load(args))
        transfer, steps = loaded[0]
        content = load_image(job.content_file)
        style = style if style is not None else load_image(job.style_file)
        image, meta = transfer(content, style, job.seed, _progress(steps, "scales", bars and steps > 0))
        return image, {**meta, "content_file": job.content_file}

    if args.out:
        _check_one_job(jobs)
        out = _out_png(args.out, args.overwrite)
        image, meta = make(jobs[0], None, show)
        write_png(image, out, {**meta, "style_file": jobs[0].style_file})
        if show:
            sys.stderr.write(f"wrote {out} ({image.width}x{image.height})\n")
        return 0
    return _run_batch_dir("transfer", args, jobs, settings, make)
