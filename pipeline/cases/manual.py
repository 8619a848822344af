"""Cases that come from people, not from a flight's detections: 地面巡查上报 (a ground patrol's
report at a phone's position) and 人工补录 (a structure the model missed, drawn on the map). Both
run through the same rules and the same tracking as a flight's detections."""
from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import geopandas as gpd
import pandas as pd
import shapely
from shapely.geometry import shape

from pipeline.cases.casework import add_note, check_note
from pipeline.cases.change import prior_coverage
from pipeline.cases.houses import register_structures
from pipeline.cases.match import find_violations
from pipeline.cases.track import track_flight, transition
from pipeline.core.errors import InputError
from pipeline.core.values import jsonable

GROUND_SOURCE = "ground_patrol"
MANUAL_SOURCE = "manual"


Scope = Callable[[Any, Any], bool]      # may this writer change a case of (town, village)?


def report_from_ground(store, settings, lon: float, lat: float, actor: str, note: str, *,
                       detector_class: str = "building", area_m2: float = 50.0,
                       now: datetime | None = None, may_change: Scope | None = None) -> dict:
    """地面巡查上报: a structure a patrol found on the ground becomes a case like a flight's:
    a square of ``area_m2`` at the WGS84 point runs through the same parcel and zone rules and
    the same tracking (a report within ``tracking.centroid_m`` of a case is that case, seen
    again); source ``ground_patrol``. Returns the case row and its events."""
    rules = settings.rules
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise InputError(f"position {lat}, {lon} is not latitude and longitude in degrees; let the phone locate you",
                         zh=f"位置 {lat}, {lon} 不是有效的经纬度，请让手机定位")
    if detector_class not in rules.classes:
        raise InputError(f"'{detector_class}' is not a kind of structure; one of {', '.join(rules.classes)}",
                         zh="请选择建筑类型")
    if not (math.isfinite(area_m2) and 4 <= area_m2 <= 100_000):
        raise InputError(f"area {area_m2} m² is not 4–100000 m²; give the size you see (a guess is fine)",
                         zh=f"面积 {area_m2} m² 应在 4–100000 m² 之间，估计即可")
    if not note.strip():
        raise InputError("say what you found (the note goes in the case history)", zh="请填写发现情况（记入处置记录）")
    check_note(note, "ground report", "上报")
    at = pd.Timestamp(now or datetime.now()).floor("s")
    centre = gpd.GeoSeries([shapely.Point(lon, lat)], crs="EPSG:4326").to_crs(settings.store.crs).iloc[0]
    if not (math.isfinite(centre.x) and math.isfinite(centre.y)):
        raise InputError(f"position {lat}, {lon} lies outside the district's coordinate system; check the position",
                         zh=f"位置 {lat}, {lon} 不在本辖区范围，请检查定位")
    margin = settings.ingest.district_margin_m
    near = shapely.box(centre.x - margin, centre.y - margin, centre.x + margin, centre.y + margin).bounds
    if not (len(store.parcels(near)) or len(store.zones(near))) and (len(store.parcels()) or len(store.zones())):
        raise InputError(f"position {lat:.6f}, {lon:.6f} is more than {margin:g} m from every parcel and zone of "
                         f"the district; check the position",
                         zh=f"位置 {lat:.6f}, {lon:.6f} 距辖区任何地块和管控区都超过 {margin:g} m，请检查定位")
    half = math.sqrt(area_m2) / 2
    square = shapely.box(centre.x - half, centre.y - half, centre.x + half, centre.y + half)
    det = gpd.GeoDataFrame({"class_name": [detector_class], "confidence": [None], "area_m2": [area_m2]},
                           geometry=[square], crs=settings.store.crs)
    report = {"flight_id": f"ground-{uuid.uuid4().hex[:12]}", "source": GROUND_SOURCE, "captured_at": at,
              "footprint": None}
    bbox = tuple(shapely.buffer(square, 300).bounds)
    with store.transaction():
        findings = find_violations(det, store.parcels(bbox), store.zones(bbox), rules, keep_all=True)
        result = track_flight(store.cases(bbox), findings, det, report, settings.tracking, rules, at,
                              prior_coverage=prior_coverage(store, report), allocate=store.allocate_case_numbers,
                              prefix=store.case_prefix)
        if len(result.cases):
            store.save_cases(result.cases)
        store.append_events(result.events)
        hit = result.cases[result.cases["last_seen_flight"] == report["flight_id"]] if len(result.cases) \
            else result.cases
        if not len(hit):
            raise InputError("the report matched no case and made none; report a structure of at least "
                             f"{rules.min_structure_area_m2:g} m² of a kind the rules look at",
                             zh=f"未能形成案件：请上报不小于 {rules.min_structure_area_m2:g} m² 的建筑")
        case_no = hit["case_no"].iloc[0]
        if may_change is not None and not result.new_case_count and \
                not may_change(hit["town"].iloc[0], hit["village"].iloc[0]):
            raise InputError("a case another team works on is already on record at this place; nothing was "
                             "recorded — tell the officer in charge of this place",
                             zh="此处已有其他人员负责的案件，本次上报未登记，请联系该处负责人员")
        add_note(store, case_no, f"地面巡查上报（{actor}）：{note.strip()}", actor, at)
        register_structures(store, settings, det.assign(source=GROUND_SOURCE), {**report, "captured_at": at},
                            bbox, at, add_only=True)
    case = store.cases().set_index("case_no").loc[case_no]
    return jsonable({"case_no": case_no, "new": bool(result.new_case_count), "status": case["status"],
                     "category": case["category"], "rules": list(case["rules"] or []), "source": case["source"],
                     "reasons": case["reasons"] if isinstance(case["reasons"], dict) else {}})


