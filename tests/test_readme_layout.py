"""README's layout is generated from the tree (tools/layout.py): a module or package
added, moved or removed without `python -m tools.layout --write` fails here."""

from __future__ import annotations

from tools import layout


def test_readme_layout_is_the_tree() -> None:
    readme = layout.README.read_text(encoding="utf-8")
    assert layout.readme_block(readme) == layout.block(), (
        "README's layout is stale: run `python -m tools.layout --write`"
    )
