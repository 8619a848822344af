"""Casework: what officers and the web do to a stored case — read it, move it through the
lifecycle, assign it, add notes, redraw its outline, record its facts (当事人, 电话, 身份证号 …) —
each in one store transaction with its event; and the case list filtered by change."""
from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Mapping

import geopandas as gpd
import pandas as pd
import shapely

from pipeline.cases.track import (
    SYSTEM_ACTOR,
    as_float,
    at_time,
    event_row,
    set_status,
)
from pipeline.core.errors import InputError
from pipeline.core.rules import Lifecycle
from pipeline.core.values import jsonable


def cases_geojson(cases: gpd.GeoDataFrame) -> dict:
    """The cases as a GeoJSON FeatureCollection in EPSG:4326, every case field a property."""
    g = cases if cases.crs is None else cases.to_crs("EPSG:4326")
    feats = []
    props = [c for c in g.columns if c != g.geometry.name]
    for geom, rec in zip(g.geometry, g[props].to_dict("records")):
        feats.append({"type": "Feature", "id": rec.get("case_no"),
                      "properties": {k: jsonable(v) for k, v in rec.items()},
                      "geometry": None if geom is None else shapely.geometry.mapping(geom)})
    return {"type": "FeatureCollection", "features": feats}


def get_case(store: Any, case_no: str) -> gpd.GeoDataFrame:
    cases = store.cases()
    one = cases[cases["case_no"] == case_no]
    if not len(one):
        raise InputError(f"case {case_no} is not in {store.url}; see `patrol cases list`",
                         zh=f"没有案件 {case_no}")
    return one


#: the longest note a person may write into a case's history, on the CLI, the web and the API alike
NOTE_MAX_CHARS = 4000


def check_note(note: Any, where: str, where_zh: str) -> str:
    """A person's note for a case's history, bounded like every text they enter; InputError (naming
    ``where``) beyond it."""
    note = str(note or "")
    if len(note) > NOTE_MAX_CHARS:
        raise InputError(f"{where}: the note has {len(note):,} characters, over {NOTE_MAX_CHARS:,}; "
                         f"shorten it (attach a document or photo for more)",
                         zh=f"{where_zh}：说明超过 {NOTE_MAX_CHARS} 字，请精简")
    return note


def change_status(store: Any, case_no: str, to_status: str, actor: str, note: str,
                  lifecycle: Lifecycle, now: datetime | None = None, **kw) -> dict:
    """Validate (CLI, web and API alike: a note, a demolished area of 0–10 000 000 m²) and apply one
    officer's status change: the case and its case_event in one store transaction; the event."""
    check_note(note, f"case {case_no}", f"案件 {case_no}")
    if not str(note or "").strip():
        raise InputError(f"case {case_no}: give a note with the status change (it goes in the history)",
                         zh=f"案件 {case_no}：请填写说明（记入处置记录）")
    area = kw.get("demolished_area_m2")
    if area is not None and not (math.isfinite(float(area)) and 0 <= float(area) <= 1e7):
        raise InputError(f"case {case_no}: demolished area {area} is not 0–10000000 m²; give the area measured",
                         zh=f"案件 {case_no}：拆除面积 {area} 不在 0–10000000 m² 之间，请填写实测面积")
    with store.transaction():
        one = get_case(store, case_no).copy()
        ev = set_status(one, case_no, to_status, actor, note, lifecycle, now, **kw)
        cols = ["case_no", "status", "order_no", "order_date", "deadline", "recheck_date",
                "closed_date", "demolished_area_m2", "updated_at"]
        store.save_cases(one[cols])
        store.append_events([ev])
    return ev


