"""Placement of containers on workers: a pure function plus the loop that applies it."""

from vivace.server.scheduler.placement import GpuChoice, Placement, Request, WorkerCapacity, place

__all__ = ["GpuChoice", "Placement", "Request", "WorkerCapacity", "place"]
