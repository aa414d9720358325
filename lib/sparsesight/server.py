"""Start and stop the real MONAI Label server with the SparseSight app (used by the demo and the tests).

The server runs as a child process (`monailabel start_server`), so nothing here imports monailabel.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import requests

#: environment variable naming the MONAI Label app folder to serve
APP_DIR_ENV = "SPARSESIGHT_APP_DIR"


def default_app_dir() -> Path:
    """The app to serve: $SPARSESIGHT_APP_DIR, else apps/sparsesight of the source checkout (repository layout:
    lib/sparsesight/ beside apps/); FileNotFoundError saying how to set it when neither is a folder."""
    env = os.environ.get(APP_DIR_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "apps" / "sparsesight"
    if not path.is_dir():
        raise FileNotFoundError(f"no SparseSight app at {path}: set {APP_DIR_ENV} to the apps/sparsesight folder")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MonaiLabelServer:
    """`with MonaiLabelServer(studies, conf={"model_dir": ...}) as url:` runs the server for the block.

    `studies` is a datastore folder or a PACS's DICOMweb URL (http://host:port/dicom-web; give `log_path`)."""

    def __init__(self, studies, app_dir=None, host: str = "127.0.0.1", port: int | None = None,
                 conf: dict | None = None, log_path=None):
        is_url = str(studies).startswith(("http://", "https://"))
        self.studies: Path | str = str(studies) if is_url else Path(studies)
        self.app_dir, self.host = Path(app_dir or default_app_dir()), host
        self.port = port or free_port(host)
        self.conf = {k: str(v) for k, v in (conf or {}).items()}
        if log_path is None and is_url:
            raise ValueError("a server on a PACS URL needs log_path")
        self.log_path = Path(log_path) if log_path else Path(self.studies).parent / f"monailabel-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self._log: IO[str] | None = None  # the server's output file while it runs

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "monailabel"
        cmd = [str(exe) if exe.exists() else "monailabel", "start_server", "--app", str(self.app_dir),
               "--studies", str(self.studies), "--host", self.host, "--port", str(self.port)]
        for k, v in self.conf.items():
            cmd += ["--conf", k, v]
        return cmd

    def start(self, timeout: float = 180.0) -> str:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        if not wait_until_answering(self.proc, f"{self.url}/info/", timeout, "MONAI Label server", self.log):
            self.stop()
            raise TimeoutError(f"MONAI Label server did not answer in {timeout:.0f} s; log:\n{self.log()}")
        return self.url

    def log(self, tail: int = 8000) -> str:
        return log_tail(self.log_path, tail)

    def stop(self, kill: bool = False):
        """SIGTERM the server's process group (SIGKILL after 20 s); `kill=True`: SIGKILL at once, as a crash would."""
        stop_process_group(self.proc, grace=0 if kill else 20, reap=30)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def wait_until_answering(proc: subprocess.Popen, url: str, timeout: float, what: str, log, interval: float = 0.5,
                         auth=None) -> bool:
    """Poll GET `url` until it answers 200 (True) or `timeout` passes (False); RuntimeError with the log's tail
    when the child process `proc` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log:\n{log()}")
        try:
            if requests.get(url, timeout=2, auth=auth).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(interval)
    return False


def stop_process_group(proc: subprocess.Popen | None, grace: float, reap: float) -> None:
    """SIGTERM the process group of `proc` and wait `grace` s (0: skip, as a crash would), then SIGKILL it and
    wait up to `reap` s."""
    if proc is None:
        return
    if grace and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=reap)


def log_tail(path: Path, tail: int) -> str:
    """The last `tail` characters of a child process' log ("" when it cannot be read)."""
    try:
        return Path(path).read_text(errors="replace")[-tail:]
    except OSError:
        return ""
