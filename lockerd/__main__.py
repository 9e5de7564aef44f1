"""``python -m lockerd``: the same as the ``lockerd`` command."""

from lockerd.cli.main import main

raise SystemExit(main())
