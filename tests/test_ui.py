"""The web UI (scalestyle.ui.app, `scalestyle serve`): settings, the jobs under the page (CLI checks and
messages, per-scale progress of stylize, StyleAR and transfer, timeout, PNG metadata), the rater id, and, in
a headless Chromium against a real server subprocess, stylize, an oversized upload, votes and their tally,
and votes and the one-ballot rule surviving a killed server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from scalestyle.cli import CliError, main
from scalestyle.config import SamplingConfig
from scalestyle.metadata import read_png_metadata
from scalestyle.ui.app import (
    STYLIZE_METHODS,
    Jobs,
    JobTimeout,
    StylizeJob,
    UIConfig,
    build_app,
    gallery,
    rater_id,
)
from scalestyle.ui.study import Study, StudyItem, open_study
from tests.ui_harness import (
    Server,
    chrome,
    fill,
    find_browser,
    open_tab,
    pick,
    wait_change,
    wait_for,
    wait_idle,
    wait_text,
)


def _noise(path: Path, side: int, seed: int = 0) -> Path:
    pixels = (np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("port", 0, "port must be in [1, 65535], got 0"),
        ("concurrency", 0, "concurrency must be >= 1, got 0"),
        ("queue_size", 0, "queue_size must be >= 1"),
        ("max_upload_bytes", 0, "max_upload_bytes must be >= 1"),
        ("timeout_s", 0.0, "timeout_s must be > 0"),
        ("admin_token", "short", "at least 8 characters"),
        ("host", " ", "host must be non-empty"),
    ],
)
def test_config_refuses_bad_values(field: str, value: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        UIConfig(**{field: value})


def test_config_defaults_bind_localhost() -> None:
    cfg = UIConfig()
    assert cfg.host == "127.0.0.1" and cfg.admin_token is None
    assert "admin_token" not in repr(UIConfig(admin_token="a-long-secret"))  # never in logs


def test_upload_limit_and_admin_token(tmp_path: Path) -> None:
    jobs = Jobs(UIConfig(max_upload_bytes=1000, admin_token="right-token"))
    small, big = _noise(tmp_path / "small.png", 8), _noise(tmp_path / "big.png", 64)
    assert jobs.check_upload(str(small), "--style") == str(small)
    with pytest.raises(
        CliError, match=r"--style big.png: 0.0 MB is over this server's upload limit of 0.001 MB"
    ):
        jobs.check_upload(str(big), "--style")
    assert jobs.is_admin("right-token") and not jobs.is_admin("wrong-token") and not jobs.is_admin(None)
    with pytest.raises(ValueError, match="wrong admin token"):
        jobs.require_admin("right-tokem")
    with pytest.raises(ValueError, match="admin is off"):
        Jobs(UIConfig()).require_admin("anything")


def test_stylize_checks_are_the_clis_before_any_model_loads(tmp_path: Path) -> None:
    jobs = Jobs(UIConfig(outputs=tmp_path))
    job = StylizeJob("a house", None, None, SamplingConfig())
    with pytest.raises(CliError, match=r"give a reference image with --style REF.png"):
        jobs.stylize(job)
    with pytest.raises(CliError, match="--text-only needs --style-prompt"):
        jobs.stylize(job, text_only=True)
    with pytest.raises(CliError, match="--prompt must be non-empty text"):
        jobs.stylize(StylizeJob(" ", None, "neon style", SamplingConfig()), text_only=True)
    with pytest.raises(CliError, match="method 'stylear' is not one of"):
        jobs.stylize(job, method="stylear")
    with pytest.raises(CliError, match="give --prompt TEXT"):
        jobs.generate(None, sampling=SamplingConfig())
    with pytest.raises(CliError, match=r"--strength must be in \[-1, 1\], got 2"):
        jobs.transfer("c.png", "s.png", strength=2)
    assert jobs._pipe is None  # refused before loading anything


def test_app_builds_without_loading_or_writing(tmp_path: Path) -> None:
    cfg = UIConfig(outputs=tmp_path / "out", studies=tmp_path / "studies")
    jobs = Jobs(cfg)
    demo = build_app(cfg, jobs)
    assert jobs._pipe is None and not (tmp_path / "out").exists() and not (tmp_path / "studies").exists()
    labels = {getattr(b, "label", None) for b in demo.blocks.values()}
    assert {"Generate", "Stylize", "Gallery", "Study"} <= labels
    transfer = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Transfer")
    assert transfer.visible is False  # no StyleVAR model configured


def test_serve_cli_refuses_bad_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be > 0, got 0.0" in capsys.readouterr().err
    assert main(["serve", "--model", "no-such-model"]) == 2
    assert "--model 'no-such-model': no model folder" in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 2
    capsys.readouterr()
    assert main(["serve", "--stylear-adapter", str(tmp_path)]) == 2
    assert (
        "not a StyleAR adapter folder (needs config.json and adapter.safetensors" in capsys.readouterr().err
    )


def test_rater_is_the_name_else_a_browser_id_of_the_pages_making_else_the_session() -> None:
    browser = "0123456789abcdef" * 2
    assert rater_id(" Ada ", browser, "s1") == "name:Ada"
    assert rater_id("", browser, "s1") == rater_id(" ", browser, "s2") == f"browser:{browser}"
    for forged in ("", "x" * 32, browser + "0", "name:Ada", browser.upper()):
        assert rater_id("", forged, "s1") == "session:s1"


# -- StyleAR, on the tiny model with a tiny adapter ---------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_stylear import tiny_adapter

    return tiny_adapter().save(tmp_path_factory.mktemp("stylear") / "adapter")


def test_stylear_is_a_method_only_with_an_adapter(adapter_dir: Path, tmp_path: Path) -> None:
    assert "stylear" not in Jobs(UIConfig()).stylize_methods
    cfg = UIConfig(outputs=tmp_path / "out", stylear_adapter=adapter_dir)
    jobs = Jobs(cfg)
    assert list(jobs.stylize_methods) == [*STYLIZE_METHODS, "stylear"]
    demo = build_app(cfg, jobs)
    (choices,) = (getattr(b, "choices", []) for b in demo.blocks.values() if b.elem_id == "sty-method")
    assert [c[0] for c in choices] == [*STYLIZE_METHODS, "stylear"]
    with pytest.raises(CliError, match=r"--method stylear needs at least one --style REF.png"):
        jobs.stylize(
            StylizeJob("a house", None, "neon style", SamplingConfig()), method="stylear", text_only=True
        )
    assert jobs._pipe is None  # refused before the model loads


def test_stylear_stylizes_an_upload_reporting_every_scale(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    cfg = UIConfig(model=str(tiny_model_dir), device="cpu", outputs=tmp_path, stylear_adapter=adapter_dir)
    jobs = Jobs(cfg)
    ref = Image.open(_noise(tmp_path / "ref.png", 64)).convert("RGB")
    seen: list[tuple[int, int, str]] = []
    job = StylizeJob("a star", ref, "neon style", SamplingConfig(seed=3), style_scale=2.0, noise_strength=0.0)
    out = jobs.stylize(job, method="stylear", style_file="ref.png", progress=lambda *a: seen.append(a))
    total = seen[0][1]
    assert [s[0] for s in seen] == list(range(1, total + 1)) and seen[-1][
        2
    ] == f"stylize: scale {total}/{total}"
    meta = read_png_metadata(out)
    assert meta["method"] == "stylear" and meta["prompt"] == "a star in neon style" and meta["seed"] == "3"
    style = json.loads(meta["style"])
    assert style["scale"] == 2.0 and style["noise_strength"] == 0.0 and meta["style_file"] == "ref.png"
    with pytest.raises(ValueError, match=r"scale must be in \[0.0, 100.0\], got -1.0"):
        jobs.stylize(replace_job(job, style_scale=-1.0), method="stylear")


def replace_job(job: StylizeJob, **changes: Any) -> StylizeJob:
    from dataclasses import replace

    return replace(job, **changes)


# -- transfer: every scale reported, the timeout between scales ---------------------------------------------


def test_transfer_pipelines_report_each_scale_once_in_order(tmp_path: Path) -> None:
    from dataclasses import replace

    import torch

    from scalestyle.adain_transfer import AdaINPipeline
    from scalestyle.sampling import ScaleEvent
    from scalestyle.transfer import TRANSFER_SAMPLING, TransferPipeline
    from tests.test_adain import tiny_adain

    content, style = _noise(tmp_path / "c.png", 32, 1), _noise(tmp_path / "s.png", 32, 2)
    pipe = TransferPipeline.random("stylevar-tiny", device="cpu")
    sampling = replace(TRANSFER_SAMPLING, top_k=0)  # the tiny codebook has 64 entries
    events: list[ScaleEvent] = []
    pipe(content, style, sampling=sampling, on_scale=events.append)
    assert [e.scale for e in events] == list(range(pipe.pipe.schedule_for().num_scales))
    assert all(set(e.tokens) == {"gen"} for e in events)
    adain: list[ScaleEvent] = []
    AdaINPipeline(tiny_adain(), "tiny", torch.device("cpu"))(content, style, on_scale=adain.append)
    assert adain == []  # AdaIN has no scales


def test_transfer_job_reports_every_scale_and_times_out(tmp_path: Path) -> None:
    from dataclasses import replace

    from scalestyle.transfer import TRANSFER_SAMPLING

    cfg = UIConfig(
        transfer_model="stylevar-tiny", transfer_random_weights=True, device="cpu", outputs=tmp_path / "out"
    )
    jobs = Jobs(cfg)
    content, style = _noise(tmp_path / "c.png", 32, 1), _noise(tmp_path / "s.png", 32, 2)
    sampling = replace(TRANSFER_SAMPLING, top_k=0)
    seen: list[tuple[int, int, str]] = []
    out = jobs.transfer(str(content), str(style), sampling=sampling, progress=lambda *a: seen.append(a))
    total = seen[0][1]
    assert total > 1 and [s[0] for s in seen] == list(range(1, total + 1))
    assert seen[-1][2] == f"transfer: scale {total}/{total}"
    assert json.loads(read_png_metadata(out)["settings"])["strength"] == 0.0
    hurried = Jobs(replace_config(cfg, timeout_s=1e-9))
    hurried._transfer = jobs._transfer
    with pytest.raises(
        JobTimeout, match=r"transfer ran over this server's limit of 1e-09 s .* at scale 1 of"
    ):
        hurried.transfer(str(content), str(style), sampling=sampling)
    assert gallery(cfg.outputs) == [out]  # a stopped transfer writes nothing


# -- jobs on the demo model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    return Jobs(UIConfig(outputs=tmp_path_factory.mktemp("outputs")))


@pytest.mark.slow
@pytest.mark.parametrize("method", list(STYLIZE_METHODS))
def test_stylize_reports_every_scale_and_writes_metadata(
    demo_jobs: Jobs, tmp_path: Path, method: str
) -> None:
    ref = Image.open(_noise(tmp_path / "ref.png", 64)).convert("RGB")
    seen: list[tuple[int, int, str]] = []
    job = StylizeJob("a house", ref, "neon style", SamplingConfig(seed=3))
    out = demo_jobs.stylize(job, method=method, style_file="ref.png", progress=lambda *a: seen.append(a))
    total = seen[0][1]
    assert [s[0] for s in seen] == list(range(1, total + 1)) and seen[-1][
        2
    ] == f"stylize: scale {total}/{total}"
    meta = read_png_metadata(out)
    assert meta["prompt"] == "a house in neon style" and meta["seed"] == "3" and meta["model"] == "demo"
    assert meta["method"] == method and meta["style_file"] == "ref.png" and "settings" in meta
    with Image.open(out) as img:
        assert img.mode == "RGB"
    assert out in gallery(demo_jobs.config.outputs)


@pytest.mark.slow
def test_generate_and_timeout(demo_jobs: Jobs) -> None:
    (out,) = demo_jobs.generate("a star in neon style", sampling=SamplingConfig(seed=1))
    assert read_png_metadata(out)["prompt"] == "a star in neon style"
    hurried = Jobs(replace_config(demo_jobs.config, timeout_s=1e-9))
    hurried._pipe = demo_jobs._pipe
    before = set(gallery(demo_jobs.config.outputs))
    with pytest.raises(JobTimeout, match=r"generate ran over this server's limit of 1e-09 s \(--timeout-s\)"):
        hurried.generate("a star", sampling=SamplingConfig())
    assert set(gallery(demo_jobs.config.outputs)) == before  # a stopped job writes nothing


def replace_config(cfg: UIConfig, **changes: Any) -> UIConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


# -- in a real browser ------------------------------------------------------------------------------------

needs_browser = pytest.mark.skipif(
    find_browser() is None,
    reason="no chromium + chromedriver found (Debian: apt-get install chromium chromium-driver)",
)

METHODS = ("d", "prompt-only", "stylealigned")


def _study(folder: Path, name: str = "pilot", n: int = 3) -> Study:
    folder.mkdir(parents=True, exist_ok=True)
    colors = {"d": (200, 40, 40), "prompt-only": (40, 200, 40), "stylealigned": (40, 40, 200)}
    items = [
        StudyItem(
            f"k{i}",
            f"a star {i}",
            Image.new("RGB", (64, 64), (i * 60,) * 3),
            {m: Image.new("RGB", (64, 64), c) for m, c in colors.items()},
        )
        for i in range(n)
    ]
    return Study.create(folder, name, items, seed=0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, extra=["--max-upload-mb", "0.2"])
    _study(srv.studies)
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = chrome()
    yield driver
    driver.quit()


def vote_all(driver: Any, url: str, study: str) -> int:
    """Vote on every item of ``study`` (always image A for both criteria); the number of ballots."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    open_tab(driver, "Study")
    pick(driver, "study-pick", study)
    wait_for(driver, "#study-start").click()
    ballots = 0
    while True:
        text = wait_text(driver, "#study-item", "of", timeout=30)
        if "You have voted on all" in text:
            return ballots
        for criterion in ("prompt", "style"):
            wait_for(driver, f"#study-{criterion} label")
            driver.find_elements(By.CSS_SELECTOR, f"#study-{criterion} label")[0].click()
        wait_for(driver, "#study-vote").click()
        ballots += 1
        wait_change(driver, "#study-item", text)
        wait_idle(driver)


