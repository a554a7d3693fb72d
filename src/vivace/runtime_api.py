"""What user code can ask about where it runs."""

from __future__ import annotations

import os


def is_local() -> bool:
    """True on the client, False inside a vivace container."""
    return "VIVACE_SOCKET" not in os.environ


def current_input_id() -> str | None:
    """The id of the input being processed, inside a container; None elsewhere."""
    from vivace.runtime import context

    return context.input_id()


def current_function_call_id() -> str | None:
    """The id of the function call the current input belongs to, inside a container."""
    from vivace.runtime import context

    return context.function_call_id()
