"""``hbdnet serve`` processes started by tests: a free loopback port, and the wait until one is ready."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``url``/readyz answers 200; ``RuntimeError`` when ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"hbdnet serve at {url} ended with code {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"hbdnet serve at {url} not ready after {timeout:g} s")
        time.sleep(0.2)
