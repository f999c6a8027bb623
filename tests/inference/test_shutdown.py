"""SIGTERM to the gunicorn master under steady load: readiness fails first, nothing is reset."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.fixtures import batch_of_32
from tests.inference.servers import serving

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_sigterm_under_load_answers_every_accepted_request() -> None:
    """Clients behave like a load balancer: they stop routing new requests once readiness
    fails. A client that ignores readiness and keeps opening connections can always lose one
    to the kernel's accept queue when the last listener closes (it was never accepted by a
    worker); that is why readiness flips first and the workers keep serving for ``drain_s``.
    """
    outcomes: Counter[str] = Counter()
    readiness: list[tuple[float, int]] = []
    stop = threading.Event()
    unready = threading.Event()
    signalled = threading.Event()
    body = {"requests": batch_of_32()}

    with serving("--workers", "2", env={"MAGIC8_PREDICTOR_SERVER__DRAIN_S": "1.5"}) as server:

        def steady_client() -> None:
            with httpx.Client(base_url=server.base, timeout=30) as client:
                while not stop.is_set() and not unready.is_set():
                    try:
                        answer = client.post("/predict/batch", json=body)
                    except httpx.ConnectError:
                        # Refused at connect: never accepted, so nothing was lost.
                        outcomes["refused"] += 1
                        time.sleep(0.01)
                        continue
                    except httpx.TransportError as ex:
                        outcomes[f"lost:{type(ex).__name__}"] += 1
                        continue
                    outcomes[str(answer.status_code)] += 1
                    if answer.status_code == 503:
                        # Shed for overload (4 clients, 2 workers): an answer, with its retry.
                        assert answer.headers["Retry-After"]
                    if answer.status_code == 200:
                        assert len(answer.json()["predictions"]) == 32

        def probe() -> None:
            while not stop.is_set():
                try:
                    status = httpx.get(f"{server.base}/v2/health/ready", timeout=5).status_code
                except httpx.TransportError:
                    status = 0
                readiness.append((time.monotonic(), status))
                if signalled.is_set() and status != 200:
                    unready.set()
                time.sleep(0.02)

        threads = [threading.Thread(target=steady_client) for _ in range(4)]
        threads.append(threading.Thread(target=probe))
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        answered_before = outcomes["200"]
        sent_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        signalled.set()
        exit_code = server.process.wait(timeout=60)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert exit_code == 0
    assert answered_before > 0
    lost = {key: count for key, count in outcomes.items() if key.startswith("lost")}
    assert not lost, f"requests reset or dropped: {lost} ({dict(outcomes)})"
    assert set(outcomes) <= {"200", "503", "refused"}, dict(outcomes)
    assert outcomes["200"] > answered_before, "requests were still served while draining"
    after = [status for moment, status in readiness if moment > sent_at]
    # Readiness said 503 while the workers still answered, before they stopped accepting.
    assert 503 in after
    first_503 = after.index(503)
    assert 0 not in after[:first_503]
