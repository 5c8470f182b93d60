"""Screenshots of the pages of `scalestyle serve` for docs/ui.md: a server on the bundled demo (no StyleVAR
model, so no Transfer tab), driven by headless Chromium.

    python tools/ui_screenshots.py                 # writes docs/figures/ui_*.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image, ImageDraw
from tests.ui_harness import Server, chrome, fill, open_tab, pick, wait_for, wait_text

from scalestyle.config import SamplingConfig
from scalestyle.ui.study import Study, StudyItem


def _reference(path: Path) -> Path:
    """A striped, dotted reference (a style the demo world knows nothing of, but visible)."""
    img = Image.new("RGB", (64, 64), (30, 30, 90))
    draw = ImageDraw.Draw(img)
    for x in range(0, 64, 8):
        draw.rectangle([x, 0, x + 3, 63], fill=(240, 180, 40))
    rng = np.random.default_rng(0)
    for cx, cy in rng.integers(4, 60, size=(12, 2)):
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(230, 60, 120))
    img.save(path)
    return path


def _study(folder: Path, ref: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    from scalestyle.eval.methods import METHODS, Request
    from scalestyle.pipeline import Pipeline

    pipe = Pipeline.load()
    reference = Image.open(ref).convert("RGB")
    items = []
    for i, prompt in enumerate(("a star", "a house")):
        request = Request(prompt, "style", reference, i, SamplingConfig())
        images = {m: METHODS[m](pipe, request) for m in ("d", "prompt-only", "stylealigned")}
        items.append(StudyItem(f"k{i}", prompt, reference, images))
    Study.create(folder, "pilot", items, seed=0)


def shoot(out_dir: Path) -> list[Path]:
    from selenium.webdriver.common.by import By

    shots: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref = _reference(root / "reference.png")
        server = Server(root)
        _study(server.studies, ref)
        server.start()
        driver = chrome((1400, 1100))
        try:

            def save(name: str) -> None:
                time.sleep(1.0)
                path = out_dir / f"ui_{name}.png"
                driver.save_screenshot(str(path))
                shots.append(path)

            driver.get(server.url)
            fill(driver, "#gen-prompt textarea", "a star in neon style")
            wait_for(driver, "#gen-run").click()
            wait_for(driver, "#gen-out img", timeout=300)
            save("generate")

            open_tab(driver, "Stylize")
            wait_for(driver, "#sty-style input[type=file]").send_keys(str(ref))
            wait_for(driver, "#sty-style img")
            fill(driver, "#sty-prompt textarea", "a house")
            wait_for(driver, "#sty-run").click()
            wait_for(driver, "#sty-out img", timeout=300)
            save("stylize")

            open_tab(driver, "Gallery")
            wait_for(driver, "#gal-refresh").click()
            wait_for(driver, "#gal img").click()
            wait_text(driver, "body", "software", timeout=30)
            save("gallery")

            open_tab(driver, "Study")
            pick(driver, "study-pick", "pilot")
            wait_for(driver, "#study-start").click()
            wait_text(driver, "#study-item", "Item 1 of 2")
            for criterion in ("prompt", "style"):
                wait_for(driver, f"#study-{criterion} label")
                driver.find_elements(By.CSS_SELECTOR, f"#study-{criterion} label")[1].click()
            save("study")
            wait_for(driver, "#study-vote").click()
            wait_text(driver, "#study-item", "Item 2 of 2")
            driver.find_elements(By.CSS_SELECTOR, "#study-prompt label")[0].click()
            driver.find_elements(By.CSS_SELECTOR, "#study-style label")[2].click()
            wait_for(driver, "#study-vote").click()
            wait_text(driver, "#study-item", "voted on all")
            wait_for(driver, "#admin").click()
            fill(driver, "#admin-token input", server.token)
            pick(driver, "admin-study", "pilot")
            wait_for(driver, "#admin-results").click()
            wait_text(driver, "#tally", "stylealigned")
            driver.execute_script("document.querySelector('#admin').scrollIntoView()")
            save("study_results")
        finally:
            driver.quit()
            server.kill()
    return shots


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--out-dir", default="docs/figures", help="where ui_*.png go")
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in shoot(out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
