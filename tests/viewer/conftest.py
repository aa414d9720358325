"""The browser review viewer, end to end: the real server (tests/server/conftest.py's session fixture), the real
viewer (`sparsesight view` in a child process on a free 127.0.0.1 port) and a real headless Chromium driven by
Playwright. Nothing is mocked.

What the tests need is installed here when missing (so `make test` passes on a fresh Debian CI machine, as root):
Debian's chromium (apt-get) and Playwright (pip, at the version of requirements.lock). Screenshots are kept under
out/test-artefacts/viewer/.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "out" / "test-artefacts" / "viewer"
CHROMIUM = "/usr/bin/chromium"

server_conftest = sys.modules["sparsesight_tests_server_conftest"]  # loaded by tests/conftest.py

server = server_conftest.server  # the session-wide real MONAI Label server
server_tools = server_conftest.server_tools
pytest_runtest_makereport = server_conftest.pytest_runtest_makereport


def _lock_pin(name: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if re.match(rf"^{re.escape(name)}==", line.strip(), re.I):
            return line.strip()
    return name


def ensure_browser() -> str:
    """Debian's chromium and the Playwright package, installed when missing (quick when present)."""
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        if os.geteuid() != 0:
            pytest.fail("chromium is missing and installing it needs root: apt-get install -y chromium")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env, capture_output=True)
    if importlib.util.find_spec("playwright") is None:
        for pin in (_lock_pin("greenlet"), _lock_pin("playwright")):
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", pin], check=True)
    return shutil.which("chromium") or CHROMIUM


class Viewer:
    """`sparsesight view` in a child process (own process group), its log and the seconds it took to answer."""

    def __init__(self, url: str, log_path: Path, token: str = ""):
        from sparsesight.server import free_port

        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, OMP_NUM_THREADS="1", VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
        env.pop("DISPLAY", None)
        cmd = [sys.executable, "-m", "sparsesight.cli", "view", "--url", url, "--host", "127.0.0.1",
               "--port", str(self.port)]
        if token:
            cmd += ["--token", token]
        self.t0 = time.time()
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                     start_new_session=True)
        self.up_s = None

    def wait(self, timeout: float = 120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the viewer exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if requests.get(self.url, timeout=2).status_code == 200:
                    self.up_s = time.time() - self.t0
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the viewer did not answer in {timeout} s:\n{self.log()}")

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="session")
def artefacts() -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    return ARTEFACTS


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return ensure_browser()


@pytest.fixture(scope="session")
def viewer_class() -> type:
    """Viewer, for a test that starts a viewer of its own."""
    return Viewer


@pytest.fixture(scope="module")
def viewer(server, tmp_path_factory):
    v = Viewer(server.url, tmp_path_factory.mktemp("viewer") / "viewer.log")
    try:
        yield v.wait()
    finally:
        v.stop()


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser, viewer):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    yield page
    page.close()
