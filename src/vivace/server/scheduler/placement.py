"""Pure placement: match container requests to workers' free cpu, memory, runtimes and GPUs.

A request that needs GPUs lists choices in preference order (``GpuChoice``): the first choice that some
worker can hold now wins, and the container gets that many free GPUs of one model on one worker, the
lowest indices first. Among the workers that fit a choice: the cheapest first; then the one with the
fewest free GPUs (GPU work packs onto partly used machines, work without GPUs stays off idle GPUs);
then pack onto the busiest worker, so that idle machines can be released.

A requested model matches a worker's model when they are equal, when the request names the family of a
variant (``A100`` matches ``A100-80GB``), or through an alias (``A10`` and ``A10G``); ``None`` matches
any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# runtimes that give a container its own namespaces (and so can block its network)
ISOLATING_RUNTIMES = ("crun", "runc", "runsc", "bwrap")
# runtimes a sandbox runs under when it names none (in the worker's order of preference: runsc first)
SANDBOX_RUNTIMES = ("runsc", "crun", "runc")
# runtimes that start containers from image layers (overlayfs over the worker's layer cache)
IMAGE_RUNTIMES = ("crun", "runc", "runsc")

# names of one model (Modal now says A10 for what AWS calls A10G)
_ALIASES = {"A10G": "A10"}


def gpu_type_matches(wanted: str | None, offered: str) -> bool:
    """Whether a worker's GPU model ``offered`` serves a request for ``wanted`` (None: any model)."""
    if wanted is None:
        return True
    w, o = _ALIASES.get(wanted, wanted), _ALIASES.get(offered, offered)
    return o == w or o.startswith(w + "-")


@dataclass(frozen=True)
class GpuChoice:
    type: str | None  # None: any model
    count: int

    def __str__(self) -> str:
        return f"{self.type or 'any'}:{self.count}"


@dataclass(frozen=True)
class Request:
    id: str
    cpu: float
    memory: int
    runtime: str | None = None
    gpus: tuple[GpuChoice, ...] = ()  # in preference order; empty: no GPU
    isolated: bool = False  # needs a runtime that isolates (block_network=True)
    image: bool = False  # starts from an image: needs a runtime that stacks layers
    sandbox: bool = False  # a sandbox that names no runtime: needs one of SANDBOX_RUNTIMES


@dataclass(frozen=True)
class Placement:
    worker: str
    gpus: tuple[int, ...] = ()  # the worker's GPU indices the container gets


@dataclass
class WorkerCapacity:
    id: str
    cpu: float
    memory: int
    cpu_used: float = 0.0
    memory_used: int = 0
    price: float = 0.0
    runtimes: tuple[str, ...] = field(default=("process",))
    gpus: dict[int, str] = field(default_factory=dict)  # GPU index -> model
    gpus_used: set[int] = field(default_factory=set)  # indices held by live containers

    def fits(self, r: Request) -> bool:
        """Whether cpu, memory and runtime fit now (GPUs aside)."""
        if r.runtime is not None and r.runtime not in self.runtimes:
            return False
        if r.isolated and not any(x in ISOLATING_RUNTIMES for x in self.runtimes):
            return False
        if r.sandbox and r.runtime is None and not any(x in SANDBOX_RUNTIMES for x in self.runtimes):
            return False
        if r.image and not any(x in IMAGE_RUNTIMES for x in self.runtimes):
            return False
        return self.cpu - self.cpu_used >= r.cpu - 1e-9 and self.memory - self.memory_used >= r.memory

    def free_gpus(self) -> list[int]:
        return [i for i in sorted(self.gpus) if i not in self.gpus_used]

    def take(self, choice: GpuChoice) -> tuple[int, ...] | None:
        """The lowest free indices giving ``choice`` on GPUs of one model, or None if none do."""
        by_model: dict[str, list[int]] = {}
        for i in self.free_gpus():
            if gpu_type_matches(choice.type, self.gpus[i]):
                by_model.setdefault(self.gpus[i], []).append(i)
        for indices in by_model.values():
            if len(indices) >= choice.count:
                return tuple(indices[: choice.count])
        return None

    def empty(self) -> WorkerCapacity:
        return WorkerCapacity(
            self.id, self.cpu, self.memory, price=self.price, runtimes=self.runtimes, gpus=dict(self.gpus)
        )


