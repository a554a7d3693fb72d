"""Live output for interactive runs: container logs and map progress, when output is enabled."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

_enabled = False


def is_enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def enable_output(show_progress: bool = True) -> Iterator[None]:
    """Show container logs and progress while an app runs from a plain script."""
    global _enabled
    prev, _enabled = _enabled, True
    try:
        yield
    finally:
        _enabled = prev


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[int], None]]:
    if not _enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(f"[bold]{label}.map"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
    task = bar.add_task(label, total=None)
    with bar:
        yield lambda n: bar.advance(task, n)


def print_log(line: dict[str, Any], *, stream: Any = None) -> None:
    out = stream or (sys.stderr if line.get("stream") in ("stderr", "system", "platform") else sys.stdout)
    prefix = "[vivace] " if line.get("stream") in ("system", "platform") else ""
    out.write(f"{prefix}{line['line']}\n")
    out.flush()
