"""The proxy-tuning commands (issue 18): ``scalestyle train subject``, ``scalestyle teacher`` and the
subject ``--adapter DIR`` of ``generate`` and ``stylize``.

Kept apart from :mod:`scalestyle.cli`, which only registers the parsers and calls :func:`split_adapters`
and :func:`with_subjects`; errors are ``ValueError`` lines, as the CLI prints them.

``--adapter`` is one flag for both kinds of adapter folder, told apart by their ``config.json``: subject
adapters (any number: their LoRAs add up, each prompt naming its subjects) are folded into the loaded
model's weights before anything runs, so the training-free method and StyleAR work on the adapted
model unchanged; at most one StyleAR adapter goes with ``stylize --method stylear``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scalestyle.pipeline import Pipeline

ADAPTER_HELP = (
    "adapter folder: a subject adapter (`scalestyle train subject`; repeat for several subjects) or, "
    "with stylize --method stylear, one StyleAR adapter (stylear-demo: the one shipped for the demo)"
)


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", action="append", default=None, metavar="DIR", help=ADAPTER_HELP)


def split_adapters(dirs: Sequence[str] | None) -> tuple[str | None, list[str]]:
    """(the StyleAR adapter or None, the subject adapters) of ``--adapter`` folders, read before any
    model loads; more than one StyleAR adapter is an error. ``stylear-demo`` names the shipped adapter."""
    from scalestyle.locate import adapter_folder
    from scalestyle.models.subject import adapter_kind

    stylear: list[str] = []
    subjects: list[str] = []
    for folder in (str(adapter_folder(d)) for d in dirs or ()):
        (stylear if adapter_kind(folder) == "stylear" else subjects).append(folder)
    if len(stylear) > 1:
        raise ValueError(f"one StyleAR --adapter at a time, got {len(stylear)}: {', '.join(stylear)}")
    return (stylear[0] if stylear else None), subjects


def subject_adapters(dirs: Sequence[str] | None) -> list[str]:
    """The subject adapters of a command that takes no StyleAR adapter."""
    stylear, subjects = split_adapters(dirs)
    if stylear is not None:
        raise ValueError(f"--adapter {stylear} is a StyleAR adapter: use it with stylize --method stylear")
    return subjects


def with_subjects(pipe: Pipeline, dirs: Sequence[str] | None) -> Pipeline:
    """``pipe`` with the subject adapters folded into its transformer for good (the command's process
    uses nothing else), its ``model_name`` naming them so that image metadata records them."""
    if not dirs:
        return pipe
    from scalestyle.models.infinity import Infinity
    from scalestyle.models.subject import SubjectAdapter, fold_into, with_added_tokens

    if not isinstance(pipe.transformer, Infinity):
        raise ValueError(f"subject adapters are for Infinity models; {pipe.model_name} is not one")
    adapters = [SubjectAdapter.load(d) for d in dirs]
    pipe.text_encoder = with_added_tokens(pipe, adapters)
    fold_into(pipe.transformer, adapters)
    names = ", ".join(
        f"{' + '.join(repr(x) for x in a.cfg.phrases)} ({Path(d).resolve()})"
        for a, d in zip(adapters, dirs, strict=True)
    )
    pipe.model_name = f"{pipe.model_name} + subject adapters {names}"
    return pipe


# ---- train subject ------------------------------------------------------------------------------------
def add_train_parser(train_sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = train_sub.add_parser(
        "subject",
        help="a subject adapter (LoRA) from images of one subject, DreamBooth-style (proxy-tuning)",
        formatter_class=formatter,
    )
    p.add_argument(
        "--images",
        required=True,
        action="append",
        help="the subject's images; captions as in `train folder` with {subject} where the subject goes "
        "(a teacher folder's images/), images without one get a caption template. Repeat --images, "
        "--token, --class-word (and --class-images) in the same order for one adapter of several subjects",
    )
    p.add_argument(
        "--token",
        action="append",
        default=None,
        help="the identifier prompts name the subject by; default: <sks>",
    )
    p.add_argument(
        "--class-word", required=True, action="append", help="what the subject is, e.g. dog (the world: star)"
    )
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument(
        "--class-images",
        action="append",
        default=None,
        help="prior preservation: images of the class (captions optional), one per subject",
    )
    p.add_argument("--prior-weight", type=float, default=None, help="class loss weight; default: 1.0")
    p.add_argument("--model", default=None, help="the frozen base model folder; default: the bundled demo")
    p.add_argument("--work-dir", default="runs/subject", help="checkpoint and log (resumable)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps; default: 300")
    p.add_argument("--batch-size", type=int, default=None, help="subject images per step; default: 4")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate; default: 3e-3")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=int, default=None, help="LoRA alpha; default: the rank (scale 1)")
    p.add_argument(
        "--targets",
        default=None,
        help="comma-separated modules, of sa.proj, ca.mat_q, ca.proj, ffn.fc1, ffn.fc2 (in every block) and "
        "text_proj_for_ca.0, text_proj_for_ca.2 (the caption memory); default: all",
    )
    p.add_argument(
        "--add-token",
        choices=("auto", "yes", "no"),
        default="auto",
        help="make the identifier a token of its own in the text encoder, its embedding saved with the "
        "adapter; auto: when the vocabulary cannot spell it (the demo's: every unknown word is <unk>)",
    )
    p.add_argument("--seed", type=int, default=0, help="LoRA initialisation and data seed")
    p.add_argument("--quick", action="store_true", help="a 2-step smoke run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="cpu, cuda; default: cuda if available")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from scalestyle.data.folder import ImageFolder
    from scalestyle.models.infinity import Infinity
    from scalestyle.models.subject import (
        DEFAULT_TARGETS,
        SubjectAdapter,
        SubjectConfig,
        wants_added_tokens,
    )
    from scalestyle.pipeline import Pipeline
    from scalestyle.train.subject import SubjectTrainConfig, train_subject

    cfg = SubjectTrainConfig(seed=args.seed)
    if args.quick:
        cfg = replace(cfg, steps=2, batch_size=1, warmup=1, log_every=1, ckpt_every=1)
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "prior_weight": args.prior_weight,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    targets = DEFAULT_TARGETS
    if args.targets:
        targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    tokens = args.token or (["<sks>"] if len(args.images) == 1 else [])
    n = len(args.images)
    if len(tokens) != n or len(args.class_word) != n or len(args.class_images or [None] * n) != n:
        given = f"{n} --images, {len(tokens)} --token, {len(args.class_word)} --class-word"
        raise ValueError(
            f"one --token, --class-word (and --class-images if any) per --images, in order; got {given}"
            f"{f', {len(args.class_images)} --class-images' if args.class_images else ''}"
        )
    subjects = list(zip(tokens, args.class_word, strict=True))
    # the adapter's own settings are checked before the model loads (text width filled in after)
    SubjectConfig(
        *subjects[0], 1, args.rank, args.alpha, targets, args.add_token == "yes", tuple(subjects[1:])
    )
    if args.class_images is None and args.prior_weight is not None:
        raise ValueError("--prior-weight goes with --class-images DIR")
    pipe = Pipeline.load(args.model, device=args.device)
    if not isinstance(pipe.transformer, Infinity):
        raise ValueError(f"subject adapters train on Infinity models; {pipe.model_name} is not one")
    h, w = pipe.schedule_for().last_grid
    size_hw = (h * pipe.stride, w * pipe.stride)
    # each folder its own epoch order (a one-subject run: seed, seed + 1 as before)
    images = [
        ImageFolder(d, size_hw, seed=cfg.seed + 2 * i, uncaptioned="empty") for i, d in enumerate(args.images)
    ]
    classes = None
    if args.class_images:
        classes = [
            ImageFolder(d, size_hw, seed=cfg.seed + 2 * i + 1, uncaptioned="empty")
            for i, d in enumerate(args.class_images)
        ]
    add_token = wants_added_tokens(args.add_token, pipe.text_encoder, tokens)
    adapter_cfg = SubjectConfig(
        *subjects[0],
        pipe.transformer.cfg.text_channels,
        args.rank,
        args.alpha,
        targets,
        add_token=add_token,
        others=tuple(subjects[1:]),
    )
    adapter = SubjectAdapter(adapter_cfg)
    train_subject(pipe, adapter, cfg, images, Path(args.work_dir), classes=classes, progress=not args.quiet)
    out = adapter.save(args.out)
    if not args.quiet:
        added = ", identifiers as added tokens" if add_token else ""
        phrases = ", ".join(repr(x) for x in adapter_cfg.phrases)
        sys.stderr.write(f"wrote the subject adapter {out} ({phrases}, {cfg.steps} steps{added})\n")
    return 0


# ---- teacher ------------------------------------------------------------------------------------------
def add_teacher_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "teacher",
        help="a teacher set of one subject for `train subject`: a diffusers pipeline, or the demo world",
        formatter_class=formatter,
    )
    p.add_argument(
        "--out", required=True, help="folder to write (images/ with captions; the world: masks/, class/)"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--world-subject", default=None, help="the demo: a world subject (hexstar, cactus)")
    source.add_argument(
        "--subject-images", default=None, help="the subject's photos (IP-Adapter's image prompts)"
    )
    p.add_argument("--prompts", default=None, help="diffusers: prompts, one a line, {subject} where it goes")
    p.add_argument("--class-word", default=None, help="diffusers: what the subject is, e.g. dog")
    p.add_argument(
        "--method", default="ip-adapter", choices=["ip-adapter", "dreambooth"], help="diffusers teacher kind"
    )
    p.add_argument("--base", default=None, help="diffusers pipeline (hub id or folder); default: SD 1.5")
    p.add_argument("--token", default="sks", help="dreambooth: the identifier the tuned pipeline knows")
    p.add_argument("--per-prompt", type=int, default=4, help="diffusers: images per prompt")
    p.add_argument("--inference-steps", type=int, default=30, help="diffusers: denoising steps")
    p.add_argument("--size", type=int, default=None, help="image side; default: 512 (diffusers), 64 (world)")
    p.add_argument("--download", action="store_true", help="diffusers: fetch missing weights from the hub")
    p.add_argument("--styles", default=None, help="world: comma-separated training styles to show")
    p.add_argument("--per-style", type=int, default=8, help="world: subject images per style")
    p.add_argument("--class-per-style", type=int, default=8, help="world: class images per style (0: none)")
    p.add_argument("--seed", type=int, default=0, help="diffusers: seed; world: seed offset")
    p.add_argument("--device", default=None, help="diffusers: cpu, cuda; default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no summary line")
    p.set_defaults(func=cmd_teacher)


def cmd_teacher(args: argparse.Namespace) -> int:
    from scalestyle import teacher

    if args.world_subject is not None:
        if args.prompts or args.class_word or args.base:
            raise ValueError(
                "--world-subject brings its own prompts and class: no --prompts/--class-word/--base"
            )
        styles = teacher.DEFAULT_TEACHER_STYLES
        if args.styles:
            styles = tuple(s.strip() for s in args.styles.split(",") if s.strip())
        cfg = teacher.WorldTeacherConfig(
            args.world_subject, styles, args.per_style, args.class_per_style, args.size or 64, args.seed
        )
        out = teacher.world_teacher(cfg, args.out)
        n = len(styles) * cfg.per_style
    else:
        if not args.prompts or not args.class_word:
            raise ValueError("--subject-images needs --prompts FILE and --class-word WORD")
        from scalestyle.data.folder import IMAGE_SUFFIXES
        from scalestyle.images import load_image

        folder = Path(args.subject_images)
        if not folder.is_dir():
            raise FileNotFoundError(f"--subject-images {folder}: no such folder")
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"--subject-images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        prompts = teacher.read_prompts(args.prompts)
        dcfg = teacher.DiffusersTeacherConfig(
            args.class_word,
            args.method,
            args.base or teacher.SD15,
            args.token,
            per_prompt=args.per_prompt,
            steps=args.inference_steps,
            size=args.size or 512,
            seed=args.seed,
            download=args.download,
            device=args.device,
        )
        out = teacher.diffusers_teacher(
            dcfg, prompts, args.out, subject_images=[load_image(f) for f in files]
        )
        n = len(prompts) * dcfg.per_prompt
    if not args.quiet:
        sys.stderr.write(f"wrote the teacher set {out} ({n} subject images)\n")
    return 0


# ---- subject-eval -------------------------------------------------------------------------------------
def add_eval_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    from scalestyle.cli import _int_list, _sampling_args

    p = sub.add_parser(
        "subject-eval",
        help="subject fidelity (CLIP-I, DINO) and prompt fidelity (CLIP-T) of the base model, a subject "
        "adapter and its teacher, against the subject's images (DreamBooth's protocol)",
        formatter_class=formatter,
    )
    p.add_argument("--adapter", required=True, metavar="DIR", help="the subject adapter (`train subject`)")
    p.add_argument("--subject-images", required=True, metavar="DIR", help="the subject's real images")
    p.add_argument(
        "--prompts", required=True, help="prompts, one a line, {subject} where the adapter's phrase goes"
    )
    p.add_argument(
        "--teacher-images",
        default=None,
        metavar="DIR",
        help="a teacher set (`scalestyle teacher` --out, or its images/) scored as the teacher row",
    )
    p.add_argument("--clip", default=None, help="CLIP folder or hub id in the HF cache: CLIP-I and CLIP-T")
    p.add_argument("--dino", default=None, help="DINO folder or hub id in the HF cache: DINO similarity")
    p.add_argument("--out", required=True, help="folder for results.json, base/ and student/ (new or empty)")
    p.add_argument(
        "--seeds", type=_int_list("--seeds"), default=None, help="e.g. 0,1 or 0-3; default: --seed"
    )
    p.add_argument("--model", default=None, help="the adapter's base model folder; default: the bundled demo")
    p.add_argument("--device", default=None, help="cpu, cuda; default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress or summary")
    _sampling_args(p)
    p.set_defaults(func=cmd_subject_eval)


def _image_files(folder: Path, flag: str) -> list[Path]:
    from scalestyle.data.folder import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {folder}: no such folder")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{flag} {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _local_scorer(kind: Any, source: str, flag: str, device: str | None) -> Any:
    """``kind.from_pretrained`` from a folder or the Hugging Face cache only: an evaluation does not
    download its judges behind the user's back. A hub id is looked up in the cache first and loaded as
    its snapshot folder, since transformers still asks the network (and retries for half a minute
    offline) about a hub id even with ``local_files_only``."""
    folder = Path(source).expanduser()
    if not (source.startswith((".", "/", "~")) or folder.exists()):
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(source, local_files_only=True))
        except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), or not a hub id at all
            raise FileNotFoundError(
                f"{flag} {source}: no such folder, and not in the Hugging Face cache (subject-eval does "
                f"not download; `huggingface-cli download {source}` fetches it)"
            ) from None
    try:
        return kind.from_pretrained(folder, device=device)
    except (OSError, ValueError) as err:
        raise (ValueError if isinstance(err, ValueError) else OSError)(f"{flag} {source}: {err}") from None


def cmd_subject_eval(args: argparse.Namespace) -> int:
    from scalestyle import teacher
    from scalestyle.cli import _counter, _device, _sampling
    from scalestyle.eval.subject import RESULTS_FILE, SubjectEvalConfig, read_captioned, run_subject_eval
    from scalestyle.images import load_image
    from scalestyle.metrics import CLIPScorer, DINOScorer
    from scalestyle.models.subject import SubjectAdapter
    from scalestyle.pipeline import Pipeline
    from scalestyle.schedules import parse_aspect

    # everything the user named is read before any model loads
    if not args.clip and not args.dino:
        raise ValueError("give --clip and/or --dino: the scores need CLIP or DINO weights")
    adapter_dir = subject_adapters([args.adapter])[0]
    adapter = SubjectAdapter.load(adapter_dir)
    subject_images = [load_image(f) for f in _image_files(Path(args.subject_images), "--subject-images")]
    prompts = teacher.read_prompts(args.prompts)
    teacher_set = read_captioned(args.teacher_images) if args.teacher_images else None
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; choose a new --out")
    seeds = tuple(args.seeds or (args.seed,))
    cfg = SubjectEvalConfig(
        tuple(prompts),
        seeds,
        _sampling(args, parse_aspect(args.aspect)),
        extra={
            "adapter": str(Path(adapter_dir).resolve()),
            "subject_images": str(Path(args.subject_images).resolve()),
            "teacher_images": str(Path(args.teacher_images).resolve()) if args.teacher_images else None,
            "clip": args.clip,
            "dino": args.dino,
        },
    )
    device = _device(args.device)
    clip = _local_scorer(CLIPScorer, args.clip, "--clip", device) if args.clip else None
    dino = _local_scorer(DINOScorer, args.dino, "--dino", device) if args.dino else None
    pipe = Pipeline.load(args.model, device=device)
    show = not args.quiet
    progress, close = _counter("subject-eval", show)
    results = run_subject_eval(
        pipe, adapter, cfg, subject_images, out, clip=clip, dino=dino, teacher=teacher_set, progress=progress
    )
    close()
    if show:

        def cell(value: object) -> str:
            return f"{value:.3f}" if isinstance(value, float) else "-"

        sys.stderr.write("system    n  clip_i  dino    clip_t\n")
        for r in results["rows"]:
            scores = "  ".join(f"{cell(r[k]):<6}" for k in ("clip_i", "dino", "clip_t"))
            sys.stderr.write(f"{r['system']:<8}{r['n']:>3}  {scores.rstrip()}\n")
        sys.stderr.write(
            f"wrote {out / RESULTS_FILE} and {len(seeds) * len(prompts)} images each in base/, student/\n"
        )
    return 0
