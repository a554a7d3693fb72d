"""Placement of containers on workers: a pure function plus the loop that applies it."""

from vivace.server.scheduler.placement import Request, WorkerCapacity, place

__all__ = ["Request", "WorkerCapacity", "place"]
