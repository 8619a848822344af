"""The building register of the self-built housing census (自建房台账): every building the flights
show is one record, one 栋, numbered ZJ<year>-<seq>.

``update_register`` ties one flight's building detections (already in the reference frame of the
co-registration, like the cases) to the register the way ``pipeline.cases.track`` ties findings
to cases — the same matching: a detection matching a record updates it (seen again; back if it
was gone), an unmatched one is a new record with its parcel, town, village and storeys, a record
the flight covers but no longer sees is marked gone (疑已拆除). ``link_cases`` points a 两违 case
and the record of the same house at each other. Both are pure: the store persists their output.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, NamedTuple

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.cases.track import SYSTEM_ACTOR, assign_pairs, at_time, covered_by, match_pairs
from pipeline.core.census import Census
from pipeline.core.errors import InputError, TransitionError
from pipeline.core.values import is_missing
from pipeline.store.schema import HOUSE

#: detector classes that are houses (a shed, a site or a greenhouse is not a 栋 of the census)
HOUSE_CLASSES = ("building",)
HOUSE_PREFIX = "ZJ"
#: a record the flight covers by this share of its outline was looked at by the flight
COVERED_SHARE = 0.9
#: a case and a house are the same structure when they overlap this much (IoU)
SAME_HOUSE_IOU = 0.3

Numbers = Callable[[int, int], Sequence[str]]      # (year, n) -> register numbers


class RegisterResult(NamedTuple):
    houses: gpd.GeoDataFrame       # the records added or changed by the flight
    events: list[dict]             # house_event rows
    new: int
    gone: int


def empty_houses(crs: Any = None) -> gpd.GeoDataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in HOUSE.names if c != "geometry"})
    return gpd.GeoDataFrame(df, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def house_numbers(next_sequence: Callable[[str, int], int]) -> Numbers:
    """Register numbers from the store's counter (``Store.next_sequence``)."""
    return lambda year, n: [f"{HOUSE_PREFIX}{year}-{next_sequence(HOUSE_PREFIX, year):06d}" for _ in range(n)]


def _event(house_no: str, at: pd.Timestamp, note: str, frm: str | None = None, to: str | None = None,
           facts: dict | None = None) -> dict:
    return {"house_no": house_no, "at": at, "actor": SYSTEM_ACTOR, "from_status": frm, "to_status": to,
            "note": note, "facts": facts or {}}


def _parcel_of(geoms: np.ndarray, parcels: gpd.GeoDataFrame) -> list[dict]:
    """The parcel each outline overlaps most (its id, owner, town, village, approved storeys)."""
    out: list[dict] = [{} for _ in range(len(geoms))]
    if not len(parcels) or not len(geoms):
        return out
    pg = np.asarray(parcels.geometry.values)
    gi, pi = shapely.STRtree(pg).query(geoms, predicate="intersects")
    if not len(gi):
        return out
    area = shapely.area(shapely.intersection(geoms[gi], pg[pi]))
    best = pd.DataFrame({"g": gi, "p": pi, "a": area}).sort_values("a", ascending=False).drop_duplicates("g")
    for g, p in zip(best["g"], best["p"]):
        row = parcels.iloc[int(p)]
        out[int(g)] = {k: row.get(k) for k in ("parcel_id", "owner", "town", "village", "village_code",
                                               "approved_floors")}
    return out


def _storeys(detection: pd.Series, parcel: dict) -> tuple[Any, Any]:
    """Storeys and where they come from: the DSM's estimate, else the parcel's approval."""
    if not is_missing(detection.get("floors_est")):
        return int(detection["floors_est"]), "heights"
    if not is_missing(parcel.get("approved_floors")):
        return int(parcel["approved_floors"]), "parcel"
    return None, None


