"""Real servers for the tests and load benchmarks: `magic8 serve` on 127.0.0.1 in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fixtures import free_port

HOST = "127.0.0.1"


@dataclass
class Server:
    """A running server: its address and process (the gunicorn master with workers > 1)."""

    base: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def rss_kib(self, pid: int | None = None) -> int:
        """Resident memory of ``pid`` (default: the server process) from /proc."""
        status = Path(f"/proc/{pid or self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])

    def worker_pids(self) -> list[int]:
        """Children of the master (gunicorn workers); the process itself for uvicorn."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
        return pids or [self.process.pid]


@contextmanager
def serving(
    *args: str, env: dict[str, str] | None = None, ready_timeout: float = 90.0
) -> Iterator[Server]:
    """Start `magic8 serve --port P *args`, wait until every worker is ready, stop it after."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MAGIC8_")}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment.update(env or {})
    log_fd, log_name = tempfile.mkstemp(prefix="magic8-server-", suffix=".log")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference.cli",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            *args,
        ],
        env=environment,
        stdout=log_fd,
        stderr=log_fd,
    )
    os.close(log_fd)
    server = Server(f"http://{HOST}:{port}", port, process, Path(log_name))
    try:
        deadline = time.monotonic() + ready_timeout
        streak = 0
        # Several consecutive ready answers on fresh connections: every worker is up.
        while streak < 6:
            if process.poll() is not None:
                raise AssertionError(server.log.read_text(errors="replace")[-4000:])
            if time.monotonic() > deadline:
                raise AssertionError("server did not become ready in time")
            try:
                ok = httpx.get(f"{server.base}/v2/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                ok = False
            streak = streak + 1 if ok else 0
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        server.log.unlink(missing_ok=True)


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send bytes as they are (lying headers included) and return everything answered."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(head + body)
        return read_response(sock)


def read_response(sock: socket.socket) -> bytes:
    """Read one whole HTTP response (head and Content-Length body) from a socket."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def status_of(response: bytes) -> int:
    """The status code of a raw response."""
    return int(response.split(b" ", 2)[1])


def header_of(response: bytes, name: bytes) -> bytes | None:
    """A header of a raw response, or None."""
    head = response.partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None
