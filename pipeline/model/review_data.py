"""Officers' verdicts as training and evaluation data (``patrol dataset from-reviews``, and the
reviewed part of ``patrol model compare``).

On a flight, a case the flight saw (its first or last flight) is

- a **positive** when an officer dealt with it as a real structure: any status past the first
  other than 误报 / 举报不实, or drawn by hand (source ``manual``), with its outline as corrected;
- a **hard negative** when closed as 误报 (false_positive): its area stays unlabelled background;
- **excluded** otherwise (举报不实, not yet reviewed).

A detection that no case of the flight covers (a lawful house on its parcel, say) has not been
judged by anyone: labelled background it would teach misses, labelled a structure it would teach
false alarms. Its pixels are painted over in the chip (excluded, not down-weighted). Only chips
that hold a verdict are written.

The evaluation set is frozen the first time it is needed (``models.dir``/evaluation_set.json,
or ``models.eval_flights``): the latest reviewed flight when two or more were reviewed, else the
eastern 30 % of the one flight with a chip-wide gap left out of training. No dataset trains on it.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.core.errors import InputError
from pipeline.detection.detectors import ModelTileDetector
from pipeline.detection.flightplan import detect_plan, plan_registered_flight
from pipeline.ingest import flight_frames
from pipeline.model.dataset import ChipStats, import_labelled
from pipeline.model.evaluate import evaluate_ortho, evaluate_suite, match_footprints
from pipeline.synth import generate_district

NEGATIVE = ("false_positive",)
EXCLUDED = ("unfounded",)
EVAL_SET = "evaluation_set.json"
HELD_OUT_SHARE = 0.3


def verdicts(store, settings, flight: dict) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """(positives, negatives) of one flight: the cases it saw that officers judged, in the store CRS."""
    initial = settings.rules.lifecycle.initial
    fid = flight["flight_id"]
    foot = flight.get("footprint")
    cases = store.cases(bbox=foot.bounds) if foot is not None else store.cases()
    seen = cases[(cases["first_seen_flight"] == fid) | (cases["last_seen_flight"] == fid)]
    manual = seen["source"] == "manual"
    status = seen["status"]
    positive = manual | (~status.isin((initial,) + NEGATIVE + EXCLUDED))
    negative = ~manual & status.isin(NEGATIVE)
    return seen[positive].reset_index(drop=True), seen[negative].reset_index(drop=True)


def reviewed_flights(store, settings, since=None, flights=None) -> list[dict]:
    """Processed flights with at least one verdict, oldest first (``since``: captured on or after;
    ``flights``: only these ids)."""
    done = store.list_flights(status="done")
    if flights:
        unknown = sorted(set(flights) - set(done["flight_id"]))
        if unknown:
            raise InputError(f"flight {unknown[0]} is not a processed flight; see `patrol flights list`")
        done = done[done["flight_id"].isin(flights)]
    if since is not None:
        done = done[done["captured_at"] >= pd.Timestamp(since)]
    out = []
    for fid in done["flight_id"]:
        flight = store.get_flight(fid)
        pos, neg = verdicts(store, settings, flight)
        if len(pos) or len(neg):
            out.append(flight)
    return out


def evaluation_set(store, settings, create: bool = False) -> dict:
    """The frozen evaluation flights ``{"flights": {flight_id: held-out region WKT or None}}``:
    ``models.eval_flights`` when set, else the registry's file (written here when ``create``)."""
    if settings.models.eval_flights:
        return {"flights": {f: None for f in settings.models.eval_flights}, "source": "models.eval_flights"}
    path = Path(settings.models.dir) / EVAL_SET
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if not create:
        return {"flights": {}}
    reviewed = reviewed_flights(store, settings)
    if not reviewed:
        raise InputError("no flight has reviewed cases yet; review cases on the map (confirm, close as 误报, "
                         "draw what the model missed) before building training data")
    if len(reviewed) >= 2:
        held = {reviewed[-1]["flight_id"]: None}
    else:
        flight = reviewed[0]
        minx, miny, maxx, maxy = flight["footprint"].bounds
        cut = maxx - HELD_OUT_SHARE * (maxx - minx)
        held = {flight["flight_id"]: shapely.box(cut, miny, maxx, maxy).wkt}
    frozen = {"flights": held, "created_at": datetime.now().isoformat(timespec="seconds"),
              "rule": "latest reviewed flight" if len(reviewed) >= 2 else f"east {HELD_OUT_SHARE:.0%} of the only reviewed flight"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(frozen, ensure_ascii=False, indent=2), encoding="utf-8")
    return frozen


