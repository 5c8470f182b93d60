"""The official checkpoints' file names per preset in their hub repositories (spec §3), without torch: the
CLI's ``download`` parser lists its choices from here, so ``scalestyle --help`` never loads torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfficialLayout:
    """Upstream file names of one preset in the hub repo (spec §3)."""

    preset: str
    transformer: str
    vae: str
    allow_patterns: tuple[str, ...]


OFFICIAL_LAYOUTS: dict[str, OfficialLayout] = {
    "infinity-2b": OfficialLayout(
        "infinity-2b",
        transformer="infinity_2b_reg.pth",
        vae="infinity_vae_d32reg.pth",
        allow_patterns=("infinity_2b_reg.pth", "infinity_vae_d32reg.pth"),
    ),
    "infinity-8b": OfficialLayout(
        "infinity-8b",
        transformer="infinity_8b_weights",
        vae="infinity_vae_d56_f8_14_patchify.pth",
        allow_patterns=("infinity_8b_weights/*", "infinity_vae_d56_f8_14_patchify.pth"),
    ),
}


VAR_HUB_REPO = "FoundationVision/var"
# `download("stylevar", ...)`: the released StyleVAR (VQ-VAE, SFT and GRPO) of scalestyle.stylevar_weights
STYLEVAR_DOWNLOAD = "stylevar"
VQVAE_FILE = "vae_ch160v4096z32.pth"
# VAR's presets and their files in the hub repo (one VQ-VAE for every depth)
VAR_LAYOUTS: dict[str, OfficialLayout] = {
    f"var-d{depth}": OfficialLayout(
        f"var-d{depth}",
        transformer=f"var_d{depth}.pth",
        vae=VQVAE_FILE,
        allow_patterns=(f"var_d{depth}.pth", VQVAE_FILE),
    )
    for depth in (16, 20, 24, 30, 36)
}
