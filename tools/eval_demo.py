"""Model-card measurements of the demo model (run from the repo root)."""

import json
import sys
import time
from pathlib import Path

import torch

from scalestyle.data import procedural as world
from scalestyle.eval.world import Judges, evaluate_world, summarize
from scalestyle.method.style import StyleConfig
from scalestyle.pipeline import Pipeline
from scalestyle.records import source_commit

model = Path(sys.argv[1])
seeds = [int(s) for s in sys.argv[2].split(",")]
pipe = Pipeline.load(model, device="cpu")
judges = Judges.load(model)
out = {"commit": source_commit(), "seeds": seeds, "cfg": 3.0, "tau": 0.5}
# classifiers on clean eval renders and on VAE reconstructions
imgs, cs, ss = [], [], []
for i, s in enumerate(world.STYLES):
    for j, c in enumerate(world.CONTENTS):
        imgs.append(world.to_tensor(world.render(c, s, world.SPLIT_SEEDS["eval"][5000 + i * 16 + j]).image))
        cs.append(c)
        ss.append(s)
x = torch.stack(imgs)
with torch.no_grad():
    rec = pipe.vae.decode(pipe.vae.encode_multiscale(x, pipe.schedule_for().grids).summed_codes_BdHW)
for name, batch in (("clean", x), ("vae_recon", rec)):
    pc = judges.content.predict(batch)
    ps = judges.style.predict(batch)
    out[f"classifier_{name}"] = {
        "content_acc": sum(a == b for a, b in zip(pc, cs, strict=True)) / len(cs),
        "style_acc": sum(a == b for a, b in zip(ps, ss, strict=True)) / len(ss),
        "n": len(cs),
    }
print(json.dumps(out, indent=1), flush=True)
# the default convention B in full; A only for its stylize rows
for label, cfg in (("B", StyleConfig()), ("A", StyleConfig(convention="A"))):
    t = time.perf_counter()
    rows = evaluate_world(
        pipe,
        judges,
        seeds=seeds,
        style_config=cfg,
        train_styles=None if label == "B" else ["neon"],
        contents=None,
    )
    if label == "A":
        rows = [r for r in rows if r.method == "stylize"]
    out[f"summary_{label}"] = summarize(rows)
    print(label, json.dumps(out[f"summary_{label}"], indent=1), time.perf_counter() - t, flush=True)
result = Path("runs/demo_eval.json")
result.parent.mkdir(exist_ok=True)
result.write_text(json.dumps(out, indent=1))
