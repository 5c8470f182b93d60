"""A `scalestyle serve` subprocess on a free local port and a headless Chromium driving it (selenium, the
system chromedriver): shared by the browser tests, tools/ui_screenshots.py and tools/ui_load.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> tuple[str, str] | None:
    """(browser, chromedriver) paths, or None when this machine has no Chromium and driver."""
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`scalestyle serve` in a subprocess (so a test can kill it hard and start it again)."""

    def __init__(self, root: Path, *, port: int | None = None, extra: Sequence[str] = ()) -> None:
        self.root = root
        self.port = port or free_port()
        self.extra = list(extra)
        self.token = "test-admin-token"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    def start(self, timeout: float = 180.0) -> Server:
        cmd = [sys.executable, "-m", "scalestyle.cli", "serve", "--port", str(self.port)]
        cmd += ["--outputs", str(self.outputs), "--studies", str(self.studies), "--admin-token", self.token]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
        log = (self.root / f"server-{self.port}.log").open("ab")
        self.proc = subprocess.Popen([*cmd, *self.extra], stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"server did not answer within {timeout} s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.root / f"server-{self.port}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as when the machine or the process is killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


def chrome(window: tuple[int, int] = (1400, 1000)) -> Any:
    """A headless Chromium; every host but 127.0.0.1 resolves to nothing, so a page fetches nothing
    from the internet."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise RuntimeError("no chromium and chromedriver on this machine")
    browser, driver = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={window[0]},{window[1]}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for(driver: Any, css: str, timeout: float = 60.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def wait_text(driver: Any, css: str, text: str, timeout: float = 60.0) -> str:
    """The text of ``css`` once it contains ``text``."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d: Any) -> str | bool:
        got = " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, css))
        return got if text in got else False

    result: str = WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException]).until(
        found
    )
    return result


def wait_change(driver: Any, css: str, old: str, timeout: float = 60.0) -> str:
    """The text of ``css`` once it is no longer ``old``."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def changed(d: Any) -> str | bool:
        got = " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, css))
        return got if got and got != old else False

    result: str = WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException]).until(
        changed
    )
    return result


def wait_idle(driver: Any, timeout: float = 120.0) -> None:
    """Until no event of the page is running (every status tracker hidden): an update still in flight
    (the page's load event on a busy machine) would otherwise overwrite what the test types or picks."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = (
        "return Array.from(document.querySelectorAll('[data-testid=status-tracker]'))"
        ".every(e => e.classList.contains('hide'))"
    )
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def open_tab(driver: Any, name: str) -> None:
    from selenium.webdriver.common.by import By

    wait_for(driver, "button[role=tab]")
    wait_idle(driver)
    tab = next(t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == name)
    tab.click()
    wait_idle(driver)


def pick(driver: Any, dropdown_id: str, option: str) -> None:
    """Choose ``option`` in the Gradio dropdown ``#dropdown_id``."""
    from selenium.webdriver.common.by import By

    wait_idle(driver)
    wait_for(driver, f"#{dropdown_id} input").click()
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def find(d: Any) -> Any:
        # the choices can be filled in after the list opens (seen after a server restart under load):
        # wait for the wanted one, not for the first
        try:
            items = d.find_elements(By.CSS_SELECTOR, f"#{dropdown_id} li[role=option]")
            return next((li for li in items if option in li.text), False)
        except StaleElementReferenceException:
            return False

    WebDriverWait(driver, 60.0).until(find).click()
    wait_idle(driver)


def fill(driver: Any, css: str, text: str) -> None:
    box = wait_for(driver, css)
    box.clear()
    box.send_keys(text)
