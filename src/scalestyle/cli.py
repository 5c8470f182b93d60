"""The `scalestyle` command line: a thin layer over the Python API with the same argument names.

Every user error (bad flag, bad preset, missing weights, unwritable path, empty prompt) ends in one line on
stderr (``scalestyle: error: ...``) and exit status 2, before any model loads where the error allows;
warnings are one line each (``scalestyle: warning: ...``); progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from scalestyle.config import PRESETS, SamplingConfig, parse_int_list
from scalestyle.schedules import PN_NUM_SCALES, parse_aspect

if TYPE_CHECKING:
    from PIL import Image

    from scalestyle.analysis.pairs import PromptPair
    from scalestyle.batch import J, StyleJob
    from scalestyle.data.triplets import TripletData
    from scalestyle.method.style import StyleConfig, StylePipeline
    from scalestyle.pipeline import Pipeline

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"scalestyle: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


class _Formatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the text already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and _shows_default(action.default) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _shows_default(value: object) -> bool:
    """Whether a default says something (0 does; None, an off switch and an empty list do not)."""
    return value is not None and value is not False and value != [] and value is not argparse.SUPPRESS


# -- argument checks (all before any model loads) ----------------------------------------------------------


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _int_list(name: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            return parse_int_list(text, name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _text(value: str | None, flag: str) -> str | None:
    if value is not None and not value.strip():
        raise CliError(f"{flag} must be non-empty text")
    return value


def _out_png(text: str, overwrite: bool) -> Path:
    """A .png path that can be written: its folder exists and is writable, it is no folder itself, and an
    existing file is replaced only with --overwrite."""
    import os

    path = Path(text)
    if path.is_dir():
        raise CliError(f"--out {path} is a folder; name a .png file (or use --out-dir for several images)")
    if path.suffix.lower() != ".png":
        raise CliError(f"--out must name a .png file, got {text!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"cannot write {path}: folder {parent} does not exist")
    if path.exists() and not overwrite:
        raise CliError(f"{path} exists; pass --overwrite to replace it")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"cannot write {path}: permission denied")
    return path


def _device(name: str | None) -> str | None:
    """``name`` when this machine has that device (None: the pipeline's choice)."""
    if name is None:
        return None
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CliError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise CliError(f"--device {name}: only cpu and cuda devices are supported")
    return name


def _sampling(args: argparse.Namespace, h_div_w: float) -> SamplingConfig:
    """The sampling flags as one config (the names of the flags are the config's fields)."""
    return SamplingConfig(
        cfg=args.cfg,
        tau=args.tau,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        h_div_w=h_div_w,
        pn=args.pn,
        more_smooth=args.more_smooth,
    )


def _style_config(args: argparse.Namespace) -> StyleConfig:
    from scalestyle.method.style import StyleConfig

    base = StyleConfig.ablation(args.ablation)
    return replace(
        base,
        key_steps=args.key_steps,
        fine_steps=args.fine_steps,
        convention=args.steps_convention,
        aqs_granularity=args.aqs_granularity,
        prune=not args.no_prune,
        init=base.init and not args.no_init,
        ksas=base.ksas and not args.no_ksas,
        aqs=base.aqs and not args.no_aqs,
    )


def _load(args: argparse.Namespace) -> Pipeline:
    from scalestyle.pipeline import Pipeline

    random_weights = getattr(args, "random_weights", False)
    if random_weights and args.model in PRESETS and not getattr(args, "quiet", False):
        from scalestyle.bench import random_build_summary

        sys.stderr.write(random_build_summary(args.model) + "\n")
    pipe = Pipeline.load(args.model, device=args.device, random_weights=random_weights)
    from scalestyle import subject_cli

    return subject_cli.with_subjects(pipe, getattr(args, "subject_adapters", None))


def _note_references(args: argparse.Namespace) -> None:
    """A line per reference saying whether it lies in the world a demo model knows (models of other images
    ship no reference fit, and say nothing)."""
    from scalestyle.eval.reference_fit import ReferenceFit
    from scalestyle.images import load_image
    from scalestyle.locate import model_folder
    from scalestyle.stylear_cli import parse_weighted_style

    named = dict.fromkeys(parse_weighted_style(s)[0] for s in args.style or ())
    files = [f for f in named if Path(f).is_file()]
    fit = ReferenceFit.for_model(model_folder(args.model)) if files else None
    if fit is None:
        return
    for name in files:
        sys.stderr.write(fit.check(load_image(name)).message(name) + "\n")


def _model_label(args: argparse.Namespace) -> str:
    """The --model value as batch settings record it (folders by absolute path)."""
    model = args.model or "demo"
    if Path(model).is_dir():
        model = str(Path(model).resolve())
    for folder in getattr(args, "subject_adapters", None) or ():
        model += f" + {Path(folder).resolve()}"
    return f"{model} (random weights)" if args.random_weights else model


def _progress(total: int, desc: str, enabled: bool, unit: str = "scale") -> Callable[..., None]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, file=sys.stderr)

    def step(*_event: object) -> None:
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return step


def _counter(desc: str, enabled: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``progress(done, total)`` bar and the function that closes it."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="image", disable=not enabled, leave=False, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return progress, bar.close


def _check_outputs(args: argparse.Namespace, batch: str) -> None:
    """``--out`` or ``--out-dir``, one of the two (``batch`` says what a folder is for)."""
    if args.out and args.out_dir:
        raise CliError("give either --out FILE.png (one image) or --out-dir DIR (a batch), not both")
    if not args.out and not args.out_dir:
        raise CliError(f"give --out FILE.png (or --out-dir DIR for {batch})")


def _check_one_job(jobs: Sequence[object]) -> None:
    if len(jobs) > 1:
        raise CliError(f"{len(jobs)} images to make: give --out-dir DIR instead of --out")


def _run_batch_dir(
    desc: str,
    args: argparse.Namespace,
    jobs: Sequence[J],
    settings: Mapping[str, Any],
    make: Callable[[J, Image.Image | None, bool], tuple[Image.Image, Mapping[str, Any]]],
) -> int:
    """A resumable ``--out-dir`` batch of `stylize` or `transfer`: ``make(job, style image, bars)`` for
    each job not done yet (per-scale bars when there is one), a counter over several, a summary line."""
    from scalestyle.batch import MANIFEST_FILE, open_batch, run_batch

    show = not args.quiet
    with open_batch(Path(args.out_dir), jobs, settings, overwrite=args.overwrite) as plan:
        progress, close = _counter(desc, show and len(plan.todo) > 1)
        made = run_batch(
            plan, lambda job, img: make(job, img, show and len(plan.todo) == 1), progress=progress
        )
        close()
    if show:
        sys.stderr.write(
            f"wrote {made} image(s), skipped {len(plan.done)} already done; "
            f"job -> file in {plan.out_dir / MANIFEST_FILE}\n"
        )
    return 0


# -- commands ----------------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from scalestyle.metadata import write_png

    # the conditioning flags go to the pipeline as they are; it says which ones its model takes
    inputs = {dest: getattr(args, dest) for dest in args.conditioning if getattr(args, dest) is not None}
    if not inputs:
        raise CliError("give --prompt TEXT (or --class-label N for a class-conditional model)")
    for dest, value in inputs.items():
        if isinstance(value, str):
            _text(value, "--" + dest.replace("_", "-"))
    sampling = _sampling(args, parse_aspect(args.aspect))
    out = _out_png(args.out, args.overwrite)
    args.device = _device(args.device)
    from scalestyle import subject_cli

    args.subject_adapters = subject_cli.subject_adapters(args.adapter)
    pipe = _load(args)
    schedule = pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn)
    on_scale = _progress(schedule.num_scales, "generate", not args.quiet)
    result = pipe(**inputs, sampling=sampling, on_scale=on_scale)
    # several class labels give several images: OUT, then OUT's stem with -1, -2, ... for the others
    outs = [out] + [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, len(result.images))]
    for image, path, meta in zip(result.images, outs, result.metadata, strict=True):
        write_png(image, _out_png(str(path), args.overwrite) if path != out else path, meta)
    if not args.quiet:
        size = f"{result.images[0].width}x{result.images[0].height}"
        sys.stderr.write(f"wrote {', '.join(map(str, outs))} ({size})\n")
    return 0


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = [args.prompt] if args.prompt is not None else []
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise CliError(f"--prompts {path}: no such file")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise CliError("give a non-empty --prompt or a --prompts FILE with one prompt per line")
    return prompts


