"""Officers' pages: the review map beside the case table, the case page and its actions, chips,
evidence sheets and case-list downloads."""
from __future__ import annotations

from datetime import date
from urllib.parse import quote

import pandas as pd
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from pipeline.cases.casework import set_facts
from pipeline.core.errors import InputError
from pipeline.report.documents import KINDS, kind_label, print_document, reprint_document
from pipeline.report.evidence import write_evidence_sheets
from pipeline.service.context import (
    CHIP_RE,
    EXPORT_FORMATS,
    NAME_RE,
    Auth,
    HTTPProblem,
    Service,
    StatusChange,
    officer,
    service,
)

router = APIRouter(include_in_schema=False)
ACTIONS = {  # lifecycle state -> button text (the officer's verb; English in service/messages.py)
    "verified": "确认违法", "stopped": "制止", "filed": "立案", "ordered": "责令整改/拆除", "demolished": "已拆除",
    "rectified": "已整改", "rechecked": "已复查", "closed": "销号", "lawful": "合法（撤销）",
    "unfounded": "举报不实（撤销）", "false_positive": "误报（撤销）", "suspected": "重新核查"}


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request, a: Auth = Depends(officer), svc: Service = Depends(service)):
    rows = [svc.case_summary(c) for c in svc.scoped_cases(a.user).to_dict("records")]
    states = list(svc.lifecycle.states)
    statuses = sorted({r["status"] for r in rows}, key=lambda s: states.index(s) if s in states else 99)
    return svc.render(request, "review.html", {"cases": rows, "statuses": [(s, svc.slabel(s)) for s in statuses],
                                               "formats": EXPORT_FORMATS})


@router.get("/review/map", response_class=HTMLResponse)
def review_map(a: Auth = Depends(officer), svc: Service = Depends(service)):
    return HTMLResponse(svc.review_map(a.user).read_text(encoding="utf-8"),
                        headers={"Content-Security-Policy":
                                 "default-src 'self' data: blob: 'unsafe-inline' 'unsafe-eval'"})


@router.get("/review/ortho/{name}")
def review_ortho(name: str, a: Auth = Depends(officer), svc: Service = Depends(service)):
    p = svc.work / "maps" / "ortho" / name
    if not NAME_RE.match(name) or not p.is_file() or name not in svc.orthos_of(a.user):   # this officer's map only
        raise HTTPProblem(404, "not found", zh="未找到")
    return FileResponse(p)


@router.get("/cases/{case_no}", response_class=HTMLResponse)
def case_page(request: Request, case_no: str, a: Auth = Depends(officer), svc: Service = Depends(service)):
    d = svc.case_detail(a.user, case_no)
    g = svc.one_case(a.user, case_no)
    chips = svc.chips_for(g)
    heights = svc.height_chips_for(g)
    actions = [(s, ACTIONS.get(s, s), svc.slabel(s)) for s in d["allowed"]]
    docs = [{"doc_no": r["doc_no"], "kind": kind_label(r["kind"]), "at": str(r["issued_at"])[:16],
             "actor": r["actor"], "url": f"/documents/{quote(r['doc_no'])}.pdf"}
            for r in svc.store.documents(case_no=case_no).to_dict("records")]
    assignees = [(u.username, u.display_name or u.username) for u in svc.officers_for(d["town"], d["village"])] \
        if a.user.is_admin else []
    return svc.render(request, "case.html", {"c": d, "chips": chips, "heights": heights, "actions": actions,
                                             "kinds": KINDS,
                                             "docs": docs, "assignees": assignees,
                                             "can_act": a.user.role in ("officer", "admin")})


def _pdf(row: dict, pdf: bytes) -> Response:
    name = quote(f"{row['case_no']}_{row['doc_no']}.pdf")
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": f"inline; filename*=UTF-8''{name}", "X-Document-No": quote(row["doc_no"])})


@router.post("/cases/{case_no}/documents/{kind}")
def print_case_document(case_no: str, kind: str, a: Auth = Depends(officer), new: str = Form(""),
                        svc: Service = Depends(service)):
    """打印: the case's document of this kind (its first print numbers it; ``new`` numbers another)."""
    if kind not in KINDS:
        raise HTTPProblem(404, f"no document '{kind}'; one of {', '.join(KINDS)}")
    svc.one_case(a.user, case_no)
    row, pdf, _ = print_document(svc.store, svc.settings, svc.rules, kind, case_no, a.user.username, new=bool(new))
    return _pdf(row, pdf)


@router.get("/documents/{doc_no}.pdf")
def reprint_case_document(doc_no: str, a: Auth = Depends(officer), svc: Service = Depends(service)):
    hit = svc.store.documents(doc_no=doc_no)
    if not len(hit):
        raise HTTPProblem(404, f"document {doc_no} not found")
    svc.one_case(a.user, hit["case_no"].iloc[0])
    row, pdf, _ = reprint_document(svc.store, svc.settings, doc_no)
    return _pdf(row, pdf)


