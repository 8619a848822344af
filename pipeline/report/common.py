"""Shared bits of the reports: labels in Chinese/English, value formatting, GCJ-02 shift."""
from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.labels import CLASSES  # noqa: F401  (the reports' name for it)
from pipeline.core.values import is_missing as missing  # noqa: F401  (the reports' name for it)

# field id -> (zh, en)
FIELDS: dict[str, tuple[str, str]] = {
    "case_no": ("案件编号", "Case no."),
    "status": ("状态", "Status"),
    "category": ("类别", "Category"),
    "stock": ("新建/存量", "New/existing"),
    "detector_class": ("识别类型", "Detected class"),
    "area_m2": ("占地面积(m²)", "Area (m²)"),
    "growth_m2": ("增长面积(m²)", "Growth (m²)"),
    "confidence": ("置信度", "Confidence"),
    "rules": ("触发规则", "Rules fired"),
    "reasons": ("判定依据", "Reasons"),
    "priority": ("优先级", "Priority"),
    "flags": ("变化标记", "Change flags"),
    "change_confidence": ("变化可信度", "Change confidence"),
    "town": ("乡镇", "Town"),
    "village": ("村", "Village"),
    "village_code": ("村代码", "Village code"),
    "parcel_id": ("地块编号", "Parcel id"),
    "owner": ("权利人", "Owner"),
    "land_use": ("地类", "Land use"),
    "approved_area_m2": ("批准面积(m²)", "Approved area (m²)"),
    "approved_floors": ("批准层数", "Approved floors"),
    "permit_no": ("批准文号", "Permit no."),
    "floors": ("层数", "Floors"),
    "height_m": ("高度(m，DSM)", "Height (m, DSM)"),
    "floors_est": ("估算层数(DSM)", "Estimated storeys (DSM)"),
    "floor_area_m2": ("建筑面积(m²)", "Floor area (m²)"),
    "unit": ("责任单位/执法中队", "Responsible unit"),
    "remark": ("备注", "Remark"),
    "party": ("当事人", "Responsible party"),
    "phone": ("电话", "Phone"),
    "basic_farmland_m2": ("占永农(m²)", "On basic farmland (m²)"),
    "redline_m2": ("占红线(m²)", "On red line (m²)"),
    "farmland_m2": ("占耕地(m²)", "On farmland (m²)"),
    "first_seen_at": ("首次发现(前时相)", "First seen"),
    "first_seen_flight": ("首次发现航次", "First seen flight"),
    "last_seen_at": ("最近发现(后时相)", "Last seen"),
    "last_seen_flight": ("最近发现航次", "Last seen flight"),
    "order_no": ("文书编号", "Order no."),
    "order_date": ("下达日期", "Order date"),
    "deadline": ("整改期限", "Deadline"),
    "assignee": ("责任人", "Officer"),
    "recheck_date": ("复查日期", "Recheck date"),
    "closed_date": ("销号日期", "Closed"),
    "demolished_area_m2": ("拆除面积(m²)", "Demolished (m²)"),
    "lon": ("经度(WGS84)", "Longitude (WGS84)"),
    "lat": ("纬度(WGS84)", "Latitude (WGS84)"),
    "x": ("X(存储坐标系)", "X (store CRS)"),
    "y": ("Y(存储坐标系)", "Y (store CRS)"),
    "chip": ("影像", "Image"),
    "coords": ("坐标", "Coordinates"),
    "evidence": ("影像证据", "Image evidence"),
    "before": ("前时相", "Before"),
    "after": ("后时相", "After"),
    "history": ("处置记录", "Event history"),
    "at": ("时间", "When"),
    "actor": ("操作人", "Who"),
    "from_status": ("原状态", "From"),
    "to_status": ("新状态", "To"),
    "note": ("说明", "Note"),
    "flight": ("航次", "Flight"),
    "captured_at": ("拍摄时间", "Captured"),
    "gsd_m": ("分辨率(m)", "GSD (m)"),
    "file_hash": ("文件哈希", "File hash"),
    "location": ("位置图", "Location"),
    "parcel": ("地块信息", "Parcel"),
    "facts": ("案件信息", "Case facts"),
}

