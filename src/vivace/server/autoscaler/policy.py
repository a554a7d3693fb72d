"""desired = clamp(ceil((backlog + running) / target_inputs) + buffer, min, max).

``buffer`` applies only while there is load. Idle containers beyond ``desired`` stop once they have
been idle for ``scaledown_window``; the longest-idle go first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class IdleContainer:
    id: str
    idle_since: float


@dataclass(frozen=True)
class Snapshot:
    backlog: int
    running: int
    live: int  # containers not yet stopped (pending, assigned or running), excluding those stopping
    min_containers: int = 0
    max_containers: int | None = None
    buffer_containers: int = 0
    target_inputs: int = 1
    scaledown_window: float = 60.0
    idle: tuple[IdleContainer, ...] = field(default=())


@dataclass(frozen=True)
class Plan:
    start: int
    stop: tuple[str, ...]


def desired_containers(s: Snapshot) -> int:
    load = max(0, s.backlog) + max(0, s.running)
    n = math.ceil(load / max(1, s.target_inputs))
    if load > 0:
        n += s.buffer_containers
    n = max(n, s.min_containers)
    if s.max_containers is not None:
        n = min(n, s.max_containers)
    return n


def plan(s: Snapshot, now: float) -> Plan:
    want = desired_containers(s)
    if s.live < want:
        return Plan(want - s.live, ())
    excess = s.live - want
    if excess <= 0:
        return Plan(0, ())
    expired = sorted(
        (c for c in s.idle if now - c.idle_since >= s.scaledown_window), key=lambda c: c.idle_since
    )
    return Plan(0, tuple(c.id for c in expired[:excess]))