def update_register(houses: gpd.GeoDataFrame | None, detections: gpd.GeoDataFrame, flight: dict,
                    parcels: gpd.GeoDataFrame, tracking, numbers: Numbers, now=None,
                    add_only: bool = False) -> RegisterResult:
    """The register after one flight (``flight``: its id, captured_at and corrected footprint).
    ``add_only``: a house found by hand or on the ground — new records only, those it matches untouched."""
    at = at_time(now)
    seen_at = at_time(flight.get("captured_at")) if flight.get("captured_at") is not None else at
    fid = flight["flight_id"]
    crs = detections.crs
    houses = houses if houses is not None and len(houses) else empty_houses(crs)
    houses = houses.reset_index(drop=True)
    mine = detections[detections["class_name"].isin(HOUSE_CLASSES)].reset_index(drop=True)
    dg = np.asarray(mine.geometry.values)
    hg = np.asarray(houses.geometry.values)
    assigned = assign_pairs(match_pairs(dg, hg, tracking.match_iou, tracking.centroid_m))  # detection -> house
    changed, events = [], []
    for d, h in ({} if add_only else assigned).items():
        rec = houses.iloc[h].to_dict()
        det = mine.iloc[d]
        flights = list(rec.get("flights") or [])
        if fid not in flights:
            flights.append(fid)
        update = {**rec, "flights": flights, "last_seen_flight": fid, "last_seen_at": seen_at,
                  "geometry": det.geometry, "area_m2": float(det.geometry.area)}
        if not is_missing(det.get("height_m")):
            update["height_m"] = float(det["height_m"])
        if not is_missing(det.get("floors_est")) and rec.get("floors_source") in (None, "heights", "parcel"):
            update["floors"], update["floors_source"] = int(det["floors_est"]), "heights"
        if not is_missing(rec.get("gone_flight")):
            update["gone_flight"], update["gone_at"] = None, None
            events.append(_event(rec["house_no"], at, f"航次 {fid} 再次发现（此前航次 {rec['gone_flight']} 未见）"))
        changed.append(update)
    new = [d for d in range(len(mine)) if d not in assigned]
    year = int(seen_at.year)
    nos = list(numbers(year, len(new))) if new else []
    where = _parcel_of(dg[new], parcels) if new else []
    for no, d, parcel in zip(nos, new, where):
        det = mine.iloc[d]
        floors, source = _storeys(det, parcel)
        changed.append({"house_no": no, "source": str(det.get("source") or "model"), "status": "registered",
                        **{k: parcel.get(k) for k in ("parcel_id", "owner", "town", "village", "village_code")},
                        "area_m2": float(det.geometry.area), "floors": floors, "floors_source": source,
                        "height_m": None if is_missing(det.get("height_m")) else float(det["height_m"]),
                        "flights": [fid], "first_seen_flight": fid, "first_seen_at": seen_at,
                        "last_seen_flight": fid, "last_seen_at": seen_at, "geometry": det.geometry})
        events.append(_event(no, at, f"航次 {fid} 发现，登记入台账", to="registered"))
    seen = set(assigned.values())
    looked = covered_by(flight.get("footprint"), hg, COVERED_SHARE)
    gone = 0
    for h in range(len(houses)):
        rec = houses.iloc[h].to_dict()
        if h in seen or not looked[h] or not is_missing(rec.get("gone_flight")):
            continue
        changed.append({**rec, "gone_flight": fid, "gone_at": seen_at})
        events.append(_event(rec["house_no"], at, f"航次 {fid} 覆盖此处但未再发现（疑已拆除）"))
        gone += 1
    out = gpd.GeoDataFrame(changed, geometry="geometry", crs=crs) if changed else empty_houses(crs)
    return RegisterResult(out, events, len(new), gone)


