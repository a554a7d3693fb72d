"""Autoscaling policy: pure functions over a snapshot of one function's load."""

from vivace.server.autoscaler.policy import Snapshot, desired_containers, plan

__all__ = ["Snapshot", "desired_containers", "plan"]
