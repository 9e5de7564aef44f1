"""The demo: the demo hub's config, simulated ports, sample parcels and the hardware scene.
Never imported by the daemon."""
