"""lockerd: the controller daemon of a carrier-neutral parcel-locker hub.

The layers, from the wire up, are subpackages (docs/architecture.md has the map and
the import contract that ``./dev lint`` checks): ``drivers`` and ``simulator`` (the
hardware edge and boards in software), ``config``, ``hub`` (domain, codes, store,
service, door monitor), ``cloud`` and ``api`` (the MQTT link and the local socket API),
``ops`` (systemd, watchdog, metrics), ``daemon`` (the one wiring, serving), ``demo``
and ``cli``.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("lockerd")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
