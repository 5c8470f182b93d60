"""tools/stylear_ablations.py: the table's method names, the targets report, the status (no training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "stylear_ablations", ROOT / "tools" / "stylear_ablations.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_methods_of_the_table_follow_the_trained_adapters(tmp_path: Path) -> None:
    t = tool()
    for name in ("mix-1-3", "stylized", "mix-1-3-dpo"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
        (tmp_path / "adapters" / name / t.STAMP).write_text("{}")
    (tmp_path / "adapters" / "mix-1-6").mkdir()  # cut before its stamp: not evaluated
    specs = t.eval_specs(argparse.Namespace(), tmp_path)
    assert [(n, se) for n, _, se in specs] == [
        ("stylear-stylized-only", True),
        ("stylear", True),
        ("stylear-no-se", False),
        ("stylear-dpo", True),
        ("stylear-dpo-no-se", False),
    ]
    assert t.dpo_variants(argparse.Namespace(dpo_on="all")) == list(t.MIXES)
    assert "not finished" in t.status(tmp_path) and "adapter mix-1-3: written" in t.status(tmp_path)


def test_targets_compare_stylear_with_the_baselines(tmp_path: Path) -> None:
    def rows(
        method: str, content: list[bool], style: list[bool], leak: list[bool]
    ) -> list[dict[str, object]]:
        return [
            {"method": method, "content_correct": c, "style_correct": s, "leakage": lk, "seconds": 1.0}
            for c, s, lk in zip(content, style, leak, strict=True)
        ]

    all_rows = (
        rows("prompt-only", [True] * 4, [False] * 4, [False] * 4)
        + rows("d", [True] * 4, [True, False, False, False], [False] * 4)
        + rows("stylear", [True, True, True, False], [True] * 4, [False, False, False, True])
        + rows("stylear-no-se", [True, True, False, False], [True] * 4, [False, False, True, True])
    )
    file = tmp_path / "rows.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in all_rows))
    text = tool().targets(file)
    assert "| stylear | 4 | 75.0 | 100.0 | 25.0 | 1.00 |" in text
    assert "- stylear: style accuracy 100.0 vs 3 x training-free 75.0: met" in text
    assert "- stylear: content accuracy 75.0 vs prompt-only 100.0 - 10: missed" in text
    assert "- stylear: leakage with SE 25.0 vs without 50.0: lower" in text
