"""The real-browser test's fixtures: `make lab`'s JupyterLab on a copy of notebooks/, and headless Chromium.

The server is started through ``python -m course_utils.tools.lab`` (what `make lab` runs): loopback, its own random
token (read from the URL it prints), ``--allow-root`` when root. It serves a *copy* of notebooks/ in a temp
folder, with autosave off in a throw-away user-settings folder: nothing the browser runs can reach the
committed notebooks. Chromium is Debian's ``chromium`` + ``chromium-driver``, driven by selenium, never a
downloaded browser (`make browser-test` installs the packages when they are missing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from course_utils.tools import course, lab

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS", REPO / "outputs" / "screenshots"))
# The env a learner's `make lab` would have in the cpu profile (the Makefile's NB_ENV, minus MPLBACKEND=Agg,
# which would hide the notebooks' plots).
SERVER_ENV = {"COURSE_PROFILE": "cpu", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
              "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
START_TIMEOUT_S = 60
# The notebooks served (copied first): notebooks/ as committed. Another folder with the same file names can
# stand in, e.g. image-synced or deliberately broken copies, without touching notebooks/.
NOTEBOOKS_SRC = Path(os.environ.get("COURSE_BROWSER_NOTEBOOKS", course.NOTEBOOK_DIR))

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab: its base URL, token, root folder (the copy) and log."""

    base: str
    token: str
    root: Path
    proc: subprocess.Popen
    log: list[str] = field(default_factory=list, repr=False)
    copies: dict[str, bytes] = field(default_factory=dict, repr=False)

    def api(self, method: str, path: str, *, token: bool = True) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, method=method)
        if token:
            req.add_header("Authorization", f"token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def shutdown_kernels(self) -> None:
        """Stop every kernel (the model of one notebook should not slow down the next)."""
        status, body = self.api("GET", "/api/kernels")
        for k in json.loads(body) if status == 200 else []:
            self.api("DELETE", f"/api/kernels/{k['id']}")


def _pump(stream, sink: list[str], logfile) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        logfile.write(line)
        logfile.flush()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    """`make lab`'s command on a copy of notebooks/ (autosave off), as the current user (root included)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    base_dir = tmp_path_factory.mktemp("lab")
    root = base_dir / "notebooks"          # same layout as the repository: ../images/ is outside the root
    root.mkdir()
    for p in course.notebooks():
        shutil.copy(NOTEBOOKS_SRC / p.name, root / p.name)
    settings = base_dir / "user-settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}), encoding="utf-8")
    port = free_port()
    cmd = [sys.executable, "-m", "course_utils.tools.lab", "--ip=127.0.0.1", f"--port={port}", f"--notebook-dir={root}",
           f"--LabApp.user_settings_dir={base_dir / 'user-settings'}",
           f"--LabApp.workspaces_dir={base_dir / 'workspaces'}"]
    env = {**os.environ, **SERVER_ENV}
    env.pop("DISPLAY", None)  # no display: course_utils.tools.lab then adds --ServerApp.open_browser=False
    env.pop("WAYLAND_DISPLAY", None)
    logfile = open(SCREENSHOTS / "lab-server.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    logfile.write(" ".join(cmd) + "\n")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, log, logfile), daemon=True).start()
    url = re.compile(r"(http://127\.0\.0\.1:\d+)/lab\?token=([0-9a-f]{16,})")
    deadline = time.monotonic() + START_TIMEOUT_S
    found = None
    while found is None and time.monotonic() < deadline and proc.poll() is None:
        found = next((m for m in map(url.search, list(log)) if m), None)
        time.sleep(0.2)
    if found is None:
        proc.kill()
        pytest.fail(f"JupyterLab did not print its token URL within {START_TIMEOUT_S} s "
                    f"(exit {proc.poll()}):\n{''.join(log)[-3000:]}")
    server = Lab(found.group(1), found.group(2), root, proc, log,
                 copies={p.name: p.read_bytes() for p in root.glob("*.ipynb")})
    try:
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        logfile.close()


def _find(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/lib/chromium/{name}")
                                       if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="session")
def driver(lab_server):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[dev]' (selenium)")
    chromium, chromedriver = _find("chromium"), _find("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("Debian's chromium and chromium-driver are needed: `make browser-test` installs them as root, "
                    "otherwise run  sudo apt-get install -y chromium chromium-driver fonts-noto-cjk "
                    "fonts-noto-color-emoji")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not download a browser or a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--window-size=1400,1000", "--disable-dev-shm-usage", "--lang=en-US",
                "--disable-gpu", "--no-first-run", "--disable-extensions", "--hide-scrollbars"):
        opts.add_argument(arg)
    if lab.is_root():
        opts.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    opts.unhandled_prompt_behavior = "accept"  # "leave this page?" (unsaved notebook) when we move on
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=chromedriver))
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()