LAYERS: dict[str, tuple[str, str]] = {
    "ortho": ("正射影像", "Orthophoto"),
    "footprint": ("航飞范围", "Flight footprint"),
    "parcels": ("宗地", "Parcels"),
    "zones": ("管控区", "Restricted zones"),
    "detections": ("识别结果", "Detections"),
    "cases": ("案件", "Cases"),
    "legend": ("图例", "Legend"),
    "basemap": ("底图", "Basemap"),
    "district_map": ("辖区巡查图", "District patrol map"),
    "flight_map": ("航次巡查图", "Flight patrol map"),
    "evidence_sheets": ("案件证据单", "Case evidence sheets"),
}

CATEGORIES: dict[str, tuple[str, str]] = {
    "illegal_construction": ("违法建设", "Illegal construction"),
    "illegal_land_use": ("违法用地", "Illegal land use"),
    "over_approval": ("超批准面积", "Over approval"),
    "storey_added": ("加层", "Storey added"),
    "over_floors": ("超批准层数", "Over approved storeys"),
}


STOCK: dict[str, tuple[str, str]] = {"new_build": ("新建", "New build"), "existing": ("存量", "Existing")}

ZONE_KINDS: dict[str, tuple[str, str]] = {
    "basic_farmland": ("永久基本农田", "Basic farmland"),
    "farmland": ("耕地", "Farmland"),
    "ecological_redline": ("生态保护红线", "Ecological red line"),
}

SOURCES: dict[str, tuple[str, str]] = {
    "uav": ("无人机航拍", "Drone flight"), "ortho": ("无人机航拍", "Drone flight"),
    "orthos": ("无人机航拍", "Drone flight"), "photos": ("无人机航拍", "Drone flight"),
    "patrol": ("地面巡查", "Ground patrol"), "report": ("群众举报", "Public report"),
    "hotline": ("12345热线", "12345 hotline"), "referral": ("部门转办", "Referral"),
    "satellite": ("卫片", "Satellite change spot"),
}

FLAGS: dict[str, tuple[str, str]] = {
    "new": ("新发现", "new"), "rebuilt": ("复建", "rebuilt"),
    "demolition_seen": ("疑似已拆除", "demolition seen"), "grown": ("扩建", "grown"),
    "storey_added": ("加层", "storey added"),
}

STATUS_COLOURS: dict[str, str] = {
    "suspected": "#ff7f00", "verified": "#e31a1c", "stopped": "#b30000", "filed": "#99004c",
    "ordered": "#6a3d9a", "demolished": "#33a02c", "rectified": "#1b9e77", "rechecked": "#1f78b4",
    "closed": "#7f7f7f", "lawful": "#a6cee3", "unfounded": "#b2df8a", "false_positive": "#cccccc",
}
CLASS_COLOURS: dict[str, str] = {
    "building": "#e6ab02", "steel_shed": "#1f78b4", "under_construction": "#d95f02",
    "greenhouse": "#66a61e",
}
ZONE_COLOURS: dict[str, str] = {
    "basic_farmland": "#fdbf6f", "farmland": "#ffff99", "ecological_redline": "#fb9a99",
}


def lang_index(lang: str) -> int:
    return 1 if lang == "en" else 0


def label(table: Mapping[str, tuple[str, str]], key: Any, lang: str) -> str:
    """The zh/en label of ``key`` in ``table``; the key itself when unknown."""
    k = text(key)
    pair = table.get(k)
    return pair[lang_index(lang)] if pair else k


def status_label(status: Any, lang: str, rules=None) -> str:
    s = text(status)
    if lang == "en" or rules is None:
        return s.replace("_", " ")
    return rules.lifecycle.states.get(s, s)


def text(v: Any) -> str:
    """A value as display text: '' for missing, dates as YYYY-MM-DD (time when not midnight),
    floats with one decimal, lists joined with '、'."""
    if missing(v):
        return ""
    if isinstance(v, (list, tuple)):
        return "、".join(text(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, ensure_ascii=False, default=str)
    if isinstance(v, (pd.Timestamp, datetime)):
        t = pd.Timestamp(v)
        return t.strftime("%Y-%m-%d") if t == t.normalize() else t.strftime("%Y-%m-%d %H:%M")
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.1f}" if abs(float(v)) >= 1 or v == 0 else f"{float(v):.2f}"
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def as_list(v: Any) -> list:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return [v]
    if missing(v):
        return []
    return list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]


def as_dict(v: Any) -> dict:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return {}
    return dict(v) if isinstance(v, Mapping) else {}


