"""An HTTP load generator for the web endpoint load test and benchmark: ``clients`` concurrent clients
(each its own keep-alive connection) send requests back to back for ``seconds``; every request's
latency and every error is kept."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadResult:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, of the requests that succeeded
    errors: dict[str, int] = field(default_factory=dict)  # "status 502" / exception name -> count

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 2),
            "requests": self.requests,
            "ok": len(lat),
            "errors": dict(self.errors),
            "rps": round(len(lat) / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] * 1000, 2) if lat else None,
        }


async def run_load(url: str, clients: int, seconds: float, *, timeout: float = 120.0) -> LoadResult:
    import httpx

    result = LoadResult(clients, seconds)
    stop = time.monotonic() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1)) as http:
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    r = await http.get(url)
                    await r.aread()
                except Exception as err:  # counted, never raised: the run goes on
                    key = type(err).__name__
                else:
                    if r.status_code == 200:
                        result.latencies.append(time.perf_counter() - started)
                        continue
                    key = f"status {r.status_code}"
                result.errors[key] = result.errors.get(key, 0) + 1

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = time.monotonic() - began
    return result


def load(url: str, clients: int, seconds: float) -> LoadResult:
    return asyncio.run(run_load(url, clients, seconds))


def load_in_subprocess(url: str, clients: int, seconds: float) -> dict[str, Any]:
    """``load`` in a process of its own, so that it shares no interpreter lock with what it measures."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "vivace.testing.load", url, str(clients), str(seconds)],
        capture_output=True, text=True, timeout=seconds + 300, check=True,
    )  # fmt: skip
    summary: dict[str, Any] = json.loads(out.stdout)
    return summary


if __name__ == "__main__":
    import json
    import sys

    target, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(load(target, n, secs).summary()))
