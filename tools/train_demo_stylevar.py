"""Train the demo StyleVAR's stages in the background, resumably, and say where a run stands.

    python tools/train_demo_stylevar.py --work-dir /work/runs/demo_stylevar/work
    python tools/train_demo_stylevar.py --status --work-dir /work/runs/demo_stylevar/work
    python tools/train_demo_stylevar.py --sheet /work/runs/demo_stylevar/recon.png --work-dir ...

The first runs the stages of `scalestyle.train.demo_stylevar`: the VQ-VAE, the class-conditional VAR
(then the VAR model folder ``<work>/var_model``), StyleVAR's SFT from it on the world's triplets (then
``<work>/stylevar_model``), the ResNet trunks' pretraining (``<work>/trunks_model``), a second SFT
weighing every scale alike (``<work>/stylevar_final``) and SFT stages with remixed looks among the
triplets (``<work>/stylevar_remix1``, ...; the last is the shipped folder).
Every stage keeps its checkpoint in the work folder (keep it outside git): the same command run again
after a kill continues from the last checkpoint and skips finished stages. On a shared CPU start it as
``nohup nice -n 19 env OMP_NUM_THREADS=1 python ...``.

``--status`` reads the logs only (no torch import): steps done per stage, the last losses, the VQ-VAE's
codebook usage and the wall seconds per step of the latest stretch of the log. ``--sheet`` writes a PNG
of world images (training and held-out styles) above their reconstructions by the latest VQ-VAE
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGES = (
    ("vqvae", "vqvae_log.jsonl"),
    ("var", "var_log.jsonl"),
    ("stylevar-sft", "stylevar_sft_log.jsonl"),
    ("stylevar-sft2", "sft2/stylevar_sft_log.jsonl"),
)


def stage_number(folder: Path) -> int:
    """The number a remix stage's folder ends with (``remix10`` -> 10), so that 10 sorts after 2."""
    return int(folder.name.lstrip("abcdefghijklmnopqrstuvwxyz_") or 0)


def status(work_dir: Path) -> str:
    lines = []
    # the recipe's remix stages are numbered (remix1/, remix2/, ...): the logs present say how far it got
    logs = sorted(work_dir.glob("remix*/stylevar_sft_log.jsonl"), key=lambda p: stage_number(p.parent))
    remix = [(f"stylevar-{p.parent.name}", p.relative_to(work_dir).as_posix()) for p in logs]
    for stage, name in (*STAGES, *(remix or [("stylevar-remix", "remix1/stylevar_sft_log.jsonl")])):
        path = work_dir / name
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        if not rows:
            lines.append(f"{stage}: not started")
            continue
        last = rows[-1]
        # time_s restarts at 0 when a run resumes: the rate is taken over the latest run's rows only
        run = [last]
        for row in reversed(rows[:-1]):
            if row["time_s"] >= run[0]["time_s"]:
                break
            run.insert(0, row)
        rate = ""
        if len(run) > 1:
            dt = run[-1]["time_s"] - run[0]["time_s"]
            rate = f", {dt / (run[-1]['step'] - run[0]['step']):.1f} s/step lately"
        shown = {k: v for k, v in last.items() if k not in ("time_s", "step", "usage_S")}
        lines.append(f"{stage}: step {last['step']}{rate}; last {shown}")
    done = (work_dir / "var_model" / "scalestyle_model.json").is_file()
    lines.append(f"var model folder: {'written' if done else 'not yet'}")
    folders = sorted(work_dir.glob("stylevar_remix*/config.json"), key=lambda p: stage_number(p.parent))
    remixed = [p.parent.name for p in folders]
    for folder in ("stylevar_model", "trunks_model", "stylevar_final", *remixed):
        done = (work_dir / folder / "config.json").is_file()
        lines.append(f"{folder}: {'written' if done else 'not yet'}")
    return "\n".join(lines)


def sheet(work_dir: Path, out: Path) -> str:
    """Originals (top row: training styles, then held-out) over their reconstructions; returns a summary."""
    import torch
    from PIL import Image

    from scalestyle.data import procedural as world
    from scalestyle.images import to_pil
    from scalestyle.schedules import var_schedule
    from scalestyle.train.common import load_checkpoint
    from scalestyle.train.demo_stylevar import DemoStyleVARTrainConfig
    from scalestyle.train.vqvae import build_vqvae

    preset = DemoStyleVARTrainConfig().var_model
    vqvae = build_vqvae(preset.vae, 0)
    step = load_checkpoint(work_dir / "vqvae.ckpt", model=vqvae, optimizer=None)["step"]
    styles = [*world.TRAIN_STYLES[::3], *world.HELD_OUT_STYLES[:4]]
    samples = [
        world.render(world.CONTENTS[i % len(world.CONTENTS)], s, world.EVAL_SEEDS[i])
        for i, s in enumerate(styles)
    ]
    img = torch.stack([world.to_tensor(s.image) for s in samples])
    with torch.no_grad():
        recon = vqvae.eval().reconstruct(img, var_schedule(preset.transformer.patch_nums))
    n_train = len(world.TRAIN_STYLES[::3])
    err = (recon - img).abs().mean(dim=(1, 2, 3))
    canvas = Image.new("RGB", (64 * len(samples), 128), "white")
    for i, (a, b) in enumerate(zip(img, recon, strict=True)):
        canvas.paste(to_pil(a), (64 * i, 0))
        canvas.paste(to_pil(b), (64 * i, 64))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return (
        f"step {step}: mean |error| {float(err[:n_train].mean()):.3f} on training styles "
        f"({', '.join(styles[:n_train])}), {float(err[n_train:].mean()):.3f} on held-out ones "
        f"({', '.join(styles[n_train:])}), in [-1, 1] units; wrote {out}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, required=True, help="checkpoints and logs (resumable)")
    parser.add_argument("--status", action="store_true", help="print where the run stands and exit")
    parser.add_argument("--sheet", type=Path, help="write a reconstruction sheet PNG here and exit")
    args = parser.parse_args(argv)
    if args.status:
        print(status(args.work_dir))
        return 0
    if args.sheet is not None:
        print(sheet(args.work_dir, args.sheet))
        return 0
    from scalestyle.train.demo_stylevar import DemoStyleVARTrainConfig, train_demo_stylevar

    var_folder, stylevar_folder = train_demo_stylevar(
        args.work_dir, DemoStyleVARTrainConfig(), progress=False
    )
    print(f"wrote the VAR folder {var_folder} and the StyleVAR folder {stylevar_folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
