"""Measure a BSQ VAE's "droplet" (saturated spots): the decode of an all-zero latent and spurious saturated
pixels on reconstructions of eval-split renders of the procedural world (docs/demo_v2.md, section 1).

    python tools/vae_spots.py --model src/scalestyle/assets/demo
    python tools/vae_spots.py --ckpt /work/runs/demo_v2/work/vae.ckpt --preset demo-v2
    python tools/vae_spots.py --ckpt W/decoder/vae.ckpt --preset demo --decoder-norm pixel

Prints one JSON object. ``zero_max_dev``: the largest deviation (over channels) of the zero-latent decode
from its per-channel median, images in [-1, 1], unclamped; ``zero_spot_px``: its pixels at +-0.99 or beyond
that are also more than 0.5 off that median. Per reconstructed image, for the quantized sum (``q_``) and
the unquantized latent (``z_``): ``spurious_sat_px``, pixels at +-0.98 or beyond that are more than 0.3
from the original; ``same_place``, the share of images with such a pixel within one pixel of the most
common place (a droplet stays where the decoder puts it, whatever the image).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scalestyle.data import procedural as world
from scalestyle.models.bsq_vae import BSQVAE
from scalestyle.schedules import get_schedule


def zero_decode(vae: BSQVAE, hw: tuple[int, int]) -> dict[str, Any]:
    with torch.no_grad():
        x = vae.decoder(torch.zeros(1, vae.cfg.codebook_dim, *hw)).float()[0]
    dev = (x - x.flatten(1).median(1).values[:, None, None]).abs().amax(0)
    row, col = divmod(int(dev.argmax()), dev.shape[1])
    return {
        "zero_max_dev": round(float(dev.max()), 3),
        "zero_mean_dev": round(float(dev.mean()), 4),
        # a spot, not a uniformly saturated colour: saturated and more than 0.5 off the median
        "zero_spot_px": int(((x.abs() >= 0.99).any(0) & (dev > 0.5)).sum()),
        "zero_peak_at": [row, col],
    }


def reconstructions(vae: BSQVAE, grids: tuple[tuple[int, int], ...], n: int) -> dict[str, Any]:
    styles, seeds = world.TRAIN_STYLES, world.SPLIT_SEEDS["eval"]
    size = grids[-1][0] * vae.cfg.stride
    imgs = torch.stack(
        [
            world.to_tensor(
                world.render(world.CONTENTS[i % 16], styles[(i * 7) % len(styles)], seeds[i], size).image
            )
            for i in range(n)
        ]
    )
    factor = 2 if vae.cfg.spatial_patchify else 1
    out: dict[str, Any] = {}
    with torch.no_grad():
        z = vae.encode_latent(imgs)
        _, q = vae.quantizer(z, [(h * factor, w * factor) for h, w in grids])
        for name, latent in (("q", q), ("z", z)):
            rec = vae.decode(latent)
            spurious = ((rec.abs() >= 0.98) & ((rec - imgs).abs() > 0.3)).any(1)
            out[f"{name}_l1"] = round(float((rec - imgs).abs().mean()), 4)
            out[f"{name}_spurious_sat_px"] = round(float(spurious.sum()) / n, 2)
            # a droplet sits where the decoder puts it, whatever the image: the share of images with a
            # spurious pixel within one pixel of the most common place
            near = torch.nn.functional.max_pool2d(spurious.float()[:, None], 3, stride=1, padding=1)
            out[f"{name}_same_place"] = round(float(near.mean(0).max()), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a model folder")
    parser.add_argument("--ckpt", type=Path, help="a trainer checkpoint (vae.ckpt), with --preset")
    parser.add_argument("--preset", help="the checkpoint's preset (a train demo preset name)")
    parser.add_argument("--norm", help="override the preset's VAE norm (experiments with --ckpt)")
    parser.add_argument("--decoder-norm", help="override the decoder's norm alone (with --ckpt)")
    parser.add_argument("--images", type=int, default=64, help="eval renders to reconstruct (default: 64)")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.ckpt is None):
        parser.error("give either --model or --ckpt with --preset")
    from scalestyle.train.demo import demo_preset
    from scalestyle.weights import load_vae_weights, read_model_config, read_state_dict

    info: dict[str, Any] = {}
    if args.model is not None:
        preset = read_model_config(args.model)
        vae = BSQVAE(preset.vae)
        load_vae_weights(vae, read_state_dict(args.model / "vae.safetensors"), source=str(args.model))
    else:
        if args.preset is None:
            parser.error("--ckpt needs --preset")
        preset = demo_preset(args.preset)
        if args.norm is not None:
            preset = replace(preset, vae=replace(preset.vae, norm=args.norm))
        if args.decoder_norm is not None:
            preset = replace(preset, vae=replace(preset.vae, decoder_norm=args.decoder_norm))
        state = torch.load(args.ckpt, map_location="cpu", weights_only=True)
        vae = BSQVAE(preset.vae)
        vae.load_state_dict(state["model"])
        info["step"] = state["step"]
    grids = get_schedule(1.0, preset.default_pn).grids
    info |= {
        "norm": preset.vae.norm,
        "decoder_norm": preset.vae.decoder_norm or preset.vae.norm,
        **zero_decode(vae.eval(), grids[-1]),
        **reconstructions(vae, grids, args.images),
    }
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
