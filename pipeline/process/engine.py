"""The flight engine: the steps every runner of a flight takes, each written once.

    start ──> (the runner detects: chunks through an executor) ──> commit, or fail

- ``flight_detector``: the tile detector a run uses: the one given, the truth layer, or the
  registry's active model (its sha256 checked);
- ``start_flight``: status 'processing', and the GSD range of the model checked again for a flight
  registered without ``--force`` (``force``: run it anyway, and the flight records it);
- ``commit_flight``: heights (a flight with a DSM), change check, match, track, everything written in
  ONE transaction;
- ``fail_flight``: the error recorded on the flight, in English and Chinese.

``process_flight`` (``run.py``) is the engine over one flight, its chunks detected in this process;
``run_nightly`` (``nightly.py``) is the same engine over a queue, under claims, with checkpoints
and an executor (in-process or Dask).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import geopandas as gpd

from pipeline.cases.casework import note_events
from pipeline.cases.change import (
    check_flight,
    corrected_footprint,
    earlier_flights,
    flight_shift,
    prior_coverage,
)
from pipeline.cases.houses import register_structures
from pipeline.cases.manual import MANUAL_SOURCE
from pipeline.cases.match import find_violations
from pipeline.cases.track import track_flight
from pipeline.core.disk import check_room
from pipeline.core.errors import error_line, one_line
from pipeline.core.values import is_missing
from pipeline.detection.detectors import TruthTileDetector, tile_detector
from pipeline.detection.heights import apply_heights, rise_since
from pipeline.ingest import check_flight_gsd, flight_frames
from pipeline.model.active import active_settings


@dataclass
class FlightResult:
    flight_id: str
    detections: int
    findings: int
    new_cases: int
    events: int
    skipped: bool = False
    heights: dict | None = None      # with a DSM: measured, flat_dropped, found_by_height, storey_added
    houses_new: int = 0              # the building register (自建房台账): records added, marked gone
    houses_gone: int = 0


def flight_detector(store, settings, detector=None, truth=None):
    """(settings, tile detector) of a run: ``detector`` (a tile detector or a loaded model) or the
    truth layer ``truth`` when given, else the registry's active model (hash checked; the settings
    returned point at it)."""
    if detector is None and truth is None:
        settings = active_settings(store, settings)
    return settings, tile_detector(settings, detector, truth)


def start_flight(store, flight: dict, settings, detector, force: bool = False) -> None:
    """Mark the flight 'processing' and, for a model (not the truth layer) and a flight registered
    without ``--force``, check its GSD against the model's range again (InputError outside it;
    ``force``: the flight records that it ran forced)."""
    flight_id = flight["flight_id"]
    with store.transaction():
        store.set_flight_status(flight_id, "processing")
    if detector is None or isinstance(detector, TruthTileDetector) or not is_missing(flight.get("forced")):
        return
    why = check_flight_gsd(flight, settings, force)
    if why:
        with store.transaction():
            store.upsert_flight({"flight_id": flight_id, "forced": why})


def commit_flight(store, flight: dict, detections: gpd.GeoDataFrame, settings, model_version: str,
                  *, rules=None, now: datetime | None = None, detector=None) -> FlightResult:
    """With a DSM, measure the flight's detections, drop the flat ones and add what stands up unseen
    (``pipeline.detection.heights``); line the flight up on the earlier ones and confirm its change
    candidates in their images (``pipeline.cases.change``; ``detector`` re-examines them, None:
    appearance only) and in their heights (加层); then match and track its detections and write
    everything it produces — detections, cases, events, the registration, status 'done' — in ONE
    store transaction (all or nothing)."""
    rules = rules if rules is not None else settings.rules
    flight_id = flight["flight_id"]
    if store.backend == "gpkg":           # a full disk is refused before the transaction, not inside it
        check_room(Path(store.url).parent, 8 << 20, f"writing flight {flight_id} into the store")
    detections = detections.to_crs(settings.store.crs)
    heights = None
    if not is_missing(flight.get("dsm")):                  # reads the DSM: before the lock
        frames = flight_frames(flight)
        detections, heights = apply_heights(detections, flight, settings, frames[0] if len(frames) == 1 else None)
    check = check_flight(store, flight, detections, settings, detector, rules)    # reads images: before the lock
    detections = check.detections
    if heights is not None:
        earlier = [(f, corrected_footprint(f), flight_shift(f)) for f in earlier_flights(store, flight)]
        detections["rise_m"] = rise_since(detections, earlier, settings)
        detections["storey_added"] = detections["rise_m"].to_numpy() >= settings.heights.storey_rise_m
        heights["storey_added"] = int(detections["storey_added"].sum())
    footprint = check.footprint
    bbox = footprint.bounds if footprint is not None else tuple(detections.total_bounds)
    earlier_model = flight.get("model_version") if flight.get("status") in ("done", "processing") else None
    with store.transaction():
        kept = ["class_name", "confidence", "area_m2", "geometry"] + \
            [c for c in ("height_m", "floors_est", "source") if c in detections.columns]
        store.replace_detections(flight_id, detections[kept].assign(model_version=model_version))
        parcels = store.parcels(bbox)
        findings = find_violations(detections, parcels, store.zones(bbox), rules)
        result = track_flight(store.cases(bbox), findings, detections, {**flight, "footprint": footprint},
                              settings.tracking, rules, now, prior_coverage=prior_coverage(store, flight),
                              allocate=store.allocate_case_numbers, prefix=store.case_prefix,
                              demolition=check.demolition)
        events = list(result.events)
        if len(result.cases):
            cases = result.cases
            mine = (cases["last_seen_flight"] == flight_id) & (cases["source"] != MANUAL_SOURCE)
            if earlier_model and earlier_model != model_version:
                events += note_events(cases.loc[mine, "case_no"], cases.loc[mine, "status"],
                                      f"航次 {flight_id} 以模型 {model_version} 重新识别（原模型 {earlier_model}）", now)
            # an all-empty model_version column comes back as float: make it hold text
            cases = cases.assign(model_version=cases.get("model_version")).astype({"model_version": object})
            cases.loc[mine, "model_version"] = model_version
            store.save_cases(cases)
        store.append_events(events)
        register = register_structures(store, settings, detections, {**flight, "footprint": footprint}, bbox, now,
                                       parcels=parcels)
        store.upsert_flight({"flight_id": flight_id, "registration": check.registration.as_dict()})
        store.set_flight_status(flight_id, "done", model_version=model_version)
    return FlightResult(flight_id, len(detections), len(findings), result.new_case_count, len(result.events),
                        heights=heights, houses_new=register.new, houses_gone=register.gone)


def fail_flight(store, flight_id: str, error: BaseException | str) -> str:
    """Record the flight as failed with a one-line error (and its Chinese line when the error has
    one, else a Chinese line that says where the details are); returns the line."""
    line = error_line(error)
    zh = getattr(error, "zh", None)
    zh = one_line(zh) if zh else "处理失败，请联系管理员（技术信息可展开查看）"
    with store.transaction():
        store.set_flight_status(flight_id, "failed", error=line[:500], error_zh=zh[:500])
    return line