def register_structures(store, settings, detections: gpd.GeoDataFrame, flight: dict, bbox, now=None,
                        add_only: bool = False, parcels: gpd.GeoDataFrame | None = None) -> RegisterResult:
    """``update_register`` on the store's records around ``bbox`` (``parcels``: those of ``bbox``
    when the caller has read them), written with its history, and the cases and houses there
    linked (inside the caller's transaction)."""
    parcels = store.parcels(bbox) if parcels is None else parcels
    result = update_register(store.houses(bbox), detections, flight, parcels, settings.tracking,
                             house_numbers(store.next_sequence), now, add_only)
    store.save_houses(result.houses)
    store.append_house_events(result.events)
    link_houses(store, bbox)
    return result


def link_houses(store, bbox) -> None:
    """Point the cases and the register records of the same houses in ``bbox`` at each other;
    links already right are not rewritten."""
    houses, cases = store.houses(bbox), store.cases(bbox)
    case_to_house, house_to_case = link_cases(houses, cases)
    stale_cases = [(c, case_to_house[c]) for c, h in zip(cases["case_no"], cases["house_no"])
                   if c in case_to_house and h != case_to_house[c]]
    stale_houses = [(h, house_to_case[h]) for h, c in zip(houses["house_no"], houses["case_no"])
                    if h in house_to_case and c != house_to_case[h]]
    if stale_cases:
        store.save_cases(pd.DataFrame(stale_cases, columns=["case_no", "house_no"]))
    if stale_houses:
        store.save_houses(pd.DataFrame(stale_houses, columns=["house_no", "case_no"]))


def link_cases(houses: gpd.GeoDataFrame, cases: gpd.GeoDataFrame) -> tuple[dict[str, str], dict[str, str]]:
    """Which case is which house: ({case_no: house_no}, {house_no: case_no}) for each case whose
    outline overlaps a record's at IoU >= ``SAME_HOUSE_IOU`` (best pairs, one to one)."""
    if not len(houses) or not len(cases):
        return {}, {}
    pairs = match_pairs(np.asarray(cases.geometry.values), np.asarray(houses.geometry.values), SAME_HOUSE_IOU, 0.0)
    pairs = pairs[pairs["iou"] >= SAME_HOUSE_IOU]
    assigned = assign_pairs(pairs)
    case_to_house = {str(cases["case_no"].iloc[c]): str(houses["house_no"].iloc[h]) for c, h in assigned.items()}
    return case_to_house, {h: c for c, h in case_to_house.items()}


def get_house(store, house_no: str) -> gpd.GeoDataFrame:
    """One register record (a one-row frame); InputError naming the number if there is none."""
    rec = store.houses(house_no=house_no)
    if not len(rec):
        raise InputError(f"no house {house_no} in the register; list them with `patrol houses list`",
                         zh=f"自建房台账中没有编号 {house_no}")
    return rec


# ---------------------------------------------------------------- the census steps on a record
def _day(on: date | str | None, today: date, what: str) -> date:
    """The day a step happened: given (ISO, not in the future) or today."""
    if on is None or str(on).strip() == "":
        return today
    try:
        day = date.fromisoformat(str(on).strip()[:10])
    except ValueError:
        raise InputError(f"{what}: '{on}' is not a date (YYYY-MM-DD)", zh=f"{what}：“{on}”不是日期") from None
    if day > today:
        raise InputError(f"{what}: {day} lies in the future; give the day it happened",
                         zh=f"{what}：{day} 晚于今天，请填写实际日期")
    return day


def _move(store, census: Census, house_no: str, to: str, actor: str, note: str, update: dict,
          facts: dict, now) -> dict:
    """Check the lifecycle allows ``to`` from the record's status, then write the record's
    ``update`` and one history row, in one transaction. The record as stored."""
    at = at_time(now)
    with store.transaction():
        rec = get_house(store, house_no).iloc[0].to_dict()
        frm = rec["status"]
        life = census.lifecycle
        if to not in life.allowed(frm):
            allowed = "、".join(life.label(s) for s in life.allowed(frm)) or "无"
            raise TransitionError(
                f"house {house_no} is {frm} ({life.label(frm)}); it cannot become {to} ({life.label(to)}) — "
                f"allowed: {', '.join(life.allowed(frm)) or 'none'}",
                zh=f"{house_no} 当前为“{life.label(frm)}”，不能改为“{life.label(to)}”（可改为：{allowed}）")
        store.save_houses(pd.DataFrame([{"house_no": house_no, "status": to, **update}]))
        store.append_house_events([{"house_no": house_no, "at": at, "actor": actor, "from_status": frm,
                                    "to_status": to, "note": note, "facts": facts}])
    return get_house(store, house_no).iloc[0].to_dict()