def cmd_stylize(args: argparse.Namespace) -> int:
    from scalestyle.batch import batch_settings, make_jobs
    from scalestyle.metadata import write_png
    from scalestyle.method.style import StylePipeline

    prompts = _prompts(args)
    if not args.style and not args.text_only:
        raise CliError("give a reference image with --style REF.png (or --text-only to use the style prompt)")
    if args.style and args.text_only:
        raise CliError("--text-only takes no --style image")
    if args.text_only and args.style_prompt is None:
        raise CliError("--text-only needs --style-prompt: the style is then given in words only")
    _text(args.style_prompt, "--style-prompt")
    from scalestyle import subject_cli

    args.adapter, args.subject_adapters = subject_cli.split_adapters(args.adapter)
    if not args.quiet:
        _note_references(args)
    if args.method == "stylear":
        from scalestyle import stylear_cli

        args.device = _device(args.device)
        sampling = _sampling(args, parse_aspect(args.aspect))
        return stylear_cli.stylize(args, prompts, sampling, lambda: _load(args))
    if args.adapter:
        raise CliError(f"--adapter {args.adapter} is a StyleAR adapter: it goes with --method stylear")
    _check_outputs(args, "several images")
    sampling = _sampling(args, parse_aspect(args.aspect))
    style_cfg = _style_config(args)
    args.device = _device(args.device)
    jobs = make_jobs(prompts, args.style, args.seed)
    show = not args.quiet
    styler: list[StylePipeline] = []

    def make(job: StyleJob, image: Image.Image | None, bars: bool) -> tuple[Image.Image, Mapping[str, Any]]:
        if not styler:
            styler.append(StylePipeline(_load(args)))
        pipe = styler[0].pipe
        steps = pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn).num_scales
        result = styler[0](
            job.prompt,
            image,
            style_prompt=args.style_prompt,
            style=style_cfg,
            sampling=replace(sampling, seed=job.seed),
            on_scale=_progress(steps, "scales", bars),
        )
        return result.images[0], result.metadata[0]

    if args.out:
        _check_one_job(jobs)
        from scalestyle.images import load_image

        out = _out_png(args.out, args.overwrite)
        job = jobs[0]
        image, meta = make(job, load_image(job.style_file) if job.style_file else None, show)
        write_png(image, out, {**meta, "style_file": job.style_file or ""})
        if show:
            sys.stderr.write(f"wrote {out}\n")
        return 0
    settings = batch_settings(
        model=_model_label(args), style_prompt=args.style_prompt, style=style_cfg, sampling=sampling
    )
    return _run_batch_dir("stylize", args, jobs, settings, make)


