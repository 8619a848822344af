"""The 两违台账: one row per case with the columns a bureau reports (DOMAIN.md), in the
order and with the headers of ``ledger.columns`` (config), for the xlsx and csv case lists.

Derived columns: 序号, 坐标, 地类 (三调 DLBM/DLMC of the parcel, else the restricted zones
under the case), 面积(亩), 处置进度 (latest step, its date and note), 文书编号 (the documents
issued and the order number), 逾期天数 (open cases past their deadline). Progress and
document numbers need the store; without one they are empty.
"""
from __future__ import annotations

from datetime import date
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.cases.casework import mask_id
from pipeline.core.config import DEFAULT_LEDGER_COLUMNS
from pipeline.core.geo import to_wgs84_points
from pipeline.report.common import (
    CATEGORIES,
    CLASSES,
    FIELDS,
    FLAGS,
    SOURCES,
    STOCK,
    as_list,
    change_text,
    label,
    missing,
    rule_texts,
    status_label,
    text,
)

M2_PER_MU = 666.67
HEADERS: dict[str, str] = {
    "seq": "序号", "case_no": "图斑编号/案件编号", "coords": "坐标(经度,纬度)", "land_class": "地类",
    "area_mu": "占地面积(亩)", "source": "发现方式", "first_seen_at": "发现时间", "category": "违法类型",
    "party": "违法主体/当事人", "progress": "处置进度", "doc_nos": "文书编号", "overdue_days": "逾期天数",
    "image_before": "前时相影像", "image_after": "后时相影像", "site_photo": "现场照片", "reasons": "判定依据",
    "id_number": "身份证号", "address": "地址",
}
IMAGES = ("image_before", "image_after", "site_photo")
NUMBERS = {"seq", "area_m2", "area_mu", "floor_area_m2", "floors", "height_m", "floors_est", "overdue_days",
           "demolished_area_m2",
           "basic_farmland_m2", "redline_m2", "farmland_m2", "confidence", "lon", "lat", "x", "y"}

# 三调 / 宅基地 attribute names in parcel snapshots, in Chinese
PARCEL_ATTRS = {"BSM": "标识码", "TBBH": "图斑编号", "ZLDWDM": "坐落单位代码", "ZLDWMC": "坐落单位名称",
                "QSDWDM": "权属单位代码", "QSDWMC": "权属单位名称", "TBMJ": "图斑面积(m²)", "ZDDM": "宗地代码",
                "QLR": "权利人"}
SHOWN_ELSEWHERE = {"attrs", "town", "village", "village_code", "land_use", "DLBM", "DLMC"}


def columns_of(spec: list | None) -> list[tuple[str, str]]:
    """(field, header) of each configured column (a field id, or ``{field: header}``)."""
    out = []
    for item in spec or DEFAULT_LEDGER_COLUMNS:
        field, header = next(iter(item.items())) if isinstance(item, dict) else (item, None)
        out.append((field, header or HEADERS.get(field) or label(FIELDS, field, "zh")))
    return out


def parcel_facts(snap: dict) -> list[tuple[str, str]]:
    """(label, value) of a parcel snapshot in Chinese, without what is shown elsewhere."""
    attrs = snap.get("attrs") if isinstance(snap.get("attrs"), dict) else {}
    rows: list[tuple[str, str]] = []
    for k, v in [*snap.items(), *attrs.items()]:
        if k in SHOWN_ELSEWHERE or not text(v):
            continue
        name = PARCEL_ATTRS.get(k) or (label(FIELDS, k, "zh") if k in FIELDS else k)
        if name not in {r[0] for r in rows}:
            rows.append((name, text(v)))
    return rows


def land_class(case: dict, zones) -> str:
    """三调 地类 of the case: the parcel's DLBM/DLMC, else the restricted zones it lies on."""
    snap = case.get("parcel_snapshot") if isinstance(case.get("parcel_snapshot"), dict) else {}
    attrs = snap.get("attrs") if isinstance(snap.get("attrs"), dict) else {}
    code, name = snap.get("land_use") or attrs.get("DLBM"), attrs.get("DLMC")
    if code or name:
        return " ".join(x for x in (text(code), text(name)) if x)
    if zones is not None and len(zones) and case.get("geometry") is not None:
        hit = zones[zones.intersects(case["geometry"])]
        names = [" ".join(x for x in (text(c), text(n)) if x) for c, n in zip(hit["code"], hit["name"])]
        return "、".join(dict.fromkeys(n for n in names if n))
    return ""