def tally_on_page(driver: Any, url: str, token: str, study: str) -> dict[tuple[str, str], int]:
    """The results table as (criterion, method) -> votes, read from the organizer's page."""

    driver.get(url)
    open_tab(driver, "Study")
    wait_for(driver, "#admin").click()
    fill(driver, "#admin-token input", token)
    pick(driver, "admin-study", study)
    wait_for(driver, "#admin-results").click()
    text = wait_text(driver, "#tally", "stylealigned", timeout=30)
    # the table's cells, one a line: criterion, method, votes, of, share, CI low, CI high
    cells = [line.strip() for line in text.splitlines() if line.strip()]
    return {
        (cells[i], cells[i + 1]): int(cells[i + 2])
        for i in range(len(cells) - 2)
        if cells[i] in ("prompt", "style") and cells[i + 1] in METHODS and cells[i + 2].isdigit()
    }


@pytest.mark.slow
@needs_browser
def test_browser_stylize_an_uploaded_reference(server: Server, browser: Any, tmp_path: Path) -> None:
    browser.get(server.url)
    open_tab(browser, "Stylize")
    wait_for(browser, "#sty-style input[type=file]").send_keys(str(_noise(tmp_path / "ref.png", 64)))
    wait_for(browser, "#sty-style img")
    fill(browser, "#sty-prompt textarea", "a house")
    wait_for(browser, "#sty-run").click()
    image = wait_for(browser, "#sty-out img", timeout=240)
    assert "/file=" in image.get_attribute("src")
    (written,) = gallery(server.outputs)
    assert read_png_metadata(written)["prompt"] == "a house in style"


