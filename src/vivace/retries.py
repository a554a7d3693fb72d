"""``Retries``: how many times, and how far apart, an input is retried after the user's code fails."""

from __future__ import annotations

from vivace.exception import InvalidError
from vivace.protocol.functions import RetryPolicy


class Retries:
    """Retry policy for a function.

    Args:
        max_retries: retries after the first attempt, 0-10.
        backoff_coefficient: growth of the delay between retries, 1.0-10.0.
        initial_delay: seconds before the first retry, 0-60.
        max_delay: upper bound of the delay, 1-60 seconds.
    """

    def __init__(
        self,
        *,
        max_retries: int,
        backoff_coefficient: float = 2.0,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= 10:
            raise InvalidError(f"max_retries must be an integer between 0 and 10, got {max_retries!r}")
        for name, value, lo, hi in (
            ("backoff_coefficient", backoff_coefficient, 1.0, 10.0),
            ("initial_delay", initial_delay, 0.0, 60.0),
            ("max_delay", max_delay, 1.0, 60.0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise InvalidError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}")
        self.max_retries = max_retries
        self.backoff_coefficient = float(backoff_coefficient)
        self.initial_delay = float(initial_delay)
        self.max_delay = float(max_delay)

    def to_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.backoff_coefficient, self.initial_delay, self.max_delay)

    def __repr__(self) -> str:
        return (
            f"Retries(max_retries={self.max_retries}, backoff_coefficient={self.backoff_coefficient}, "
            f"initial_delay={self.initial_delay}, max_delay={self.max_delay})"
        )
