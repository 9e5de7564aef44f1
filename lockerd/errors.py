"""The root of lockerd's own errors.

Every error lockerd raises on purpose (a bad config, a store that cannot be written, a
key file that is wrong, a second daemon on the same state, a bus that fails) derives
from :class:`LockerdError`, so a command line catches them as one family and prints
the message, which says what to do, instead of a traceback.
"""

from __future__ import annotations


class LockerdError(Exception):
    """Something lockerd knows how to describe: its message is for a technician."""
