"""The command lines: ``lockerd`` (run, demo, check-config, keygen), ``lockerctl`` (the
technician's tool) and ``lockerctl cloud`` (the cloud's side, for demos and tests)."""
