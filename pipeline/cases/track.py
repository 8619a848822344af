"""Cases across flights, and the case lifecycle.

``track_flight`` ties one flight's findings to the case ledger: a finding matching a
case (IoU >= tracking.match_iou or centroid distance <= tracking.centroid_m) updates
it, an unmatched one opens a case, an ordered case the flight covers but no longer
sees is flagged demolition_seen, a demolished/closed case seen again is reopened as
rebuilt 复建, a dismissed (lawful / unfounded / false positive) case is re-raised only
when it grew beyond tracking.regrowth_ratio. ``transition`` moves one case through the
lifecycle table of config/rules.yaml. Both are pure: the store persists their output.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, overload

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import shapely.geometry

from pipeline.core.errors import InputError, TransitionError
from pipeline.core.labels import CLASSES
from pipeline.core.rules import Lifecycle, Rules
from pipeline.store.schema import CASE_COLUMNS

SYSTEM_ACTOR = "system"

Allocator = Callable[[int, int], Sequence[str]]     # (year, n) -> case numbers


class TrackResult(NamedTuple):
    cases: gpd.GeoDataFrame        # every case, updated and new
    new_case_count: int
    events: list[dict]             # case_event rows (case_no, at, actor, from_status, to_status, note)


# ---------------------------------------------------------------- small helpers
def at_time(now: datetime | None) -> pd.Timestamp:
    t = pd.Timestamp(now if now is not None else datetime.now(timezone.utc))
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t.floor("s")


def _day(t: Any) -> pd.Timestamp | None:
    if t is None or (not isinstance(t, str) and pd.isna(t)):
        return None
    t = pd.Timestamp(t)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t.normalize()


@overload
def as_float(v: Any, default: float) -> float: ...
@overload
def as_float(v: Any, default: None = None) -> float | None: ...
def as_float(v: Any, default: float | None = None) -> float | None:
    """A float, or ``default`` for None / NaN / missing."""
    try:
        return default if v is None or pd.isna(v) else float(v)
    except (TypeError, ValueError):
        return default


def _list(v: Any) -> list:
    if isinstance(v, str):
        v = json.loads(v) if v.strip() else []
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    return list(v)


def _dict(v: Any) -> dict:
    if isinstance(v, str):
        v = json.loads(v) if v.strip() else {}
    return dict(v) if isinstance(v, Mapping) else {}


def event_row(case_no: str, at: pd.Timestamp, actor: str, frm: str | None, to: str | None,
           note: str) -> dict:
    return {"case_no": case_no, "at": at, "actor": actor, "from_status": frm,
            "to_status": to, "note": note}


def empty_cases(crs: Any = None) -> gpd.GeoDataFrame:
    """An empty cases frame with every column."""
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in CASE_COLUMNS if c != "geometry"})
    return gpd.GeoDataFrame(df, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def default_allocator(cases: pd.DataFrame, prefix: str = "LW") -> Allocator:
    """Case numbers continuing after the highest ``{prefix}{year}-NNNNNN`` in ``cases``
    (for tests and pure use; the store's ``allocate_case_numbers`` is the real one)."""
    taken = set(cases["case_no"].dropna().astype(str)) if len(cases) else set()

    def allocate(year: int, n: int) -> list[str]:
        pat = re.compile(rf"^{re.escape(prefix)}{year}-(\d+)$")
        last = max((int(m.group(1)) for c in taken if (m := pat.match(c))), default=0)
        out = [f"{prefix}{year}-{last + i + 1:06d}" for i in range(n)]
        taken.update(out)
        return out
    return allocate


# ---------------------------------------------------------------- lifecycle
def check_transition(case_no: str, frm: str, to: str, lifecycle: Lifecycle) -> None:
    """Raise TransitionError (one line) unless ``frm -> to`` is in the table."""
    if to not in lifecycle.states:
        raise TransitionError(f"case {case_no}: unknown status '{to}'; "
                              f"known: {', '.join(lifecycle.states)}",
                              zh=f"案件 {case_no}：没有「{to}」这一状态")
    allowed = lifecycle.allowed(frm)
    if to not in allowed:
        nxt = ", ".join(allowed) or "none"
        raise TransitionError(f"case {case_no}: cannot go from {frm} to {to}; "
                              f"allowed next: {nxt} (lifecycle table in rules.yaml)",
                              zh=f"案件 {case_no} 现为「{lifecycle.label(frm)}」，不能转为「{lifecycle.label(to)}」；"
                                 f"可转为：{'、'.join(lifecycle.label(a) for a in allowed) or '无'}")


def transition(case: MutableMapping[str, Any], to_status: str, actor: str, note: str,
               lifecycle: Lifecycle, now: datetime | None = None, *, order_no: str | None = None,
               deadline: Any = None, demolished_area_m2: float | None = None) -> dict:
    """Move ``case`` (a dict or pandas Series, changed in place) to ``to_status`` if the
    lifecycle allows it, set the dates that go with it, and return the case_event row.

    ordered: order_no, order_date, deadline (given, else order_deadline_days later);
    demolished: demolished_area_m2 (given, else the case's area); rechecked: recheck_date;
    closing states: closed_date; back to the initial state (reopening): closed_date cleared.
    """
    at = at_time(now)
    frm = case.get("status") or lifecycle.initial
    case_no = case.get("case_no") or "(new)"
    check_transition(case_no, frm, to_status, lifecycle)
    today = at.normalize()
    if to_status == "ordered":
        if order_no:
            case["order_no"] = order_no
        case["order_date"] = today
        case["deadline"] = _day(deadline) if deadline is not None else today + timedelta(
            days=lifecycle.order_deadline_days)
    elif deadline is not None:
        case["deadline"] = _day(deadline)
    if to_status == "demolished":
        area = demolished_area_m2 if demolished_area_m2 is not None else case.get("area_m2")
        case["demolished_area_m2"] = as_float(area)
    if to_status == "rechecked":
        case["recheck_date"] = today
    if to_status in lifecycle.closing:
        case["closed_date"] = today
    if to_status == lifecycle.initial:
        case["closed_date"] = None
    case["status"] = to_status
    case["updated_at"] = at
    return event_row(case_no, at, actor or SYSTEM_ACTOR, frm, to_status, note or "")


def set_status(cases: gpd.GeoDataFrame, case_no: str, to_status: str, actor: str, note: str,
               lifecycle: Lifecycle, now: datetime | None = None, **kw) -> dict:
    """``transition`` on the row of ``cases`` with this case_no (written back in place)."""
    hit = np.flatnonzero(cases["case_no"].to_numpy() == case_no)
    if not len(hit):
        raise InputError(f"case {case_no} not found; list cases with `patrol cases list`")
    i = cases.index[hit[0]]
    row = cases.loc[i].to_dict()
    ev = transition(row, to_status, actor, note, lifecycle, now, **kw)
    for k, v in row.items():
        if k in cases.columns:
            cases.at[i, k] = v
    return ev


# ---------------------------------------------------------------- matching
def match_pairs(a: np.ndarray, b: np.ndarray, match_iou: float, centroid_m: float) -> pd.DataFrame:
    """Candidate (a, b) pairs with IoU >= match_iou or centroid distance <= centroid_m,
    best first (vectorised)."""
    cols = {"a": pd.Series(dtype=int), "b": pd.Series(dtype=int),
            "iou": pd.Series(dtype=float), "dist": pd.Series(dtype=float)}
    if len(a) == 0 or len(b) == 0:
        return pd.DataFrame(cols)
    tree = shapely.STRtree(b)
    ai, bi = tree.query(a, predicate="intersects")
    ca, cb = shapely.centroid(a), shapely.centroid(b)
    if centroid_m > 0:
        tc = shapely.STRtree(cb)
        ai2, bi2 = tc.query(ca, predicate="dwithin", distance=centroid_m)
        ai, bi = np.concatenate([ai, ai2]), np.concatenate([bi, bi2])
    if not len(ai):
        return pd.DataFrame(cols)
    p = pd.DataFrame({"a": ai, "b": bi}).drop_duplicates()
    ga, gb = a[p["a"].to_numpy()], b[p["b"].to_numpy()]
    inter = shapely.area(shapely.intersection(ga, gb))
    union = shapely.area(ga) + shapely.area(gb) - inter
    p["iou"] = np.divide(inter, union, out=np.zeros(len(p)), where=union > 0)
    p["dist"] = shapely.distance(ca[p["a"].to_numpy()], cb[p["b"].to_numpy()])
    p = p[(p["iou"] >= match_iou - 1e-9) | (p["dist"] <= centroid_m + 1e-9)]
    return p.sort_values(["iou", "dist"], ascending=[False, True])


def assign_pairs(pairs: pd.DataFrame) -> dict[int, int]:
    """One-to-one assignment from pairs sorted best first (greedy, in vectorised rounds)."""
    out: dict[int, int] = {}
    p = pairs
    while len(p):
        best = p.drop_duplicates("b").drop_duplicates("a")
        out.update(zip(best["a"].astype(int), best["b"].astype(int)))
        p = p[~p["a"].isin(best["a"]) & ~p["b"].isin(best["b"])]
    return out


def covered_by(footprint: Any, geoms: np.ndarray, share: float) -> np.ndarray:
    """Which geometries lie at least ``share`` inside ``footprint`` (None: none)."""
    if footprint is None or len(geoms) == 0:
        return np.zeros(len(geoms), dtype=bool)
    area = shapely.area(geoms)
    inter = shapely.area(shapely.intersection(geoms, footprint))
    return inter >= share * area - 1e-9


# ---------------------------------------------------------------- tracking
FINDING_TO_CASE = ("category", "rules", "reasons", "parcel_id", "owner", "town", "village",
                   "village_code", "parcel_snapshot", "basic_farmland_m2", "redline_m2",
                   "farmland_m2")


def _finding_fields(f: Mapping[str, Any]) -> dict:
    out = {k: f.get(k) for k in FINDING_TO_CASE}
    reasons = _dict(out.get("reasons"))
    if f.get("priority") is not None:
        reasons["priority"] = float(f["priority"])
        reasons["priority_level"] = f.get("priority_level")
    out["reasons"] = reasons
    out["rules"] = _list(out.get("rules"))
    out["parcel_snapshot"] = _dict(out.get("parcel_snapshot")) or None
    out["detector_class"] = f.get("class_name")
    out["confidence"] = as_float(f.get("confidence"))
    return out


def _change_fields(f: Mapping[str, Any]) -> dict:
    """A finding's change confidence and evidence (the change check's), when it has them."""
    conf = as_float(f.get("change_confidence"))
    return {"change_confidence": conf, "change_evidence": _dict(f.get("change_evidence")) or None} \
        if conf is not None else {}


def _height_fields(f: Mapping[str, Any]) -> dict:
    """A finding's height and estimated storeys, when its flight had heights (else nothing, so a
    flight without a DSM leaves the case's last known height as it was)."""
    h = as_float(f.get("height_m"))
    if h is None:
        return {}
    fl = as_float(f.get("floors_est"))
    return {"height_m": round(h, 2), "floors_est": None if fl is None else int(fl)}


def _rule_label(rules: Rules, rule_id: str) -> str:
    try:
        return rules.label(rule_id) or rule_id
    except AttributeError:
        return rule_id


def track_flight(cases: gpd.GeoDataFrame | None, findings: gpd.GeoDataFrame,
                 detections: gpd.GeoDataFrame | None, flight: Mapping[str, Any], tracking: Any,
                 rules: Rules, now: datetime | None = None, *, prior_coverage: Any = None,
                 allocate: Allocator | None = None, prefix: str = "LW",
                 demolition: Mapping[str, tuple] | None = None) -> TrackResult:
    """Update the case ledger with one flight.

    cases: every case so far (store frame; may be empty or None). findings: this flight's
    ``find_violations`` output. detections: every detection of the flight (to tell
    "gone" from "no longer a violation"; None = the findings). flight: flight_id,
    captured_at, footprint (shapely, store CRS; None = unknown coverage, no demolition
    proposals), optional source. tracking: settings.tracking (match_iou, centroid_m,
    regrowth_ratio). prior_coverage: union of earlier flights' footprints — a new case
    outside it is existing 存量, inside it new_build 新建 (None: nothing flown before).
    allocate(year, n) hands out case numbers (store.allocate_case_numbers; default:
    continue the numbering found in ``cases``).

    The change check (``pipeline.cases.change.check_flight``) speaks through the findings' columns
    before_present (the earlier image shows the structure: 存量, not 新建), change_confirmed
    (False: the images show no change there, 存量 too), before_area_m2 (its
    area there: growth counts from it) and change_confidence / change_evidence, and through
    ``demolition`` (case_no → (standing, confidence, evidence)): a case seen standing at the
    recheck confidence is not flagged demolition_seen.

    Re-running a flight already tracked changes nothing (cases whose last_seen_flight is
    this flight are left as they are)."""
    lc = rules.lifecycle
    at = at_time(now)
    fid = flight.get("flight_id")
    seen_at = at_time(flight.get("captured_at")) if flight.get("captured_at") is not None else at
    footprint = flight.get("footprint")
    crs = findings.crs if findings is not None and findings.crs is not None else (
        cases.crs if cases is not None else None)
    if cases is None or (len(cases) == 0 and not len(cases.columns)):
        cases = empty_cases(crs)
    cases = cases.copy().reset_index(drop=True)
    for c in CASE_COLUMNS:
        if c not in cases.columns:
            cases[c] = None
    for c in ("flags", "rules"):
        cases[c] = [_list(v) for v in cases[c]]
    for c in ("reasons", "parcel_snapshot"):
        cases[c] = [_dict(v) for v in cases[c]]
    findings = findings if findings is not None else gpd.GeoDataFrame(geometry=[], crs=crs)
    findings = findings.reset_index(drop=True)
    detections = findings if detections is None else detections.reset_index(drop=True)
    if crs is not None:
        if cases.crs is None:
            cases = cases.set_crs(crs, allow_override=True)
        elif not cases.crs.equals(crs):
            cases = cases.to_crs(crs)
        if detections.crs is not None and not detections.crs.equals(crs):
            detections = detections.to_crs(crs)

    cg = np.asarray(cases.geometry.values, dtype=object)
    fg = np.asarray(findings.geometry.values, dtype=object)
    dg = np.asarray(detections.geometry.values, dtype=object)
    status = cases["status"].fillna(lc.initial).to_numpy(dtype=object)
    rerun = cases["last_seen_flight"].to_numpy(dtype=object) == fid
    if fid is None:
        rerun[:] = False

    pairs = match_pairs(fg, cg, tracking.match_iou, tracking.centroid_m)
    # open cases take precedence over closed ones at the same place
    rank = np.where(np.isin(status, lc.open), 0, 1)
    if len(pairs):
        pairs = pairs.assign(rank=rank[pairs["b"].to_numpy()]).sort_values(
            ["rank", "iou", "dist"], ascending=[True, False, True])
    assigned = assign_pairs(pairs)                            # finding -> case
    seen_cases = set(assigned.values())

    # detections of any class still standing where a case is
    dpairs = match_pairs(cg, dg, tracking.match_iou, tracking.centroid_m)
    still_there = np.zeros(len(cases), dtype=bool)
    still_there[dpairs["a"].to_numpy(dtype=int)] = True
    demolition = demolition or {}
    still_there |= np.array([bool(demolition.get(n, (False,))[0]) for n in cases["case_no"]], dtype=bool)
    covered = covered_by(footprint, cg, rules.change.covered_share)

    events: list[dict] = []
    # plain dict records: per-case updates in Python stay fast on thousands of cases
    extra = [c for c in cases.columns if c not in CASE_COLUMNS]
    recs = cases.drop(columns="geometry").to_dict("records")
    geoms = list(cg)
    frecs = findings.drop(columns=findings.geometry.name).to_dict("records")
    # flags describe what this flight saw: reset them on every case it covers or sees
    watched = np.isin(status, lc.demolition_watch)
    for i in np.flatnonzero((covered | np.isin(np.arange(len(cases)), list(seen_cases))) & ~rerun):
        recs[i]["flags"] = ["demolition_seen"] if (
            watched[i] and "demolition_seen" in recs[i]["flags"]) else []

    ch = rules.change
    for fi, ci in assigned.items():                      # one per matched case
        if rerun[ci]:
            continue
        f = frecs[fi]
        row = recs[ci]
        old_area = as_float(row.get("area_m2"), 0.0)
        new_area = as_float(f.get("area_m2"), float(shapely.area(fg[fi])))
        growth = new_area - old_area
        before = as_float(f.get("before_area_m2"))
        if before is not None and old_area > 0:        # the earlier image, looked at again, shows this much
            growth = new_area - max(old_area, before)
        st = status[ci]
        flags = [x for x in row["flags"] if x != "demolition_seen"]
        demolished_before = st == "demolished" or as_float(row.get("demolished_area_m2")) is not None
        if st in lc.dismissed:
            if old_area > 0 and new_area <= old_area * (1 + tracking.regrowth_ratio) + 1e-9:
                row["last_seen_flight"], row["last_seen_at"] = fid, seen_at
                continue
            ev = transition(row, lc.regrown_to, SYSTEM_ACTOR,
                            f"航次 {fid}：已定为{lc.label(st)}的图斑面积由 {old_area:.1f} 增至 {new_area:.1f} m²，"
                            f"重新核查",
                            lc, at)
            flags.append("grown")
            events.append(ev)
        elif st in lc.rebuilt_from and demolished_before:
            ev = transition(row, lc.rebuilt_to, SYSTEM_ACTOR,
                            f"航次 {fid}：复建——{lc.label(st)}案件原址又见 {new_area:.1f} m² 建筑", lc, at)
            flags.append("rebuilt")
            events.append(ev)
        elif old_area > 0 and growth >= max(ch.grown_min_m2, ch.grown_min_ratio * old_area) - 1e-9:
            flags.append("grown")
            row.update(_change_fields(f))
            events.append(event_row(row["case_no"], at, SYSTEM_ACTOR, st, st,
                                 f"航次 {fid}：再次发现，面积由 {old_area:.1f} 增至 {new_area:.1f} m²"
                                 f"（+{growth:.1f}，扩建）"))
        if "storey_added" in _list(f.get("rules")):
            flags.append("storey_added")
            events.append(event_row(row["case_no"], at, SYSTEM_ACTOR, st, st,
                                    f"航次 {fid}：高度较前次航飞升高 {as_float(f.get('rise_m'), 0.0):.1f} m，疑似加层"))
        row.update(_finding_fields(f))
        row.update(_height_fields(f))
        row["flags"] = sorted(set(flags))
        row["area_m2"] = round(new_area, 3)
        row["growth_m2"] = round(growth, 3)
        row["last_seen_flight"], row["last_seen_at"] = fid, seen_at
        row["updated_at"] = at
        geoms[ci] = fg[fi]

    # demolition seen: watched case, covered by the flight, nothing standing there
    gone = covered & ~still_there & np.isin(status, lc.demolition_watch) & ~rerun
    for ci in np.flatnonzero(gone).tolist():
        flags = recs[ci]["flags"]
        if "demolition_seen" in flags:
            continue
        recs[ci]["flags"] = sorted(set(flags) | {"demolition_seen"})
        recs[ci]["updated_at"] = at
        if recs[ci]["case_no"] in demolition:
            _, conf, evidence = demolition[recs[ci]["case_no"]]
            recs[ci]["change_confidence"], recs[ci]["change_evidence"] = conf, evidence
        events.append(event_row(recs[ci]["case_no"], at, SYSTEM_ACTOR, status[ci], status[ci],
                             f"航次 {fid}：覆盖该案件但未见建筑——疑似已拆除，建议复查"))
    # a watched case seen standing again loses a stale demolition_seen flag
    back = still_there & np.isin(status, lc.demolition_watch) & ~rerun
    for ci in np.flatnonzero(back).tolist():
        recs[ci]["flags"] = [x for x in recs[ci]["flags"] if x != "demolition_seen"]

    # new cases from unmatched findings
    new_idx = [fi for fi in range(len(findings)) if fi not in assigned]
    if new_idx:
        year = int(seen_at.year)
        numbers = list((allocate or default_allocator(cases, prefix))(year, len(new_idx)))
        if len(numbers) != len(new_idx):
            raise InputError(f"case number allocator gave {len(numbers)} numbers "
                             f"for {len(new_idx)} new cases")
        ng = fg[new_idx]
        if prior_coverage is None:
            inside_prior = np.zeros(len(new_idx), dtype=bool)
        else:
            inside_prior = covered_by(prior_coverage, ng, 0.5)
        for k, fi in enumerate(new_idx):
            f = frecs[fi]
            area = as_float(f.get("area_m2"), float(shapely.area(fg[fi])))
            row = {c: None for c in CASE_COLUMNS + extra}
            row.pop("geometry")
            row.update(_finding_fields(f))
            row.update(_height_fields(f))
            seen_before = f.get("before_present") is True or f.get("before_present") == 1
            unchanged = f.get("change_confirmed") is False or f.get("change_confirmed") == 0
            raised = "storey_added" in row["rules"]            # the house stood before; its storey is new
            stock = "new_build" if inside_prior[k] and (raised or not (seen_before or unchanged)) else "existing"
            row.update({
                "case_no": numbers[k], "case_uuid": str(uuid.uuid4()),
                "source": flight.get("source") or "uav", "stock": stock,
                "status": lc.initial, "flags": ["new"] + (["storey_added"] if raised else []),
                "area_m2": round(area, 3), "growth_m2": 0.0,
                "party": f.get("owner"), "first_seen_flight": fid, "first_seen_at": seen_at,
                "last_seen_flight": fid, "last_seen_at": seen_at, "created_at": at,
                "updated_at": at, **_change_fields(f)})
            recs.append(row)
            geoms.append(fg[fi])
            stock_label = "新建加层" if raised and stock == "new_build" else "新建" if stock == "new_build" else "存量，前时相影像已见该建筑" if seen_before else \
                "存量，前后时相影像未见变化" if unchanged and inside_prior[k] else "存量"
            events.append(event_row(numbers[k], at, SYSTEM_ACTOR, None, lc.initial,
                                 f"{'地面巡查' if flight.get('source') == 'ground_patrol' else f'航次 {fid}'} 发现疑似图斑 {area:.1f} m²（{CLASSES.get(row['detector_class'], (row['detector_class'],))[0]}）："
                                 f"{'、'.join(_rule_label(rules, r) for r in row['rules'])}（{stock_label}）"))
    cols = [c for c in CASE_COLUMNS if c != "geometry"] + extra
    out = gpd.GeoDataFrame(pd.DataFrame.from_records(recs, columns=cols),
                           geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)
    return TrackResult(out[CASE_COLUMNS + extra], len(new_idx), events)
