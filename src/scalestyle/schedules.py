"""Scale schedules and RoPE-2D grid positions of Infinity, and VAR's square schedules.

Follows `infinity/utils/dynamic_resolution.py` (15 aspect templates, pn presets) and
`infinity/models/basic.py::precompute_rope2d_freqs_grid` with ``rope2d_normalized_by_hw=2`` (every
scale's positions are spread over the template's last 1M grid, rounded half-to-even in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The 13 grids (h, w) of each aspect ratio h/w at 1M; the transposed templates are derived below.
_RATIO_TO_GRIDS_1M: dict[float, tuple[tuple[int, int], ...]] = {
    1.0: tuple((n, n) for n in (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)),
    1.25: (
        (1, 1),
        (2, 2),
        (3, 3),
        (5, 4),
        (10, 8),
        (15, 12),
        (20, 16),
        (25, 20),
        (30, 24),
        (35, 28),
        (45, 36),
        (55, 44),
        (70, 56),
    ),
    1.333: (
        (1, 1),
        (2, 2),
        (4, 3),
        (8, 6),
        (12, 9),
        (16, 12),
        (20, 15),
        (24, 18),
        (28, 21),
        (36, 27),
        (48, 36),
        (60, 45),
        (72, 54),
    ),
    1.5: (
        (1, 1),
        (2, 2),
        (3, 2),
        (6, 4),
        (9, 6),
        (15, 10),
        (21, 14),
        (27, 18),
        (33, 22),
        (39, 26),
        (48, 32),
        (63, 42),
        (78, 52),
    ),
    1.75: (
        (1, 1),
        (2, 2),
        (3, 3),
        (7, 4),
        (11, 6),
        (14, 8),
        (21, 12),
        (28, 16),
        (35, 20),
        (42, 24),
        (56, 32),
        (70, 40),
        (84, 48),
    ),
    2.0: (
        (1, 1),
        (2, 2),
        (4, 2),
        (6, 3),
        (10, 5),
        (16, 8),
        (22, 11),
        (30, 15),
        (38, 19),
        (46, 23),
        (60, 30),
        (74, 37),
        (90, 45),
    ),
    2.5: (
        (1, 1),
        (2, 2),
        (5, 2),
        (10, 4),
        (15, 6),
        (20, 8),
        (25, 10),
        (30, 12),
        (40, 16),
        (50, 20),
        (65, 26),
        (80, 32),
        (100, 40),
    ),
    3.0: (
        (1, 1),
        (2, 2),
        (6, 2),
        (9, 3),
        (15, 5),
        (21, 7),
        (27, 9),
        (36, 12),
        (45, 15),
        (54, 18),
        (72, 24),
        (90, 30),
        (111, 37),
    ),
}

PN_NUM_SCALES: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}


def _build_templates() -> dict[float, tuple[tuple[int, int], ...]]:
    templates = dict(_RATIO_TO_GRIDS_1M)
    for ratio, grids in _RATIO_TO_GRIDS_1M.items():
        if ratio != 1.0:
            # upstream keys the transposed template by int(1/r*1000)/1000 (0.8, 0.75, 0.666, ...)
            templates[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in grids)
    return dict(sorted(templates.items()))


TEMPLATES_1M: dict[float, tuple[tuple[int, int], ...]] = _build_templates()
ASPECT_TEMPLATES: tuple[float, ...] = tuple(TEMPLATES_1M)


def nearest_template(h_div_w: float) -> float:
    """The aspect template nearest to ``h_div_w`` (upstream: argmin of the absolute difference)."""
    if not h_div_w > 0:
        raise ValueError(f"aspect ratio h/w must be > 0, got {h_div_w}")
    return min(ASPECT_TEMPLATES, key=lambda t: abs(t - h_div_w))


def parse_aspect(text: str) -> float:
    """Parse ``"H:W"`` (or a bare float ``h/w``) into h/w."""
    try:
        if ":" in text:
            h, w = text.split(":")
            value = float(h) / float(w)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"aspect must look like 'H:W' (e.g. 16:9) or a float h/w, got {text!r}") from err
    if not 1 / 3.5 <= value <= 3.5:
        raise ValueError(f"aspect h/w {value:.3f} is outside the supported range [1/3.5, 3.5]")
    return value


@dataclass(frozen=True)
class Schedule:
    """The token grids of one generation: ``grids[k] = (h_k, w_k)``, scale 0 being the start token."""

    template: float
    pn: str
    grids: tuple[tuple[int, int], ...]

    @property
    def num_scales(self) -> int:
        return len(self.grids)

    @property
    def tokens_per_scale(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.grids)

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens_per_scale)

    @property
    def last_grid(self) -> tuple[int, int]:
        return self.grids[-1]

    def offsets(self) -> tuple[int, ...]:
        """Start index of each scale in the concatenated sequence."""
        out, acc = [], 0
        for n in self.tokens_per_scale:
            out.append(acc)
            acc += n
        return tuple(out)


def get_schedule(h_div_w: float = 1.0, pn: str = "1M") -> Schedule:
    """The schedule of the aspect template nearest to ``h_div_w`` at pixel budget ``pn``."""
    if pn not in PN_NUM_SCALES:
        raise ValueError(f"pn must be one of {sorted(PN_NUM_SCALES)}, got {pn!r}")
    template = nearest_template(h_div_w)
    return Schedule(template, pn, TEMPLATES_1M[template][: PN_NUM_SCALES[pn]])


def var_schedule(patch_nums: Sequence[int]) -> Schedule:
    """VAR's schedule: the square grids (pn, pn) of ``patch_nums`` (`models/var.py::VAR.patch_nums`).

    VAR has no aspect templates or pixel budgets: ``template`` is 1.0 and ``pn`` names the grid sides
    (``"var:1,2,3,4,5,6,8,10,13,16"``), a label only.
    """
    sides = tuple(int(pn) for pn in patch_nums)
    if not sides or min(sides) < 1:
        raise ValueError(f"patch_nums must be grid sides >= 1, got {tuple(patch_nums)}")
    return Schedule(1.0, "var:" + ",".join(map(str, sides)), tuple((pn, pn) for pn in sides))


@cache
def rope_positions(template: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer grid positions (y_L, x_L) of every token of the template's 1M schedule.

    A token at row i of a grid with ph rows gets ``y = round_half_even(i * uph / ph)`` with uph the
    last grid's rows. Upstream evaluates this in float32; the spec verified that this equals exact
    rational half-to-even rounding for every template (float64 would differ twice), so we use exact
    fractions and are independent of float evaluation order.
    """
    import torch  # here, so that the CLI's parsers and --help never load torch

    grids = TEMPLATES_1M[template]
    uph, upw = grids[-1]
    ys, xs = [], []
    for ph, pw in grids:
        row = torch.tensor([round(Fraction(i * uph, ph)) for i in range(ph)])
        col = torch.tensor([round(Fraction(j * upw, pw)) for j in range(pw)])
        ys.append(row[:, None].expand(ph, pw).reshape(-1))
        xs.append(col[None, :].expand(ph, pw).reshape(-1))
    return torch.cat(ys), torch.cat(xs)
