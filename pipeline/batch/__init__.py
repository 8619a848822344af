"""Nightly batch runs (``patrol nightly``): the one processing path with claims, checkpoints
and an executor around it.

- ``nightly``: which flights, claims, the commit order, failures (``run_nightly``);
- ``checkpoints``: finished tile chunks saved and resumed;
- ``executors``: chunks detected in this process or on a Dask cluster;
- ``summary``: what the run did, as JSON + Markdown.
"""
from pipeline.batch.checkpoints import Checkpoint, checkpoint_root
from pipeline.batch.nightly import PENDING, run_nightly, select_flights
from pipeline.batch.summary import FlightOutcome, NightlySummary

__all__ = ["run_nightly", "select_flights", "PENDING", "Checkpoint", "checkpoint_root", "FlightOutcome",
           "NightlySummary"]