def cmd_bench(args: argparse.Namespace) -> int:
    from scalestyle.bench import bench_generate, bench_stylize

    _text(args.prompt, "--prompt")
    _text(args.style_prompt, "--style-prompt")
    # checked here, before a large model is built for minutes
    sampling = SamplingConfig(cfg=args.cfg, pn=args.pn, top_k=args.top_k)
    style_cfg = _style_config(args) if args.mode == "stylize" else None
    args.device = _device(args.device)
    pipe = _load(args)
    calls = (args.runs + args.warmup) * (2 if args.mode == "stylize" else 1)
    progress = _progress(calls, f"bench {args.mode}", not args.json, unit="run")
    if args.mode == "stylize":
        report = bench_stylize(
            pipe,
            prompt=args.prompt,
            style_prompt=args.style_prompt,
            cfg=sampling.cfg,
            pn=sampling.pn,
            runs=args.runs,
            warmup=args.warmup,
            style=style_cfg,
            progress=progress,
        )
        line = (
            f"plain {report['plain_seconds_per_image']:.3f} s/image, stylize "
            f"{report['stylize_seconds_per_image']:.3f} s/image, ratio {report['ratio']:.2f}x"
        )
    else:
        report = bench_generate(
            pipe,
            prompt=args.prompt,
            cfg=sampling.cfg,
            pn=sampling.pn,
            runs=args.runs,
            warmup=args.warmup,
            batch=args.batch,
            class_label=args.class_label,
            top_k=args.top_k,
            progress=progress,
        )
        line = f"{report['seconds_per_image']:.3f} s/image, {report['tokens_per_second']:.0f} tokens/s"
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(
            f"{report['model']} {report['size_hw'][0]}x{report['size_hw'][1]} pn {report['pn']}"
            f" cfg {report['cfg']} on {report['machine']['device']}: {line},"
            f" peak {report['peak_memory_mb']:.0f} MB\n"
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from scalestyle.train.demo import DemoTrainConfig, train_demo
    from scalestyle.train.folder import FolderTrainConfig, train_on_folder

    if args.what == "demo":
        cfg: DemoTrainConfig | FolderTrainConfig = (
            DemoTrainConfig.quick() if args.quick else DemoTrainConfig()
        )
    else:
        cfg = FolderTrainConfig(
            init=args.init,
            text_encoder=args.text_encoder,
            uncaptioned="empty" if args.allow_uncaptioned else "error",
        )
        if args.quick:
            cfg = replace(
                cfg,
                vae=replace(cfg.vae, steps=2, batch_size=2, log_every=1, ckpt_every=1),
                transformer=replace(cfg.transformer, steps=2, batch_size=2, log_every=1, ckpt_every=1),
            )
    if args.preset:
        if args.init:
            raise CliError("--preset is for training from scratch; --init brings its own architecture")
        cfg = replace(cfg, preset=args.preset)
    parts = [("vae", args.vae_steps), ("transformer", args.transformer_steps)]
    if isinstance(cfg, DemoTrainConfig):
        parts.append(("classifiers", args.classifier_steps))
    for part, steps in parts:
        if steps is not None:
            cfg = replace(cfg, **{part: replace(getattr(cfg, part), steps=steps)})
    # one replace, so that batch size and full rows are checked together
    overrides: dict[str, object] = {}
    if args.bsc_strength is not None:
        overrides["bsc_strength"] = args.bsc_strength
    if args.batch_size is not None:
        cfg = replace(cfg, vae=replace(cfg.vae, batch_size=args.batch_size))
        overrides["batch_size"] = args.batch_size
    if args.prefix_scales is not None or args.full_rows is not None:
        if args.prefix_scales == 0:
            overrides |= {"prefix_scales": None, "full_rows": None}
        else:
            overrides |= {"prefix_scales": args.prefix_scales, "full_rows": args.full_rows}
    if overrides:
        cfg = replace(cfg, transformer=replace(cfg.transformer, **overrides))  # type: ignore[arg-type]
    if isinstance(cfg, DemoTrainConfig):
        out = train_demo(Path(args.out), Path(args.work_dir), cfg, progress=not args.quiet)
    else:
        out = train_on_folder(args.data, Path(args.out), Path(args.work_dir), cfg, progress=not args.quiet)
    sys.stderr.write(f"wrote the model folder {out}\n")
    return 0


def cmd_train_stylevar_sft(args: argparse.Namespace) -> int:
    from scalestyle.train.stylevar import StyleVARTrainConfig, sft_start, train_stylevar_sft

    read_triplets = triplet_source(args)
    if args.init is None and not args.quick:
        raise CliError("give --init: a StyleVAR preset, a StyleVAR folder to continue or a VAR folder")
    init = args.init or "stylevar-tiny"
    cfg = StyleVARTrainConfig.quick() if args.quick else StyleVARTrainConfig()
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "alpha_jitter": args.alpha_jitter,
        "mixed_precision": args.mixed_precision,
        "scale_weighting": args.scale_weighting,
        "num_workers": args.num_workers,
        "seed": args.seed,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    # the data is read (and checked) before any weights load
    data = read_triplets(sft_start(init).preset.image_size)
    out = train_stylevar_sft(args.out, args.work_dir, cfg, data, init=init, progress=not args.quiet)
    if not args.quiet:
        sys.stderr.write(f"wrote the StyleVAR folder {out} ({len(data)} triplets, {cfg.steps} steps)\n")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from scalestyle.locate import model_folder
    from scalestyle.weights import download

    dest = Path(args.dest) if args.dest else model_folder(args.preset)
    path = download(args.preset, dest, token=args.token)
    sys.stderr.write(f"downloaded {args.preset} to {path}\n")
    return 0


def _analysis_pairs(args: argparse.Namespace) -> list[PromptPair]:
    from scalestyle.analysis import PromptPair, pair_set, read_pairs

    if bool(args.prompt) != bool(args.alt_prompt):
        raise CliError("--prompt and --alt-prompt go together (prompt A everywhere, B injected)")
    pairs: list[PromptPair] = []
    if args.prompt:
        pairs.append(PromptPair(args.prompt, args.alt_prompt, args.pair_kind))
    if args.pairs:
        pairs += read_pairs(args.pairs)
    for name in args.pair_set:
        pairs += pair_set(name, args.pairs_per_set, seed=args.pairs_seed)
    if not pairs:
        raise CliError("give --prompt A --alt-prompt B, a --pairs FILE, or a --pair-set")
    return pairs


def cmd_analyze(args: argparse.Namespace) -> int:
    from scalestyle.analysis import (
        QKVInjectionConfig,
        StepInjectionConfig,
        run_qkv_injection,
        run_step_injection,
        scale_of,
    )
    from scalestyle.analysis.scorers import analysis_scorers
    from scalestyle.batch import check_out_dir
    from scalestyle.locate import model_folder

    pairs = _analysis_pairs(args)
    seeds = args.seeds or (args.seed,)
    out_dir = Path(args.out_dir)
    check_out_dir(out_dir)
    sampling = _sampling(args, parse_aspect(args.aspect))
    common = {
        "sampling": sampling,
        "cfg_rows": args.cfg_rows,
        "convention": args.steps_convention,
        "batch": args.batch,
        "band": args.band,
        "thumb": args.thumb,
    }
    # settings are checked before the model loads; the steps need its schedule
    if args.analysis == "step-injection":
        step_cfg = StepInjectionConfig(mode=args.mode, **common)
    else:
        comps = tuple(c.strip().lower() for c in args.components.split(",") if c.strip())
        qkv_cfg = QKVInjectionConfig(components=comps, **common)
    args.device = _device(args.device)
    pipe = _load(args)
    num_scales = pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn).num_scales

    def scales(steps: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(scale_of(s, args.steps_convention, num_scales) for s in steps)

    world_dir = None if args.no_classifiers or args.random_weights else model_folder(args.model)
    scorers = analysis_scorers(world_dir, clip=args.clip, device=pipe.device)
    show = not args.quiet
    if show and not scorers:
        sys.stderr.write("no scorer (no world classifiers in the model folder, no --clip): images only\n")
    progress, close = _counter(args.analysis, show)
    if args.analysis == "step-injection":
        if args.steps:
            step_cfg = replace(step_cfg, scales=scales(args.steps))
        result = run_step_injection(
            pipe, pairs, seeds, out_dir, config=step_cfg, scorers=scorers, progress=progress
        )
    else:
        if args.steps:
            qkv_cfg = replace(qkv_cfg, ranges=tuple(scales(r) for r in args.steps))
        result = run_qkv_injection(
            pipe, pairs, seeds, out_dir, config=qkv_cfg, scorers=scorers, progress=progress
        )
    close()
    if show:
        names = ", ".join(p.name for p in result.files.values())
        sys.stderr.write(
            f"{args.analysis}: computed {result.computed} image(s), {result.skipped} already done; "
            f"{len(result.rows)} rows in {out_dir / 'rows.jsonl'}; wrote {names}\n"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scalestyle.batch import check_out_dir
    from scalestyle.eval import protocols
    from scalestyle.eval.evaluate import build_scorers, run_evaluation
    from scalestyle.locate import model_folder

    if args.protocol == "transfer":
        if args.stylear:
            raise CliError("--stylear is for --protocol procedural, finestyle or stylear")
        return _evaluate_transfer(args)
    if args.stylevar or args.adain:
        raise CliError("--stylevar and --adain are for --protocol transfer")
    # everything the user typed is checked before the model loads
    from scalestyle.eval.stylear_methods import parse_stylear_spec, select_methods

    stylears = [parse_stylear_spec(spec) for spec in args.stylear or ()]
    methods = select_methods(args.methods, stylears, default=DEFAULT_EVAL_METHODS)
    seeds = args.seeds or (args.seed,)
    contents, styles = protocols.parse_list(args.contents), protocols.parse_list(args.styles)
    if args.protocol == "procedural":
        if args.style_images or args.prompts_file:
            raise CliError(
                "--style-images and --prompts-file are for --protocol finestyle/stylear "
                "(procedural references are rendered)"
            )
        cases = protocols.procedural_cases(contents, styles, seeds)
    elif args.protocol == "stylear":
        if args.prompts_csv or args.styles_csv:
            raise CliError(
                "--prompts-csv/--styles-csv are for --protocol finestyle; stylear reads --prompts-file"
            )
        if not args.prompts_file:
            raise CliError("--protocol stylear needs --prompts-file FILE (one prompt per line)")
        cases = protocols.stylear_cases(
            protocols.read_prompt_file(args.prompts_file),
            args.style_images,
            contents=contents,
            style_ids=styles,
            seeds=seeds,
        )
    else:
        prompts_csv, styles_csv = protocols.finestyle_files(args.prompts_csv, args.styles_csv)
        fs_prompts, fs_styles = protocols.read_finestyle(prompts_csv, styles_csv)
        cases = protocols.finestyle_cases(
            fs_prompts, fs_styles, args.style_images, contents=contents, style_ids=styles, seeds=seeds
        )
    sampling = _sampling(args, parse_aspect(args.aspect))
    out_dir = Path(args.out)
    check_out_dir(out_dir)
    show = not args.quiet
    args.device = _device(args.device)
    pipe = _load(args)
    world_dir = model_folder(args.model) if args.protocol == "procedural" else None
    scorers = build_scorers(
        world_dir=world_dir,
        gram=args.gram,
        clip=args.clip,
        dino=args.dino,
        ssim=not args.no_ssim,
        device=pipe.device,
    )
    if show and world_dir is not None and scorers.judges is None:
        sys.stderr.write(f"no world classifiers in {world_dir}: ground-truth metrics skipped\n")
    progress, close = _counter("evaluate", show)
    result = run_evaluation(
        pipe,
        cases,
        out_dir,
        methods=methods,
        sampling=sampling,
        scorers=scorers,
        max_images=args.max_images,
        progress=progress,
        thumb=args.thumb,
        sheet_columns=args.sheet_columns,
    )
    close()
    if show:
        stop = " (stopped at --max-images; run again to continue)" if result.stopped else ""
        sys.stderr.write(
            f"evaluate: generated {result.computed} image(s), reused {result.reused}, "
            f"{result.skipped} row(s) already done{stop}; {len(result.rows)} rows in "
            f"{out_dir / 'rows.jsonl'}; summary in {out_dir / 'summary.md'}\n"
        )
    return 0


DEFAULT_EVAL_METHODS = "plain,prompt-only,stylealigned,a,b,c,d"
TRANSFER_EVAL_METHODS = "copy-content,ours"


STYLEVAR_SPEC_VARIANTS = ("sft", "grpo", "double-append")


@dataclass(frozen=True)
class StyleVARSpec:
    """One ``--stylevar`` method of ``evaluate --protocol transfer``; ``cfg``, ``top_k`` and ``top_p`` None
    keep the sampling defaults (``config.TRANSFER_SAMPLING``, top-k capped at the codebook)."""

    name: str
    folder: Path
    variant: str | None = None
    strength: float = 0.0
    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None


def _stylevar_spec(text: str) -> StyleVARSpec:
    """``NAME=DIR[:VARIANT][:strength=F][:cfg=F][:top_k=N][:top_p=F]``: VARIANT is a released folder's
    sft/grpo checkpoint, or double-append (the folder's own checkpoint sampled with the authors' KV cache);
    the options are ``transfer``'s --strength, --cfg, --top-k and --top-p (top_k=1 is greedy).
    ``stylevar-demo`` is the shipped demo StyleVAR."""
    from scalestyle.locate import model_folder

    usage = "--stylevar wants NAME=DIR[:VARIANT][:strength=F][:cfg=F][:top_k=N][:top_p=F]"
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise CliError(f"{usage}, got {text!r}")
    folder, variant, knobs = rest, None, {}
    # options are peeled off the end, so a folder path may itself contain ':'
    while True:
        head, colon, tail = folder.rpartition(":")
        key, eq, value = tail.partition("=")
        if not colon or not head:
            break
        if eq and key in ("strength", "cfg", "top_k", "top_p") and key not in knobs:
            try:
                knobs[key] = float(value)
            except ValueError:
                raise CliError(f"--stylevar {name}: {key} wants a number, got {value!r}") from None
        elif not eq and tail in STYLEVAR_SPEC_VARIANTS and variant is None:
            variant = tail
        else:
            break
        folder = head
    strength = knobs.get("strength", 0.0)
    if not -1 <= strength <= 1:
        raise CliError(f"--stylevar {name}: strength must be in [-1, 1], got {strength}")
    cfg = knobs.get("cfg")
    if cfg is not None and cfg < 0:
        raise CliError(f"--stylevar {name}: cfg must be >= 0, got {cfg}")
    top_k = knobs.get("top_k")
    if top_k is not None and (top_k != int(top_k) or top_k < 1):
        raise CliError(f"--stylevar {name}: top_k must be a whole number >= 1, got {top_k:g}")
    top_p = knobs.get("top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise CliError(f"--stylevar {name}: top_p must be in (0, 1], got {top_p:g}")
    path = model_folder(folder)
    if not path.is_dir():
        raise CliError(f"--stylevar {name}: no folder {folder}")
    return StyleVARSpec(name, path, variant, strength, cfg, None if top_k is None else int(top_k), top_p)


def _evaluate_transfer(args: argparse.Namespace) -> int:
    import torch

    from scalestyle.batch import check_out_dir
    from scalestyle.eval import protocols
    from scalestyle.eval.evaluate import classifier_gram
    from scalestyle.eval.transfer_eval import (
        TransferScorers,
        copy_content,
        pipeline_method,
        run_transfer_evaluation,
        training_free_method,
        world_transfer_cases,
    )
    from scalestyle.eval.world import Judges
    from scalestyle.locate import model_folder
    from scalestyle.method.style import StylePipeline
    from scalestyle.metrics import GramStyle
    from scalestyle.models.vqvae import VQVAE
    from scalestyle.transfer import TRANSFER_SAMPLING, TransferPipeline

    for flag in ("style_images", "prompts_file", "prompts_csv", "styles_csv", "dino"):
        if getattr(args, flag):
            raise CliError(f"--{flag.replace('_', '-')} is not a --protocol transfer setting")
    stylevars = [_stylevar_spec(spec) for spec in args.stylevar or ()]
    if args.adain is not None and not Path(args.adain).is_dir():
        raise CliError(f"--adain: no folder {args.adain}")
    extra = ["adain"] if args.adain else []
    default = ",".join([TRANSFER_EVAL_METHODS, *extra, *(spec.name for spec in stylevars)])
    wanted = protocols.parse_list(args.methods or default) or ()
    known = {"copy-content", "ours", *extra, *(spec.name for spec in stylevars)}
    if unknown := [m for m in wanted if m not in known]:
        raise CliError(
            f"unknown transfer method(s) {unknown}: copy-content, ours, adain (with --adain DIR), "
            "or a --stylevar NAME"
        )
    cases = world_transfer_cases(
        protocols.parse_list(args.contents), protocols.parse_list(args.styles), args.seeds or (args.seed,)
    )
    out_dir = Path(args.out)
    check_out_dir(out_dir)
    args.device = _device(args.device)
    show = not args.quiet
    world_dir = model_folder(args.model)
    judges = None
    if all((world_dir / f"{k}_classifier.safetensors").is_file() for k in ("content", "style")):
        judges = Judges.load(world_dir)
    elif show:
        sys.stderr.write(f"no world classifiers in {world_dir}: ground-truth metrics skipped\n")
    gram = None
    if args.gram == "classifier" or (args.gram == "auto" and judges is not None):
        if judges is None:
            raise CliError("--gram classifier needs the world classifiers of a demo model folder")
        gram = classifier_gram(judges)
    elif args.gram not in ("auto", "none"):
        gram = GramStyle.from_pretrained(args.gram, device=args.device)
    clip = None
    if args.clip:
        from scalestyle.metrics import CLIPScorer

        clip = CLIPScorer.from_pretrained(args.clip, device=args.device)
    scorers = TransferScorers(judges=judges, gram=gram, clip=clip)
    methods: list[Any] = []
    for name in wanted:
        if name == "copy-content":
            methods.append(copy_content())
        elif name == "adain":
            from scalestyle.adain_transfer import AdaINPipeline

            adain = AdaINPipeline.load(args.adain, device=args.device)
            methods.append(pipeline_method("adain", adain, model_name=adain.model_name))
        elif name == "ours":
            styler = StylePipeline(_load(args))
            sampling = _sampling(args, 1.0)
            methods.append(training_free_method("ours", styler, sampling=sampling))
        else:
            spec = next(s for s in stylevars if s.name == name)
            double = spec.variant == "double-append"
            pipe = TransferPipeline.load(
                spec.folder,
                variant=None if double else spec.variant,
                device=args.device,
                double_append=double,
            )
            # the authors' top-k 900 is of a 4096-entry codebook; a smaller one keeps every entry
            assert isinstance(pipe.pipe.vae, VQVAE)  # a StyleVAR folder comes with a VQ-VAE
            vocab = pipe.pipe.vae.cfg.vocab_size
            sampling = replace(TRANSFER_SAMPLING, top_k=min(TRANSFER_SAMPLING.top_k, vocab))
            if spec.top_k is not None and spec.top_k > vocab:
                raise CliError(f"--stylevar {name}: top_k {spec.top_k} exceeds the codebook's {vocab}")
            sampling = replace(
                sampling,
                cfg=sampling.cfg if spec.cfg is None else spec.cfg,
                top_k=sampling.top_k if spec.top_k is None else spec.top_k,
                top_p=sampling.top_p if spec.top_p is None else spec.top_p,
            )
            methods.append(
                pipeline_method(
                    name, pipe, model_name=pipe.pipe.model_name, strength=spec.strength, sampling=sampling
                )
            )
    progress, close = _counter("evaluate", show)
    result = run_transfer_evaluation(
        cases,
        methods,
        out_dir,
        scorers=scorers,
        device=torch.device(args.device) if args.device else None,
        max_images=args.max_images,
        progress=progress,
        thumb=args.thumb,
    )
    close()
    if show:
        stop = " (stopped at --max-images; run again to continue)" if result.stopped else ""
        sys.stderr.write(
            f"evaluate: generated {result.computed} image(s), reused {result.reused}{stop}; "
            f"{len(result.rows)} rows in {out_dir / 'rows.jsonl'}; summary in {out_dir / 'summary.md'}\n"
        )
    return 0


# -- parsers: one small function per subcommand -------------------------------------------------------------

Subparsers = Any  # argparse's _SubParsersAction is private


def _model_args(p: argparse.ArgumentParser, *, random_weights: bool = True) -> None:
    text_presets = ", ".join(name for name, preset in PRESETS.items() if not name.startswith("var-"))
    p.add_argument(
        "--model",
        default=None,
        help=f"preset ({text_presets}) or model folder; default: the bundled demo model",
    )
    if random_weights:
        p.add_argument(
            "--random-weights", action="store_true", help="build the preset with random weights (timing)"
        )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1; default: cuda if available")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    defaults = SamplingConfig()
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed of the sampler")
    p.add_argument(
        "--cfg",
        type=float,
        default=defaults.cfg,
        help="classifier-free guidance scale (Infinity: constant, 1: off; VAR: a ramp from 0 to it, 0: off)",
    )
    p.add_argument("--tau", type=float, default=defaults.tau, help="sampling temperature (Infinity only)")
    p.add_argument("--top-k", type=int, default=defaults.top_k, help="top-k sampling (0: off)")
    p.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus sampling (1: off)")
    p.add_argument("--aspect", default="1:1", help="H:W, snapped to the nearest of the 15 templates")
    p.add_argument(
        "--pn",
        default=None,
        choices=sorted(PN_NUM_SCALES),
        help="pixel budget; default: the model's",
    )
    p.add_argument(
        "--more-smooth", action="store_true", help="VAR only: Gumbel smoothing of the codes (visual only)"
    )


def _style_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ablation",
        default="d",
        choices=["a", "b", "c", "d"],
        help="(a) baseline, (b) +Init, (c) +Init+KSAS, (d) full",
    )
    p.add_argument(
        "--key-steps",
        type=_int_list("--key-steps"),
        default="2,3",  # argparse passes a string default through the type
        help="KSAS steps, e.g. 2,3 or 2-3",
    )
    p.add_argument(
        "--fine-steps",
        type=_int_list("--fine-steps"),
        default=None,
        help="AQS steps, e.g. 4-7; default: the paper's 4,5,6,7, those of them that the schedule has",
    )
    p.add_argument(
        "--steps-convention",
        default="B",
        choices=["A", "B"],
        help="B (default): steps are upstream's 0-based loop index, the start token is step 0; "
        "A: step 1 is the start token",
    )
    p.add_argument(
        "--aqs-granularity",
        default="token",
        choices=["token", "head", "layer"],
        help="what one AQS blend weight covers",
    )
    p.add_argument("--no-init", action="store_true", help="turn Feature Initialization off")
    p.add_argument("--no-ksas", action="store_true", help="turn Key Stage Attention Sharing off")
    p.add_argument("--no-aqs", action="store_true", help="turn Adaptive Query Sharing off")
    p.add_argument("--no-prune", action="store_true", help="keep every path running to the last scale")


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")


def _overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file, or --out-dir images made with other settings",
    )


def _generate_parser(sub: Subparsers) -> None:
    p = sub.add_parser("generate", help="text-to-image", formatter_class=_Formatter)
    # the model's inputs, handed to the pipeline as given (one flag a line)
    conditioning = [
        p.add_argument("--prompt", default=None, help="the caption, e.g. 'a cat'").dest,
        p.add_argument("--negative-prompt", default=None, help="caption of the CFG rows; default: none").dest,
        p.add_argument(
            "--class-label",
            type=int,
            action="append",
            default=None,
            help="class-conditional models (VAR): ImageNet class 0-999; repeat for several images",
        ).dest,
    ]
    p.add_argument("--out", required=True, help="output .png (an existing file needs --overwrite)")
    _overwrite(p)
    _quiet(p)
    _model_args(p)
    _sampling_args(p)
    from scalestyle.subject_cli import add_generate_args

    add_generate_args(p)
    p.set_defaults(func=cmd_generate, conditioning=tuple(conditioning))


def _stylize_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "stylize",
        help="generate in the style of a reference image (training-free)",
        formatter_class=_Formatter,
    )
    p.add_argument("--style", action="append", default=[], help="reference style image; repeat for several")
    p.add_argument(
        "--text-only",
        action="store_true",
        help="no reference image: the style path is generated from --style-prompt (style-aligned mode)",
    )
    p.add_argument("--prompt", default=None, help="the content, e.g. 'a cat'")
    p.add_argument("--prompts", default=None, help="file with one content prompt per line")
    p.add_argument(
        "--style-prompt",
        default=None,
        help="the style in words, e.g. 'watercolor painting style'; default with --style: 'style' "
        "(the generation path reads '<prompt> in style', the reference carries the style)",
    )
    p.add_argument(
        "--out", default=None, help="output .png for one image (an existing file needs --overwrite)"
    )
    p.add_argument(
        "--out-dir",
        default=None,
        help="output folder for batches: resumable (images made with the same settings are kept), "
        "with manifest.jsonl mapping each job to its file",
    )
    _overwrite(p)
    _style_args(p)
    _quiet(p)
    _model_args(p)
    _sampling_args(p)
    from scalestyle.stylear_cli import add_stylize_args

    add_stylize_args(p)
    p.set_defaults(func=cmd_stylize)


