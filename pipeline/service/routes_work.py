"""Officers' work and the bureau's figures: the 任务 page (my cases by deadline, the daily
digest, dispatch of cases to officers by an admin) and the 统计 page (figures by the date
each action happened, charts, xlsx download)."""
from __future__ import annotations

import shutil
import tempfile
from datetime import date
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.background import BackgroundTask

from pipeline.cases.casework import assign_case
from pipeline.cases.dispatch import digest, work_queue
from pipeline.core.errors import InputError
from pipeline.core.values import day_after
from pipeline.report.census_stats import FIGURES as CENSUS_FIGURES
from pipeline.report.census_stats import census_rows, census_stats
from pipeline.report.common import CLASSES, label
from pipeline.report.stats import (
    BREAKDOWNS,
    ROW_LABELS,
    campaign_stats,
    figure_rows,
    labelled,
    period_text,
    write_stats_xlsx,
)
from pipeline.service.context import Auth, Service, admin, anyone, officer, service

router = APIRouter(include_in_schema=False)


@router.get("/tasks", response_class=HTMLResponse)
def tasks_page(request: Request, a: Auth = Depends(officer), svc: Service = Depends(service)):
    dg = digest(svc.store, svc.rules, svc.settings)
    if a.user.is_admin:
        cases = svc.store.cases()
        mine = cases[cases["assignee"] == a.user.username]
    else:
        mine = svc.scoped_cases(a.user)
        keep = set(mine["case_no"])
        dg = {**dg, **{k: [i for i in dg[k] if i["case_no"] in keep] for k in ("overdue", "due_soon", "new")}}
    keep = ["/review", "/review/map"] + [f"/review/ortho/{n}" for n in sorted(svc.orthos_of(a.user))]
    ctx = {"queue": work_queue(mine, svc.rules, svc.settings), "digest": dg, "unassigned": [], "officers": [],
           "keep": keep}                      # kept on the phone ahead: the map of their cases, its imagery
    if a.user.is_admin:
        cases = svc.store.cases()
        open_ = cases[cases["status"].isin(svc.lifecycle.open) & cases["assignee"].isna()]
        ctx["unassigned"] = [svc.case_summary(c) for c in open_.to_dict("records")]
        ctx["officers"] = [{"username": u.username, "name": u.display_name or u.username, "towns": "、".join(u.towns),
                            **dg["by_officer"].get(u.username, {"overdue": 0, "due_soon": 0, "new": 0}),
                            "open": int(((cases["assignee"] == u.username)
                                         & cases["status"].isin(svc.lifecycle.open)).sum())}
                           for u in svc.officers()]
    return svc.render(request, "tasks.html", ctx)


def _assign(svc: Service, a: Auth, case_no: str, username: str) -> None:
    if not username.strip():
        raise InputError("choose the officer to give the case to", zh="请选择责任人")
    g = svc.one_case(a.user, case_no)
    who = [u for u in svc.officers_for(g["town"].iloc[0], g["village"].iloc[0]) if u.username == username]
    if not who:
        raise InputError(f"'{username}' is not an officer of {g['town'].iloc[0] or g['village'].iloc[0] or 'this place'}; "
                         f"give the case to an officer whose towns include it (admin → users)",
                         zh=f"「{username}」不负责{g['town'].iloc[0] or g['village'].iloc[0] or '此处'}，请分派给负责该乡镇/村的执法人员")
    assign_case(svc.store, case_no, username, a.user.username)


@router.post("/cases/{case_no}/assign")
def assign_one(case_no: str, a: Auth = Depends(admin), officer_name: str = Form("", alias="officer", max_length=100),
               svc: Service = Depends(service)):
    _assign(svc, a, case_no, officer_name)
    return RedirectResponse(f"/cases/{quote(case_no)}#history", status_code=303)


@router.post("/admin/assign")
async def assign_many(request: Request, a: Auth = Depends(admin), svc: Service = Depends(service)):
    form = await request.form()
    username = str(form.get("officer") or "")
    nos = [str(v) for v in form.getlist("case_no")][:1000]
    if not nos:
        raise InputError("tick the cases to give to the officer, then press 分派", zh="请先勾选要分派的案件，再点分派")
    for no in nos:
        _assign(svc, a, no, username)
    return RedirectResponse("/tasks#unassigned", status_code=303)


def _report_classes(svc: Service) -> list[tuple[str, str]]:
    return [(k, label(CLASSES, k, "zh")) for k in svc.rules.classes]


