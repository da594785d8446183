"""A server process on 127.0.0.1 for end-to-end tests: started in its own process group, awaited
on a readiness URL with a bounded wait, and always stopped with all its workers. Shared by the end-to-end tests and
scripts/mlflow_ui_screenshots.py; plain Python, no pytest."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def local_server(command: list[str], ready_url: str, log_path: Path, timeout: float, cwd: Path, env: dict | None = None):
    """Run ``command`` until the block ends; the block starts once ``ready_url`` answers 200."""
    log = open(log_path, "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                              start_new_session=True)  # own group: its workers stop with it
    try:
        deadline = time.monotonic() + timeout
        while not answers(ready_url):
            if server.poll() is not None:
                raise RuntimeError(f"{command[2:4]} exited with {server.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[2:4]} not ready after {timeout}s: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
