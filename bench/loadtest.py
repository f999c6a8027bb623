"""HTTP end to end on 127.0.0.1: servers as subprocesses, readiness, and a bounded load generator.

The load generator is wrk (``apt-get install wrk``) when it is on the PATH, else a bounded
asyncio client of our own; every result says which one ran. Both keep connections alive, post
a ring of distinct batch bodies (so the prediction cache misses, as with real five-minute
batches), stop at a deadline, and count non-2xx answers and socket failures as errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from inference.config import PROJECT_ROOT

from .harness import percentile

LOOPBACK = "127.0.0.1"
BATCH_PATH = "/predict/batch"

_WRK_SCRIPT = r"""
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end
local bodies = {}
local index = 0
shed = 0
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  index = tonumber(args[2]) % #bodies
end
request = function()
  index = index % #bodies + 1
  return wrk.format("POST", "%PATH%", {["Content-Type"] = "application/json"}, bodies[index])
end
response = function(status, headers, body)
  if status == 503 then shed = shed + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  local refused = 0
  for _, thread in ipairs(threads) do refused = refused + thread:get("shed") end
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "shed": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    refused, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One load run against one server.

    Attributes:
        connections: Concurrent keep-alive connections.
        duration_s: Measured wall time.
        requests: Completed requests.
        errors: Failed requests: non-2xx answers other than 503, connect/read/write failures
            and timeouts.
        shed: 503 answers: overload refused at once, as SPEC §7 asks (latencies include them).
        p50_ms: Median latency.
        p99_ms: 99th percentile latency.
        rps: Answers per second, 503s included.
        ok_rps: Successful (2xx) answers per second: the throughput that matters.
        generator: ``wrk`` or ``python``.
    """

    connections: int
    duration_s: float
    requests: int
    errors: int
    shed: int
    p50_ms: float
    p99_ms: float
    rps: float
    generator: str

    @property
    def ok_rps(self) -> float:
        """Successful (2xx) answers per second."""
        ok = self.requests - self.errors - self.shed
        return ok / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        """The JSON report's form."""
        fields = asdict(self) | {"ok_rps": self.ok_rps}
        return {
            key: round(value, 3) if isinstance(value, float) else value
            for key, value in fields.items()
        }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """One request on a fresh connection; returns status and body."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Server:
    """A server process we started, with what its start-up cost.

    Attributes:
        name: What it is (for messages).
        process: The process (its pid is the only one we ever signal).
        port: Its port on 127.0.0.1.
        ready_seconds: Process start → first 200 from the readiness URL.
        log_path: Where its stdout/stderr went.
    """

    name: str
    process: subprocess.Popen[bytes]
    port: int
    ready_seconds: float
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@contextlib.contextmanager
def serve(
    name: str,
    command: Sequence[str],
    port: int,
    ready_path: str,
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Iterator[Server]:
    """Start ``command``, wait until ``ready_path`` answers 200, and stop it afterwards.

    Raises:
        RuntimeError: the process exited or did not turn ready within ``timeout_s``.
    """
    log_path = Path(tempfile.mkstemp(prefix=f"magic8-bench-{name}-", suffix=".log")[1])
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH")])
    )
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            cwd=PROJECT_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, process, port, 0.0, log_path)
    try:
        server.ready_seconds = _wait_ready(server, ready_path, started, timeout_s)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: Server, path: str, started: float, timeout_s: float) -> float:
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = request(server.port, "GET", path, timeout=1.0)
            if status == 200:
                return time.perf_counter() - started
        time.sleep(0.005)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process we started (gunicorn forwards it to its workers), then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def first_request_ms(port: int, body: bytes) -> float:
    """Latency of one batch on a fresh connection (the first request after ready).

    Raises:
        RuntimeError: the server did not answer 200.
    """
    mark = time.perf_counter()
    status, payload = request(port, "POST", BATCH_PATH, body)
    elapsed = (time.perf_counter() - mark) * 1e3
    if status != 200:
        raise RuntimeError(f"first request answered {status}: {payload[:300]!r}")
    return elapsed


def generator_name() -> str:
    """``wrk`` when installed, else ``python``."""
    return "wrk" if shutil.which("wrk") else "python"


def load(
    port: int,
    bodies: Sequence[bytes],
    connections: int,
    duration_s: float,
    *,
    path: str = BATCH_PATH,
) -> LoadResult:
    """Post ``bodies`` round-robin on ``connections`` keep-alive connections for ``duration_s``."""
    if generator_name() == "wrk":
        return _wrk(port, bodies, connections, duration_s, path)
    return asyncio.run(_python_load(port, bodies, connections, duration_s, path))


def _wrk(
    port: int, bodies: Sequence[bytes], connections: int, duration_s: float, path: str
) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="magic8-wrk-") as scratch:
        script = Path(scratch) / "batch.lua"
        script.write_text(_WRK_SCRIPT.replace("%PATH%", path))
        corpus = Path(scratch) / "bodies.jsonl"
        corpus.write_bytes(b"\n".join(bodies) + b"\n")
        threads = max(1, min(connections, 2))
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://{LOOPBACK}:{port}",
            "--",
            str(corpus),
            str(connections),
        ]
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    line = next((row for row in finished.stdout.splitlines() if row.startswith("WRKJSON ")), None)
    if finished.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({finished.returncode}): {finished.stderr.strip()}")
    stats = json.loads(line.removeprefix("WRKJSON "))
    seconds = stats["duration_us"] / 1e6
    errors = sum(stats[key] for key in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        connections=connections,
        duration_s=seconds,
        requests=stats["requests"],
        errors=errors - stats["shed"],
        shed=stats["shed"],
        p50_ms=stats["p50_us"] / 1e3,
        p99_ms=stats["p99_us"] / 1e3,
        rps=stats["requests"] / seconds if seconds else 0.0,
        generator="wrk",
    )


async def _python_load(
    port: int, bodies: Sequence[bytes], connections: int, duration_s: float, path: str
) -> LoadResult:
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    latencies: list[float] = []
    errors, shed = [0], [0]
    started = time.perf_counter()
    deadline = started + duration_s

    async def connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        index = offset
        try:
            while time.perf_counter() < deadline:
                index = (index + 1) % len(requests)
                mark = time.perf_counter()
                writer.write(requests[index])
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = _content_length(head)
                await asyncio.wait_for(reader.readexactly(length), 10)
                latencies.append((time.perf_counter() - mark) * 1e3)
                if head.startswith(b"HTTP/1.1 503"):
                    shed[0] += 1
                elif not head.startswith(b"HTTP/1.1 2"):
                    errors[0] += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            errors[0] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(k) for k in range(connections)))
    elapsed = time.perf_counter() - started
    return LoadResult(
        connections=connections,
        duration_s=elapsed,
        requests=len(latencies),
        errors=errors[0],
        shed=shed[0],
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        rps=len(latencies) / elapsed,
        generator="python",
    )


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def our_server_command(port: int, models: Path, workers: int = 1) -> list[str]:
    """``magic8 serve`` on loopback (gunicorn with uvicorn workers when ``workers`` > 1)."""
    command = [sys.executable, "-m", "inference.cli", "serve", "--host", LOOPBACK]
    command += ["--port", str(port), "--models", str(models)]
    if workers > 1:
        command += ["--workers", str(workers)]
    return command


def peer_server_command(port: int, model_dir: Path) -> list[str]:
    """The previous design, served by uvicorn, one worker."""
    return [
        sys.executable,
        "-m",
        "bench.peers.previous_design",
        "--model",
        str(model_dir),
        "--port",
        str(port),
    ]
