"""The `scalestyle` command line: a thin layer over the Python API with the same argument names.

Every user error (bad preset, missing weights, unwritable path, empty prompt) ends in one line on stderr
and exit status 2; a progress bar over scales goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scalestyle.config import SamplingConfig
from scalestyle.schedules import PN_NUM_SCALES, parse_aspect

if TYPE_CHECKING:
    from scalestyle.analysis.pairs import PromptPair
    from scalestyle.method.style import StyleConfig

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line."""


def _writable_png(path_text: str) -> Path:
    path = Path(path_text)
    if path.suffix.lower() != ".png":
        raise CliError(f"--out must name a .png file, got {path_text!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"cannot write {path}: permission denied")
    return path


def _progress(total: int, desc: str, enabled: bool) -> Callable[[object], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="scale", disable=not enabled, leave=False, file=sys.stderr)

    def step(_event: object) -> None:
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return step


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="preset (infinity-2b, infinity-8b) or model folder; default: the bundled demo model",
    )
    p.add_argument("--random-weights", action="store_true", help="build the preset with random weights")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")


def _add_style_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ablation",
        default="d",
        choices=["a", "b", "c", "d"],
        help="(a) baseline, (b) +Init, (c) +Init+KSAS, (d) full",
    )
    p.add_argument("--key-steps", default="2,3")
    p.add_argument(
        "--fine-steps",
        default=None,
        help="default: the paper's 4,5,6,7, those of them that the schedule has",
    )
    p.add_argument(
        "--steps-convention",
        default="B",
        choices=["A", "B"],
        help="B (default): steps are upstream's 0-based loop index, the start token is step 0; "
        "A: step 1 is the start token",
    )
    p.add_argument("--aqs-granularity", default="token", choices=["token", "head", "layer"])
    p.add_argument("--no-init", action="store_true")
    p.add_argument("--no-ksas", action="store_true")
    p.add_argument("--no-aqs", action="store_true")
    p.add_argument("--no-prune", action="store_true", help="keep every path running to the last scale")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.97)
    p.add_argument("--aspect", default="1:1", help="H:W, snapped to the nearest of the 15 templates")
    p.add_argument(
        "--pn", default=None, choices=sorted(PN_NUM_SCALES), help="pixel budget (default: model's)"
    )


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
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from scalestyle.metadata import write_png
    from scalestyle.pipeline import Pipeline

    if not args.prompt.strip():
        raise CliError("--prompt must be non-empty text")
    out = _writable_png(args.out)
    h_div_w = parse_aspect(args.aspect)
    pipe = Pipeline.load(args.model, device=args.device, random_weights=args.random_weights)
    schedule = pipe.schedule_for(h_div_w=h_div_w, pn=args.pn)
    result = pipe(
        args.prompt,
        sampling=_sampling(args, h_div_w),
        negative_prompt=args.negative_prompt,
        on_scale=_progress(schedule.num_scales, "generate", not args.quiet),
    )
    write_png(result.images[0], out, result.metadata[0])
    if not args.quiet:
        sys.stderr.write(f"wrote {out} ({result.images[0].width}x{result.images[0].height})\n")
    return 0


def _steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise CliError(f"steps must be comma-separated integers like 2,3, got {text!r}") from err
    return steps


def _style_config(args: argparse.Namespace) -> StyleConfig:
    from dataclasses import replace

    from scalestyle.method.style import StyleConfig

    base = StyleConfig.ablation(args.ablation)
    return replace(
        base,
        key_steps=_steps(args.key_steps),
        fine_steps=None if args.fine_steps is None else _steps(args.fine_steps),
        convention=args.steps_convention,
        aqs_granularity=args.aqs_granularity,
        prune=not args.no_prune,
        init=base.init and not args.no_init,
        ksas=base.ksas and not args.no_ksas,
        aqs=base.aqs and not args.no_aqs,
    )


def _slug(text: str, limit: int = 48) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in keep:
        keep = keep.replace("--", "-")
    return keep[:limit] or "prompt"


