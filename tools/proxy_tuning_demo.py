"""Proxy-tuning on the demo (issue 18), end to end on CPU: `python tools/proxy_tuning_demo.py --work DIR`.

1. teacher: the world renders each subject (hexstar, cactus: never in the demo model's CONTENTS) in the
   six teacher styles, with class renders for prior preservation (`scalestyle teacher --world-subject`);
2. student: one subject adapter per subject on the frozen demo model (`scalestyle train subject`),
   timed;
3. evaluation, the same instruments for all: shape IoU with the subject's and the class's true masks
   (pose removed) and the style judge's reading, for the teacher's renders, the base model and the
   student, on the teacher's styles and on measurable training styles the teacher never showed; both
   adapters loaded at once (multi-subject); the training-free method on a held-out style reference with
   the subject adapter merged under it;
4. ``DIR/results.json`` (the table's numbers) and ``DIR/sheet.png`` (a sample sheet).

Stages whose output exists are skipped, so a killed run continues.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections import Counter
from pathlib import Path
from statistics import mean

import torch
from PIL import Image, ImageDraw

from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.data.folder import ImageFolder
from scalestyle.eval.subject import SubjectScore, mask_iou, object_mask, score_images, train_shape_judge
from scalestyle.eval.world import Judges
from scalestyle.method.style import StylePipeline
from scalestyle.models.subject import (
    ADD_TOKEN_CHOICES,
    DEFAULT_TARGETS,
    SubjectAdapter,
    SubjectConfig,
    subjects_applied,
    wants_added_tokens,
)
from scalestyle.pipeline import Pipeline, bundled_demo_dir
from scalestyle.teacher import DEFAULT_TEACHER_STYLES, WorldTeacherConfig, world_teacher
from scalestyle.train.subject import SubjectTrainConfig, train_subject

TOKENS = {"hexstar": "<sks>", "cactus": "<zwx>"}
# styles whose renders the mask instrument reads well (mask IoU >= 0.75 on the world's own renders,
# measured in this script's "instrument" rows); the others are left out of the shape scores
UNSEEN = tuple(
    s
    for s in world.TRAIN_STYLES
    if s not in DEFAULT_TEACHER_STYLES
    and s not in ("stained glass", "newsprint", "sunset gradient", "graffiti", "risograph")
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--work", default="runs/subject", help="teacher sets, adapters, results")
parser.add_argument("--steps", type=int, default=300, help="optimizer steps per subject")
parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
parser.add_argument("--seeds", type=int, default=4, help="images per (system, style)")
parser.add_argument("--prefix-scales", type=int, default=0, help="scales trained (0, the default: all)")
parser.add_argument("--prior-weight", type=float, default=1.0, help="prior-preservation weight")
parser.add_argument("--lr", type=float, default=SubjectTrainConfig.lr, help="peak learning rate")
parser.add_argument(
    "--targets", default=",".join(DEFAULT_TARGETS), help="LoRA target modules, comma-separated"
)
parser.add_argument("--subjects", default=",".join(TOKENS), help="subjects to tune, comma-separated")
parser.add_argument("--judge-steps", type=int, default=400, help="training steps of the shape judge")
parser.add_argument(
    "--joint",
    action="store_true",
    help="also train one adapter on every subject at once and score it beside the separate ones",
)
parser.add_argument(
    "--add-token",
    choices=ADD_TOKEN_CHOICES,
    default="auto",
    help="identifiers as added tokens (auto: when the vocabulary cannot spell them, as on the demo)",
)
args = parser.parse_args()
subjects = {s: TOKENS[s] for s in args.subjects.split(",")}
targets = tuple(args.targets.split(","))
work = Path(args.work)
work.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(max(1, torch.get_num_threads()))
pipe = Pipeline.load(None, device="cpu")
judges = Judges.load(bundled_demo_dir())
shape_judge = train_shape_judge(pipe.vae, pipe.schedule_for(), work / "shape_judge", steps=args.judge_steps)  # type: ignore[arg-type]
results: dict[str, object] = {
    "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
    "commit": subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip(),
    "torch": torch.__version__,
    "config": {
        "steps": args.steps,
        "rank": args.rank,
        "seeds": args.seeds,
        "prior_weight": args.prior_weight,
        "lr": args.lr,
        "targets": list(targets),
        "judge_steps": args.judge_steps,
        "prefix_scales": args.prefix_scales,
        "add_token": args.add_token,
        "joint": args.joint,
    },
}
train_cfg = SubjectTrainConfig(
    steps=args.steps, lr=args.lr, prior_weight=args.prior_weight, prefix_scales=args.prefix_scales or None,
    log_every=25, ckpt_every=50,
)  # fmt: skip
results["train_config"] = {k: v for k, v in train_cfg.__dict__.items()}
adapters: dict[str, SubjectAdapter] = {}
seconds: dict[str, float] = {}
for subject, token in subjects.items():
    teacher = work / f"teacher_{subject}"
    if not (teacher / "teacher.json").is_file():
        world_teacher(WorldTeacherConfig(subject), teacher)
    out = work / f"adapter_{subject}"
    if not (out / "config.json").is_file():
        cls = world.SUBJECT_CLASSES[subject]
        add = wants_added_tokens(args.add_token, pipe.text_encoder, [token])
        adapter = SubjectAdapter(
            SubjectConfig(token, cls, 128, lora_rank=args.rank, lora_targets=targets, add_token=add)
        )
        t0 = time.perf_counter()
        train_subject(
            pipe, adapter, train_cfg, ImageFolder(teacher / "images", (64, 64)), work / f"train_{subject}",
            classes=ImageFolder(teacher / "class", (64, 64)), progress=False,
        )  # fmt: skip
        (work / f"train_{subject}" / "seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        adapter.save(out)
    adapters[subject] = SubjectAdapter.load(out)
    seconds[subject] = float((work / f"train_{subject}" / "seconds.txt").read_text())
joint: SubjectAdapter | None = None
if args.joint and len(subjects) > 1:
    out = work / "adapter_joint"
    if not (out / "config.json").is_file():
        pairs = [(token, world.SUBJECT_CLASSES[subject]) for subject, token in subjects.items()]
        add = wants_added_tokens(args.add_token, pipe.text_encoder, [t for t, _ in pairs])
        adapter = SubjectAdapter(
            SubjectConfig(*pairs[0], 128, lora_rank=args.rank, lora_targets=targets, add_token=add,
                          others=tuple(pairs[1:]))
        )  # fmt: skip
        t0 = time.perf_counter()
        folders = [ImageFolder(work / f"teacher_{s}" / "images", (64, 64), seed=2 * i)
                   for i, s in enumerate(subjects)]  # fmt: skip
        class_folders = [ImageFolder(work / f"teacher_{s}" / "class", (64, 64), seed=2 * i + 1)
                         for i, s in enumerate(subjects)]  # fmt: skip
        train_subject(
            pipe, adapter, train_cfg, folders, work / "train_joint", classes=class_folders, progress=False
        )
        (work / "train_joint" / "seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        adapter.save(out)
    joint = SubjectAdapter.load(out)
    seconds["joint"] = float((work / "train_joint" / "seconds.txt").read_text())
results["train_seconds"] = seconds


def generate(prompt: str, seed: int) -> Image.Image:
    return pipe(prompt, sampling=SamplingConfig(seed=seed)).images[0]


def score(images: list[Image.Image], subject: str, styles: list[str]) -> list[SubjectScore]:
    return score_images(images, subject, styles, judges, shape_judge)


def summary(scores: list[SubjectScore], styles: list[str]) -> dict[str, float | str]:
    return {
        "n": len(scores),
        "iou_subject": round(mean(s.iou_subject for s in scores), 3),
        "iou_class": round(mean(s.iou_class for s in scores), 3),
        "subject_rate": round(mean(s.is_subject for s in scores), 3),
        "nearest_top": Counter(s.nearest for s in scores).most_common(1)[0][0],
        "judged_subject_rate": round(mean(s.judged == s.subject_name for s in scores), 3),
        "judged_class_rate": round(
            mean(s.judged == world.SUBJECT_CLASSES[s.subject_name] for s in scores), 3
        ),
        "style_acc": round(mean(s.pred_style == st for s, st in zip(scores, styles, strict=True)), 3),
        "p_style": round(mean(s.p_style for s in scores), 3),
    }


table: dict[str, dict[str, dict[str, float | str]]] = {}
sheet_rows: list[tuple[str, list[Image.Image]]] = []
seeds = list(range(args.seeds))
for subject, token in subjects.items():
    cls = world.SUBJECT_CLASSES[subject]
    rows: dict[str, dict[str, float | str]] = {}
    for split, styles in (("teacher styles", DEFAULT_TEACHER_STYLES), ("unseen styles", UNSEEN)):
        cases = [(st, k) for st in styles for k in seeds]
        style_list = [st for st, _ in cases]
        renders = [world.render_subject(subject, st, world.EVAL_SEEDS[k]) for st, k in cases]
        rows[f"teacher (world renders) / {split}"] = summary(
            score([r.image for r in renders], subject, style_list), style_list
        )
        rows[f"instrument mask IoU / {split}"] = {
            "mask_iou": round(mean(mask_iou(object_mask(r.image), r.mask) for r in renders), 3)
        }
        prompts = [f"a {token} {cls} in {world.style_caption(st)}" for st, _ in cases]
        base = [generate(p, k) for p, (_, k) in zip(prompts, cases, strict=True)]
        rows[f"base model / {split}"] = summary(score(base, subject, style_list), style_list)
        # the ceiling: how often the base model's drawing of its own class word reads as that class
        base_class = [generate(f"a {cls} in {world.style_caption(st)}", k) for st, k in cases]
        rows[f"base model, class prompt / {split}"] = summary(
            score(base_class, subject, style_list), style_list
        )
        with subjects_applied(pipe, [adapters[subject]]):
            student = [generate(p, k) for p, (_, k) in zip(prompts, cases, strict=True)]
            class_only = [
                generate(f"a {cls} in {world.style_caption(st)}", k) for st, k in cases
            ]  # prior preservation: the class word alone should still draw the class
        rows[f"student / {split}"] = summary(score(student, subject, style_list), style_list)
        rows[f"student, class prompt / {split}"] = summary(score(class_only, subject, style_list), style_list)
        both = student
        if len(adapters) > 1:  # multi-subject: every adapter folded in at once
            with subjects_applied(pipe, list(adapters.values())):
                both = [generate(p, k) for p, (_, k) in zip(prompts, cases, strict=True)]
            rows[f"student, both adapters / {split}"] = summary(score(both, subject, style_list), style_list)
        together = student
        if joint is not None:  # one adapter trained on every subject
            with subjects_applied(pipe, [joint]):
                together = [generate(p, k) for p, (_, k) in zip(prompts, cases, strict=True)]
            rows[f"student, joint adapter / {split}"] = summary(
                score(together, subject, style_list), style_list
            )
        if split == "unseen styles":
            picks = [UNSEEN.index(s) * len(seeds) for s in UNSEEN[:6]]
            sheet_rows.append((f"{subject}: teacher (world)", [renders[i].image for i in picks]))
            sheet_rows.append((f"{subject}: base", [base[i] for i in picks]))
            sheet_rows.append((f"{subject}: student", [student[i] for i in picks]))
            if len(adapters) > 1:
                sheet_rows.append((f"{subject}: both adapters", [both[i] for i in picks]))
            if joint is not None:
                sheet_rows.append((f"{subject}: joint adapter", [together[i] for i in picks]))
    # the training-free method on held-out style references, the subject adapter merged under it
    styler = StylePipeline(pipe)
    held = [(st, k) for st in world.HELD_OUT_STYLES for k in seeds[:2]]
    refs = [world.render("circle", st, world.EVAL_SEEDS[100 + k]).image for st, k in held]
    outs = []
    with subjects_applied(pipe, [adapters[subject]]):
        for (st, k), ref in zip(held, refs, strict=True):
            outs.append(
                styler(f"a {token} {cls}", ref, style_prompt=world.style_caption(st),
                       sampling=SamplingConfig(seed=k)).images[0]
            )  # fmt: skip
    held_styles = [st for st, _ in held]
    rows["student + training-free stylize / held-out references"] = summary(
        score(outs, subject, held_styles), held_styles
    )
    sheet_rows.append((f"{subject}: stylize, held-out refs", outs[::2][:6]))
    table[subject] = rows
results["table"] = table
results["unseen_styles"] = list(UNSEEN)
(work / "results.json").write_text(json.dumps(results, indent=2) + "\n")

# the sample sheet: a label column and six 64 px images a row, shown at 2x
cell, label_w = 128, 190
sheet = Image.new("RGB", (label_w + 6 * cell, cell * len(sheet_rows)), "white")
draw = ImageDraw.Draw(sheet)
for r, (label, images) in enumerate(sheet_rows):
    draw.text((6, r * cell + cell // 2 - 6), label, fill="black")
    for c, im in enumerate(images[:6]):
        sheet.paste(
            im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (label_w + c * cell, r * cell)
        )
sheet.save(work / "sheet.png")
print(json.dumps(results, indent=2))
