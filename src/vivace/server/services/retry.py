"""Retry policy as a pure function of the policy and the attempt that just failed."""

from __future__ import annotations

from dataclasses import dataclass

from vivace.protocol.functions import RetryPolicy


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay: float


def decide_retry(policy: RetryPolicy, failed_attempt: int) -> RetryDecision:
    """``failed_attempt`` counts from 1. A user failure retries while attempts <= max_retries."""
    if failed_attempt > policy.max_retries:
        return RetryDecision(False, 0.0)
    return RetryDecision(True, policy.delay(failed_attempt))
