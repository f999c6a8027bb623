"""Memory of a worker over many batch requests: RSS after N requests within 10% of after 1,000.

python -m bench.load.rss --requests 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bench.load.overload import Connection, batch_request
from tests.inference.servers import serving


async def drive(port: int, requests: int, connections: int, on_count: dict[int, object]) -> int:
    """Send ``requests`` batches over ``connections`` keep-alive clients; call back at marks."""
    request = batch_request(port)
    sent = 0
    failures = 0

    async def client() -> None:
        nonlocal sent, failures
        connection = await Connection.connect(port)
        while sent < requests:
            sent += 1
            status, _, _ = await connection.exchange(request)
            failures += status != 200
            mark = on_count.get(sent)
            if callable(mark):
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
        "MAGIC8_PREDICTOR_PERFORMANCE__MAX_IN_FLIGHT": "64",
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