def _bench_parser(sub: Subparsers) -> None:
    p = sub.add_parser("bench", help="time generation", formatter_class=_Formatter)
    _model_args(p)
    defaults = SamplingConfig()
    p.add_argument("--prompt", default="a photo of a cat", help="the caption timed")
    p.add_argument("--class-label", type=int, default=207, help="the class timed (class-conditional models)")
    p.add_argument("--top-k", type=int, default=defaults.top_k, help="top-k sampling (0: off; VAR: <= V)")
    p.add_argument("--cfg", type=float, default=defaults.cfg, help="classifier-free guidance scale")
    p.add_argument(
        "--pn", default=None, choices=sorted(PN_NUM_SCALES), help="pixel budget; default: the model's"
    )
    p.add_argument("--runs", type=_at_least(1), default=5, help="timed runs (the median is reported)")
    p.add_argument("--warmup", type=_at_least(0), default=1, help="untimed runs first")
    p.add_argument("--batch", type=_at_least(1), default=1, help="images per run (generate mode)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--mode", default="generate", choices=["generate", "stylize"], help="what to time")
    p.add_argument("--style-prompt", default="watercolor painting style", help="stylize mode: the style")
    _style_args(p)
    p.set_defaults(func=cmd_bench)


def _train_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "train",
        help="train models: the demo world (`train demo`), your images (`train folder`), StyleVAR "
        "(`train stylevar-sft`)",
        formatter_class=_Formatter,
    )
    train_sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    demo = train_sub.add_parser("demo", help="the bundled demo model", formatter_class=_Formatter)
    folder = train_sub.add_parser("folder", help="a folder of captioned images", formatter_class=_Formatter)
    folder.add_argument("--data", required=True, help="images with metadata.jsonl or .txt captions")
    folder.add_argument(
        "--init", default=None, help="model folder to fine-tune (its VAE and text encoder kept)"
    )
    folder.add_argument("--text-encoder", default=None, help="from scratch: T5 hub id or directory")
    folder.add_argument(
        "--allow-uncaptioned", action="store_true", help="train images without a caption as unconditional"
    )
    demo.add_argument(
        "--classifier-steps", type=_at_least(0), default=None, help="classifier steps; default: the recipe's"
    )
    for q in (demo, folder):
        _train_model_args(q)
        q.set_defaults(func=cmd_train)
    from scalestyle import adain_cli

    adain_cli.add_train_parser(train_sub)
    _train_stylevar_sft_parser(train_sub)
    from scalestyle.stylear_cli import add_train_parser
    from scalestyle.stylevar_grpo_cli import add_train_parser as add_grpo_parser

    add_train_parser(train_sub, _Formatter)
    add_grpo_parser(train_sub, _Formatter, _at_least)
    from scalestyle import subject_cli

    subject_cli.add_train_parser(train_sub, _Formatter)