def cmd_stylize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from scalestyle.images import load_image
    from scalestyle.metadata import write_png
    from scalestyle.method.style import StylePipeline
    from scalestyle.pipeline import Pipeline

    prompts = [args.prompt] if args.prompt else []
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise CliError(f"--prompts {path}: no such file")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise CliError("give a non-empty --prompt or a --prompts FILE with one prompt per line")
    if not args.style and not args.text_only:
        raise CliError("give a reference image with --style REF.png (or --text-only to use the style prompt)")
    if args.style and args.text_only:
        raise CliError("--text-only takes no --style image")
    styles = [(Path(p), load_image(p)) for p in args.style] if args.style else [(None, None)]
    style_cfg = _style_config(args)
    h_div_w = parse_aspect(args.aspect)
    jobs = [(ref, img, prompt) for ref, img in styles for prompt in prompts]
    if len(jobs) > 1 and not args.out_dir:
        raise CliError(f"{len(jobs)} images to make: give --out-dir DIR instead of --out")
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise CliError(f"cannot write into {out_dir}: permission denied")
        outs = [
            out_dir / f"{ref.stem if ref else 'text'}__{_slug(prompt)}__s{args.seed}.png"
            for ref, _, prompt in jobs
        ]
    elif args.out:
        outs = [_writable_png(args.out)]
    else:
        raise CliError("give --out FILE.png (or --out-dir DIR for several images)")
    pipe = StylePipeline(Pipeline.load(args.model, device=args.device, random_weights=args.random_weights))
    schedule = pipe.pipe.schedule_for(h_div_w=h_div_w, pn=args.pn)
    todo = [(job, out) for job, out in zip(jobs, outs, strict=True) if not (args.out_dir and out.exists())]
    show = not args.quiet
    for (ref, img, prompt), out in tqdm(
        todo, desc="stylize", unit="image", disable=not show or len(todo) < 2
    ):
        result = pipe(
            prompt,
            img,
            style_prompt=args.style_prompt,
            style=style_cfg,
            sampling=_sampling(args, h_div_w),
            on_scale=_progress(schedule.num_scales, "scales", show and len(todo) == 1),
        )
        write_png(result.images[0], out, {**result.metadata[0], "style_file": str(ref) if ref else ""})
    if show:
        sys.stderr.write(f"wrote {len(todo)} image(s), skipped {len(jobs) - len(todo)} already done\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from scalestyle.bench import bench_generate, bench_stylize
    from scalestyle.pipeline import Pipeline

    pipe = Pipeline.load(args.model, device=args.device, random_weights=args.random_weights)
    if args.mode == "stylize":
        report = bench_stylize(
            pipe,
            prompt=args.prompt,
            style_prompt=args.style_prompt,
            cfg=args.cfg,
            pn=args.pn,
            runs=args.runs,
            warmup=args.warmup,
            style=_style_config(args),
        )
        line = (
            f"plain {report['plain_seconds_per_image']:.3f} s/image, stylize "
            f"{report['stylize_seconds_per_image']:.3f} s/image, ratio {report['ratio']:.2f}x"
        )
    else:
        report = bench_generate(
            pipe,
            prompt=args.prompt,
            cfg=args.cfg,
            pn=args.pn,
            runs=args.runs,
            warmup=args.warmup,
            batch=args.batch,
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
    from dataclasses import replace

    from scalestyle.train.demo import DemoTrainConfig, train_demo
    from scalestyle.train.folder import FolderTrainConfig, train_on_folder

    if args.what == "demo":
        for flag in ("data", "init", "text_encoder"):
            if getattr(args, flag) is not None:
                raise CliError(
                    f"--{flag.replace('_', '-')} is for `train folder`; `train demo` renders its data"
                )
        cfg: DemoTrainConfig | FolderTrainConfig = (
            DemoTrainConfig.quick() if args.quick else DemoTrainConfig()
        )
    else:
        if args.data is None:
            raise CliError("`train folder` needs --data DIR (images with captions)")
        if args.classifier_steps is not None:
            raise CliError("--classifier-steps is for `train demo` (the world's judges)")
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


def cmd_download(args: argparse.Namespace) -> int:
    from scalestyle.pipeline import default_home
    from scalestyle.weights import download

    dest = Path(args.dest) if args.dest else default_home() / args.preset
    path = download(args.preset, dest, token=args.token)
    sys.stderr.write(f"downloaded {args.preset} to {path}\n")
    return 0


def _seeds(text: str | None, default: int) -> tuple[int, ...]:
    if text is None:
        return (default,)
    from scalestyle.analysis import parse_steps

    try:
        return parse_steps(text)
    except ValueError as err:
        raise CliError(f"--seeds must look like 0,1,2 or 0-7, got {text!r}") from err


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
    from dataclasses import replace

    from scalestyle.analysis import (
        QKVInjectionConfig,
        StepInjectionConfig,
        parse_steps,
        run_qkv_injection,
        run_step_injection,
        scale_of,
    )
    from scalestyle.analysis.scorers import Scorer, clip_scorer, world_scorers
    from scalestyle.pipeline import Pipeline, bundled_demo_dir, default_home

    pairs = _analysis_pairs(args)
    seeds = _seeds(args.seeds, args.seed)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise CliError(f"cannot write into {out_dir}: permission denied")
    sampling = SamplingConfig(
        cfg=args.cfg,
        tau=args.tau,
        top_k=args.top_k,
        top_p=args.top_p,
        h_div_w=parse_aspect(args.aspect),
        pn=args.pn,
    )
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
    pipe = Pipeline.load(args.model, device=args.device, random_weights=args.random_weights)
    num_scales = pipe.schedule_for(h_div_w=sampling.h_div_w, pn=sampling.pn).num_scales

    def scales(text: str) -> tuple[int, ...]:
        return tuple(scale_of(s, args.steps_convention, num_scales) for s in parse_steps(text))

    scorers: dict[str, Scorer] = {}
    if not args.no_classifiers and not args.random_weights:
        if args.model is None:
            folder = bundled_demo_dir()
        elif Path(str(args.model)).is_dir():
            folder = Path(str(args.model))
        else:
            folder = default_home() / str(args.model)
        if folder.is_dir():
            scorers.update(world_scorers(folder))
    if args.clip:
        scorers["clip"] = clip_scorer(args.clip, device=pipe.device)
    show = not args.quiet
    if show and not scorers:
        sys.stderr.write("no scorer (no world classifiers in the model folder, no --clip): images only\n")

    from tqdm import tqdm

    bar = tqdm(desc=args.analysis, unit="image", disable=not show, leave=False, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

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
    bar.close()
    if show:
        names = ", ".join(p.name for p in result.files.values())
        sys.stderr.write(
            f"{args.analysis}: computed {result.computed} image(s), {result.skipped} already done; "
            f"{len(result.rows)} rows in {out_dir / 'rows.jsonl'}; wrote {names}\n"
        )
    return 0


def _model_folder(model: str | None) -> Path:
    """The folder a --model value loads from (where the demo's world classifiers live)."""
    from scalestyle.pipeline import bundled_demo_dir, default_home

    if model is None:
        return bundled_demo_dir()
    return Path(model) if Path(model).is_dir() else default_home() / model


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scalestyle.eval import protocols
    from scalestyle.eval.evaluate import Scorers, classifier_gram, run_evaluation
    from scalestyle.eval.methods import get_methods
    from scalestyle.eval.world import Judges
    from scalestyle.pipeline import Pipeline

    # everything the user typed is checked before the model loads
    methods = get_methods(args.methods)
    seeds = protocols.parse_seeds(args.seeds) if args.seeds else (args.seed,)
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
    sampling = SamplingConfig(
        cfg=args.cfg,
        tau=args.tau,
        top_k=args.top_k,
        top_p=args.top_p,
        h_div_w=parse_aspect(args.aspect),
        pn=args.pn,
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise CliError(f"cannot write into {out_dir}: permission denied")
    show = not args.quiet
    pipe = Pipeline.load(args.model, device=args.device)
    judges = None
    if args.protocol == "procedural":
        folder = _model_folder(args.model)
        if all((folder / f"{k}_classifier.safetensors").is_file() for k in ("content", "style")):
            judges = Judges.load(folder)
        elif show:
            sys.stderr.write(f"no world classifiers in {folder}: ground-truth metrics skipped\n")
    gram = None
    if args.gram == "classifier" or (args.gram == "auto" and judges is not None):
        if judges is None:
            raise CliError("--gram classifier needs the world classifiers of a demo model folder")
        gram = classifier_gram(judges)
    elif args.gram not in ("auto", "none"):
        from scalestyle.metrics import GramStyle

        gram = GramStyle.from_pretrained(args.gram, device=pipe.device)
    clip = dino = None
    if args.clip:
        from scalestyle.metrics import CLIPScorer

        clip = CLIPScorer.from_pretrained(args.clip, device=pipe.device)
    if args.dino:
        from scalestyle.metrics import DINOScorer

        dino = DINOScorer.from_pretrained(args.dino, device=pipe.device)
    scorers = Scorers(judges=judges, clip=clip, dino=dino, gram=gram, ssim=not args.no_ssim)

    from tqdm import tqdm

    bar = tqdm(desc="evaluate", unit="image", disable=not show, leave=False, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

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
    bar.close()
    if show:
        stop = " (stopped at --max-images; run again to continue)" if result.stopped else ""
        sys.stderr.write(
            f"evaluate: generated {result.computed} image(s), reused {result.reused}, "
            f"{result.skipped} row(s) already done{stop}; {len(result.rows)} rows in "
            f"{out_dir / 'rows.jsonl'}; summary in {out_dir / 'summary.md'}\n"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalestyle", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text-to-image")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--out", required=True, help="output .png")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--quiet", action="store_true")
    _add_model_args(gen)
    _add_sampling_args(gen)
    gen.set_defaults(func=cmd_generate)

    sty = sub.add_parser("stylize", help="generate in the style of a reference image (training-free)")
    sty.add_argument("--style", action="append", default=[], help="reference style image; repeat for several")
    sty.add_argument(
        "--text-only",
        action="store_true",
        help="no reference image: the style path is generated from --style-prompt (style-aligned mode)",
    )
    sty.add_argument("--prompt", default=None, help="the content, e.g. 'a cat'")
    sty.add_argument("--prompts", default=None, help="file with one content prompt per line")
    sty.add_argument(
        "--style-prompt", required=True, help="the style in words, e.g. 'watercolor painting style'"
    )
    sty.add_argument("--out", default=None, help="output .png (one image)")
    sty.add_argument(
        "--out-dir", default=None, help="output folder (batches; resumable: done images are kept)"
    )
    _add_style_args(sty)
    sty.add_argument("--quiet", action="store_true")
    _add_model_args(sty)
    _add_sampling_args(sty)
    sty.set_defaults(func=cmd_stylize)

    bench = sub.add_parser("bench", help="time generation")
    _add_model_args(bench)
    bench.add_argument("--prompt", default="a photo of a cat")
    bench.add_argument("--cfg", type=float, default=3.0)
    bench.add_argument("--pn", default=None, choices=sorted(PN_NUM_SCALES))
    bench.add_argument("--runs", type=int, default=5)
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--mode", default="generate", choices=["generate", "stylize"])
    bench.add_argument("--style-prompt", default="watercolor painting style")
    _add_style_args(bench)
    bench.set_defaults(func=cmd_bench)

    tr = sub.add_parser(
        "train", help="train models: the demo world (`train demo`) or your images (`train folder`)"
    )
    tr.add_argument(
        "what",
        choices=["demo", "folder"],
        help="demo: the bundled demo model; folder: a folder of captioned images",
    )
    tr.add_argument("--out", required=True, help="model folder to write")
    tr.add_argument("--work-dir", default="runs/demo", help="checkpoints and logs (resumable)")
    tr.add_argument(
        "--preset", default=None, help="architecture preset when training from scratch (default: demo)"
    )
    tr.add_argument("--data", default=None, help="folder: images with metadata.jsonl or .txt captions")
    tr.add_argument(
        "--init", default=None, help="folder: model folder to fine-tune (its VAE and text encoder kept)"
    )
    tr.add_argument("--text-encoder", default=None, help="folder, from scratch: T5 hub id or directory")
    tr.add_argument(
        "--allow-uncaptioned",
        action="store_true",
        help="folder: train images without a caption as unconditional",
    )
    tr.add_argument("--vae-steps", type=int, default=None)
    tr.add_argument("--transformer-steps", type=int, default=None)
    tr.add_argument("--classifier-steps", type=int, default=None)
    tr.add_argument("--batch-size", type=int, default=None)
    tr.add_argument(
        "--bsc-strength",
        type=float,
        default=None,
        help="Bitwise Self-Correction: flip up to this fraction of the bits of earlier scales (upstream 0.3)",
    )
    tr.add_argument(
        "--prefix-scales",
        type=int,
        default=None,
        help="rows from --full-rows on train only the first K scales (the demo: 4; 0 turns it off)",
    )
    tr.add_argument("--full-rows", type=int, default=None, help="rows of each batch trained on every scale")
    tr.add_argument("--quick", action="store_true", help="a few steps of each part (smoke test)")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)

    an = sub.add_parser("analyze", help="where content and style are decided (the paper's Section 4)")
    an_sub = an.add_subparsers(dest="analysis", required=True)
    for name, help_text in (
        ("step-injection", "prompt A everywhere except prompt B at one step, for every step"),
        ("qkv-injection", "A regenerated with B's self-attention queries, keys or values"),
    ):
        a = an_sub.add_parser(name, help=help_text)
        a.add_argument("--prompt", default=None, help="prompt A (generated everywhere)")
        a.add_argument("--alt-prompt", default=None, help="prompt B (injected)")
        a.add_argument("--pair-kind", default="custom", choices=["content", "style", "custom"])
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
        a.add_argument("--pairs-per-set", type=int, default=4, help="pairs drawn for each world-* set")
        a.add_argument("--pairs-seed", type=int, default=0, help="which world pairs are drawn")
        a.add_argument("--seeds", default=None, help="e.g. 0,1,2 or 0-7 (default: --seed)")
        a.add_argument("--out-dir", required=True, help="output folder (resumable: done rows are kept)")
        if name == "step-injection":
            a.add_argument("--steps", default=None, help="steps to inject at, e.g. 1-13 (default: all)")
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
                default=None,
                help="step ranges, each injected separately, e.g. 1-13 or 1-3 4-7 (default: all steps)",
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
        a.add_argument("--batch", type=int, default=1, help="injected images per run (a kill loses these)")
        a.add_argument(
            "--band", default="minmax", choices=["minmax", "std"], help="band over pairs and seeds"
        )
        a.add_argument("--thumb", type=int, default=128, help="grid thumbnail size in pixels")
        a.add_argument("--clip", default=None, help="local CLIP model folder: adds a 'clip' score")
        a.add_argument(
            "--no-classifiers", action="store_true", help="skip the model folder's world classifiers"
        )
        a.add_argument("--quiet", action="store_true")
        _add_model_args(a)
        _add_sampling_args(a)
        a.set_defaults(func=cmd_analyze)

    ev = sub.add_parser(
        "evaluate", help="compare methods on a protocol (procedural world, FineStyle, StyleAR)"
    )
    ev.add_argument("--protocol", required=True, choices=["procedural", "finestyle", "stylear"])
    ev.add_argument(
        "--methods",
        default="plain,prompt-only,stylealigned,a,b,c,d",
        help="comma-separated: plain, prompt-only, stylealigned, a, b, c, d (= ours)",
    )
    ev.add_argument("--out", required=True, help="run folder (resumable: done rows and images are kept)")
    ev.add_argument("--seeds", default=None, help="e.g. 0,1 or 0-3 (default: --seed)")
    ev.add_argument(
        "--contents",
        default=None,
        help="comma-separated; procedural: world contents (default star,heart,house,fish); "
        "finestyle: content_ids or prompts (default all 190); stylear: p00.. ids or prompts (default all)",
    )
    ev.add_argument(
        "--styles",
        default=None,
        help="comma-separated; procedural: held-out styles (default all 7); "
        "finestyle: style_ids (default all 10); stylear: style image stems (default all)",
    )
    ev.add_argument(
        "--style-images",
        default=None,
        help="finestyle: folder with <style_id>.png per style; stylear: folder of style images",
    )
    ev.add_argument("--prompts-file", default=None, help="stylear: prompts, one per line")
    ev.add_argument(
        "--prompts-csv", default=None, help="finestyle prompts (default ../shared/benchmarks/finestyle)"
    )
    ev.add_argument("--styles-csv", default=None, help="finestyle styles (default beside the prompts)")
    ev.add_argument("--clip", default=None, help="CLIP folder or hub id: CLIP-T and CLIP-I")
    ev.add_argument("--dino", default=None, help="DINO folder or hub id: DINO similarity")
    ev.add_argument(
        "--gram",
        default="auto",
        help="Gram style loss features: auto (world style classifier when present), classifier, none, "
        "or a CNN folder / hub id",
    )
    ev.add_argument("--no-ssim", action="store_true", help="skip SSIM to the reference")
    ev.add_argument("--max-images", type=int, default=None, help="stop after generating this many")
    ev.add_argument("--thumb", type=int, default=96, help="contact-sheet cell size in pixels")
    ev.add_argument("--sheet-columns", type=int, default=32, help="at most this many columns per sheet")
    ev.add_argument("--model", default=None, help="model folder or preset (default: the bundled demo)")
    ev.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    ev.add_argument("--quiet", action="store_true")
    _add_sampling_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    dl = sub.add_parser("download", help="fetch official weights from the Hugging Face hub")
    dl.add_argument("preset", choices=["infinity-2b", "infinity-8b"])
    dl.add_argument("--dest", default=None)
    dl.add_argument("--token", default=None)
    dl.set_defaults(func=cmd_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scalestyle.weights import WeightsError

    try:
        return int(args.func(args))
    except (CliError, ValueError, WeightsError, FileNotFoundError, PermissionError) as err:
        sys.stderr.write(f"scalestyle: error: {err}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
