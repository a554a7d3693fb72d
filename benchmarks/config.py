"""How much work one benchmark run does: the full and ``--quick`` presets."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunConfig:
    """Counts for one run; every peer gets the same ones."""

    mode: str = "full"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Worker processes for the pool-based peers (Ray, Dask, multiprocessing)."""
    calls: int = 300
    warmup_calls: int = 30
    inputs: int = 10_000
    warmup_inputs: int = 1_000
    repetitions: int = 3
    peer_timeout_s: float = 900.0
    run_timeout_s: float | None = None
    """Budget for all peers together; a peer gets what is left of it when its turn comes."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> RunConfig:
        data: dict[str, Any] = json.loads(raw)
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> RunConfig:
        """A copy with the given fields replaced; ``None`` values are ignored."""
        changes = {key: value for key, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **changes)


FULL = RunConfig()
QUICK = RunConfig(
    mode="quick",
    calls=100,
    warmup_calls=10,
    inputs=2_000,
    warmup_inputs=200,
    repetitions=1,
    peer_timeout_s=150.0,
    run_timeout_s=220.0,
)
