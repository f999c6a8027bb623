"""Overload test: `magic8 serve --workers N` at a multiple of its measured capacity (127.0.0.1).

Measures the unloaded p99 (one connection, sequential), the capacity (closed loop), then offers
``--factor`` × capacity as an open-loop arrival stream for ``--seconds`` and checks that every
answer is 200 or 503 with ``Retry-After`` and that the p99 of the accepted requests stays within
``--max-ratio`` × the unloaded p99. Prints a JSON summary; exits 1 when a check fails.

    python -m bench.load.overload --workers 2 --factor 4 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import msgspec

from tests.fixtures import batch_of_32
from tests.inference.servers import HOST, serving


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.open = True

    @classmethod
    async def connect(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        self.open = False
        self.writer.close()


def batch_request(port: int) -> bytes:
    body = msgspec.json.encode({"requests": batch_of_32()})
    return (
        f"POST /predict/batch HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def unloaded(port: int, seconds: float) -> list[float]:
    """Latencies of sequential requests on one connection."""
    request = batch_request(port)
    connection = await Connection.connect(port)
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        status, _, _ = await connection.exchange(request)
        if status == 200:
            latencies.append(time.perf_counter() - start)
        if not connection.open:
            connection = await Connection.connect(port)
    connection.close()
    return latencies


async def capacity(port: int, seconds: float, connections: int) -> float:
    """Answers per second with ``connections`` closed-loop clients (200s only)."""
    request = batch_request(port)
    done = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        connection = await Connection.connect(port)
        while time.perf_counter() < end:
            status, _, _ = await connection.exchange(request)
            done += status == 200
            if not connection.open:
                connection = await Connection.connect(port)
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return done / (time.perf_counter() - started)


async def overload(port: int, rate: float, seconds: float, max_connections: int) -> dict[str, Any]:
    """Open-loop arrivals at ``rate``/s; each takes an idle connection or opens one."""
    request = batch_request(port)
    idle: list[Connection] = []
    opened = 0
    statuses: Counter[str] = Counter()
    accepted: list[float] = []
    refused: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal opened
        while idle and idle[-1].reader.at_eof():
            # The server closed it after its keep-alive timeout: not a failure.
            idle.pop().close()
            opened -= 1
        if idle:
            connection = idle.pop()
        elif opened >= max_connections:
            statuses["client_saturated"] += 1
            return
        else:
            opened += 1
            connection = await Connection.connect(port)
        start = time.perf_counter()
        try:
            status, headers, _ = await connection.exchange(request)
        except (ConnectionError, asyncio.IncompleteReadError) as ex:
            statuses[f"error:{type(ex).__name__}"] += 1
            opened -= 1
            return
        latency = time.perf_counter() - start
        if status == 200:
            accepted.append(latency)
            statuses["200"] += 1
        elif status == 503 and headers.get("retry-after"):
            refused.append(latency)
            statuses["503+Retry-After"] += 1
        else:
            statuses[str(status)] += 1
        if connection.open:
            idle.append(connection)
        else:
            opened -= 1

    interval = 1.0 / rate
    start = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - start < seconds:
        due = int((now - start) / interval) + 1
        while sent < due:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(min(interval, 0.001))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for connection in idle:
        connection.close()
    return {
        "offered_per_s": round(sent / elapsed, 1),
        "statuses": dict(statuses),
        "accepted_per_s": round(len(accepted) / elapsed, 1),
        "accepted_p50_ms": round(percentile(accepted, 0.50) * 1e3, 3),
        "accepted_p99_ms": round(percentile(accepted, 0.99) * 1e3, 3),
        "refused_p99_ms": round(percentile(refused, 0.99) * 1e3, 3),
        "connections_opened": opened,
    }


async def run(args: argparse.Namespace, port: int) -> dict[str, Any]:
    await unloaded(port, 2.0)  # warm every worker's caches
    base = await unloaded(port, args.unloaded_seconds)
    cap = await capacity(port, args.capacity_seconds, args.connections)
    loaded = await overload(port, cap * args.factor, args.seconds, args.max_connections)
    unloaded_p99 = percentile(base, 0.99)
    ratio = loaded["accepted_p99_ms"] / (unloaded_p99 * 1e3)
    bad = {k: v for k, v in loaded["statuses"].items() if k not in {"200", "503+Retry-After"}}
    return {
        "workers": args.workers,
        "unloaded_p50_ms": round(percentile(base, 0.5) * 1e3, 3),
        "unloaded_p99_ms": round(unloaded_p99 * 1e3, 3),
        "capacity_per_s": round(cap, 1),
        "factor": args.factor,
        "seconds": args.seconds,
        **loaded,
        "p99_ratio": round(ratio, 2),
        "ok": not bad and ratio <= args.max_ratio and loaded["statuses"].get("200", 0) > 0,
    }


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--unloaded-seconds", type=float, default=5.0)
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4, help="closed-loop clients")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--max-ratio", type=float, default=3.0)
    parser.add_argument("--max-in-flight", type=int, default=None)
    args = parser.parse_args(argv)
    env = {}
    if args.max_in_flight is not None:
        env["MAGIC8_PREDICTOR_PERFORMANCE__MAX_IN_FLIGHT"] = str(args.max_in_flight)
    env["MAGIC8_PREDICTOR_LOG_LEVEL"] = "WARNING"
    with (
        serving("--workers", str(args.workers), env=env) as server,
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        summary = runner.run(run(args, server.port))
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
