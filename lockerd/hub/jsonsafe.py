"""Text that came from outside, made safe to store, send and log.

Anything a command, a request or a board put into an event, a reply or a log line
passes through :func:`clean` first. What it guarantees, whatever went in:

- every string is valid UTF-8 when encoded (a lone surrogate such as ``"\\ud800"``,
  which JSON can carry and Python can hold, becomes U+FFFD: pydantic, SQLite and
  most JSON parsers refuse to encode it, and one such string once stopped the cloud
  link for good);
- control characters other than tab and newline are replaced, so a log line or a
  terminal never shows text that was not meant to be shown;
- strings are cut at ``max_str`` characters, containers at ``max_items`` entries,
  nesting at ``max_depth`` (what is cut is marked, never silently dropped);
- only JSON types remain (anything else becomes its bounded ``repr``).
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_STR = 256
MAX_ITEMS = 64
MAX_DEPTH = 6
CUT = "…"

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def text(value: str, max_str: int = MAX_STR) -> str:
    """One string: valid UTF-8, no control characters, at most ``max_str`` characters."""
    if not value.isascii():
        # surrogate pairs that encode a real character are joined; lone halves replaced
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    value = _CONTROL.sub("\ufffd", value)
    if len(value) > max_str:
        return value[: max_str - 1] + CUT
    return value


def clean(
    value: Any,
    *,
    max_str: int = MAX_STR,
    max_items: int = MAX_ITEMS,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """``value`` as JSON-safe data within the bounds (see the module's docstring)."""

    def scalar(v: Any) -> Any:
        if isinstance(v, str):
            return text(v, max_str)
        if isinstance(v, float):
            return v if math.isfinite(v) else None  # no NaN, no Infinity
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**63:
            return text(str(v), 40)  # beyond what other languages read as a number
        return v

    def walk(v: Any, depth: int) -> Any:
        if v is None or isinstance(v, str | int | float):  # (bool is an int)
            return scalar(v)
        if depth >= max_depth:
            return CUT
        if isinstance(v, dict):
            out: dict[str, Any] = {}
            for i, (k, item) in enumerate(v.items()):
                if i >= max_items:
                    out[CUT] = f"{len(v) - max_items} more"
                    break
                out[text(str(k), 64)] = walk(item, depth + 1)
            return out
        if isinstance(v, list | tuple):
            items = [walk(item, depth + 1) for item in v[:max_items]]
            if len(v) > max_items:
                items.append(f"{CUT} {len(v) - max_items} more")
            return items
        return text(repr(v), max_str)

    return walk(value, 0)


__all__ = ["clean", "text"]