@pytest.mark.slow
@needs_browser
def test_browser_oversized_upload_is_refused(server: Server, browser: Any, tmp_path: Path) -> None:
    big = _noise(tmp_path / "big.png", 400)  # ~480 KB, over the server's 0.2 MB
    browser.get(server.url)
    open_tab(browser, "Stylize")
    wait_for(browser, "#sty-style input[type=file]").send_keys(str(big))
    message = wait_text(browser, "body", "exceed the maximum allowed size", timeout=30)
    assert "big.png" in message
    assert not browser.find_elements("css selector", "#sty-style img")  # nothing was taken


@pytest.mark.slow
@needs_browser
def test_browser_votes_tally_and_one_ballot_rule_survive_a_killed_server(
    server: Server, browser: Any
) -> None:
    assert vote_all(browser, server.url, "pilot") == 3
    before = tally_on_page(browser, server.url, server.token, "pilot")
    assert len(before) == 2 * len(METHODS)
    assert sum(v for (c, _), v in before.items() if c == "prompt") == 3
    assert sum(v for (c, _), v in before.items() if c == "style") == 3
    stored = open_study(server.studies, "pilot").votes()
    assert len(stored) == 6 and {r for r, *_ in stored} == {stored[0][0]}  # one rater, this browser
    assert stored[0][0].startswith("browser:")  # the id kept in the browser, not the session
    server.kill()  # SIGKILL right after the last vote
    server.start()
    assert tally_on_page(browser, server.url, server.token, "pilot") == before
    assert open_study(server.studies, "pilot").votes() == stored
    # the same browser after the restart: a new session, the same rater, so no item is offered again
    assert vote_all(browser, server.url, "pilot") == 0
    assert open_study(server.studies, "pilot").votes() == stored