def add_triplet_source(p: argparse.ArgumentParser) -> None:
    """The triplets of `train stylevar-sft` and `train stylevar-grpo`: ``--data DIR`` or ``--world``, and
    ``--world-remix F`` (read by :func:`triplet_source`)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="an OmniStyle-150K or ImagePulse folder (repeat to join several)",
    )
    source.add_argument("--world", action="store_true", help="the procedural world's train-split triplets")
    p.add_argument(
        "--world-remix",
        type=float,
        default=0.0,
        metavar="F",
        help="with --world: the share in [0, 1) of triplets in remixed looks (unnamed styles assembled from "
        "the training looks' parts), so that the style encoder learns parts rather than 21 names",
    )


def triplet_source(args: argparse.Namespace) -> Callable[[int], TripletData]:
    """Check :func:`add_triplet_source`'s flags now, before any weights load; the function returned reads
    the triplets at a model's image size."""
    if args.world_remix and not args.world:
        raise ValueError("--world-remix is a share of --world's triplets")
    if not 0 <= args.world_remix < 1:
        raise ValueError(f"--world-remix must be in [0, 1), got {args.world_remix}")

    def read(size: int) -> TripletData:
        from scalestyle.data.triplets import triplet_folders, world_triplets

        return world_triplets(size, args.world_remix) if args.world else triplet_folders(args.data, size)

    return read


