"""Nightly batch runs (``patrol nightly``): the one processing path with claims (``nightly``),
tile checkpoints (``checkpoints``), an executor (``executors``: in-process or Dask) and a run
summary (``summary``) around it."""
from pipeline.process.checkpoints import Checkpoint, checkpoint_root
from pipeline.process.nightly import PENDING, run_nightly, select_flights
from pipeline.process.summary import FlightOutcome, NightlySummary

__all__ = ["run_nightly", "select_flights", "PENDING", "Checkpoint", "checkpoint_root", "FlightOutcome",
           "NightlySummary"]