def rule_texts(case: Mapping[str, Any], lang: str, rules=None) -> list[str]:
    """One line per rule that fired: label and the reason with its numbers."""
    reasons = as_dict(case.get("reasons"))
    out = []
    for r in as_list(case.get("rules")):
        name = (rules.label(r) if rules is not None and lang == "zh" else None) or label(CATEGORIES, r, lang)
        why = as_dict(reasons.get(r))
        detail = why.get("text")
        if not detail or lang == "en":
            nums = {k: v for k, v in why.items() if k != "text" and not isinstance(v, (dict, list))}
            detail = ", ".join(f"{k}={text(v)}" for k, v in nums.items())
        out.append(f"{name}: {detail}" if detail else name)
    if reasons.get("found_by") == "height":
        out.append("识别来源：航飞 DSM 高程（影像识别未检出）" if lang_index(lang) == 0 else
                   "Found by the flight's heights (the detector did not see it)")
    return out


def js_json(obj: Any) -> str:
    """JSON safe to embed inside a <script> element (no '<', '>', '&', U+2028/9 literal)."""
    s = json.dumps(obj, ensure_ascii=False, default=str, allow_nan=False)
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


# ---------------------------------------------------------------- shared by the map and the sheets
def safe_name(s: str) -> str:
    """A file-name-safe form of an id (letters, digits, - _ . kept)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(s))


def to_uint8(a: np.ndarray) -> np.ndarray:
    """An image as uint8 (other types stretched between their 2nd and 98th percentile)."""
    if a.dtype == np.uint8:
        return a
    a = a.astype(float)
    lo, hi = np.percentile(a, [2, 98]) if a.size else (0, 1)
    return np.clip((a - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)


def height_text(c: Mapping[str, Any], lang: str) -> str:
    """The height the flight's DSM gives and the storeys it means, e.g. '7.4 m，约 2 层' ('' without)."""
    h = c.get("height_m")
    if missing(h):
        return ""
    fl = c.get("floors_est")
    zh = lang_index(lang) == 0
    if missing(fl):
        return f"{float(h):.1f} m"
    return f"{float(h):.1f} m，约 {int(fl)} 层" if zh else f"{float(h):.1f} m, about {int(fl)} storeys"


def change_text(c: Mapping[str, Any], lang: str) -> str:
    """What the change check saw (``pipeline.cases.change``): the change confidence and its evidence in
    one line ('' when the case was not checked)."""
    import json
    conf = c.get("change_confidence")
    if missing(conf):
        return ""
    ev = c.get("change_evidence")
    ev = json.loads(ev) if isinstance(ev, str) and ev.strip() else ev if isinstance(ev, Mapping) else {}
    zh = lang_index(lang) == 0
    pct = lambda v: f"{100 * float(v or 0):.0f}%"              # noqa: E731
    other, cover = text(ev.get("other_flight")), ev.get("redetected_cover") or 0.0
    parts = [f"{float(conf):.2f}"]
    if "demolition_seen" in as_list(c.get("flags")):
        parts.append(f"本时相（航次 {other}）复检未见建筑（覆盖 {pct(cover)}）" if zh else
                     f"this flight ({other}) looked at again: no structure (cover {pct(cover)})")
    else:
        if zh:
            parts.append(f"前时相（航次 {other}）复检" + (f"已见建筑（覆盖 {pct(cover)}），定为存量" if cover >= 0.5
                                                      else f"未见建筑（覆盖 {pct(cover)}）"))
        else:
            parts.append(f"earlier flight {other} looked at again: " + (
                f"structure there (cover {pct(cover)}), existing" if cover >= 0.5 else f"nothing (cover {pct(cover)})"))
        second = ev.get("second_look_cover")
        if second is not None:
            ok = float(second) >= 0.5
            parts.append(("本时相复看确认" if ok else "本时相复看未确认") if zh else
                         ("confirmed on a second look" if ok else "not confirmed on a second look"))
    if ev.get("appearance_change") is not None:
        parts.append(f"{'外观变化' if zh else 'appearance change'} {float(ev['appearance_change']):.2f}")
    shift = ev.get("shift_m")
    if shift:
        parts.append(f"配准改正 东 {shift[0]:+.1f} m、北 {shift[1]:+.1f} m" if zh else
                     f"co-registered by {shift[0]:+.1f} m east, {shift[1]:+.1f} m north")
    return ("；" if zh else "; ").join(parts)