def assign_case(store: Any, case_no: str, officer: str, actor: str | None = None,
                now: datetime | None = None) -> dict:
    """Set the responsible officer (assignee) and log it as a case_event (status unchanged)."""
    at = at_time(now)
    with store.transaction():
        one = get_case(store, case_no).copy()
        st = one["status"].iloc[0]
        before = one["assignee"].iloc[0]
        one["assignee"] = officer
        one["updated_at"] = at
        store.save_cases(one[["case_no", "assignee", "updated_at"]])
        was = f"（原 {before}）" if isinstance(before, str) and before else ""
        ev = event_row(case_no, at, actor or SYSTEM_ACTOR, st, st, f"分派给 {officer}{was}")
        store.append_events([ev])
    return ev


def add_note(store: Any, case_no: str, note: str, actor: str, now: datetime | None = None) -> dict:
    """Log ``note`` on the case's history (status unchanged); returns the event. The caller bounds the
    person's part of it (``check_note``); the system's words around it are its own."""
    at = at_time(now)
    with store.transaction():
        st = get_case(store, case_no)["status"].iloc[0]
        ev = event_row(case_no, at, actor or SYSTEM_ACTOR, st, st, note)
        store.append_events([ev])
    return ev


def note_events(case_nos, statuses, note: str, now: datetime | None = None) -> list[dict]:
    """History rows that log ``note`` on each case (status unchanged), by the system."""
    at = at_time(now)
    return [event_row(no, at, SYSTEM_ACTOR, st, st, note) for no, st in zip(case_nos, statuses)]


def redraw_outline(store: Any, case_no: str, outline: Any, actor: str, now: datetime | None = None) -> dict:
    """An officer's corrected outline of a case (the model's box was wrong; ``outline`` a polygon in
    the store CRS): geometry and area replaced, the change in the history; the corrected outline is
    what ``patrol dataset from-reviews`` trains on. Returns the event."""
    at = at_time(now)
    with store.transaction():
        one = get_case(store, case_no)
        old = one.geometry.iloc[0]
        if old is not None and not old.is_empty and old.distance(outline) > 50:
            raise InputError(f"the new outline of {case_no} lies {old.distance(outline):.0f} m from the case; "
                             f"draw it over the structure", zh=f"新轮廓距案件 {old.distance(outline):.0f} 米，请在该建筑上勾绘")
        before = as_float(one["area_m2"].iloc[0], 0.0)
        area = round(float(shapely.area(outline)), 3)
        frame = gpd.GeoDataFrame({"case_no": [case_no], "area_m2": [area], "updated_at": [at]},
                                 geometry=[outline], crs=store.crs)
        store.save_cases(frame)
        st = one["status"].iloc[0]
        ev = event_row(case_no, at, actor or SYSTEM_ACTOR, st, st,
                    f"轮廓修正（{actor}）：面积 {before:.1f} → {area:.1f} m²")
        store.append_events([ev])
    return ev


#: what an officer records about a case on site: 当事人, 电话, 层数, 建筑面积, 责任单位, 备注
CASE_FACTS = {"party": ("当事人", 100), "phone": ("电话", 40), "id_number": ("身份证号", 18), "address": ("地址", 200),
              "floors": ("层数", None), "floor_area_m2": ("建筑面积", None), "unit": ("责任单位/执法中队", 100),
              "remark": ("备注", 2000)}
ID_NUMBER = re.compile(r"[1-9][0-9]{16}[0-9X]")
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_number_ok(v: str) -> bool:
    """A mainland resident ID number (18 characters) whose check digit adds up (GB 11643)."""
    if not ID_NUMBER.fullmatch(v):
        return False
    return "10X98765432"[sum(int(c) * w for c, w in zip(v[:17], ID_WEIGHTS)) % 11] == v[17]


def mask_id(v: str) -> str:
    """An ID number as lists, exports, documents and the history show it: 4201**********123X."""
    v = str(v or "")
    return v if len(v) < 8 else v[:4] + "*" * (len(v) - 8) + v[-4:]


