"""``lockerd``: the daemon's command line (grows with the hub issue)."""

from __future__ import annotations

import sys

from lockerd.hwdemo import main as demo_main


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "demo":
        print("usage: lockerd demo", file=sys.stderr)
        return 2
    return demo_main(args[1:])
