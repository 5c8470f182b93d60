"""The StyleAR command-line flags (`scalestyle.stylear_cli`)."""

from __future__ import annotations

import pytest

from scalestyle.stylear_cli import parse_mix, parse_weighted_style


def test_style_weights_and_mix_parse_and_refuse_bad_values() -> None:
    assert parse_weighted_style("a.png") == ("a.png", 1.0)
    assert parse_weighted_style("a.png:0.7") == ("a.png", 0.7)
    assert parse_weighted_style("C:/refs/a.png") == ("C:/refs/a.png", 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        parse_weighted_style("a.png:-1")
    assert parse_mix("1:3") == (1, 3) and parse_mix("1:0") == (1, 0)
    for bad in ("0:0", "3", "a:b", "-1:2"):
        with pytest.raises(ValueError, match="--mix"):
            parse_mix(bad)
