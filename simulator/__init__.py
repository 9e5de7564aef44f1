"""Lock boards in software (``lockerd.simulator``), speaking the real wire protocols on a
pseudo-terminal or TCP; for the demo, the tests and ``lockerd-sim``."""
