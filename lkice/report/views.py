"""Small views every reader of a report shares (pure): figures as text the same way in findings,
the recommendation, the terminal and HTML views."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lkice.report.fields import SIGNAL_TIMING_KEYS, TIMING_KEYS_ALL

if TYPE_CHECKING:
    from lkice.report.read import PathDoc, SignalDoc

__all__ = ["error_kind", "ms", "number", "percent", "step_order"]
_STEPS = list(dict.fromkeys((*TIMING_KEYS_ALL, *SIGNAL_TIMING_KEYS)))


def number(value: object) -> float | None:
    """A finite number, or None (absent, null, a bool, or anything else a paste may hold)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        figure = float(value)
    except OverflowError:  # an int beyond a float's range
        return None
    return figure if math.isfinite(figure) else None


def ms(value: object) -> str:
    """Milliseconds as shown: one decimal below 100, none above; "-" when not a number."""
    figure = number(value)
    if figure is None:
        return "-"
    return f"{figure:.1f}" if figure < 100 else f"{figure:.0f}"


def percent(value: object, space: bool = False) -> str:
    """A fraction as a percentage with one decimal ("1.5%", or "1.5 %" in sentences)."""
    figure = number(value)
    if figure is None:
        return "-"
    return f"{figure * 100:.1f}{' ' if space else ''}%"


def error_kind(result: PathDoc | SignalDoc) -> str:
    """A failed path's or signaling's error kind as shown ("?" if a paste has none)."""
    error = result.get("error")
    kind = None if error is None else error.get("kind")
    return "?" if kind is None else str(kind)


def step_order(key: str) -> tuple[int, str]:
    """Sort key for timing steps: in the order they run, unknown ones last by name (a paste's
    canonical JSON sorts its keys)."""
    return (_STEPS.index(key) if key in _STEPS else len(_STEPS), key)
