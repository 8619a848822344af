"""The 自建房安全排查表 of one register record as PDF: the record, its latest inspection in the
order of the census form (config/census.yaml) and its history, from the template
``census_form.html`` of the document folder (sandboxed, rendered like every document)."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.cases.houses import get_house
from pipeline.core.geo import to_wgs84_points
from pipeline.report.common import text
from pipeline.report.documents import render_template_pdf, template_dir, write_pdf

TEMPLATE = "census_form.html"
TITLE = "自建房安全排查表"
FIELDS = ("authority", "district", "title", "doc_no", "issued_at", "issued_date", "town", "village", "lon", "lat",
          "area_m2", "floors", "status_label", "case_no", "last_seen_at", "form", "measures", "deadline",
          "assignee", "history")


def _value(v: Any) -> str:
    return ("是" if v else "否") if isinstance(v, bool) else text(v)


def form_fields(store, settings, house_no: str, now: datetime | None = None) -> dict[str, Any]:
    """Everything the 排查表 shows of ``house_no``."""
    census = settings.census
    houses = get_house(store, house_no)
    h = houses.iloc[0]
    facts = h["inspection"] if isinstance(h["inspection"], dict) else {}
    lon, lat = to_wgs84_points(houses, houses.crs)[0]
    now = now or datetime.now().replace(microsecond=0)
    events = store.house_events(house_no)
    history = [{"at": _value(pd.Timestamp(e.at)), "step": census.lifecycle.label(e.to_status) if e.to_status else "",
                "note": e.note or ""} for e in events.itertuples(index=False)]
    return {"authority": settings.documents.authority, "district": settings.district.name, "title": TITLE,
            "doc_no": house_no, "issued_at": now.isoformat(), "issued_date": f"{now.year}年{now.month}月{now.day}日",
            "town": _value(h["town"]), "village": _value(h["village"]), "lon": f"{lon:.6f}", "lat": f"{lat:.6f}",
            "area_m2": f"{float(h['area_m2']):.1f}", "floors": _value(h["floors"]),
            "status_label": census.lifecycle.label(h["status"]), "case_no": _value(h["case_no"]),
            "last_seen_at": _value(h["last_seen_at"]),
            "form": [{"label": f.label, "value": _value(facts.get(f.key))} for f in census.fields],
            "measures": "、".join(h["measures"] or []), "deadline": _value(h["deadline"]),
            "assignee": _value(h["assignee"]), "history": history}


def census_form_pdf(store, settings, house_no: str, now: datetime | None = None) -> bytes:
    pdf, _ = render_template_pdf(template_dir(settings), TEMPLATE, form_fields(store, settings, house_no, now), FIELDS)
    return pdf


def write_census_form(store, settings, house_no: str, path: Path) -> Path:
    return write_pdf(Path(path), census_form_pdf(store, settings, house_no))
