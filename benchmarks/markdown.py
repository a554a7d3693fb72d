"""Small helpers every docs section uses."""

from __future__ import annotations


def row(cells: list[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def fmt_ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:,.1f}"
