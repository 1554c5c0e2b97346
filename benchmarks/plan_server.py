"""A real `plan serve` on a free localhost port, for the load benchmark and the tests that talk to a
running server: started, waited for until it answers, stopped on leaving."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def plan_server(*flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``plan serve --port <free> <flags>`` (planning for the clusters named, not this machine:
    ``PLAN_DETECT=off``); its base URL and process, once ``/openapi.json`` answers."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "parallelplan", "serve", "--port", str(port), *flags],
                              env={**os.environ, "PLAN_DETECT": "off"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/openapi.json", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"plan serve did not answer on port {port} within 30 s")
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)