@router.post("/cases/{case_no}/status")
def case_action(case_no: str, a: Auth = Depends(officer), to_status: str = Form(..., max_length=40),
                note: str = Form("", max_length=4000), order_no: str = Form("", max_length=100),
                deadline: str = Form("", max_length=20), demolished_area_m2: str = Form("", max_length=20),
                svc: Service = Depends(service)):
    dl = None
    if deadline:
        try:
            dl = date.fromisoformat(deadline)
        except ValueError:
            raise InputError(f"deadline '{deadline}' is not a date; use YYYY-MM-DD",
                             zh=f"整改期限「{deadline}」不是日期") from None
    svc.apply_status(a.user, case_no, StatusChange.model_construct(
        to_status=to_status, note=note, order_no=order_no or None, deadline=dl,
        demolished_area_m2=_area(demolished_area_m2) if to_status == "demolished" else None))
    return RedirectResponse(f"/cases/{quote(case_no)}#history", status_code=303)


def _area(text: str) -> float | None:
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"demolished area '{text}' is not a number of m²; give the area measured",
                         zh=f"拆除面积「{text}」不是数字，请填写实测面积（m²）") from None


@router.post("/cases/{case_no}/facts")
def case_facts_form(case_no: str, a: Auth = Depends(officer), party: str = Form("", max_length=100),
                    phone: str = Form("", max_length=40), id_number: str = Form("", max_length=18),
                    address: str = Form("", max_length=200), floors: str = Form("", max_length=10),
                    floor_area_m2: str = Form("", max_length=20), unit: str = Form("", max_length=100),
                    remark: str = Form("", max_length=2000), svc: Service = Depends(service)):
    """当事人与建筑: what the officer found on site, for the 台账 and the documents."""
    svc.one_case(a.user, case_no)
    set_facts(svc.store, case_no, {"party": party, "phone": phone, "id_number": id_number, "address": address,
                                   "floors": floors, "floor_area_m2": floor_area_m2, "unit": unit, "remark": remark},
              a.user.username)
    return RedirectResponse(f"/cases/{quote(case_no)}#site", status_code=303)


@router.post("/cases/{case_no}/media")
def case_media_form(case_no: str, a: Auth = Depends(officer), file: UploadFile = File(...),
                    note: str = Form("", max_length=2000), lat: str = Form("", max_length=30),
                    lon: str = Form("", max_length=30), svc: Service = Depends(service)):
    """现场照片: a photo or video from the phone's camera."""
    svc.add_media(a.user, case_no, svc.read_media(file), file.filename or "photo", note, lon, lat)
    return RedirectResponse(f"/cases/{quote(case_no)}#media", status_code=303)


@router.get("/media/{media_id}")
def media_file(media_id: str, a: Auth = Depends(officer), svc: Service = Depends(service)):
    return svc.media_file(a.user, media_id)


@router.get("/media/{media_id}/original")
def media_original(media_id: str, a: Auth = Depends(officer), svc: Service = Depends(service)):
    return svc.media_file(a.user, media_id, original=True)


@router.get("/chips/{name}")
def chip(name: str, a: Auth = Depends(officer), svc: Service = Depends(service)):
    m = CHIP_RE.match(name)
    p = svc.work / "chips" / name
    if not m or not p.is_file():
        raise HTTPProblem(404, "not found", zh="未找到")
    svc.one_case(a.user, m.group(1))
    return FileResponse(p, media_type="image/png")


@router.get("/sheets/{case_no}", response_class=HTMLResponse)
def sheet(case_no: str, a: Auth = Depends(officer), svc: Service = Depends(service)):
    g = svc.one_case(a.user, case_no)
    paths = write_evidence_sheets(svc.store, g, pd.DataFrame(svc.chips_for(g)), svc.work, svc.settings, svc.rules,
                                  svc.store.list_flights(), None, progress=False)
    return HTMLResponse(paths[case_no].read_text(encoding="utf-8"))


@router.get("/sheets/location/{name}")
def sheet_location(name: str, a: Auth = Depends(officer), svc: Service = Depends(service)):
    p = svc.work / "evidence" / "location" / name
    if not NAME_RE.match(name) or not p.is_file():
        raise HTTPProblem(404, "not found", zh="未找到")
    svc.one_case(a.user, name.rsplit(".", 1)[0])
    return FileResponse(p)


@router.get("/export/cases.{fmt}")
def export_page(fmt: str, a: Auth = Depends(officer), status: str = "", svc: Service = Depends(service)):
    return svc.export(a.user, fmt, status or None)
