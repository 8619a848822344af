"""Processing flights: the flight engine (``engine``), one flight in this process (``run``), and the
nightly run over a queue (``nightly``) with tile checkpoints (``checkpoints``), an executor
(``executors``: in-process or Dask) and a run summary (``summary``)."""