def _train_stylevar_sft_parser(train_sub: Subparsers) -> None:
    p = train_sub.add_parser(
        "stylevar-sft",
        help="StyleVAR supervised fine-tuning on style-transfer triplets",
        formatter_class=_Formatter,
    )
    add_triplet_source(p)
    p.add_argument(
        "--init",
        default=None,
        help="a StyleVAR folder to continue (a path, stylevar-demo: the shipped demo, or a downloaded "
        "model's name), a VAR folder to start from, or a StyleVAR preset (random weights; random:NAME where "
        "a folder has the preset's name); default with --quick: stylevar-tiny",
    )
    p.add_argument("--out", required=True, help="StyleVAR folder to write")
    p.add_argument("--work-dir", default="runs/stylevar-sft", help="checkpoint and log (resumable)")
    p.add_argument("--steps", type=_at_least(1), default=None, help="optimizer steps; default: 20000")
    p.add_argument("--batch-size", type=_at_least(1), default=None, help="triplets per step; default: 14")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate; default: 2.19e-4")
    p.add_argument(
        "--alpha-jitter", type=float, default=None, help="random shift of every alpha per step (v2 run: 0.15)"
    )
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default=None, help="default: no")
    p.add_argument(
        "--scale-weighting",
        choices=["token", "scale", "sqrt"],
        default=None,
        help="loss weight of each scale: token (the authors' mean over tokens, default) or scale (every "
        "scale alike; what the demo StyleVAR needed to read its style image)",
    )
    p.add_argument(
        "--num-workers",
        type=_at_least(0),
        default=None,
        help="data loader processes reading images; default: 0",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="initialisation and triplet-draw seed; a continued run wants a new one, or it draws the "
        "triplets of its first stage again (default: 0)",
    )
    p.add_argument("--quick", action="store_true", help="two steps of two triplets (smoke test)")
    _quiet(p)
    p.set_defaults(func=cmd_train_stylevar_sft)


