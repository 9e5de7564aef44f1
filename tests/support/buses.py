"""Bus timings for tests: a dead board costs 30 ms a try, not 100."""

from __future__ import annotations

from typing import Any

# Fast-failing bus settings (BusSettings fields) for tests.
FAST_BUS: dict[str, Any] = {
    "gap_ms": 0.5,
    "timeout_ms": 30.0,
    "offline_probe_s": 0.5,
    "reopen_min_s": 0.02,
    "reopen_max_s": 0.2,
}