def check_facts(case_no: str, facts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts cleaned, or one InputError line naming the bad one (empty text clears a fact)."""
    out: dict[str, Any] = {}
    for key, value in facts.items():
        if key not in CASE_FACTS:
            raise InputError(f"case {case_no}: '{key}' is not a fact of a case; one of {', '.join(CASE_FACTS)}")
        name, limit = CASE_FACTS[key]
        v = value.strip() if isinstance(value, str) else value
        if v is None or v == "":
            out[key] = None
        elif key == "floors":
            if not re.fullmatch(r"[0-9]{1,3}", str(v)) or not 1 <= int(v) <= 200:
                raise InputError(f"case {case_no}: {name} '{v}' is not a number of storeys 1–200",
                                 zh=f"案件 {case_no}：{name}「{v}」应为 1–200 的整数")
            out[key] = int(v)
        elif key == "floor_area_m2":
            try:
                area = float(v)
            except ValueError:
                area = math.nan
            if not (math.isfinite(area) and 0 < area <= 1e6):
                raise InputError(f"case {case_no}: {name} '{v}' is not an area of 0–1000000 m²",
                                 zh=f"案件 {case_no}：{name}「{v}」应为 0–1000000 m² 的面积")
            out[key] = round(area, 2)
        elif key == "id_number" and not id_number_ok(str(v).upper()):
            raise InputError(f"case {case_no}: {name} '{mask_id(str(v))}' is not an 18-character ID number whose "
                             f"check digit adds up; check it against the ID card",
                             zh=f"案件 {case_no}：{name}「{mask_id(str(v))}」不是有效的 18 位身份证号（校验位不符），请核对身份证")
        elif key == "id_number":
            out[key] = str(v).upper()
        elif key == "phone" and not re.fullmatch(r"[0-9+\-() ]{3,40}", str(v)):
            raise InputError(f"case {case_no}: {name} '{v}' is not a phone number (digits, + - ( ) and spaces)",
                             zh=f"案件 {case_no}：{name}「{v}」不是电话号码（只能含数字、+ - ( ) 和空格）")
        elif limit is not None and len(str(v)) > limit:
            raise InputError(f"case {case_no}: {name} is longer than {limit} characters; shorten it",
                             zh=f"案件 {case_no}：{name}超过 {limit} 个字，请精简")
        else:
            out[key] = str(v)
    return out


def set_facts(store: Any, case_no: str, facts: Mapping[str, Any], actor: str, now: datetime | None = None) -> dict:
    """Record 当事人 / 电话 / 层数 / 建筑面积 / 责任单位 / 备注 on the case and log the change
    as a case_event (status unchanged); returns the event."""
    clean = check_facts(case_no, facts)
    at = at_time(now)
    with store.transaction():
        one = get_case(store, case_no).copy()
        st = one["status"].iloc[0]
        now_v = {k: one[k].iloc[0] for k in clean}
        changed = [k for k, v in clean.items()
                   if not ((pd.isna(now_v[k]) and v is None) or (not pd.isna(now_v[k]) and now_v[k] == v))]
        if not changed:
            raise InputError(f"case {case_no}: nothing changed; give the facts that differ",
                             zh=f"案件 {case_no}：内容没有变化")
        for k in changed:
            one[k] = clean[k]
        one["updated_at"] = at
        store.save_cases(one[["case_no", *changed, "updated_at"]])
        def shown(k):
            v = clean[k]
            return "（清除）" if v is None else mask_id(v) if k == "id_number" else v
        note = "；".join(f"{CASE_FACTS[k][0]}: {shown(k)}" for k in changed)
        ev = event_row(case_no, at, actor or SYSTEM_ACTOR, st, st, note)
        store.append_events([ev])
    return ev


def with_change(cases, flags=(), min_change_confidence: float | None = None):
    """The cases carrying any of ``flags`` (new, grown, rebuilt, demolition_seen) and, with
    ``min_change_confidence``, whose change the images confirmed at least that surely."""
    if flags:
        cases = cases[cases["flags"].map(lambda f: bool(set(f or []) & set(flags)))]
    if min_change_confidence is not None:
        cases = cases[cases["change_confidence"].astype(float).fillna(-1) >= min_change_confidence]
    return cases
