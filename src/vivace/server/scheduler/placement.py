"""Pure placement: match container requests to workers' free cpu and memory.

Among the workers that fit: the cheapest first; then one that runs the requested runtime; then pack
onto the busiest worker that fits, so that idle machines can be released.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    id: str
    cpu: float
    memory: int
    runtime: str | None = None


@dataclass
class WorkerCapacity:
    id: str
    cpu: float
    memory: int
    cpu_used: float = 0.0
    memory_used: int = 0
    price: float = 0.0
    runtimes: tuple[str, ...] = field(default=("process",))

    def fits(self, r: Request) -> bool:
        if r.runtime is not None and r.runtime not in self.runtimes:
            return False
        return self.cpu - self.cpu_used >= r.cpu - 1e-9 and self.memory - self.memory_used >= r.memory


def could_ever_fit(r: Request, workers: list[WorkerCapacity]) -> bool:
    empty = [WorkerCapacity(w.id, w.cpu, w.memory, runtimes=w.runtimes) for w in workers]
    return any(w.fits(r) for w in empty)


def place(requests: list[Request], workers: list[WorkerCapacity]) -> dict[str, str]:
    """Return ``{request id: worker id}`` for every request that fits now (mutates ``workers``' usage)."""
    placed: dict[str, str] = {}
    for r in requests:
        fitting = [w for w in workers if w.fits(r)]
        if not fitting:
            continue
        best = min(fitting, key=lambda w: (w.price, -(w.cpu_used / w.cpu if w.cpu else 0), w.id))
        best.cpu_used += r.cpu
        best.memory_used += r.memory
        placed[r.id] = best.id
    return placed
