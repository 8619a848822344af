"""One flight through every stage: ingest → tile → detect → match → track, in this process
(the flight engine, ``engine.py``, over one flight).

Detection runs outside any write transaction (it is slow and needs no lock); everything
the flight writes — detections, cases, events, its status — then goes in ONE store
transaction, so a run that fails or is killed leaves no partial flight behind and a
re-run completes it. Re-running a finished flight is idempotent.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import geopandas as gpd

from pipeline.core.errors import PatrolError
from pipeline.detection.detectors import tile_detector
from pipeline.detection.flightplan import detect_plan, plan_registered_flight
from pipeline.ingest import check_district, check_flight_gsd, ingest_flight
from pipeline.ingest.dsm import check_heights, dsm_and_dtm
from pipeline.process.engine import (
    FlightResult,
    commit_flight,
    fail_flight,
    flight_detector,
    start_flight,
)

__all__ = ["FlightResult", "register_flight", "detect_flight", "process_flight", "commit_flight", "fail_flight"]


def register_flight(store, path: str | Path | list, settings, team: str | None = None,
                    refused: list | None = None, notes: list | None = None, force: bool = False,
                    dsm: str | Path | None = None, dtm: str | Path | None = None) -> dict:
    """Validate the flight's files (an ortho, a split export, photos: ``pipeline.ingest``), refuse
    one outside the district or outside the model's GSD range (``force``: record it as forced
    instead), and record it (status 'uploaded' unless already known). Files
    refused inside a folder/zip are appended to ``refused`` (``Refusal``: file, reason, zh), remarks (oblique
    photos kept as evidence, …) to ``notes``. ``dsm`` / ``dtm``: the flight's heights (else any found
    in its folder or zip), checked against it (``pipeline.ingest.dsm``) before anything is stored."""
    result = ingest_flight(path, settings, team)
    if refused is not None:
        refused.extend(result.refused)
    if notes is not None:
        notes.extend(result.notes)
    flight = result.flight
    check_district(flight, store, settings)
    forced = check_flight_gsd(flight, settings, force)
    if forced:
        flight["forced"] = forced
    found_dsm, found_dtm = dsm_and_dtm(result.heights)
    flight.update(check_heights(flight, settings, dsm or found_dsm, dtm or (None if dsm else found_dtm)))
    known = store.get_flight(flight["flight_id"])
    if known is not None:                # the same content again: the flight stays whose it was
        flight.pop("status")
        if known.get("team") or team is None:
            flight.pop("team")
        if Path(str(known.get("path") or "")).exists():
            flight.pop("path")
    with store.transaction():
        store.upsert_flight(flight)
    return store.get_flight(flight["flight_id"])


def detect_flight(flight: dict, settings, detector=None, progress: bool = True) -> gpd.GeoDataFrame:
    """Detections of a registered flight through the one processing path (``pipeline.detection.flightplan``):
    its ortho, or every photo frame with duplicates across tiles and frames merged in one pass.
    ``detector``: a tile detector (``pipeline.detection.detectors``), a loaded model, or None for the
    settings' model."""
    return detect_plan(tile_detector(settings, detector), plan_registered_flight(flight, settings), settings,
                       progress=progress)


def process_flight(store, flight_id: str, settings, *, detector=None, detections: gpd.GeoDataFrame | None = None,
                   force: bool = False, now: datetime | None = None, progress: bool = True) -> FlightResult:
    """Run a registered flight through detect → match → track and store the outcome.

    ``detector``: a tile detector (``pipeline.detection.detectors``: the model, or a truth layer), a loaded
    model, or None for the settings' model. ``detections`` are given detections instead (to test
    the rules apart from any detector; recorded as model version 'given'). A flight already
    'done' is skipped unless ``force``; forced or not, a re-run never duplicates detections,
    findings or cases. ``patrol nightly`` (``pipeline.process``) runs the same path with claims,
    checkpoints and an executor around it."""
    flight = store.get_flight(flight_id)
    if flight is None:
        raise PatrolError(f"flight {flight_id} is not registered; run `patrol ingest PATH` first")
    if flight["status"] == "done" and not force:
        return FlightResult(flight_id, 0, 0, 0, 0, skipped=True)
    rules = settings.rules
    try:
        model_version, tiles = "given", None
        if detections is None:
            settings, tiles = flight_detector(store, settings, detector)
            model_version = tiles.version
        start_flight(store, flight, settings, tiles, force)
        if detections is None:
            detections = detect_flight(flight, settings, tiles, progress)
        return commit_flight(store, flight, detections, settings, model_version, rules=rules, now=now,
                             detector=tiles)
    except PatrolError as e:
        fail_flight(store, flight_id, e)
        raise