def inspect_house(store, census: Census, house_no: str, facts: dict[str, Any], actor: str,
                  now=None) -> dict:
    """Record a 排查 form (``facts`` by field key, checked against config/census.yaml): the record
    becomes ``hazard`` or ``safe`` by its 初判 (a re-inspection may change it)."""
    today = at_time(now).date()
    checked = census.check_facts(facts, today)
    hazard = checked["judgement"]
    to = "hazard" if hazard in census.hazard_values else "safe"
    update = {"inspection": checked, "hazard": hazard, "inspected_on": checked["inspected_on"],
              "business": None if "business" not in checked else int(bool(checked["business"]))}
    if "floors" in checked:
        update.update(floors=int(checked["floors"]), floors_source="officer")
    if "owner" in checked:
        update["owner"] = checked["owner"]
    return _move(store, census, house_no, to, actor, f"排查：{hazard}", update,
                 {"on": checked["inspected_on"], **checked}, now)


def set_house_status(store, census: Census, house_no: str, to: str, actor: str, *, note: str = "",
                     measures: Sequence[str] = (), deadline: str | None = None, assignee: str | None = None,
                     on: str | None = None, now=None) -> dict:
    """A rectification step: ``rectifying`` (整治措施 from the census's list, a deadline and the
    person responsible), ``rectified`` (整治完成), ``closed`` (销号 after the recheck: a note says
    what the recheck found). Inspections go through ``inspect_house``."""
    today = at_time(now).date()
    life = census.lifecycle
    if to not in life.states:
        raise InputError(f"'{to}' is not a census status; one of {', '.join(life.states)}",
                         zh=f"“{to}”不是排查台账的状态")
    if to in ("safe", "hazard"):
        raise InputError(f"{to} follows an inspection; record it with `patrol houses inspect`",
                         zh="“未发现隐患/存在隐患”由排查表决定，请填写排查表")
    day = _day(on, today, "date of the step")
    update: dict[str, Any] = {}
    facts: dict[str, Any] = {"on": day.isoformat()}
    if to == "rectifying":
        bad = [m for m in measures if m not in census.measures]
        if not measures or bad:
            raise InputError(f"整治措施 must be one or more of {'、'.join(census.measures)}"
                             + (f"; '{bad[0]}' is not" if bad else ""),
                             zh=f"请选择整治措施（{'、'.join(census.measures)}）")
        if not deadline or not assignee:
            raise InputError("rectification needs a deadline (--deadline) and the person responsible (--assignee)",
                             zh="整治需填写整改期限和责任人")
        try:
            limit = date.fromisoformat(str(deadline)[:10])
        except ValueError:
            raise InputError(f"deadline '{deadline}' is not a date (YYYY-MM-DD)", zh=f"整改期限“{deadline}”不是日期") from None
        update.update(measures=list(measures), deadline=limit.isoformat(), assignee=assignee)
        facts.update(measures=list(measures), deadline=limit.isoformat(), assignee=assignee)
    elif to == "rectified":
        update["rectified_on"] = day.isoformat()
    elif to == "closed":
        if not note.strip():
            raise InputError("销号 needs the recheck's finding as a note (--note)", zh="销号须填写复核意见")
        update["closed_on"] = day.isoformat()
    label = life.label(to)
    return _move(store, census, house_no, to, actor, f"{label}" + (f"：{note.strip()}" if note.strip() else ""),
                 update, facts, now)
