"""The 自建房 census on the web: the officer's census tab (待排查 first, 导航, 附近优先), a house's
page with the 排查 form (kept on the phone while offline, sent on reconnect) and the
rectification steps, and the same through the JSON API (``/api/houses``)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from pipeline.cases.houses import inspect_house, set_house_status
from pipeline.core import accounts
from pipeline.core.geo import navigation_links, to_wgs84_points
from pipeline.report.common import text
from pipeline.report.register import write_register_xlsx
from pipeline.service.context import Auth, HTTPProblem, Service, officer, service

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api", tags=["houses"])

#: the census tab's order: what waits for the officer first
QUEUE_ORDER = ("registered", "hazard", "rectifying", "rectified", "safe", "closed")


def scoped_houses(svc: Service, user: accounts.User, **filters):
    houses = svc.store.houses(**{k: v for k, v in filters.items() if v})
    if user.is_admin or not len(houses):
        return houses
    return houses[[user.sees(t, v) for t, v in zip(houses["town"], houses["village"])]]


def one_house(svc: Service, user: accounts.User, house_no: str):
    hit = svc.store.houses(house_no=house_no)
    if not len(hit) or not user.sees(hit["town"].iloc[0], hit["village"].iloc[0]):
        raise HTTPProblem(404, f"house {house_no} not found among your houses",
                          zh=f"未找到自建房 {house_no}（不在您负责的乡镇/村）")
    return hit


def summaries(svc: Service, houses) -> list[dict]:
    """One row per house for lists: place, status, hazard, deadline, position and navigation."""
    life = svc.settings.census.lifecycle
    points = to_wgs84_points(houses, houses.crs)
    rows = []
    for (lon, lat), h in zip(points, houses.to_dict("records")):
        rows.append({"house_no": h["house_no"], "town": text(h["town"]), "village": text(h["village"]),
                     "owner": text(h["owner"]), "status": h["status"], "status_label": life.label(h["status"]),
                     "hazard": text(h["hazard"]), "deadline": text(h["deadline"]), "assignee": text(h["assignee"]),
                     "floors": None if pd.isna(h["floors"]) else int(h["floors"]),
                     "area_m2": round(float(h["area_m2"]), 1), "case_no": text(h["case_no"]),
                     "gone": isinstance(h["gone_flight"], str) and bool(h["gone_flight"]),
                     "lon": round(float(lon), 7), "lat": round(float(lat), 7),
                     "nav": navigation_links(lon, lat, h["house_no"])})
    rows.sort(key=lambda r: (QUEUE_ORDER.index(r["status"]) if r["status"] in QUEUE_ORDER else 99, r["house_no"]))
    return rows


def detail(svc: Service, user: accounts.User, house_no: str) -> dict:
    census = svc.settings.census
    hit = one_house(svc, user, house_no)
    h = hit.iloc[0]
    facts = h["inspection"] if isinstance(h["inspection"], dict) else {}
    events = svc.store.house_events(house_no)
    return {**summaries(svc, hit)[0],
            "form": [{"key": f.key, "label": f.label, "kind": f.kind, "values": f.values, "required": f.required,
                      "min": f.min, "max": f.max, "value": facts.get(f.key, "")} for f in census.fields],
            "measures": list(h["measures"] or []), "measure_choices": census.measures,
            "inspected_on": text(h["inspected_on"]), "rectified_on": text(h["rectified_on"]),
            "closed_on": text(h["closed_on"]), "allowed": census.lifecycle.allowed(h["status"]),
            "steps": [{"to": s, "label": census.lifecycle.label(s)} for s in census.lifecycle.allowed(h["status"])
                      if s not in ("safe", "hazard")],
            "history": [{"at": str(e.at)[:16], "actor": e.actor or "", "step": census.lifecycle.label(e.to_status)
                         if e.to_status else "", "note": e.note or ""} for e in events.itertuples(index=False)]}


# ---------------------------------------------------------------- pages
@router.get("/houses", response_class=HTMLResponse)
def houses_page(request: Request, a: Auth = Depends(officer), svc: Service = Depends(service)):
    rows = summaries(svc, scoped_houses(svc, a.user))
    life = svc.settings.census.lifecycle
    counts = {s: sum(r["status"] == s for r in rows) for s in life.states}
    return svc.render(request, "houses.html", {"rows": rows, "counts": counts, "labels": life.states,
                                              "keep": [f"/houses/{quote(r['house_no'])}" for r in rows
                                                       if r["status"] in ("registered", "hazard", "rectifying")]})


@router.get("/houses/{house_no}", response_class=HTMLResponse)
def house_page(request: Request, house_no: str, a: Auth = Depends(officer), svc: Service = Depends(service)):
    return svc.render(request, "house.html", {"h": detail(svc, a.user, house_no)})


@router.post("/houses/{house_no}/inspect")
async def house_inspect_form(request: Request, house_no: str, a: Auth = Depends(officer),
                             svc: Service = Depends(service)):
    """排查表: the form's fields by key (config/census.yaml)."""
    one_house(svc, a.user, house_no)
    form = await request.form()
    keys = {f.key for f in svc.settings.census.fields}
    facts = {k: str(v)[:4000] for k, v in form.items() if k in keys}
    inspect_house(svc.store, svc.settings.census, house_no, facts, a.user.username)
    return RedirectResponse(f"/houses/{quote(house_no)}#inspection", status_code=303)