def _rank(w: WorkerCapacity) -> tuple[float, int, float, str]:
    return (w.price, len(w.free_gpus()), -(w.cpu_used / w.cpu if w.cpu else 0), w.id)


def choose(r: Request, workers: list[WorkerCapacity]) -> Placement | None:
    """Where ``r`` goes now, without reserving anything; None if nowhere."""
    fitting = [w for w in workers if w.fits(r)]
    if not r.gpus:
        return Placement(min(fitting, key=_rank).id) if fitting else None
    for choice in r.gpus:
        options = [(w, got) for w in fitting if (got := w.take(choice)) is not None]
        if options:
            w, got = min(options, key=lambda o: _rank(o[0]))
            return Placement(w.id, got)
    return None


def place(requests: list[Request], workers: list[WorkerCapacity]) -> dict[str, Placement]:
    """Return ``{request id: placement}`` for every request that fits now (mutates ``workers``' usage)."""
    by_id = {w.id: w for w in workers}
    placed: dict[str, Placement] = {}
    for r in requests:
        p = choose(r, workers)
        if p is None:
            continue
        w = by_id[p.worker]
        w.cpu_used += r.cpu
        w.memory_used += r.memory
        w.gpus_used.update(p.gpus)
        placed[r.id] = p
    return placed


def could_ever_fit(r: Request, workers: list[WorkerCapacity]) -> bool:
    return choose(r, [w.empty() for w in workers]) is not None


def unfit_reason(r: Request, workers: list[WorkerCapacity]) -> str | None:
    """Why no worker could hold ``r`` even when empty; None when one could."""
    empty = [w.empty() for w in workers]
    if not workers or choose(r, empty) is not None:
        return None
    offered = sorted({x for w in workers for x in w.runtimes})
    if r.runtime is not None and r.runtime not in offered:
        return f"asks for runtime {r.runtime!r}, which no live worker offers ({', '.join(offered)})"
    if r.isolated and not set(offered) & set(ISOLATING_RUNTIMES):
        return (
            f"needs an isolating runtime ({', '.join(ISOLATING_RUNTIMES)}) for block_network=True, but the "
            f"live workers offer only {', '.join(offered)}"
        )
    if r.sandbox and r.runtime is None and not set(offered) & set(SANDBOX_RUNTIMES):
        return (
            f"is a sandbox, which runs under {', '.join(SANDBOX_RUNTIMES)}, but the live workers offer only "
            f"{', '.join(offered)} (runtime='process' runs one without isolation, for development)"
        )
    if r.image and not set(offered) & set(IMAGE_RUNTIMES):
        return (
            f"starts from an image, which needs a worker with {', '.join(IMAGE_RUNTIMES)}, but the live "
            f"workers offer only {', '.join(offered)}"
        )
    if not any(w.fits(r) for w in empty):
        biggest = max(workers, key=lambda w: (w.cpu, w.memory))
        return (
            f"needs cpu={r.cpu:g} memory={r.memory} MiB but the largest worker has cpu={biggest.cpu:g} "
            f"memory={biggest.memory} MiB"
        )
    wanted = " or ".join(str(c) for c in r.gpus)
    return (
        f"needs GPU {wanted} with cpu={r.cpu:g} memory={r.memory} MiB on one worker, but the live workers "
        f"have {_inventory(workers)}"
    )


def _inventory(workers: list[WorkerCapacity]) -> str:
    counts: dict[str, int] = {}
    for w in workers:
        models: dict[str, int] = {}
        for model in w.gpus.values():
            models[model] = models.get(model, 0) + 1
        for model, n in models.items():
            label = f"{n} x {model}"
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return "no GPUs"
    parts = [f"{label} ({n} worker{'s' if n > 1 else ''})" for label, n in sorted(counts.items())]
    return ", ".join(parts[:8]) + (", ..." if len(parts) > 8 else "")
