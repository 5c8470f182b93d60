"""Does stylization without a style prompt work as well as with the right one? Method (d) on the demo model
over the procedural protocol's held-out styles, judged by the world classifiers; rerun with
`python tools/style_prompt_default.py [SEEDS]` (default seeds 0-3). Prints a markdown table."""

import sys

from scalestyle.config import SamplingConfig, parse_int_list
from scalestyle.eval import protocols
from scalestyle.eval.world import Judges
from scalestyle.method.style import StyleConfig, StylePipeline
from scalestyle.pipeline import Pipeline, bundled_demo_dir

seeds = parse_int_list(sys.argv[1] if len(sys.argv) > 1 else "0-3", "seeds")
pipe = Pipeline.load(device="cpu")
judges = Judges.load(bundled_demo_dir())
styler = StylePipeline(pipe)
cases = protocols.procedural_cases(seeds=seeds)
rows = []
settings = (
    ("the case's style prompt", lambda case: case.style_prompt),
    ("no style prompt (the default, 'style')", lambda case: None),
)
for label, style_prompt in settings:
    images = []
    for case in cases:
        out = styler(
            case.content_prompt,
            case.reference(),
            style_prompt=style_prompt(case),
            style=StyleConfig(),
            sampling=SamplingConfig(seed=case.seed),
        )
        images.append(out.images[0])
    contents, styles, _ = judges.judge(images)
    n = len(cases)
    content_acc = sum(c == case.content for c, case in zip(contents, cases, strict=True)) / n
    style_acc = sum(s == case.style for s, case in zip(styles, cases, strict=True)) / n
    leak = sum(c == case.ref_content for c, case in zip(contents, cases, strict=True)) / n
    rows.append((label, n, content_acc, style_acc, leak))
print("| setting | images | content acc | style acc | leakage |")
print("|---|---|---|---|---|")
for label, n, c, s, leak in rows:
    print(f"| {label} | {n} | {c:.1%} | {s:.1%} | {leak:.1%} |")