def _unjudged(detections: gpd.GeoDataFrame, judged: gpd.GeoDataFrame) -> np.ndarray:
    """Detections no judged case covers (less than a third of each inside the cases), buffered 1 m."""
    if not len(detections):
        return np.zeros(0, object)
    geoms = detections.geometry.to_numpy()
    if len(judged):
        union = shapely.union_all(judged.geometry.to_numpy())
        inside = shapely.area(shapely.intersection(geoms, union)) / np.maximum(shapely.area(geoms), 1e-9)
        geoms = geoms[inside < 1 / 3]
    return shapely.buffer(geoms, 1.0)


def dataset_from_reviews(store, settings, out_dir: str | Path, since=None, flights=None) -> dict:
    """YOLO chips (``models.chip_px`` at ``processing.gsd_m``) of every reviewed flight into
    ``out_dir``: positives labelled, false positives left as background, unjudged detections
    painted over; evaluation flights (or their held-out part) to val, never to train. Writes and
    returns ``summary.json``."""
    out_dir = Path(out_dir)
    frozen = evaluation_set(store, settings, create=True)
    chosen = reviewed_flights(store, settings, since, flights)
    held = frozen["flights"]
    for fid in held:                     # the evaluation flights go to val even when not chosen
        if fid not in {f["flight_id"] for f in chosen} and store.get_flight(fid) is not None:
            chosen.append(store.get_flight(fid))
    if not chosen:
        raise InputError("no reviewed flight matches; review cases first or widen --since / --flights")
    chip_m = settings.models.chip_px * settings.processing.gsd_m
    per_flight, total = [], ChipStats()
    for flight in chosen:
        fid = flight["flight_id"]
        pos, neg = verdicts(store, settings, flight)
        if not (len(pos) or len(neg)):
            continue
        judged = pd.concat([pos, neg])
        blank = _unjudged(store.detections(fid), judged)
        labels = gpd.GeoDataFrame({"class_name": pos["detector_class"].fillna("building").to_numpy()},
                                  geometry=pos.geometry.to_numpy(), crs=store.crs)
        region = held.get(fid, False)
        stats = ChipStats()
        for i, frame in enumerate(flight_frames(flight)):
            st = import_labelled(frame, labels, out_dir, gsd_m=settings.processing.gsd_m,
                                 chip_px=settings.models.chip_px, split="val" if region is None else "train",
                                 prefix=f"{fid}_{i}", classes=settings.detector.classes,
                                 near=judged.geometry.to_numpy(), blank=blank,
                                 val_region=shapely.from_wkt(region) if isinstance(region, str) else None,
                                 gap_m=chip_m)
            stats.add(st)
        total.add(stats)
        per_flight.append({"flight_id": fid, "captured_at": str(flight.get("captured_at")), "positives": len(pos),
                           "negatives": len(neg), "excluded_detections": int(len(blank)),
                           "chips": stats.by_split, "evaluation": fid in held})
    summary = {"flights": per_flight, "chips": total.by_split, "boxes": total.boxes,
               "positives": sum(f["positives"] for f in per_flight),
               "negatives": sum(f["negatives"] for f in per_flight),
               "excluded_detections": sum(f["excluded_detections"] for f in per_flight),
               "evaluation_set": frozen, "chip_px": settings.models.chip_px, "gsd_m": settings.processing.gsd_m,
               "built_at": datetime.now().isoformat(timespec="seconds")}
    if not total.by_split.get("train"):
        raise InputError("the reviews give no training chip outside the evaluation set; review cases of another "
                         "flight first")
    (out_dir / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    return summary


def score_on_verdicts(detections: gpd.GeoDataFrame, positives: gpd.GeoDataFrame,
                      negatives: gpd.GeoDataFrame, iou: float = 0.5) -> dict:
    """tp: positives matched one-to-one at ``iou``; fn: the others; fp: unmatched detections lying
    at least half on a false positive. Detections on nothing judged are not counted."""
    pi, _, _ = match_footprints(detections.geometry.to_numpy(), positives.geometry.to_numpy(), iou)
    tp = len(pi)
    rest = np.setdiff1d(np.arange(len(detections)), pi)
    fp = 0
    if len(rest) and len(negatives):
        geoms = detections.geometry.to_numpy()[rest]
        union = shapely.union_all(negatives.geometry.to_numpy())
        fp = int((shapely.area(shapely.intersection(geoms, union)) >= 0.5 * shapely.area(geoms)).sum())
    return {"tp": tp, "fp": fp, "fn": len(positives) - tp}


def _figures(tp: int, fp: int, fn: int, **extra) -> dict:
    return {"recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "precision": round(tp / (tp + fp), 4) if tp + fp else None, "tp": tp, "fp": fp, "fn": fn, **extra}


def _in_region(frame: gpd.GeoDataFrame, region) -> gpd.GeoDataFrame:
    return frame if region is None else frame[frame.geometry.centroid.within(region)]


def evaluate_model(store, settings, model_path: Path, progress: bool = False) -> dict:
    """Recall and precision of the weights at ``model_path`` on each part of the evaluation set:
    ``reviewed`` (the frozen flights, scored on their verdicts), ``generated`` (``models.eval_generated``
    districts against their truth), ``real`` (``models.eval_suite``'s evaluation crops)."""
    parts: dict[str, dict] = {}
    frozen = evaluation_set(store, settings)
    if frozen["flights"]:
        detector = ModelTileDetector(settings, model_path=model_path)
        tp = fp = fn = 0
        for fid, region in frozen["flights"].items():
            flight = store.get_flight(fid)
            if flight is None:
                continue
            region = shapely.from_wkt(region) if region else None
            pos, neg = verdicts(store, settings, flight)
            dets = detect_plan(detector, plan_registered_flight(flight, settings), settings,
                               progress=progress).to_crs(store.crs)
            s = score_on_verdicts(_in_region(dets, region), _in_region(pos, region), _in_region(neg, region))
            tp, fp, fn = tp + s["tp"], fp + s["fp"], fn + s["fn"]
        parts["reviewed"] = _figures(tp, fp, fn, flights=sorted(frozen["flights"]))
    if settings.models.eval_generated:
        tp = fp = fn = 0
        for seed in settings.models.eval_generated:
            district = generated_district(settings, int(seed))
            m = evaluate_ortho(district / "epoch_1.tif", district / "district.gpkg", settings, model=model_path,
                               truth_layer="truth", epoch=1, progress=progress)
            tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
        parts["generated"] = _figures(tp, fp, fn, seeds=list(settings.models.eval_generated))
    if settings.models.eval_suite:
        res = evaluate_suite(settings.models.eval_suite, settings, model=model_path)
        tp = sum(a["tp"] for a in res["areas"])
        fp = sum(a["fp"] for a in res["areas"])
        fn = sum(a["fn"] for a in res["areas"])
        parts["real"] = _figures(tp, fp, fn, areas=[a.get("area") for a in res["areas"]])
    return parts


def generated_district(settings, seed: int) -> Path:
    """The generated district of the evaluation set (rendered once into ``models.dir``/eval)."""
    size = float(settings.models.eval_generated_size_m)
    out = Path(settings.models.dir) / "eval" / f"generated-{seed}-{size:g}m"
    if not (out / "district.gpkg").is_file():
        generate_district(out, seed=seed, size_m=size, epochs=1, gsd_m=settings.processing.gsd_m, progress=False)
    return out
