"""The demo model card's sample sheet: a world render, then generations, for eight (content, style) pairs.

python tools/demo_samples.py MODEL_DIR OUT.png [SEEDS]
Row 1 is the procedural world's own render of each caption (an eval seed), the next rows are the model's
generations of the same caption with seeds 0, 1, ... (cfg 3, tau 0.5); pairs use training styles only.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from scalestyle.config import SamplingConfig
from scalestyle.data import procedural as world
from scalestyle.pipeline import Pipeline

model, out = Path(sys.argv[1]), Path(sys.argv[2])
seeds = [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "0,1").split(",")]
pipe = Pipeline.load(model, device="cpu")
pairs = [
    (world.CONTENTS[(3 * i) % 16], world.TRAIN_STYLES[(5 * i) % len(world.TRAIN_STYLES)]) for i in range(8)
]
rows = [
    [np.asarray(world.render(c, s, world.SPLIT_SEEDS["eval"][i]).image) for i, (c, s) in enumerate(pairs)]
]
for seed in seeds:
    images = pipe(
        [world.caption(c, s) for c, s in pairs], sampling=SamplingConfig(seed=seed, cfg=3.0, tau=0.5)
    ).images
    rows.append([np.asarray(im.convert("RGB")) for im in images])
sheet = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.Resampling.NEAREST).save(out)
print(out, [world.caption(c, s) for c, s in pairs])
