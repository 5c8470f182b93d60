"""Write the demo's shipped references and its reference fit (issue 14; docs/demo_v2.md, section 4).

    python tools/world_references.py --references src/scalestyle/assets/references
    python tools/world_references.py --fit src/scalestyle/assets/demo

``--references DIR``: one render of a circle in each held-out style (evaluation seeds, 64x64), the styles
the demo model never trained on, named by style. ``--fit MODEL_DIR``: the Mahalanobis reference fit of the
folder's style judge (``reference_fit.safetensors``; ``scalestyle train demo`` writes it too). Prints
what it wrote, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scalestyle.data import procedural as world
from scalestyle.eval.classifier import WorldClassifier
from scalestyle.eval.reference_fit import FILE_NAME, fit_reference_fit
from scalestyle.metadata import write_png

# a shape no README prompt asks for, so that what a stylized image takes from the reference is its style
REFERENCE_CONTENT = "circle"


def write_references(out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    seed = world.SPLIT_SEEDS["eval"][0]
    for style in world.HELD_OUT_STYLES:
        sample = world.render(REFERENCE_CONTENT, style, seed)
        path = out_dir / f"{style.replace(' ', '_')}.png"
        write_png(sample.image, path, {"caption": sample.caption, "seed": seed, "made_by": "world.render"})
        written.append(str(path))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--references", type=Path, help="folder for the held-out-style references")
    parser.add_argument("--fit", type=Path, help="model folder whose style judge to fit")
    parser.add_argument("--per-style", type=int, default=48)
    args = parser.parse_args()
    report: dict[str, object] = {}
    if args.references:
        report["references"] = write_references(args.references)
    if args.fit:
        fit = fit_reference_fit(
            WorldClassifier.load(args.fit / "style_classifier.safetensors"), args.per_style
        )
        fit.save(args.fit / FILE_NAME)
        report["fit"] = {"path": str(args.fit / FILE_NAME), "threshold": fit.threshold}
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
