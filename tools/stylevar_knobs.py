"""StyleVAR's two inference knobs on the world: style strength (the authors' alpha shift) and CFG on the
style condition (not in the authors' release), on held-out and on training styles (issue 15).

    python tools/stylevar_knobs.py --out runs/stylevar_knobs [--model stylevar-demo] \
        [--strengths=-1,-0.5,0,0.5,1] [--cfgs 0,1.5,3] [--top-ks 900,10,1] [--seeds 0,1] \
        [--splits held_out,seen]

One `scalestyle.eval.transfer_eval` run per style split and seed (16 contents x 7 styles), one method per
(strength, cfg, top-k) named ``s<strength>-cfg<cfg>-k<top_k>`` (top-k 1 is greedy; the default 900 is
capped at the codebook), judged by the demo model's classifiers; the runs are resumable and each writes
its summary.md. Prints one JSON row per (split, seed, method).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

from scalestyle.data import procedural as world
from scalestyle.eval.evaluate import classifier_gram
from scalestyle.eval.transfer_eval import (
    TransferScorers,
    pipeline_method,
    run_transfer_evaluation,
    world_transfer_cases,
)
from scalestyle.eval.world import Judges
from scalestyle.locate import bundled_demo_dir, model_folder
from scalestyle.models.vqvae import VQVAE
from scalestyle.transfer import TRANSFER_SAMPLING, TransferPipeline

# the seven training styles of the seen-style row in docs/evaluation.md
SEEN = ("neon", "blueprint", "sepia", "chalkboard", "stained glass", "watercolor", "thermal")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="stylevar-demo")
    parser.add_argument("--strengths", type=floats, default=[0.0, 0.5, 1.0])
    parser.add_argument("--cfgs", type=floats, default=[0.0, 1.5, 3.0])
    parser.add_argument("--top-ks", type=ints, default=[TRANSFER_SAMPLING.top_k])
    parser.add_argument("--seeds", type=ints, default=[0])
    parser.add_argument("--splits", default="held_out,seen", help="held_out, seen or both")
    args = parser.parse_args(argv)
    splits = {"held_out": world.HELD_OUT_STYLES, "seen": SEEN}
    if unknown := [s for s in args.splits.split(",") if s not in splits]:
        parser.error(f"unknown split(s) {unknown}: held_out, seen")
    pipe = TransferPipeline.load(model_folder(args.model), device="cpu")
    assert isinstance(pipe.pipe.vae, VQVAE)  # a StyleVAR folder comes with a VQ-VAE
    # the authors' top-k 900 is of a 4096-entry codebook; a smaller one keeps every entry
    vocab = pipe.pipe.vae.cfg.vocab_size
    judges = Judges.load(bundled_demo_dir())
    scorers = TransferScorers(judges=judges, gram=classifier_gram(judges))
    methods = [
        pipeline_method(
            f"s{strength:g}-cfg{cfg:g}-k{min(top_k, vocab)}",
            pipe,
            model_name=pipe.pipe.model_name,
            strength=strength,
            sampling=replace(TRANSFER_SAMPLING, cfg=cfg, top_k=min(top_k, vocab)),
        )
        for strength in args.strengths
        for cfg in args.cfgs
        for top_k in args.top_ks
    ]
    for split in args.splits.split(","):
        for seed in args.seeds:
            out = args.out / (split if seed == 0 else f"{split}-seed{seed}")
            cases = world_transfer_cases(world.CONTENTS, splits[split], (seed,))
            result = run_transfer_evaluation(cases, methods, out, scorers=scorers)
            with (out / "summary.csv").open() as f:
                for row in csv.DictReader(f):
                    head = {"split": split, "seed": seed, "commit": result.rows[0]["commit"]}
                    print(json.dumps({**head, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
