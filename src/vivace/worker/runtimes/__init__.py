"""Container runtimes behind one small port; this release ships ``process`` (no isolation)."""

from vivace.worker.runtimes.base import (
    Capabilities,
    ContainerHandle,
    ContainerRuntime,
    ContainerSpec,
    ExitStatus,
)
from vivace.worker.runtimes.process import ProcessRuntime

__all__ = [
    "Capabilities",
    "ContainerHandle",
    "ContainerRuntime",
    "ContainerSpec",
    "ExitStatus",
    "ProcessRuntime",
    "available_runtimes",
]


def available_runtimes() -> dict[str, ContainerRuntime]:
    return {"process": ProcessRuntime()}