def _train_model_args(p: argparse.ArgumentParser) -> None:
    """The flags of `train demo` and `train folder` (a VAE and a transformer from one recipe)."""
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--work-dir", default="runs/demo", help="checkpoints and logs (resumable)")
    p.add_argument(
        "--preset", default=None, help="architecture preset when training from scratch; default: demo"
    )
    p.add_argument("--vae-steps", type=_at_least(0), default=None, help="VAE steps; default: the recipe's")
    p.add_argument(
        "--transformer-steps",
        type=_at_least(0),
        default=None,
        help="transformer steps; default: the recipe's",
    )
    p.add_argument(
        "--batch-size", type=_at_least(1), default=None, help="images per step; default: the recipe's"
    )
    p.add_argument(
        "--bsc-strength",
        type=float,
        default=None,
        help="Bitwise Self-Correction: flip up to this fraction of the bits of earlier scales "
        "(upstream 0.3); default: off",
    )
    p.add_argument(
        "--prefix-scales",
        type=_at_least(0),
        default=None,
        help="rows from --full-rows on train only the first K scales (the demo: 4; 0 turns it off); "
        "default: the recipe's",
    )
    p.add_argument(
        "--full-rows", type=_at_least(1), default=None, help="rows of each batch trained on every scale"
    )
    p.add_argument("--quick", action="store_true", help="a few steps of each part (smoke test)")
    _quiet(p)


def _analyze_parser(sub: Subparsers) -> None:
    an = sub.add_parser("analyze", help="where content and style are decided (the paper's Section 4)")
    an_sub = an.add_subparsers(dest="analysis", required=True)
    for name, help_text in (
        ("step-injection", "prompt A everywhere except prompt B at one step, for every step"),
        ("qkv-injection", "A regenerated with B's self-attention queries, keys or values"),
    ):
        a = an_sub.add_parser(name, help=help_text, formatter_class=_Formatter)
        a.add_argument("--prompt", default=None, help="prompt A (generated everywhere)")
        a.add_argument("--alt-prompt", default=None, help="prompt B (injected)")
        a.add_argument(
            "--pair-kind",
            default="custom",
            choices=["content", "style", "custom"],
            help="what A and B differ in",
        )
        a.add_argument(
            "--pairs", default=None, help="file: one 'prompt A | prompt B [| content|style]' a line"
        )
        a.add_argument(
            "--pair-set",
            action="append",
            default=[],
            choices=["paper-content", "paper-style", "world-content", "world-style"],
            help="built-in pairs; repeat for several",
        )
        a.add_argument(
            "--pairs-per-set", type=_at_least(1), default=4, help="pairs drawn for each world-* set"
        )
        a.add_argument("--pairs-seed", type=int, default=0, help="which world pairs are drawn")
        a.add_argument(
            "--seeds", type=_int_list("--seeds"), default=None, help="e.g. 0,1,2 or 0-7; default: --seed"
        )
        a.add_argument("--out-dir", required=True, help="output folder (resumable: done rows are kept)")
        if name == "step-injection":
            a.add_argument(
                "--steps",
                type=_int_list("--steps"),
                default=None,
                help="steps to inject at, e.g. 1-13; default: all",
            )
            a.add_argument(
                "--mode",
                default="cross",
                choices=["cross", "handoff"],
                help="cross: swap the cross-attention text at step s; handoff: B's full conditioning "
                "draws step s given A's earlier steps",
            )
        else:
            a.add_argument(
                "--steps",
                nargs="+",
                type=_int_list("--steps"),
                default=None,
                help="step ranges, each injected separately, e.g. 1-13 or 1-3 4-7; default: all steps",
            )
            a.add_argument("--components", default="q,k,v", help="which of q, k, v to inject")
        a.add_argument(
            "--steps-convention",
            default="B",
            choices=["A", "B"],
            help="B (default): steps are upstream's 0-based loop index, the start token is step 0; "
            "A: step 1 is the start token",
        )
        a.add_argument(
            "--cfg-rows", default="share", choices=["share", "plain"], help="edit the CFG rows alike or not"
        )
        a.add_argument(
            "--batch", type=_at_least(1), default=1, help="injected images per run (a kill loses these)"
        )
        a.add_argument(
            "--band", default="minmax", choices=["minmax", "std"], help="band over pairs and seeds"
        )
        a.add_argument("--thumb", type=_at_least(8), default=128, help="grid thumbnail size in pixels")
        a.add_argument("--clip", default=None, help="local CLIP model folder: adds a 'clip' score")
        a.add_argument(
            "--no-classifiers", action="store_true", help="skip the model folder's world classifiers"
        )
        _quiet(a)
        _model_args(a)
        _sampling_args(a)
        a.set_defaults(func=cmd_analyze)


