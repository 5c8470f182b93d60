"""Train a demo model in the background, resumably, and say where a run stands.

    python tools/train_demo.py --recipe v2 --work-dir /work/runs/demo_v2/work --out /work/runs/demo_v2/model
    python tools/train_demo.py --status --work-dir /work/runs/demo_v2/work
    python tools/train_demo.py --pack checkpoints/demo_v2 --work-dir /work/runs/demo_v2/work
    python tools/train_demo.py --recipe v2 --unpack checkpoints/demo_v2 --work-dir W --out DIR
    python tools/train_demo.py --recipe v2 --snapshot DIR --work-dir W [--judges MODEL_DIR]
    python tools/train_demo.py --refresh-from BASE --stage transformer --self-correction --work-dir W
    python tools/train_demo.py --refresh-from BASE --work-dir W --out DIR

The first chains VAE -> transformer -> classifiers -> model folder (`scalestyle.train.demo.train_demo`).
Every part keeps its checkpoint in the work folder, so the same command run again after a kill continues
each part from its last checkpoint (at most ``ckpt_every`` steps are lost) and skips finished parts. On a
shared CPU start it as ``nohup nice -n 19 env OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python ...``.
``--status`` reads the logs only (no torch import): steps done per part, the last losses and the step rate
of the latest stretch of the log.

``--refresh-from BASE`` runs `scalestyle.train.demo_refresh` instead: a new pixel-norm decoder on BASE's
frozen encoder and, with ``--self-correction``, a Bitwise Self-Correction fine-tune of BASE's transformer
(otherwise BASE's transformer is kept). The two stages are independent, so ``--stage decoder`` and
``--stage transformer`` can run side by side, one per core; the plain command (``--stage all``) then finds
both done and writes the model folder.

``--pack DIR`` writes the work folder's checkpoints and logs as files under 16 MiB (model exact, optimizer
moments in bfloat16: `scalestyle.train.packed`) for git, since a sandbox session keeps nothing else;
``--unpack DIR`` puts them back into the work folder before training (a checkpoint already there at the
same or a later step is kept).

``--snapshot DIR`` writes a model folder from the latest checkpoints of a run still training, judged by the
run's classifiers once trained, else by those of ``--judges`` (default: the shipped demo), so
`tools/eval_demo.py DIR` can measure it on the way.

``--amp auto`` (the default, as in the trainers' configs) uses bf16 autocast only where bf16 matmuls are
faster than float32 (`scalestyle.train.common.bf16_pays`): on a CPU without AVX512-BF16 or AMX torch
emulates them (measured on the 2-core AVX2 sandbox: 1.2 GFLOP/s against 54 GFLOP/s in float32).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

PARTS = (("vae", "vae_log.jsonl"), ("transformer", "transformer_log.jsonl"))


def status(work_dir: Path) -> str:
    lines = []
    for part, name in PARTS:
        path = work_dir / name
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        if not rows:
            lines.append(f"{part}: not started")
            continue
        last = rows[-1]
        losses = {k: v for k, v in last.items() if k not in ("time_s", "step")}
        # time_s restarts at 0 when a run resumes: the rate is taken over the latest run's rows only
        run = [rows[-1]]
        for row in reversed(rows[:-1]):
            if row["time_s"] >= run[0]["time_s"]:
                break
            run.insert(0, row)
        rate = ""
        if len(run) > 1:
            dt = run[-1]["time_s"] - run[0]["time_s"]
            rate = f", {dt / (run[-1]['step'] - run[0]['step']):.1f} s/step lately"
        first = {k: v for k, v in rows[0].items() if k not in ("time_s", "step")}
        lines.append(f"{part}: step {last['step']}{rate}; first logged {first}; last {losses}")
    done = (work_dir / "content_classifier.safetensors").is_file()
    lines.append(f"classifiers: {'done' if done else 'not done'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="v2", help="demo (the shipped model's) or v2 (default: v2)")
    parser.add_argument("--work-dir", type=Path, required=True, help="checkpoints and logs (resumable)")
    parser.add_argument("--out", type=Path, help="model folder written when every part is done")
    parser.add_argument("--status", action="store_true", help="print where the run stands and exit")
    parser.add_argument("--refresh-from", type=Path, help="a demo model folder to refresh (see above)")
    parser.add_argument(
        "--stage",
        choices=("all", "decoder", "transformer"),
        default="all",
        help="with --refresh-from: run one stage only (default: all, then write --out)",
    )
    parser.add_argument(
        "--self-correction",
        action="store_true",
        help="with --refresh-from: also fine-tune the transformer with Bitwise Self-Correction (tried on the "
        "demo: it lowered content accuracy; default: keep the base transformer)",
    )
    parser.add_argument("--pack", type=Path, help="pack the work folder's checkpoints into this folder, exit")
    parser.add_argument("--unpack", type=Path, help="restore a packed run into the work folder, then train")
    parser.add_argument("--snapshot", type=Path, help="write a model folder of the run so far here, exit")
    parser.add_argument("--judges", type=Path, help="with --snapshot: a demo folder whose judges to use")
    parser.add_argument(
        "--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (default: auto)"
    )
    args = parser.parse_args(argv)
    if args.status:
        print(status(args.work_dir))
        return 0
    if args.pack is not None:
        from scalestyle.train.packed import pack_run

        files = pack_run(args.work_dir, args.pack)
        print(f"packed {len(files)} files into {args.pack}", file=sys.stderr)
        return 0
    if args.snapshot is not None:
        from scalestyle.locate import bundled_demo_dir
        from scalestyle.train.demo import DEMO_RECIPES, snapshot_demo

        judges = args.judges or bundled_demo_dir()
        snapshot_demo(args.work_dir, args.snapshot, DEMO_RECIPES[args.recipe](), judges)
        print(f"wrote the snapshot {args.snapshot}", file=sys.stderr)
        return 0
    if args.unpack is not None:
        from scalestyle.train.packed import unpack_run

        restored = unpack_run(args.unpack, args.work_dir)
        print(f"restored {[p.name for p in restored]} from {args.unpack}", file=sys.stderr, flush=True)
    amp = {"on": True, "off": False}.get(args.amp)
    if args.refresh_from is not None:
        return refresh(
            args.refresh_from, args.work_dir, args.out, args.stage, amp, args.self_correction, parser
        )
    if args.out is None:
        parser.error("--out is needed to train")
    from scalestyle.train.demo import DEMO_RECIPES, train_demo

    if args.recipe not in DEMO_RECIPES:
        parser.error(f"--recipe must be one of {sorted(DEMO_RECIPES)}, got {args.recipe!r}")
    cfg = DEMO_RECIPES[args.recipe]()
    cfg = replace(cfg, vae=replace(cfg.vae, amp=amp), transformer=replace(cfg.transformer, amp=amp))
    print(f"recipe {args.recipe}, bf16 autocast {args.amp}", file=sys.stderr, flush=True)
    train_demo(args.out, args.work_dir, cfg, progress=False)
    print(f"wrote the model folder {args.out}", file=sys.stderr)
    return 0


def refresh(
    base: Path,
    work_dir: Path,
    out: Path | None,
    stage: str,
    amp: bool | None,
    self_correction: bool,
    parser: argparse.ArgumentParser,
) -> int:
    from scalestyle.train.demo_refresh import (
        DemoRefreshConfig,
        refresh_decoder,
        refresh_demo,
        refresh_transformer,
    )

    cfg = DemoRefreshConfig.with_self_correction() if self_correction else DemoRefreshConfig()
    tcfg = None if cfg.transformer is None else replace(cfg.transformer, amp=amp)
    cfg = replace(cfg, decoder=replace(cfg.decoder, amp=amp), transformer=tcfg)
    print(f"refresh of {base}, stage {stage}, bf16 autocast {amp}", file=sys.stderr)
    if stage == "decoder":
        refresh_decoder(base, work_dir, cfg, progress=False)
    elif stage == "transformer":
        refresh_transformer(base, work_dir, cfg, progress=False)
    elif out is None:
        parser.error("--out is needed to write the refreshed model")
    else:
        refresh_demo(base, out, work_dir, cfg, progress=False)
        print(f"wrote the model folder {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
