"""Officers' verdicts played from known footprints (generated truth, or a labelled real crop), to
measure the review loop without officers: the tests of issue 20 and ``scripts/review_loop.py``."""
from __future__ import annotations

import geopandas as gpd
import shapely

from pipeline.cases.casework import change_status, redraw_outline
from pipeline.cases.manual import add_manual_case
from pipeline.core.errors import PatrolError
from pipeline.model.evaluate import match_footprints


def review_from_truth(store, settings, flight_id: str, truth: gpd.GeoDataFrame, *, actor: str = "truth",
                      iou: float = 0.5) -> dict:
    """Officers' verdicts played from known footprints (generated truth, or a labelled real crop),
    to measure the review loop: each case the flight saw is confirmed when it matches a footprint
    at ``iou`` (its outline redrawn to the footprint when it overlaps one less well) or closed as
    误报 when it covers none; every footprint the flight's detections missed is drawn as a manual
    case. Returns the counts ``{"confirmed", "redrawn", "false_positive", "drawn"}``."""
    lifecycle = settings.rules.lifecycle
    flight = store.get_flight(flight_id)
    foot = flight.get("footprint")
    truth = truth.to_crs(store.crs)
    truth = truth[truth.geometry.notna() & ~truth.geometry.is_empty]
    if foot is not None:
        truth = truth[truth.geometry.representative_point().within(foot)]
    prints = shapely.make_valid(truth.geometry.to_numpy())
    counts = {"confirmed": 0, "redrawn": 0, "false_positive": 0, "drawn": 0}
    cases = store.cases(bbox=foot.bounds) if foot is not None else store.cases()
    seen = cases[((cases["first_seen_flight"] == flight_id) | (cases["last_seen_flight"] == flight_id))
                 & (cases["status"] == lifecycle.initial)]
    geoms = seen.geometry.to_numpy()
    ci, ti, _ = match_footprints(geoms, prints, iou)
    loose_c, loose_t, _ = match_footprints(geoms, prints, 0.1)
    good = dict(zip(ci.tolist(), ti.tolist()))
    loose = {c: t for c, t in zip(loose_c.tolist(), loose_t.tolist()) if c not in good and t not in good.values()}
    for k, case_no in enumerate(seen["case_no"]):
        if k in good or k in loose:
            if k in loose:
                redraw_outline(store, case_no, prints[loose[k]], actor)
                counts["redrawn"] += 1
            change_status(store, case_no, "verified", actor, "核查：真实建筑", lifecycle)
            counts["confirmed"] += 1
        else:
            change_status(store, case_no, "false_positive", actor, "核查：误报，无建筑", lifecycle)
            counts["false_positive"] += 1
    dets = store.detections(flight_id)
    hit, _, _ = match_footprints(prints, dets.geometry.to_numpy() if len(dets) else [], iou)
    for t in sorted(set(range(len(prints))) - set(hit.tolist()) - set(loose.values()) - set(good.values())):
        try:
            add_manual_case(store, settings, flight_id, prints[t], actor, "人工补录：模型漏检",
                            detector_class=str(truth["class_name"].iloc[t]) if "class_name" in truth else "building")
            counts["drawn"] += 1
        except PatrolError:               # a case already covers it, or the rules ignore it
            pass
    return counts
