"""The hardware edge (``lockerd.drivers``): wire codecs, one owner per bus, board drivers
and the poll cycle. Imports nothing of lockerd but its error base."""
