"""Plain-generation accuracy of a demo model folder: the quick check of a run on the way (issue 14).

    python tools/eval_plain.py MODEL_DIR [--styles neon,sepia] [--seeds 0] [--cfg 3]

Every world content in each named training style ("<content> in <style>"), judged by the folder's own
judges; prints one JSON object (content and style accuracy, seconds per image, commit). The full
model-card measurement is `tools/eval_demo.py`; this is its plain row on a subset, in a minute or two.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.eval.world import Judges, Row, summarize
from scalestyle.pipeline import Pipeline
from scalestyle.records import source_commit

# seven training styles spread over the world's palettes and textures; the 112 cases of docs/demo_v2.md
DEFAULT_STYLES = "neon,blueprint,sepia,chalkboard,stained glass,watercolor,thermal"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--styles", default=DEFAULT_STYLES, help="comma-separated training styles")
    parser.add_argument("--seeds", default="0", help="comma-separated sampling seeds")
    parser.add_argument("--cfg", type=float, default=3.0)
    args = parser.parse_args(argv)
    styles = args.styles.split(",")
    unknown = [s for s in styles if s not in world.TRAIN_STYLES]
    if unknown:
        parser.error(f"--styles must be training styles, got {unknown}")
    seeds = [int(s) for s in args.seeds.split(",")]
    pipe = Pipeline.load(args.model, device="cpu")
    judges = Judges.load(args.model)
    rows = []
    for style in styles:
        for content in world.CONTENTS:
            for seed in seeds:
                t = time.perf_counter()
                sampling = SamplingConfig(cfg=args.cfg, seed=seed)
                image = pipe(world.caption(content, style), sampling=sampling).images[0]
                seconds = time.perf_counter() - t
                (pc,), (ps,), prob = judges.judge([image])
                p_style = float(prob[0, world.STYLES.index(style)])
                rows.append(Row("plain", content, style, seed, None, pc, ps, p_style, seconds))
    out = {
        "model": str(args.model),
        "commit": source_commit(),
        "styles": styles,
        "seeds": seeds,
        "cfg": args.cfg,
        **summarize(rows)["plain"],
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
