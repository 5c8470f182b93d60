"""Seconds per image of AdaIN against StyleVAR on this machine, at the same size; rerun with
`python tools/bench_transfer.py [--adain DIR] [--size 64] [--runs 5]`.

AdaIN runs at the demo's widths and at the public model's (random weights: the time does not depend on
them; ``--adain DIR`` times a trained folder too), StyleVAR as ``TransferPipeline.random("stylevar-tiny")``
with the authors' sampling, top-k capped at its 64 codes (its size is the preset's, 64). Prints one JSON
line per model, then a summary.
"""

import argparse
import json
from dataclasses import replace

import torch

from scalestyle.adain_transfer import AdaINPipeline
from scalestyle.bench import bench_transfer
from scalestyle.models.adain import AdaINConfig
from scalestyle.models.vqvae import VQVAE
from scalestyle.train.adain import AdaINTrainConfig
from scalestyle.transfer import TRANSFER_SAMPLING, TransferPipeline

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--adain", default=None, help="an AdaIN folder to time besides the random ones")
parser.add_argument("--size", type=int, default=64, help="content and style side in pixels")
parser.add_argument("--runs", type=int, default=5, help="timed runs (the median is reported)")
parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
args = parser.parse_args()
cpu = torch.device("cpu")

stylevar = TransferPipeline.random("stylevar-tiny", device="cpu")
if stylevar.size != args.size:
    parser.error(f"stylevar-tiny draws {stylevar.size}x{stylevar.size}; pass --size {stylevar.size}")
pipes = {
    "adain demo widths (random)": AdaINPipeline.random(AdaINConfig(widths=AdaINTrainConfig().widths)),
    "adain public widths (random)": AdaINPipeline.random(AdaINConfig()),
}
if args.adain:
    trained = AdaINPipeline.load(args.adain, device="cpu")
    pipes[trained.model_name] = trained
assert isinstance(stylevar.pipe.vae, VQVAE)  # a StyleVAR comes with a VQ-VAE
# the authors' top-k 900 is of a 4096-entry codebook; the tiny preset's is smaller
sampling = replace(TRANSFER_SAMPLING, top_k=min(TRANSFER_SAMPLING.top_k, stylevar.pipe.vae.cfg.vocab_size))
rows = []
for name, pipe in pipes.items():
    rows.append(
        bench_transfer(pipe, model_name=name, device=cpu, size=args.size, runs=args.runs, warmup=args.warmup)
    )
rows.append(
    bench_transfer(
        lambda content, style: stylevar(content, style, sampling=sampling),
        model_name=stylevar.pipe.model_name,
        device=cpu,
        size=args.size,
        runs=args.runs,
        warmup=args.warmup,
    )
)
for row in rows:
    print(json.dumps(row))
threads = rows[0]["machine"]["threads"]
print(f"seconds per image at {args.size}x{args.size} on CPU ({threads} threads), median of {args.runs}:")
for row in rows:
    print(f"  {row['model']}: {row['seconds_per_image']:.4f}")
