"""README's layout, generated from the tree: each folder and package with the first
sentence of its docstring (or README), and the modules in it.

    python -m tools.layout            print the block
    python -m tools.layout --write    put it into README.md between its markers

tests/test_readme_layout.py fails when README's block is not what this prints.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- layout: python -m tools.layout --write -->", "<!-- /layout -->"
WIDTH = 88
# folders that are not Python packages, with what they hold
FOLDERS = {
    "config": "example hub configuration and the broker's ACL and settings for a fleet",
    "systemd": "the unit and the udev rule for an edge box (docs/install.md)",
    "tests": "unit, property, real pty, real Mosquitto, real processes; support code in "
    "tests/support",
    "bench": "benchmarks that print figures and write bench/results/ (shared code in "
    "bench/common.py)",
    "tools": "developer tools that are not shipped: the AsyncAPI generator, this layout",
    "docs": "architecture (the layer map), install guide, cloud guide, AsyncAPI, ADRs",
}
# the order a reader meets the layers in: from the wire up
LOCKERD_ORDER = ["drivers", "simulator", "hub", "cloud", "api", "ops", "daemon", "demo", "cli"]


def _summary(pkg: Path) -> str:
    init = pkg / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    if pkg.is_symlink():  # drivers/, simulator/: kept at the top of the repository
        first += f" (source: {pkg.resolve().relative_to(ROOT)}/, ADR 0017)"
    return first


def _modules(pkg: Path) -> str:
    names = sorted(p.name for p in pkg.iterdir() if p.suffix == ".py" and p.name != "__init__.py")
    return " ".join(names)


def _entry(name: str, text: str, indent: int) -> list[str]:
    head = " " * indent + f"{name:<{16 - indent}} "
    wrapped = textwrap.wrap(text, WIDTH, initial_indent=head, subsequent_indent=" " * len(head))
    return wrapped or [head.rstrip()]


def _package(pkg: Path, name: str, indent: int) -> list[str]:
    out = _entry(name, _summary(pkg), indent)
    mods = _modules(pkg)
    if mods:
        out += textwrap.wrap(
            mods, WIDTH, initial_indent=" " * (indent + 2), subsequent_indent=" " * (indent + 2)
        )
    subs = sorted(
        (p for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()),
        key=lambda p: (LOCKERD_ORDER.index(p.name) if p.name in LOCKERD_ORDER else 99, p.name),
    )
    for sub in subs:
        out += _package(sub, f"{sub.name}/", indent + 2)
    return out


def block() -> str:
    lines = _package(ROOT / "lockerd", "lockerd/", 0)
    for folder in ("drivers", "simulator"):
        lines += _entry(f"{folder}/", f"the source of lockerd.{folder} (ADR 0017)", 0)
    lines += _entry("lockerd/demo/", "demo-hub.toml: the demo hub (package data)", 0)
    for folder, text in FOLDERS.items():
        lines += _entry(f"{folder}/", text, 0)
    return "```\n" + "\n".join(line.rstrip() for line in lines) + "\n```"


def readme_block(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def main(argv: list[str]) -> int:
    if "--write" in argv:
        text = README.read_text(encoding="utf-8")
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        README.write_text(text[:start] + "\n" + block() + "\n" + text[end:], encoding="utf-8")
        return 0
    print(block())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
