"""Memory of a worker over many batch requests: RSS after N requests within 10% of after 1,000.

python -m bench.load.rss --requests 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Mapping

from bench.workload import body_ring, ring_size
from inference.config import load_settings
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


def batch_requests(port: int) -> list[bytes]:
    """Distinct batches, enough to overflow the prediction cache: every cache fills and evicts."""
    bodies = body_ring(ring_size(load_settings().performance.cache.max_size))
    return [
        (
            f"POST /predict/batch HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]


async def drive(
    port: int, requests: int, connections: int, on_count: Mapping[int, Callable[[], object]]
) -> int:
    """Send ``requests`` batches over ``connections`` keep-alive clients; call back at marks."""
    batches = batch_requests(port)
    sent = 0
    failures = 0

    async def client() -> None:
        nonlocal sent, failures
        connection = await Connection.connect(port)
        while sent < requests:
            sent += 1
            status, _, _ = await connection.exchange(batches[sent % len(batches)])
            failures += status != 200
            mark = on_count.get(sent)
            if mark is not None:
                mark()
            if not connection.open:
                connection = await Connection.connect(port)
        connection.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--first", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--max-growth", type=float, default=0.10)
    args = parser.parse_args(argv)
    env = {
        "MAGIC8_PREDICTOR_LOG_LEVEL": "WARNING",
        # This test is about memory: nothing is shed.
        "MAGIC8_PREDICTOR_PERFORMANCE__MAX_IN_FLIGHT": "64",
        "MAGIC8_PREDICTOR_PERFORMANCE__MAX_QUEUE_MS": "60000",
    }
    samples: dict[int, int] = {}
    with serving(env=env) as server:
        marks = {
            count: (lambda count=count: samples.__setitem__(count, server.rss_kib()))
            for count in (args.first, args.requests // 4, args.requests // 2, args.requests)
        }
        failures = asyncio.run(drive(server.port, args.requests, args.connections, marks))
        samples[args.requests] = server.rss_kib()
    first, last = samples[args.first], samples[args.requests]
    growth = (last - first) / first
    summary = {
        "requests": args.requests,
        "rss_kib": samples,
        "growth": round(growth, 4),
        "failures": failures,
        "ok": growth <= args.max_growth and failures == 0,
    }
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
