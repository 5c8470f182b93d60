"""The README's Python snippets run as written against the bundled demo model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scalestyle.data import procedural as world

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_two_quick_start_commands_and_a_python_example() -> None:
    text = README.read_text()
    quick = re.search(r"## Quick start.*?```bash\n(.*?)```", text, flags=re.S)
    assert quick is not None
    lines = [ln for ln in quick.group(1).splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[0].startswith("pip install -e .") and "pytest" in lines[1]
    assert python_blocks()


@pytest.mark.parametrize("block", python_blocks())
def test_python_snippet_runs(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    world.render("fish", "neon", 0).image.save("ref.png")
    namespace: dict[str, object] = {}
    exec(compile(block, str(README), "exec"), namespace)