def progress_text(events: pd.DataFrame, rules, lang: str = "zh") -> str:
    """处置进度: the latest lifecycle step, its date and note."""
    ev = events[events["to_status"].notna() & (events["from_status"] != events["to_status"])] if len(events) \
        else events
    if not len(ev):
        return ""
    e = ev.iloc[-1]
    note = text(e.get("note"))
    return f"{status_label(e['to_status'], lang, rules)} {pd.Timestamp(e['at']):%Y-%m-%d}" + (
        f"（{note}）" if note else "")


def overdue_days(case: dict, lifecycle, today: date) -> int | None:
    """Days an open case is past its deadline (None: not overdue or no deadline)."""
    if lifecycle is None or case.get("status") not in lifecycle.open or missing(case.get("deadline")):
        return None
    days = (pd.Timestamp(today) - pd.Timestamp(case["deadline"]).normalize()).days
    return days if days > 0 else None


def ledger_table(cases: gpd.GeoDataFrame, lang: str = "zh", rules=None, crs: str | None = None,
                 columns: list | None = None, store=None, today: date | None = None) -> pd.DataFrame:
    """One row per case, display values, the configured columns with their headers. Image
    columns hold the chip's file name (the xlsx writer puts the picture there)."""
    cols = columns_of(columns)
    crs = crs or str(cases.crs)
    today = today or date.today()
    lc = rules.lifecycle if rules is not None else None
    recs = cases.to_dict("records")
    ll = to_wgs84_points(cases, crs) if len(cases) else np.zeros((0, 2))
    cent = shapely.centroid(np.asarray(cases.geometry.values, dtype=object)) if len(cases) else np.array([])
    fields = {f for f, _ in cols}
    events = store.events() if store is not None and "progress" in fields else pd.DataFrame()
    docs = store.documents() if store is not None and "doc_nos" in fields else pd.DataFrame()
    zones = store.zones(tuple(cases.total_bounds)) if store is not None and "land_class" in fields and len(cases) \
        else None
    by_case_events = dict(tuple(events.groupby("case_no", sort=False))) if len(events) else {}
    by_case_docs = docs.groupby("case_no")["doc_no"].apply(list).to_dict() if len(docs) else {}
    rows = []
    for i, c in enumerate(recs):
        reasons = "；".join(rule_texts(c, lang, rules))
        area = None if missing(c.get("area_m2")) else float(c["area_m2"])
        derived = {
            "seq": i + 1, "lon": round(float(ll[i][0]), 7), "lat": round(float(ll[i][1]), 7),
            "x": round(float(shapely.get_x(cent[i])), 2), "y": round(float(shapely.get_y(cent[i])), 2),
            "coords": f"{ll[i][0]:.6f},{ll[i][1]:.6f}",
            "area_m2": None if area is None else round(area, 1),
            "area_mu": None if area is None else round(area / M2_PER_MU, 2),
            "height_m": None if missing(c.get("height_m")) else round(float(c["height_m"]), 1),
            "floors_est": None if missing(c.get("floors_est")) else int(c["floors_est"]),
            "land_class": land_class(c, zones),
            "progress": progress_text(by_case_events.get(c["case_no"], pd.DataFrame()), rules, lang),
            "doc_nos": "、".join(by_case_docs.get(c["case_no"], []) + ([text(c["order_no"])]
                                                                    if text(c.get("order_no")) else [])),
            "overdue_days": overdue_days(c, lc, today),
            "status": status_label(c.get("status"), lang, rules),
            "category": label(CATEGORIES, c.get("category"), lang),
            "stock": label(STOCK, c.get("stock"), lang),
            "detector_class": label(CLASSES, c.get("detector_class"), lang),
            "source": label(SOURCES, c.get("source"), lang) if text(c.get("source")) else "",
            "flags": "、".join(label(FLAGS, f, lang) for f in as_list(c.get("flags"))),
            "change_confidence": change_text(c, lang),
            "rules": reasons, "reasons": reasons,
            "first_seen_at": text(c.get("first_seen_at"))[:10], "last_seen_at": text(c.get("last_seen_at"))[:10],
            "image_before": "", "image_after": "", "site_photo": "",
            "id_number": mask_id(text(c.get("id_number"))) if text(c.get("id_number")) else "",
        }
        row = []
        for f, _ in cols:
            v = derived[f] if f in derived else c.get(f)
            if f in NUMBERS and f not in derived:
                v = None if missing(v) else round(float(v), 2)
            elif f not in NUMBERS:
                v = text(v) if not isinstance(v, str) else v
            row.append(spreadsheet_safe(v))
        rows.append(row)
    return pd.DataFrame(rows, columns=[h for _, h in cols])


def spreadsheet_safe(v: Any) -> Any:
    """Text a spreadsheet would run as a formula (``=HYPERLINK(…)``, ``+1``, ``@SUM``) kept as text."""
    return "'" + v if isinstance(v, str) and v.startswith(("=", "+", "-", "@", "\t", "\r")) else v

