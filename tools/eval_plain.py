"""Plain-generation accuracy of a demo model folder: the quick check of a run on the way (issue 14).

    python tools/eval_plain.py MODEL_DIR [--styles neon,sepia] [--seeds 0] [--cfg 3] [--given-scales 3,5]

Every world content in each named training style ("<content> in <style>"), judged by the folder's own
judges; prints one JSON object (content and style accuracy, seconds per image, commit). The full
model-card measurement is `tools/eval_demo.py`; this is its plain row on a subset, in a minute or two.

``--given-scales K`` adds a row per K where the first K scales are not sampled but teacher-forced with the
tokens of a true render of the case (an eval-split seed): it tells which scales a run has yet to learn
(content that appears once the coarse scales are given is drawn right by the fine scales).
``--per-content`` adds each content's accuracy (plain and per K), which shows whether the misses spread
over the world or sit in a few shapes (docs/demo_v2.md §7).
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
from scalestyle.sampling import PathPlan

# seven training styles spread over the world's palettes and textures; the 112 cases of docs/demo_v2.md
DEFAULT_STYLES = "neon,blueprint,sepia,chalkboard,stained glass,watercolor,thermal"


def per_content(rows: list[Row], method: str, content: str) -> float:
    """The share of ``method``'s images of ``content`` that the content judge reads as ``content``."""
    mine = [r.pred_content == content for r in rows if r.method == method and r.content == content]
    return sum(mine) / len(mine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--styles", default=DEFAULT_STYLES, help="comma-separated training styles")
    parser.add_argument("--seeds", default="0", help="comma-separated sampling seeds")
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument(
        "--given-scales", default="", help="comma-separated K: rows with the first K scales teacher-forced"
    )
    parser.add_argument("--per-content", action="store_true", help="each content's accuracy as well")
    args = parser.parse_args(argv)
    styles = args.styles.split(",")
    unknown = [s for s in styles if s not in world.TRAIN_STYLES]
    if unknown:
        parser.error(f"--styles must be training styles, got {unknown}")
    seeds = [int(s) for s in args.seeds.split(",")]
    pipe = Pipeline.load(args.model, device="cpu")
    schedule = pipe.schedule_for()
    given = [int(k) for k in args.given_scales.split(",") if k]
    if bad := [k for k in given if not 1 <= k <= len(schedule.grids)]:
        parser.error(f"--given-scales must be in [1, {len(schedule.grids)}], got {bad}")
    judges = Judges.load(args.model)
    rows = []
    for style in styles:
        for i, content in enumerate(world.CONTENTS):
            prompt = world.caption(content, style)
            truth = world.render(content, style, world.SPLIT_SEEDS["eval"][i]).image
            tokens = pipe.reference_tokens(truth, schedule) if given else ()
            for seed in seeds:
                for k in (0, *given):
                    t = time.perf_counter()
                    plan = PathPlan("gen", pipe.encode_text([prompt]), given_tokens=tokens[:k])
                    summed = pipe.run_paths([plan], SamplingConfig(cfg=args.cfg, seed=seed), schedule)["gen"]
                    image = pipe.decode(summed)[0]
                    seconds = time.perf_counter() - t
                    (pc,), (ps,), prob = judges.judge([image])
                    p_style = float(prob[0, world.STYLES.index(style)])
                    method = f"given-{k}" if k else "plain"
                    rows.append(Row(method, content, style, seed, None, pc, ps, p_style, seconds))
    summary = summarize(rows)
    out = {
        "model": str(args.model),
        "commit": source_commit(),
        "styles": styles,
        "seeds": seeds,
        "cfg": args.cfg,
        **summary["plain"],
        **({"given_scales": {k: summary[f"given-{k}"] for k in given}} if given else {}),
    }
    if args.per_content:
        out["per_content"] = {
            method: {c: round(per_content(rows, method, c), 3) for c in world.CONTENTS}
            for method in ("plain", *(f"given-{k}" for k in given))
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