@router.post("/houses/{house_no}/status")
async def house_status_form(request: Request, house_no: str, a: Auth = Depends(officer),
                            svc: Service = Depends(service)):
    """整治 / 销号: the next step of the register's lifecycle."""
    one_house(svc, a.user, house_no)
    form = await request.form()
    set_house_status(svc.store, svc.settings.census, house_no, str(form.get("to", ""))[:40], a.user.username,
                     note=str(form.get("note", ""))[:4000],
                     measures=[str(m)[:40] for m in form.getlist("measure")],
                     deadline=str(form.get("deadline", ""))[:20] or None,
                     assignee=str(form.get("assignee", ""))[:100] or None, on=str(form.get("on", ""))[:20] or None)
    return RedirectResponse(f"/houses/{quote(house_no)}#steps", status_code=303)


# ---------------------------------------------------------------- the JSON API
class Inspection(BaseModel):
    facts: dict[str, str | int | float | bool] = Field(..., description="the 排查 form's fields by key "
                                                                        "(config/census.yaml)", max_length=60)


class HouseStep(BaseModel):
    to: str = Field(..., max_length=40, description="rectifying, rectified or closed")
    measures: list[str] = Field([], max_length=10, description="整治措施 (with rectifying)")
    deadline: str | None = Field(None, max_length=20, description="整改期限 YYYY-MM-DD (with rectifying)")
    assignee: str | None = Field(None, max_length=100, description="the person responsible (with rectifying)")
    on: str | None = Field(None, max_length=20, description="the day it happened (default today)")
    note: str = Field("", max_length=4000, description="what was found (required to close)")


@api.get("/houses", summary="自建房台账: the houses of your towns/villages, what waits first")
def api_houses(a: Auth = Depends(officer), town: str | None = Query(None, max_length=100),
               village: str | None = Query(None, max_length=100), status: str | None = Query(None, max_length=40),
               svc: Service = Depends(service)) -> list[dict]:
    return summaries(svc, scoped_houses(svc, a.user, town=town, village=village, status=status))


@api.get("/houses.xlsx", summary="The register (自建房台账) as xlsx, in census.yaml's register columns",
         response_class=FileResponse)
def api_houses_xlsx(a: Auth = Depends(officer), svc: Service = Depends(service)):
    tmp = Path(tempfile.mkdtemp(prefix="patrol-houses-"))
    path = write_register_xlsx(scoped_houses(svc, a.user), svc.settings.census, tmp / "houses.xlsx",
                               f"{svc.settings.district.name} 自建房安全排查台账")
    return FileResponse(path, filename="自建房台账.xlsx",
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


@api.get("/houses/{house_no}", summary="One house: facts, form, allowed steps, history")
def api_house(house_no: str, a: Auth = Depends(officer), svc: Service = Depends(service)) -> dict:
    return detail(svc, a.user, house_no)


@api.post("/houses/{house_no}/inspection", summary="Record the 排查 form: the house becomes 存在隐患 or 未发现隐患")
def api_house_inspection(house_no: str, body: Inspection, a: Auth = Depends(officer),
                         svc: Service = Depends(service)) -> dict:
    one_house(svc, a.user, house_no)
    inspect_house(svc.store, svc.settings.census, house_no, body.facts, a.user.username)
    return detail(svc, a.user, house_no)


@api.post("/houses/{house_no}/status", summary="整治 / 销号: the next step of the register's lifecycle")
def api_house_status(house_no: str, body: HouseStep, a: Auth = Depends(officer),
                     svc: Service = Depends(service)) -> dict:
    one_house(svc, a.user, house_no)
    set_house_status(svc.store, svc.settings.census, house_no, body.to, a.user.username, note=body.note,
                     measures=body.measures, deadline=body.deadline, assignee=body.assignee, on=body.on)
    return detail(svc, a.user, house_no)
