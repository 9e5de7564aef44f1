"""What tests and benchmarks share, each part in a module of its own; no test module
imports another test module (tests/test_layout.py checks it).

- waiting: ``eventually``, ``until_result``: polling with a deadline, never a bare sleep
- buses: ``FAST_BUS``, bus timings that fail fast
- hubs: a small hub in the test's process, built by the one wiring (open_hub) on
  simulated boards, with the test's clock
- cloud: the demo hub with a cloud link to a real Mosquitto, and the cloud's side
- broker: a real Mosquitto per test (the fixtures are registered in tests/conftest.py)
- contract_check: messages checked against the published contract, docs/asyncapi.json
- daemon: ``lockerd run`` in a process of its own, on the demo hub's config
- demoproc: ``lockerd demo --mqtt`` in a process of its own, and a bare cloud watching it
- e2e: the end-to-end hub's config, and its board in a ``lockerd-sim`` process
"""