@router.get("/report", response_class=HTMLResponse)
def report_page(request: Request, a: Auth = Depends(anyone), done: str = "", matched: int = 0,
                svc: Service = Depends(service)):
    return svc.render(request, "report.html", {"classes": _report_classes(svc), "done": done[:40],
                                               "matched": bool(matched), "can_open": a.user.role != "patrol"})


@router.post("/report")
def report_post(a: Auth = Depends(anyone), lat: str = Form(..., max_length=30), lon: str = Form(..., max_length=30),
                detector_class: str = Form("building", max_length=40), area_m2: str = Form("50", max_length=20),
                note: str = Form(..., max_length=4000), file: UploadFile | None = File(None),
                svc: Service = Depends(service)):
    """地面巡查上报 from the page: the case, then its photo."""
    r = svc.ground_report(a.user, lat, lon, detector_class, area_m2, note,
                          svc.read_media(file) if file and file.filename else None,
                          file.filename if file else "")
    return RedirectResponse(f"/report?done={quote(r['case_no'])}&matched={0 if r['new'] else 1}", status_code=303)


def _period(since: str, until: str) -> tuple[str | None, str | None]:
    """The page's 自 / 至 (both days included) checked; returns (since, the day after 至)."""
    for name, v in (("from", since), ("to", until)):
        if v:
            try:
                date.fromisoformat(v)
            except ValueError:
                raise InputError(f"{name} '{v}' is not a date; use YYYY-MM-DD", zh=f"「{v}」不是日期") from None
    if since and until and since > until:
        raise InputError(f"from {since} is after to {until}; give a period that starts before it ends",
                         zh=f"起始日 {since} 晚于截止日 {until}，请重新选择统计期")
    return since or None, day_after(until or None)


def _stats(svc: Service, a: Auth, since: str, until: str) -> tuple[dict, dict]:
    """The 两违 figures and the 自建房 census's, of the officer's towns (an admin's: all)."""
    s, u = _period(since, until)
    places = None if a.user.is_admin else [t for t in a.user.towns if t]
    start = svc.settings.report.campaign_start
    return (campaign_stats(svc.store, svc.rules, s, u, campaign_start=start, places=places),
            census_stats(svc.store, svc.settings.census, s, u, campaign_start=start, places=places))


@router.get("/stats", response_class=HTMLResponse)
def stats_page(request: Request, a: Auth = Depends(officer), since: str = "", until: str = "",
               svc: Service = Depends(service)):
    st, census = _stats(svc, a, since, until)
    tables = [(title[0], labelled(st[key], "zh")) for key, _, title in BREAKDOWNS]
    funnel = [(k, st["period"][k]) for k in ("found", "verified", "stopped", "filed", "ordered", "demolished",
                                             "rectified", "closed", "rebuilt")]
    top = max([v for _, v in funnel] + [1])
    months = st["by_month"].to_dict("records")
    mtop = max([m["found"] for m in months] + [m["demolished"] + m["rectified"] for m in months] + [1])
    return svc.render(request, "stats.html", {
        "st": st, "period": period_text(st, "zh"), "rows": figure_rows(st, "zh"), "since": since, "until": until,
        "tables": [(t, list(df.columns), df.to_dict("split")["data"]) for t, df in tables],
        "funnel": [(ROW_LABELS[k][0], v, round(100 * v / top)) for k, v in funnel],
        "months": [(m["month"], m["found"], round(100 * m["found"] / mtop), m["demolished"] + m["rectified"],
                    round(100 * (m["demolished"] + m["rectified"]) / mtop)) for m in months],
        "query": f"since={quote(since)}&until={quote(until)}", "census_rows": census_rows(census),
        "census_villages": census["by_village"].to_dict("split")["data"],
        "census_heads": ["乡镇", "村", *CENSUS_FIGURES.values()]})


@router.get("/stats.xlsx")
def stats_xlsx(a: Auth = Depends(officer), since: str = "", until: str = "", svc: Service = Depends(service)):
    st, census = _stats(svc, a, since, until)
    tmp = Path(tempfile.mkdtemp(prefix="stats-", dir=svc.work))
    path = write_stats_xlsx(st, tmp / "stats.xlsx", "zh", svc.settings.district.name, census)
    return FileResponse(path, filename=f"stats_{since or 'all'}_{until or date.today().isoformat()}.xlsx",
                        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))
