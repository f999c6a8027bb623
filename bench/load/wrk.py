"""wrk as a latency-per-answer load generator (``open_loop.lua``): closed or open loop.

wrk is C and costs a small fraction of a core at thousands of requests per second, which a
Python client on the same two cores does not: there the generator's own CPU use shows up as
server latency. Each wrk thread drives one connection, so the script can pair every request
with its answer and keep the latency of 200s apart from that of 503s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import percentile

SCRIPT = Path(__file__).with_name("open_loop.lua")
HOST = "127.0.0.1"
PATH = "/predict/batch"


class WrkMissing(RuntimeError):
    """wrk is not installed."""


@dataclass
class Phase:
    """The answers of one wrk run.

    Attributes:
        seconds: wrk's measured duration.
        statuses: ``"200"``, ``"503+Retry-After"``, or the bare status of anything else.
        accepted_ms: Latency of each 200, send to last byte.
        refused_ms: Latency of each 503 that carried ``Retry-After``.
        socket_errors: wrk's connect / read / write / timeout failures (resets count here).
        late: Open loop only: sends that left more than 1 ms after their slot.
    """

    seconds: float
    statuses: Counter[str] = field(default_factory=Counter)
    accepted_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    socket_errors: dict[str, int] = field(default_factory=dict)
    late: int = 0

    @property
    def answers(self) -> int:
        """Every answer, whatever its status."""
        return sum(self.statuses.values())

    @property
    def accepted_per_s(self) -> float:
        """200s per second."""
        return len(self.accepted_ms) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, object]:
        """The figures a report shows."""
        return {
            "seconds": round(self.seconds, 2),
            "answers_per_s": round(self.answers / self.seconds, 1) if self.seconds else 0.0,
            "accepted_per_s": round(self.accepted_per_s, 1),
            "statuses": dict(self.statuses),
            "accepted_p50_ms": _ms(self.accepted_ms, 50),
            "accepted_p99_ms": _ms(self.accepted_ms, 99),
            "refused_p99_ms": _ms(self.refused_ms, 99),
            "socket_errors": {k: v for k, v in self.socket_errors.items() if v},
            "late_sends": self.late,
        }


def _ms(values: list[float], q: float) -> float | None:
    """Percentile ``q`` rounded for a report; ``None`` when there is nothing to rank."""
    return round(percentile(values, q), 3) if values else None


def require_wrk() -> str:
    """wrk's path.

    Raises:
        WrkMissing: it is not on the PATH.
    """
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing("wrk is needed for this load test: apt-get install wrk")
    return found


def run(
    port: int,
    bodies: Sequence[bytes],
    *,
    connections: int,
    seconds: float,
    rate: float | None = None,
    timeout_s: float = 10.0,
    keep: Path | None = None,
) -> Phase:
    """Post ``bodies`` round-robin for ``seconds``.

    Args:
        port: The server's port on 127.0.0.1.
        bodies: Request bodies (one JSON document each, no newline inside).
        connections: Keep-alive connections, one wrk thread each.
        seconds: Duration (wrk rounds it to whole seconds).
        rate: Requests per second across all connections, on a fixed schedule (open loop);
            ``None`` for a closed loop (each connection sends when its answer arrives).
        timeout_s: wrk's per-request timeout; a request slower than that is a socket error.
        keep: Where to copy the per-answer TSV (status, Retry-After, latency µs, send time µs
            on CLOCK_MONOTONIC), to line slow answers up with what the server was doing.

    Raises:
        WrkMissing: wrk is not installed.
        RuntimeError: wrk failed or printed no summary.
    """
    wrk = require_wrk()
    period_us = 0 if rate is None else max(1, round(connections / rate * 1e6))
    with tempfile.TemporaryDirectory(prefix="magic8-wrk-") as scratch:
        corpus = Path(scratch) / "bodies.jsonl"
        corpus.write_bytes(b"\n".join(bodies) + b"\n")
        answers = Path(scratch) / "answers.tsv"
        command = [
            wrk,
            f"-t{connections}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            f"{max(1, round(timeout_s))}s",
            "-s",
            str(SCRIPT),
            f"http://{HOST}:{port}{PATH}",
            "--",
            str(corpus),
            str(period_us),
            str(answers),
        ]
        finished = subprocess.run(  # noqa: S603 - our own arguments
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        line = next(
            (row for row in finished.stdout.splitlines() if row.startswith("WRKJSON ")), None
        )
        if finished.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({finished.returncode}): {finished.stderr.strip()}")
        stats = json.loads(line.removeprefix("WRKJSON "))
        if keep is not None:
            shutil.copyfile(answers, keep)
        phase = Phase(
            seconds=stats["duration_us"] / 1e6,
            socket_errors={key: stats[key] for key in ("connect", "read", "write", "timeout")},
            late=stats["late"],
        )
        with answers.open() as rows:
            for row in rows:
                status, retry_after, latency_us, _sent_us = row.rstrip("\n").split("\t")
                latency_ms = int(latency_us) / 1e3
                if status == "200":
                    phase.statuses["200"] += 1
                    phase.accepted_ms.append(latency_ms)
                elif status == "503" and retry_after:
                    phase.statuses["503+Retry-After"] += 1
                    phase.refused_ms.append(latency_ms)
                else:
                    phase.statuses[status] += 1
    return phase
