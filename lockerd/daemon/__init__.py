"""The daemon: the one wiring of a hub (``open_hub``), where its ports come from, and
serving it until it is told to stop."""
