"""What the browser tests share: Debian's Chromium, a free port, and ``streamlit run app.py`` serving the lab."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def require_chromium() -> None:
    """Skip without Debian's chromium, except under CI (which installs it), where that is a failure."""
    if CHROMIUM:
        return
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: CI installs Debian's chromium (.ci/run)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium); the browser tests need it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_lab(env: dict, log: Path | None = None, timeout_s: float = 180):
    """``streamlit run app.py`` on 127.0.0.1 with ``env`` added to the environment; yields its URL once healthy."""
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1", "--server.port",
         str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                said = log.read_text()[-2000:] if log else ""
                pytest.fail(f"streamlit did not serve within {timeout_s:.0f} s {said}")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if log:
            out.close()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The lab served for one test module, on an empty runs folder of its own."""
    require_chromium()
    with serve_lab({"LAB_RUNS_DIR": str(tmp_path_factory.mktemp("runs"))}) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Chromium through Playwright, for one test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()
