"""StyleVAR's two inference knobs on the world: style strength (the authors' alpha shift) and CFG on the
style condition (not in the authors' release), on held-out and on training styles (issue 15).

    python tools/stylevar_knobs.py --out runs/stylevar_knobs [--model stylevar-demo] \
        [--strengths 0,0.5,1] [--cfgs 0,1.5,3]

One `scalestyle.eval.transfer_eval` run per style split (16 contents x 7 styles, seed 0), one method per
(strength, cfg) named ``s<strength>-cfg<cfg>``, judged by the demo model's classifiers; the runs are
resumable and each writes its summary.md. Prints one JSON row per (split, method).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="stylevar-demo")
    parser.add_argument("--strengths", type=floats, default=[0.0, 0.5, 1.0])
    parser.add_argument("--cfgs", type=floats, default=[0.0, 1.5, 3.0])
    args = parser.parse_args(argv)
    pipe = TransferPipeline.load(model_folder(args.model), device="cpu")
    assert isinstance(pipe.pipe.vae, VQVAE)  # a StyleVAR folder comes with a VQ-VAE
    # the authors' top-k 900 is of a 4096-entry codebook; a smaller one keeps every entry
    base = replace(TRANSFER_SAMPLING, top_k=min(TRANSFER_SAMPLING.top_k, pipe.pipe.vae.cfg.vocab_size))
    judges = Judges.load(bundled_demo_dir())
    scorers = TransferScorers(judges=judges, gram=classifier_gram(judges))
    methods = [
        pipeline_method(
            f"s{strength:g}-cfg{cfg:g}",
            pipe,
            model_name=pipe.pipe.model_name,
            strength=strength,
            sampling=replace(base, cfg=cfg),
        )
        for strength in args.strengths
        for cfg in args.cfgs
    ]
    for split, styles in (("held_out", world.HELD_OUT_STYLES), ("seen", SEEN)):
        result = run_transfer_evaluation(
            world_transfer_cases(world.CONTENTS, styles, (0,)), methods, args.out / split, scorers=scorers
        )
        with (args.out / split / "summary.csv").open() as f:
            for row in csv.DictReader(f):
                print(json.dumps({"split": split, "commit": result.rows[0]["commit"], **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