OUTLINE_MAX_VERTICES = 2000        # a structure drawn on the map has a handful; more is not a drawing


def _coordinates(node, out: list, limit: int) -> None:
    """The numbers of a GeoJSON coordinates array, flattened, stopping past ``limit`` pairs' worth."""
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        out.append(float(node))
    elif isinstance(node, (list, tuple)):
        for item in node:
            if len(out) > 2 * limit + 2:
                return
            _coordinates(item, out, limit)


def outline_from_geojson(geometry: dict, settings):
    """A polygon drawn on the map (GeoJSON in WGS84) in the store CRS, or one clear InputError: at most
    ``OUTLINE_MAX_VERTICES`` corners, every coordinate a finite longitude / latitude."""
    numbers: list[float] = []
    _coordinates(geometry.get("coordinates") if isinstance(geometry, dict) else None, numbers, OUTLINE_MAX_VERTICES)
    if len(numbers) > 2 * OUTLINE_MAX_VERTICES + 2:
        raise InputError(f"the outline has more than {OUTLINE_MAX_VERTICES} corners; draw the structure's "
                         f"corners only", zh=f"轮廓超过 {OUTLINE_MAX_VERTICES} 个角点，请只勾绘建筑的角点")
    if not all(math.isfinite(v) and -180 <= v <= 180 for v in numbers):
        raise InputError("the outline has a coordinate that is no longitude or latitude (infinite or out of "
                         "range); draw it again on the map", zh="轮廓坐标无效，请在地图上重新勾绘")
    try:
        geom = shape(geometry)
    except Exception:
        raise InputError("the outline is not a GeoJSON polygon; draw it again on the map",
                         zh="轮廓不是有效的多边形，请在地图上重新勾绘") from None
    if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
        raise InputError("the outline is not a polygon; click at least three corners, then 完成",
                         zh="请至少点击三个角点后再点“完成”")
    out = gpd.GeoSeries([shapely.make_valid(geom)], crs="EPSG:4326").to_crs(settings.store.crs).iloc[0]
    out = shapely.union_all([g for g in shapely.get_parts(out) if g.geom_type == "Polygon"])
    if out.is_empty or not 4 <= out.area <= 100_000:
        raise InputError(f"the outline covers {out.area:.1f} m²; draw a structure of 4–100000 m²",
                         zh=f"勾绘面积 {out.area:.1f} m²，应在 4–100000 m² 之间")
    return out


