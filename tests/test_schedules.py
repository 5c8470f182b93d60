from __future__ import annotations

import pytest

from scalestyle.schedules import (
    ASPECT_TEMPLATES,
    get_schedule,
    nearest_template,
    parse_aspect,
    rope_positions,
)

# spec §1.7: 1:1 positions per grid size n
SPEC_1TO1 = {
    1: [0],
    2: [0, 32],
    4: [0, 16, 32, 48],
    6: [0, 11, 21, 32, 43, 53],
    8: list(range(0, 64, 8)),
    12: [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59],
    16: list(range(0, 64, 4)),
    20: [0, 3, 6, 10, 13, 16, 19, 22, 26, 29, 32, 35, 38, 42, 45, 48, 51, 54, 58, 61],
    24: [0, 3, 5, 8, 11, 13, 16, 19, 21, 24, 27, 29, 32, 35, 37, 40, 43, 45, 48, 51, 53, 56, 59, 61],
    32: list(range(0, 64, 2)),
    40: [round(1.6 * i) for i in range(40)],
    48: [round(4 * i / 3) for i in range(48)],
    64: list(range(64)),
}


def test_one_to_one_schedule_and_token_counts() -> None:
    s = get_schedule(1.0, "1M")
    assert [h for h, _ in s.grids] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]
    assert s.total_tokens == 10521
    assert [get_schedule(1.0, pn).total_tokens for pn in ("0.06M", "0.25M", "0.60M")] == [521, 2521, 6425]


def test_fifteen_templates_with_their_token_totals() -> None:
    assert len(ASPECT_TEMPLATES) == 15
    totals = {1.25: 10774, 1.333: 10973, 1.5: 10997, 1.75: 11252, 2.0: 11269, 2.5: 10805, 3.0: 11123}
    for ratio, total in totals.items():
        assert get_schedule(ratio).total_tokens == total
        assert get_schedule(nearest_template(1 / ratio)).total_tokens == total
        h, w = get_schedule(ratio).last_grid
        assert get_schedule(1 / ratio).last_grid == (w, h)


def test_rope_positions_equal_the_spec_table() -> None:
    s = get_schedule(1.0, "1M")
    y, x = rope_positions(1.0)
    for (h, w), start in zip(s.grids, s.offsets(), strict=True):
        assert x[start : start + w].tolist() == SPEC_1TO1[w]
        assert y[start : start + h * w : w].tolist() == SPEC_1TO1[h]


def test_rope_half_ties_round_to_even() -> None:
    # template 4:3, grid (16, 12): row positions i * 72 / 16 = 4.5 i, ties at odd i go to the even neighbour
    s = get_schedule(1.333, "1M")
    k = s.grids.index((16, 12))
    y, _ = rope_positions(1.333)
    rows = y[s.offsets()[k] : s.offsets()[k] + 16 * 12 : 12].tolist()
    assert rows[:6] == [0, 4, 9, 14, 18, 22]


@pytest.mark.parametrize("text", ["0:1", "abc", "1:0", "10:1"])
def test_bad_aspects_raise(text: str) -> None:
    with pytest.raises(ValueError, match="aspect"):
        parse_aspect(text)


def test_parse_aspect_and_bad_pn() -> None:
    assert parse_aspect("16:9") == pytest.approx(16 / 9)
    with pytest.raises(ValueError, match="pn"):
        get_schedule(1.0, "2M")