def _evaluate_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare methods on a protocol (procedural world, FineStyle, StyleAR)",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--protocol",
        required=True,
        choices=["procedural", "finestyle", "stylear", "transfer"],
        help="what to evaluate on; transfer: content + style image in, the world's held-out styles",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated: plain, prompt-only, stylealigned, a, b, c, d (= ours); default "
        f"{DEFAULT_EVAL_METHODS}. transfer: copy-content, ours (training-free, given the content's "
        f"caption), and the NAMEs of --stylevar; default {TRANSFER_EVAL_METHODS} and every --stylevar; "
        "other protocols: also the NAMEs of --stylear (by default all of them are added)",
    )
    p.add_argument(
        "--stylear",
        action="append",
        default=None,
        metavar="NAME=DIR[:no-se]",
        help="a StyleAR adapter folder evaluated as method NAME (repeat for several); :no-se: plain "
        "style tokens where the protocol gives the reference's mask (procedural)",
    )
    p.add_argument(
        "--stylevar",
        action="append",
        default=None,
        metavar="NAME=DIR[:VARIANT][:strength=F][:cfg=F][:top_k=N][:top_p=F]",
        help="transfer: a StyleVAR model folder evaluated as method NAME (repeat for several, e.g. one per "
        "strength; stylevar-demo: the shipped demo); VARIANT sft or grpo (a released folder's checkpoint) "
        "or double-append (sampled with the authors' KV cache); strength, cfg, top_k and top_p as "
        "`transfer`'s --strength, --cfg, --top-k and --top-p (default 0 and the transfer sampling's; top_k "
        "is capped at the codebook; top_k=1 is greedy)",
    )
    p.add_argument(
        "--adain",
        default=None,
        metavar="DIR",
        help="transfer: an AdaIN folder (public .pth pair or `train adain` output), method adain",
    )
    p.add_argument(
        "--out",
        required=True,
        help="run folder (resumable: done rows and images are kept; one run at a time)",
    )
    p.add_argument(
        "--seeds", type=_int_list("--seeds"), default=None, help="e.g. 0,1 or 0-3; default: --seed"
    )
    p.add_argument(
        "--contents",
        default=None,
        help="comma-separated; procedural: world contents (default star,heart,house,fish); "
        "finestyle: content_ids or prompts (default all 190); stylear: p00.. ids or prompts (default all)",
    )
    p.add_argument(
        "--styles",
        default=None,
        help="comma-separated; procedural: held-out styles (default all 7); "
        "finestyle: style_ids (default all 10); stylear: style image stems (default all)",
    )
    p.add_argument(
        "--style-images",
        default=None,
        help="finestyle: folder with <style_id>.png per style; stylear: folder of style images",
    )
    p.add_argument("--prompts-file", default=None, help="stylear: prompts, one per line")
    p.add_argument(
        "--prompts-csv", default=None, help="finestyle prompts; default: ../shared/benchmarks/finestyle"
    )
    p.add_argument("--styles-csv", default=None, help="finestyle styles; default: beside the prompts")
    p.add_argument("--clip", default=None, help="CLIP folder or hub id: CLIP-T and CLIP-I")
    p.add_argument("--dino", default=None, help="DINO folder or hub id: DINO similarity")
    p.add_argument(
        "--gram",
        default="auto",
        help="Gram style loss features: auto (world style classifier when present), classifier, none, "
        "or a CNN folder / hub id",
    )
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM to the reference")
    p.add_argument(
        "--max-images", type=_at_least(0), default=None, help="stop after generating this many; default: all"
    )
    p.add_argument("--thumb", type=_at_least(8), default=96, help="contact-sheet cell size in pixels")
    p.add_argument(
        "--sheet-columns", type=_at_least(1), default=32, help="at most this many columns per sheet"
    )
    _quiet(p)
    _model_args(p, random_weights=False)
    _sampling_args(p)
    p.set_defaults(func=cmd_evaluate)


def _download_parser(sub: Subparsers) -> None:
    from scalestyle.hub_layouts import OFFICIAL_LAYOUTS, VAR_LAYOUTS

    p = sub.add_parser(
        "download", help="fetch official weights from the Hugging Face hub", formatter_class=_Formatter
    )
    p.add_argument(
        "preset",
        choices=[*(name for name in PRESETS if name in OFFICIAL_LAYOUTS or name in VAR_LAYOUTS), "stylevar"],
        help="the preset to fetch",
    )
    p.add_argument("--dest", default=None, help="folder to write; default: $SCALESTYLE_HOME/PRESET")
    p.add_argument("--token", default=None, help="Hugging Face token for gated repositories")
    p.set_defaults(func=cmd_download)


def _transfer_parser(sub: Subparsers) -> None:
    from scalestyle import transfer_cli

    transfer_cli.add_parser(sub, _Formatter)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from scalestyle.locate import adapter_folder, model_folder

    if args.max_upload_mb <= 0:
        raise CliError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    for flag, value in (("--model", args.model), ("--transfer-model", args.transfer_model)):
        if (
            value is not None
            and not model_folder(value).is_dir()
            and not (flag == "--transfer-model" and args.transfer_random_weights)
        ):
            raise CliError(f"{flag} {value!r}: no model folder at {model_folder(value)}")
    stylear = None if args.stylear_adapter is None else adapter_folder(args.stylear_adapter)
    if stylear is not None:
        from scalestyle.models.stylear import CONFIG_FILE, WEIGHTS_FILE

        if not all((stylear / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE)):
            raise CliError(
                f"--stylear-adapter {args.stylear_adapter!r}: not a StyleAR adapter folder (needs "
                f"{CONFIG_FILE} and {WEIGHTS_FILE}, as `scalestyle train stylear` writes)"
            )
    args.device = _device(args.device)
    try:
        from scalestyle.ui.app import UIConfig, serve
    except ImportError as err:
        raise CliError(f"the web UI needs gradio ({err}): pip install 'scalestyle[ui]'") from None
    config = UIConfig(
        model=args.model,
        device=args.device,
        transfer_model=args.transfer_model,
        transfer_random_weights=args.transfer_random_weights,
        stylear_adapter=stylear,
        host=args.host,
        port=args.port,
        concurrency=args.concurrency,
        queue_size=args.queue_size,
        max_upload_bytes=round(args.max_upload_mb * 1e6),
        timeout_s=args.timeout_s,
        outputs=Path(args.outputs),
        studies=Path(args.studies),
        admin_token=args.admin_token or os.environ.get("SCALESTYLE_ADMIN_TOKEN") or None,
    )
    if not args.quiet:
        sys.stderr.write(f"serving on http://{config.host}:{config.port} (model {config.model or 'demo'})\n")
    serve(config)
    return 0


def _serve_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "serve",
        help="the web UI: generate, stylize, transfer, gallery and user studies",
        formatter_class=_Formatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=_at_least(1), default=7860, help="port to listen on")
    p.add_argument(
        "--transfer-model", default=None, help="StyleVAR folder: shows the Transfer tab; default: none"
    )
    p.add_argument(
        "--transfer-random-weights",
        action="store_true",
        help="--transfer-model names a StyleVAR preset built with random weights (tests)",
    )
    p.add_argument(
        "--stylear-adapter",
        "--adapter",
        default=None,
        help="StyleAR adapter folder (stylize's --adapter; stylear-demo: the shipped one): adds the "
        "stylear method to Stylize",
    )
    p.add_argument("--concurrency", type=_at_least(1), default=1, help="model jobs the queue runs at once")
    p.add_argument(
        "--queue-size", type=_at_least(1), default=16, help="jobs waiting before new ones are refused"
    )
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB")
    p.add_argument("--timeout-s", type=float, default=300.0, help="a job is stopped after this many seconds")
    p.add_argument(
        "--outputs", default="scalestyle-ui/outputs", help="folder of written images (the gallery)"
    )
    p.add_argument("--studies", default="scalestyle-ui/studies", help="folder of study files (NAME.sqlite)")
    p.add_argument(
        "--admin-token",
        default=None,
        help="token of the study admin (or $SCALESTYLE_ADMIN_TOKEN); default: no study admin",
    )
    _quiet(p)
    _model_args(p, random_weights=False)
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scalestyle", description=__doc__.splitlines()[0] if __doc__ else "")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _generate_parser,
        _stylize_parser,
        _bench_parser,
        _train_parser,
        _analyze_parser,
        _evaluate_parser,
        _download_parser,
        _transfer_parser,
        _serve_parser,
    ):
        add(sub)
    from scalestyle import subject_cli

    subject_cli.add_teacher_parser(sub, _Formatter)
    subject_cli.add_eval_parser(sub, _Formatter)
    return parser


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    sys.stderr.write(f"scalestyle: warning: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a flag error already written as one line
        return int(done.code or 0)
    from scalestyle.weights import WeightsError

    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            return int(args.func(args))
        except (CliError, ValueError, WeightsError, OSError) as err:
            sys.stderr.write(f"scalestyle: error: {err}\n")
            return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