def add_manual_case(store, settings, flight_id: str, outline, actor: str, note: str = "",
                    detector_class: str = "building", now: datetime | None = None,
                    may_change: Scope | None = None) -> dict:
    """人工补录: a structure the model missed, drawn on a flight's ortho (``outline`` in the store CRS),
    becomes a case with source ``manual`` through the same rules; one that breaks none is recorded
    as 合法 (a real structure, lawful). Refused where a case already covers it, and (``may_change``)
    where the case would lie in a town or village the writer may not change."""
    rules = settings.rules
    check_note(note, "drawn structure", "补录")
    flight = store.get_flight(flight_id)
    if flight is None:
        raise InputError(f"flight {flight_id} is not in the store; draw on a processed flight's ortho",
                         zh="请在已处理航次的影像上勾绘")
    if detector_class not in rules.classes:
        raise InputError(f"'{detector_class}' is not a kind of structure; one of {', '.join(rules.classes)}",
                         zh="请选择建筑类型")
    near = store.cases(bbox=outline.bounds)
    if len(near):
        share = shapely.area(shapely.intersection(near.geometry.to_numpy(), outline)) / outline.area
        if share.max() >= 0.3:
            best = near.iloc[int(share.argmax())]
            if may_change is not None and not may_change(best["town"], best["village"]):
                raise InputError("a case another team works on already covers this structure; nothing was "
                                 "recorded", zh="该建筑已有其他人员负责的案件，本次补录未登记")
            no = best["case_no"]
            raise InputError(f"case {no} already covers this structure; correct its outline on its page instead",
                             zh=f"该建筑已有案件 {no}，请在案件页修正轮廓")
    at = pd.Timestamp(now or datetime.now()).floor("s")
    det = gpd.GeoDataFrame({"class_name": [detector_class], "confidence": [None], "area_m2": [outline.area]},
                           geometry=[outline], crs=settings.store.crs)
    report = {"flight_id": flight_id, "source": MANUAL_SOURCE, "captured_at": flight.get("captured_at") or at,
              "footprint": None}
    bbox = tuple(shapely.buffer(outline, 300).bounds)
    with store.transaction():
        findings = find_violations(det, store.parcels(bbox), store.zones(bbox), rules, keep_all=True)
        result = track_flight(store.cases(bbox).iloc[0:0], findings, det, report, settings.tracking, rules, at,
                              prior_coverage=prior_coverage(store, flight), allocate=store.allocate_case_numbers,
                              prefix=store.case_prefix)
        if not len(result.cases):
            raise InputError(f"the outline makes no case: draw a structure of at least "
                             f"{rules.min_structure_area_m2:g} m²", zh=f"未能形成案件：请勾绘不小于 "
                                                                    f"{rules.min_structure_area_m2:g} m² 的建筑")
        case = result.cases.iloc[[0]].copy()
        if may_change is not None and not may_change(case["town"].iloc[0], case["village"].iloc[0]):
            raise InputError("the drawn structure lies outside the towns and villages you work on; nothing was "
                             "recorded — ask the officer in charge of that place",
                             zh="勾绘的建筑不在您负责的乡镇/村，未登记，请联系该处负责人员")
        events = list(result.events)
        case_no = case["case_no"].iloc[0]
        if not list(case["rules"].iloc[0] or []):
            row = case.iloc[0].to_dict()
            events.append(transition(row, "lawful", actor, "人工补录：未违反规则，记为合法（真实建筑）",
                                     rules.lifecycle, at))
            case["status"], case["closed_date"] = row["status"], row.get("closed_date")
        store.save_cases(case)
        store.append_events(events)
        add_note(store, case_no, f"人工补录漏检结构（{actor}）{'：' + note.strip() if note.strip() else ''}", actor, at)
        register_structures(store, settings, det.assign(source=MANUAL_SOURCE), report, bbox, at, add_only=True)
    out = store.cases().set_index("case_no").loc[case_no]
    return {"case_no": case_no, "status": out["status"], "rules": list(out["rules"] or []),
            "area_m2": round(float(outline.area), 1)}
