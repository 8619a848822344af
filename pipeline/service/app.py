"""The web service: FastAPI app with server-rendered pages (Jinja2) and a JSON API.

Pages: login, flights (status, process now), upload (resumable, chunked), review (the
offline report map beside a case table), case (facts, chips, rule reasons, history,
officer actions), evidence sheet and case-list downloads, users (admin). JSON API under
``/api`` (bearer tokens from ``POST /api/token``) with its OpenAPI spec at
``/api/openapi.json``. Every route except the login page/form and the token endpoint
needs an account and a role. The stages are called, never re-implemented: ingest checks
(``run.register_flight``), ``run.process_flight``, ``track.change_status``,
``report.map.build_map``, ``report.evidence``, ``report.lists.export_cases``.
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import shutil
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pandas as pd
from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from pipeline.errors import InputError, PatrolError, TransitionError
from pipeline.service import auth as A
from pipeline.service.jobs import Processor
from pipeline.service.uploads import UploadNotFound, Uploads, UploadTooLarge

log = logging.getLogger("pipeline.service")
HERE = Path(__file__).parent
STATIC = HERE / "static"
CASE_NO_RE = r"^[A-Za-z0-9_\-]{1,40}$"
FLIGHT_ID_RE = r"^[0-9a-f]{16}$"
CHIP_RE = re.compile(r"^([A-Za-z0-9\-]{1,40})_[A-Za-z0-9_\-]{1,80}\.png$")
NAME_RE = re.compile(r"^[A-Za-z0-9_\-]{1,80}\.(png|jpg)$")
MAPS_KEPT = 24                     # cached review maps (one per officer scope and store state)
EXPORT_FORMATS = ("xlsx", "csv", "geojson", "kml", "kmz", "gpkg")
MEDIA = {"xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "csv": "text/csv",
         "geojson": "application/geo+json", "kml": "application/vnd.google-earth.kml+xml",
         "kmz": "application/vnd.google-earth.kmz", "gpkg": "application/geopackage+sqlite3"}
ACTIONS = {  # lifecycle state -> button text (officer's verb)
    "verified": "Confirm 确认违法", "stopped": "Stop work 制止", "filed": "File 立案",
    "ordered": "Order 责令整改/拆除", "demolished": "Demolished 已拆除", "rectified": "Rectified 已整改",
    "rechecked": "Rechecked 已复查", "closed": "Close 销号", "lawful": "Dismiss: lawful 合法",
    "unfounded": "Dismiss: unfounded 举报不实", "false_positive": "Dismiss: false positive 误报",
    "suspected": "Reopen 重新核查"}


# ---------------------------------------------------------------- errors
class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class NotAuthenticated(HTTPProblem):
    def __init__(self):
        super().__init__(401, "sign in first", {"WWW-Authenticate": "Bearer"})


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


# ---------------------------------------------------------------- request models (API)
class TokenRequest(BaseModel):
    username: str = Field(..., max_length=100)
    password: str = Field(..., max_length=500)


class UploadCreate(BaseModel):
    filename: str = Field(..., min_length=1, max_length=255, description="the file's name (sanitised)")
    size: int = Field(..., ge=1, le=2**50, description="its size in bytes")


class StatusChange(BaseModel):
    to_status: str = Field(..., max_length=40, description="next lifecycle state (rules.yaml)")
    note: str = Field(..., min_length=1, max_length=4000, description="why (kept in the case history)")
    order_no: str | None = Field(None, max_length=100, description="order number (to ordered)")
    deadline: date | None = Field(None, description="整改期限 (to ordered)")
    demolished_area_m2: float | None = Field(None, ge=0, le=1e7, description="(to demolished)")


@dataclass
class Auth:
    user: A.User
    via: Literal["session", "token"]
    csrf: str | None = None


# ---------------------------------------------------------------- the app
def create_app(settings, *, detector: Any = None, store=None) -> FastAPI:
    """The service over the store of ``settings``; ``detector`` (a pipeline.detect.Detector
    or anything ``process_flight`` accepts) replaces the model built from the settings."""
    from pipeline.rules import load_rules
    from pipeline.store import open_store

    svc = settings.service
    rules = load_rules(settings.rules_path)
    lifecycle = rules.lifecycle
    lang = settings.report.language
    if store is None:
        store = open_store(settings.store.url, settings.store.crs, case_prefix=settings.district.case_prefix)
    signer = A.Signer(A.load_secret(svc.secret_file), svc.session_hours * 3600, svc.token_hours * 3600)
    uploads = Uploads(svc.upload_dir, svc.max_upload_mb * 2**20, svc.chunk_mb * 2**20)
    work = Path(svc.work_dir).expanduser().resolve()
    (work / "maps" / "ortho").mkdir(parents=True, exist_ok=True)
    (work / "chips").mkdir(parents=True, exist_ok=True)
    processor = Processor(settings, detector)
    map_lock = threading.Lock()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["css"] = (STATIC / "service.css").read_text(encoding="utf-8")
    templates.env.globals["district"] = settings.district.name

    app = FastAPI(title="Lianwei Patrol 两违巡查", version="1",
                  description="Flight upload, case review and case work. Bearer tokens from POST /api/token.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.store, app.state.processor, app.state.uploads = settings, store, processor, uploads

    # ------------------------------------------------------------ helpers
    from pipeline.report.common import CATEGORIES, label, rule_texts, status_label, text

    def slabel(s: Any) -> str:
        return status_label(s, lang, rules)

    def render(request: Request, name: str, ctx: dict, status: int = 200) -> HTMLResponse:
        a: Auth | None = getattr(request.state, "auth", None)
        base = {"user": a.user if a else None, "csrf": a.csrf if a else "", "slabel": slabel}
        return templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)

    def problem(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": message}, status_code=status, headers=headers)
        if status == 401:
            nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "") \
                if request.method == "GET" else "/"
            return RedirectResponse(f"/login?next={quote(nxt, safe='')}", status_code=303)
        return render(request, "error.html", {"status": status, "message": message}, status)

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, e: HTTPProblem):
        return problem(request, e.status, e.message, e.headers)

    @app.exception_handler(UploadTooLarge)
    async def _too_large(request: Request, e: UploadTooLarge):
        return problem(request, 413, str(e))

    @app.exception_handler(UploadNotFound)
    async def _no_upload(request: Request, e: UploadNotFound):
        return problem(request, 404, str(e))

    @app.exception_handler(TransitionError)
    async def _transition(request: Request, e: TransitionError):
        return problem(request, 409, str(e))

    @app.exception_handler(PatrolError)
    async def _patrol(request: Request, e: PatrolError):
        return problem(request, 422, str(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        if _is_api(request):
            return JSONResponse({"detail": jsonable_errors(e)}, status_code=422)
        return problem(request, 422, "the form or the address is not valid; go back and check it")

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return problem(request, 404, "not found")

    @app.exception_handler(405)
    async def _method(request: Request, e):
        return problem(request, 405, "method not allowed")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    # ------------------------------------------------------------ authentication
    def current(request: Request) -> Auth | None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            user = A.user_for(store, signer.read_token(header[7:].strip()))
            return Auth(user, "token") if user else None
        claims = signer.read_session(request.cookies.get(A.SESSION_COOKIE, ""))
        user = A.user_for(store, claims)
        return Auth(user, "session", claims.get("c")) if user else None

    async def check_csrf(request: Request, a: Auth) -> None:
        if request.method in ("GET", "HEAD", "OPTIONS") or a.via == "token":
            return
        sent = request.headers.get("x-csrf-token")
        if sent is None and request.method == "POST" and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            sent = (await request.form()).get("csrf_token")
        import hmac
        if not (isinstance(sent, str) and a.csrf and hmac.compare_digest(sent, a.csrf)):
            raise HTTPProblem(403, "the form's CSRF token is missing or stale; reload the page and try again")

    def need(*roles: str):
        async def dep(request: Request) -> Auth:
            a = current(request)
            if a is None:
                raise NotAuthenticated()
            request.state.auth = a
            if roles and a.user.role not in roles:
                raise HTTPProblem(403, f"your role ({a.user.role}) may not do this")
            await check_csrf(request, a)
            return a
        return dep

    anyone, patrol, officer, admin = need(), need("patrol", "admin"), need("officer", "admin"), need("admin")

    # ------------------------------------------------------------ data helpers
    def scoped_cases(user: A.User, **filters):
        cases = store.cases(**{k: v for k, v in filters.items() if v})
        if user.is_admin or not len(cases):
            return cases
        keep = [user.sees(t, v) for t, v in zip(cases["town"], cases["village"])]
        return cases[keep]

    def one_case(user: A.User, case_no: str):
        cases = store.cases()
        hit = cases[cases["case_no"] == case_no]
        if not len(hit) or not user.sees(hit["town"].iloc[0], hit["village"].iloc[0]):
            raise HTTPProblem(404, f"case {case_no} not found among your cases")
        return hit

    def flight_row(f: dict) -> dict:
        st = processor.state(f["flight_id"])
        return {"flight_id": f["flight_id"], "captured_at": text(f.get("captured_at")), "team": text(f.get("team")),
                "status": text(f.get("status")), "error": text(f.get("error")),
                "processed_at": text(f.get("processed_at")), "gsd_m": f.get("gsd_m") if pd.notna(f.get("gsd_m")) else None,
                "model_version": text(f.get("model_version")), "file": Path(text(f.get("path"))).name,
                "queue": st or ("nightly" if f.get("status") == "uploaded" else "")}

    def visible_flights(user: A.User) -> list[dict]:
        fl = store.list_flights()
        rows = [flight_row(r) for r in fl.drop(columns=fl.geometry.name).to_dict("records")]
        if not user.is_admin:
            rows = [r for r in rows if r["team"] == user.username]
        return sorted(rows, key=lambda r: r["captured_at"], reverse=True)

    def one_flight(user: A.User, flight_id: str) -> dict:
        f = store.get_flight(flight_id)
        if f is None or (not user.is_admin and f.get("team") != user.username):
            raise HTTPProblem(404, f"flight {flight_id} not found among your flights")
        f.pop("footprint", None)
        return flight_row(f)

    def case_summary(c: dict) -> dict:
        pr = c.get("reasons", {}).get("priority") if isinstance(c.get("reasons"), dict) else None
        return {"case_no": c["case_no"], "status": text(c.get("status")), "status_label": slabel(c.get("status")),
                "category": text(c.get("category")), "category_label": label(CATEGORIES, c.get("category"), lang),
                "town": text(c.get("town")), "village": text(c.get("village")), "owner": text(c.get("owner")),
                "area_m2": None if pd.isna(c.get("area_m2")) else round(float(c["area_m2"]), 1),
                "priority": text(pr), "first_seen_at": text(c.get("first_seen_at"))[:10],
                "assignee": text(c.get("assignee")), "deadline": text(c.get("deadline"))[:10]}

    def chips_for(case_gdf) -> list[dict]:
        """Evidence chips of one case (cut now if none recorded), copied under work/chips."""
        from pipeline.report.common import safe_name
        from pipeline.report.evidence import case_chips, make_chips
        case_no = case_gdf["case_no"].iloc[0]
        ev = store.evidence(case_no)
        rows = case_chips(ev, case_no)
        if not rows:
            make_chips(store, case_gdf, store.list_flights(), work, settings.report.chip_margin_m, progress=False)
            rows = case_chips(store.evidence(case_no), case_no)
        out = []
        for r in rows:
            src = Path(r["chip_path"]).resolve()
            name = src.name if src.parent == work / "chips" and CHIP_RE.match(src.name) else \
                f"{safe_name(case_no)}_{safe_name(r['flight_id'])}_{r['role']}.png"
            dest = work / "chips" / name
            if src != dest and (not dest.exists() or dest.stat().st_mtime < src.stat().st_mtime):
                shutil.copyfile(src, dest)     # a chip cut by `patrol report` elsewhere
            out.append({**r, "chip_path": str(dest), "name": name, "url": f"/chips/{quote(name)}",
                        "date": text(r.get("captured_at"))[:10]})
        return out

    def case_detail(user: A.User, case_no: str) -> dict:
        from pipeline.report.evidence import case_facts
        g = one_case(user, case_no)
        c = g.iloc[0].to_dict()
        ev = store.events(case_no)
        history = [{"at": text(e["at"]), "actor": text(e["actor"]), "from_status": text(e["from_status"]),
                    "to_status": text(e["to_status"]), "from_label": slabel(e["from_status"]) if text(e["from_status"]) else "",
                    "to_label": slabel(e["to_status"]), "note": text(e["note"])} for e in ev.to_dict("records")]
        centre = g.to_crs("EPSG:4326").geometry.iloc[0].centroid
        return {**case_summary(c), "facts": case_facts(c, lang, rules), "reasons": rule_texts(c, lang, rules),
                "flags": list(c.get("flags") or []), "history": history,
                "allowed": lifecycle.allowed(text(c.get("status")) or lifecycle.initial),
                "lon": round(centre.x, 7), "lat": round(centre.y, 7)}

    def can_act(user: A.User) -> bool:
        return user.role in ("officer", "admin")

    # ------------------------------------------------------------ login / logout (public)
    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/", error: str = ""):
        token = signer.login_csrf()
        resp = render(request, "login.html", {"next": _safe_next(next), "login_csrf": token,
                                              "error": error[:200]})
        resp.set_cookie(A.LOGIN_CSRF_COOKIE, token, httponly=True, samesite="lax", max_age=3600)
        return resp

    @app.post("/login", include_in_schema=False)
    def login(request: Request, username: str = Form("", max_length=100), password: str = Form("", max_length=500),
              csrf_token: str = Form("", max_length=500), next: str = Form("/", max_length=2000)):
        if not signer.check_login_csrf(request.cookies.get(A.LOGIN_CSRF_COOKIE), csrf_token):
            raise HTTPProblem(403, "the login form expired (CSRF token missing); reload the page and sign in")
        user = A.authenticate(store, username, password)
        if user is None:
            return RedirectResponse(f"/login?error=1&next={quote(_safe_next(next), safe='')}", status_code=303)
        cookie, _ = signer.session(user)
        resp = RedirectResponse(_safe_next(next), status_code=303)
        resp.set_cookie(A.SESSION_COOKIE, cookie, httponly=True, samesite="lax",
                        max_age=int(svc.session_hours * 3600), path="/")
        resp.delete_cookie(A.LOGIN_CSRF_COOKIE)
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout(a: Auth = Depends(anyone)):
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(A.SESSION_COOKIE, path="/")
        return resp

    @app.get("/", include_in_schema=False)
    def home(a: Auth = Depends(anyone)):
        return RedirectResponse("/flights" if a.user.role == "patrol" else "/review", status_code=303)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str, a: Auth = Depends(anyone)):
        p = STATIC / name
        if not re.match(r"^[a-z_\-]+\.(js|css)$", name) or not p.is_file():
            raise HTTPProblem(404, "not found")
        return FileResponse(p, headers={"Cache-Control": "private, max-age=300"})

    # ------------------------------------------------------------ flights and upload (pages)
    @app.get("/flights", response_class=HTMLResponse, include_in_schema=False)
    def flights_page(request: Request, a: Auth = Depends(patrol)):
        return render(request, "flights.html", {"flights": visible_flights(a.user),
                                                "process_now": svc.process_now and a.user.is_admin})

    @app.get("/upload", response_class=HTMLResponse, include_in_schema=False)
    def upload_page(request: Request, a: Auth = Depends(patrol)):
        return render(request, "upload.html", {"max_mb": svc.max_upload_mb, "chunk_bytes": uploads.chunk_bytes})

    @app.post("/flights/{flight_id}/process", include_in_schema=False)
    def process_form(flight_id: str, a: Auth = Depends(admin)):
        start_processing(a.user, flight_id)
        return RedirectResponse("/flights", status_code=303)

    def start_processing(user: A.User, flight_id: str) -> dict:
        if not re.match(FLIGHT_ID_RE, flight_id):
            raise HTTPProblem(404, f"flight {flight_id} not found")
        if not svc.process_now:
            raise HTTPProblem(403, "processing now is switched off (service.process_now); the nightly run will do it")
        one_flight(user, flight_id)
        processor.submit(flight_id)
        return one_flight(user, flight_id)

    # ------------------------------------------------------------ review (pages)
    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def review_page(request: Request, a: Auth = Depends(officer)):
        rows = [case_summary(c) for c in scoped_cases(a.user).to_dict("records")]
        statuses = sorted({r["status"] for r in rows}, key=lambda s: list(lifecycle.states).index(s)
                          if s in lifecycle.states else 99)
        return render(request, "review.html", {"cases": rows, "statuses": [(s, slabel(s)) for s in statuses],
                                               "formats": EXPORT_FORMATS})

    @app.get("/review/map", response_class=HTMLResponse, include_in_schema=False)
    def review_map(a: Auth = Depends(officer)):
        return HTMLResponse(build_review_map(a.user).read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy":
                                     "default-src 'self' data: blob: 'unsafe-inline' 'unsafe-eval'"})

    @app.get("/review/ortho/{name}", include_in_schema=False)
    def review_ortho(name: str, a: Auth = Depends(officer)):
        p = work / "maps" / "ortho" / name
        if not NAME_RE.match(name) or not p.is_file():
            raise HTTPProblem(404, "not found")
        return FileResponse(p)

    def build_review_map(user: A.User) -> Path:
        from pipeline.report.map import build_map
        cases = scoped_cases(user)
        flights = store.list_flights()
        events = store.events()
        stamp = json.dumps([sorted(user.towns) if not user.is_admin else "*", len(cases),
                            text(cases["updated_at"].max()) if len(cases) else "",
                            int(events["event_id"].max()) if len(events) else 0,
                            [[f, s] for f, s in zip(flights["flight_id"], flights["status"])]])
        key = hashlib.sha256(stamp.encode()).hexdigest()[:20]
        out = work / "maps" / f"{key}.html"
        with map_lock:
            if out.is_file():
                return out
            try:
                build_map(store, settings, out, cases=cases, evidence=pd.DataFrame(), rules=rules,
                          ortho_dir=work / "maps" / "ortho", sees=None if user.is_admin else user.sees)
            except PatrolError as e:
                out.write_text(f"<!doctype html><meta charset='utf-8'><p>{html.escape(str(e))}</p>",
                               encoding="utf-8")
                return out
            page = out.read_text(encoding="utf-8")
            hook = (STATIC / "map_hook.js").read_text(encoding="utf-8").replace("</script", "<\\/script")
            page = page.replace("</html>", f"<script>{hook}</script>\n</html>", 1)
            out.write_text(page, encoding="utf-8")
            for old in sorted((work / "maps").glob("*.html"), key=lambda p: p.stat().st_mtime)[:-MAPS_KEPT]:
                old.unlink(missing_ok=True)
        return out

    @app.get("/cases/{case_no}", response_class=HTMLResponse, include_in_schema=False)
    def case_page(request: Request, case_no: str, a: Auth = Depends(officer)):
        d = case_detail(a.user, case_no)
        chips = chips_for(one_case(a.user, case_no))
        actions = [(s, ACTIONS.get(s, s), slabel(s)) for s in d["allowed"]]
        return render(request, "case.html", {"c": d, "chips": chips, "actions": actions,
                                             "can_act": can_act(a.user)})

    @app.post("/cases/{case_no}/status", include_in_schema=False)
    def case_action(case_no: str, a: Auth = Depends(officer), to_status: str = Form(..., max_length=40),
                    note: str = Form("", max_length=4000), order_no: str = Form("", max_length=100),
                    deadline: str = Form("", max_length=20)):
        dl = None
        if deadline:
            try:
                dl = date.fromisoformat(deadline)
            except ValueError:
                raise InputError(f"deadline '{deadline}' is not a date; use YYYY-MM-DD") from None
        apply_status(a.user, case_no, StatusChange.model_construct(
            to_status=to_status, note=note, order_no=order_no or None, deadline=dl, demolished_area_m2=None))
        return RedirectResponse(f"/cases/{quote(case_no)}#history", status_code=303)

    def apply_status(user: A.User, case_no: str, ch: StatusChange) -> dict:
        from pipeline.track import change_status
        one_case(user, case_no)
        if not (ch.note or "").strip():
            raise InputError(f"case {case_no}: give a note with the status change (it goes in the history)")
        kw = {k: v for k, v in (("order_no", ch.order_no), ("deadline", ch.deadline),
                                ("demolished_area_m2", ch.demolished_area_m2)) if v is not None}
        ev = change_status(store, case_no, ch.to_status, user.username, ch.note.strip(), lifecycle, **kw)
        return {k: text(v) if k == "at" else v for k, v in ev.items()}

    @app.get("/chips/{name}", include_in_schema=False)
    def chip(name: str, a: Auth = Depends(officer)):
        m = CHIP_RE.match(name)
        p = work / "chips" / name
        if not m or not p.is_file():
            raise HTTPProblem(404, "not found")
        one_case(a.user, m.group(1))
        return FileResponse(p, media_type="image/png")

    @app.get("/sheets/{case_no}", response_class=HTMLResponse, include_in_schema=False)
    def sheet(case_no: str, a: Auth = Depends(officer)):
        from pipeline.report.evidence import write_evidence_sheets
        g = one_case(a.user, case_no)
        ev = pd.DataFrame(chips_for(g))
        paths = write_evidence_sheets(store, g, ev, work, settings, rules, store.list_flights(), None,
                                      progress=False)
        return HTMLResponse(paths[case_no].read_text(encoding="utf-8"))

    @app.get("/sheets/location/{name}", include_in_schema=False)
    def sheet_location(name: str, a: Auth = Depends(officer)):
        p = work / "evidence" / "location" / name
        if not NAME_RE.match(name) or not p.is_file():
            raise HTTPProblem(404, "not found")
        one_case(a.user, name.rsplit(".", 1)[0])
        return FileResponse(p)

    @app.get("/export/cases.{fmt}", include_in_schema=False)
    def export_page(fmt: str, a: Auth = Depends(officer), status: str = ""):
        return export(a.user, fmt, status or None)

    def export(user: A.User, fmt: str, status: str | None) -> FileResponse:
        import tempfile

        from pipeline.report.lists import export_cases
        if fmt not in EXPORT_FORMATS:
            raise HTTPProblem(404, f"no case list as '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
        cases = scoped_cases(user, status=status)
        tmp = Path(tempfile.mkdtemp(prefix="export-", dir=work))
        path = export_cases(cases, tmp / f"cases.{fmt}", fmt, lang=lang, rules=rules,
                            evidence=store.evidence() if fmt in ("xlsx", "kmz") else None, crs=store.crs)
        from starlette.background import BackgroundTask
        return FileResponse(path, media_type=MEDIA[fmt], filename=f"cases_{date.today():%Y%m%d}.{fmt}",
                            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))

    # ------------------------------------------------------------ users (admin page)
    @app.get("/admin/users", response_class=HTMLResponse, include_in_schema=False)
    def users_page(request: Request, a: Auth = Depends(admin)):
        return render(request, "users.html", {"users": A.list_users(store), "roles": A.ROLES})

    @app.post("/admin/users", include_in_schema=False)
    def users_add(a: Auth = Depends(admin), username: str = Form(..., max_length=100),
                  password: str = Form(..., max_length=500), role: str = Form(..., max_length=20),
                  towns: str = Form("", max_length=2000), display_name: str = Form("", max_length=200)):
        A.add_user(store, username, password, role, re.split(r"[,，;\s]+", towns), display_name)
        return RedirectResponse("/admin/users", status_code=303)

    @app.post("/admin/users/{username}/disable", include_in_schema=False)
    def users_disable(username: str, a: Auth = Depends(admin), disabled: int = Form(1)):
        if username == a.user.username:
            raise InputError("you cannot disable your own account; ask another admin")
        A.set_disabled(store, username, bool(disabled))
        return RedirectResponse("/admin/users", status_code=303)

    # ------------------------------------------------------------ JSON API
    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi_spec(a: Auth = Depends(anyone)):
        return JSONResponse(app.openapi())

    @app.post("/api/token", tags=["auth"], summary="Exchange a user name and password for a bearer token")
    def api_token(body: TokenRequest) -> dict:
        user = A.authenticate(store, body.username, body.password)
        if user is None:
            raise HTTPProblem(401, "wrong user name or password, or the account is disabled",
                              {"WWW-Authenticate": "Bearer"})
        return {"access_token": signer.token(user), "token_type": "bearer",
                "expires_in": int(svc.token_hours * 3600)}

    @app.get("/api/me", tags=["auth"], summary="The signed-in account")
    def api_me(a: Auth = Depends(anyone)) -> dict:
        return a.user.public()

    @app.get("/api/flights", tags=["flights"], summary="Flights and their status (patrol: their own)")
    def api_flights(a: Auth = Depends(patrol)) -> list[dict]:
        return visible_flights(a.user)

    @app.get("/api/flights/{flight_id}", tags=["flights"], summary="One flight and its status")
    def api_flight(flight_id: str, a: Auth = Depends(patrol)) -> dict:
        if not re.match(FLIGHT_ID_RE, flight_id):
            raise HTTPProblem(404, f"flight {flight_id} not found")
        return one_flight(a.user, flight_id)

    @app.post("/api/flights/{flight_id}/process", tags=["flights"], status_code=202,
              summary="Process the flight now, in the background (admin)")
    def api_process(flight_id: str, a: Auth = Depends(admin)) -> dict:
        return start_processing(a.user, flight_id)

    @app.post("/api/uploads", tags=["uploads"], status_code=201,
              summary="Start a resumable upload of an orthophoto (GeoTIFF) or a zip holding one")
    def api_upload_create(body: UploadCreate, a: Auth = Depends(patrol)) -> dict:
        return upload_info(uploads.create(body.filename, body.size, a.user.username))

    @app.get("/api/uploads/{upload_id}", tags=["uploads"], summary="Bytes received so far (resume from offset)")
    def api_upload_get(upload_id: str, a: Auth = Depends(patrol)) -> dict:
        return upload_info(uploads.get(upload_id, a.user.username, a.user.is_admin))

    @app.put("/api/uploads/{upload_id}", tags=["uploads"],
             summary="Send the next chunk (raw bytes) at `offset`",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def api_upload_put(request: Request, upload_id: str, offset: int = Query(..., ge=0, le=2**50),
                             a: Auth = Depends(patrol)) -> dict:
        info = await uploads.write_chunk(upload_id, a.user.username, offset, request.stream(), a.user.is_admin)
        return upload_info(info)

    @app.post("/api/uploads/{upload_id}/finish", tags=["uploads"],
              summary="Check the complete upload with the ingest checks and register its flight")
    def api_upload_finish(upload_id: str, a: Auth = Depends(patrol)) -> dict:
        from pipeline.run import register_flight
        path = uploads.finish(upload_id, a.user.username, a.user.is_admin)
        try:
            flight = register_flight(store, path, settings, team=a.user.username)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if path.suffix.lower() == ".zip":                        # unpacked into ingest.work_dir
            path.unlink(missing_ok=True)
        elif Path(flight["path"]).resolve() != path.resolve():   # the same flight was uploaded before
            if Path(flight["path"]).is_file():
                path.unlink(missing_ok=True)
            else:
                with store.transaction():
                    store.upsert_flight({"flight_id": flight["flight_id"], "path": str(path)})
        return one_flight(a.user, flight["flight_id"]) if (a.user.is_admin or flight.get("team") == a.user.username) \
            else {"flight_id": flight["flight_id"], "status": flight["status"]}

    @app.get("/api/cases", tags=["cases"], summary="Cases of your towns/villages (filter, search)")
    def api_cases(a: Auth = Depends(officer), status: str | None = Query(None, max_length=40),
                  town: str | None = Query(None, max_length=100), q: str | None = Query(None, max_length=200)) -> list[dict]:
        rows = [case_summary(c) for c in scoped_cases(a.user, status=status, town=town).to_dict("records")]
        if q:
            ql = q.lower()
            rows = [r for r in rows if any(ql in str(v).lower() for v in r.values())]
        return rows

    @app.get("/api/cases/{case_no}", tags=["cases"], summary="One case: facts, rule reasons, history, allowed next states")
    def api_case(case_no: str, a: Auth = Depends(officer)) -> dict:
        return case_detail(a.user, case_no)

    @app.post("/api/cases/{case_no}/status", tags=["cases"],
              summary="Move the case to its next lifecycle state with a note")
    def api_case_status(case_no: str, body: StatusChange, a: Auth = Depends(officer)) -> dict:
        return apply_status(a.user, case_no, body)

    @app.get("/api/cases.{fmt}", tags=["cases"], summary="Download the case list (xlsx, csv, geojson, kml, kmz, gpkg)",
             response_class=FileResponse)
    def api_export(fmt: Literal["xlsx", "csv", "geojson", "kml", "kmz", "gpkg"], a: Auth = Depends(officer),
                   status: str | None = Query(None, max_length=40)):
        return export(a.user, fmt, status)

    def upload_info(info: dict) -> dict:
        return {k: info[k] for k in ("upload_id", "filename", "size", "offset", "created")} | \
            {"chunk_size": uploads.chunk_bytes, "complete": info["offset"] == info["size"]}

    return app


def jsonable_errors(e: RequestValidationError) -> list[dict]:
    out = []
    for err in e.errors():
        out.append({"loc": [str(x) for x in err.get("loc", ())], "msg": str(err.get("msg", "")),
                    "type": str(err.get("type", ""))})
    return out


def _safe_next(nxt: str) -> str:
    """Only a local path (no scheme, no //host) may follow the login."""
    if not isinstance(nxt, str) or not re.fullmatch(r"/(?![/\\])[\x21-\x7e]*", nxt) or "\\" in nxt:
        return "/"
    return nxt


def serve(settings, host: str | None = None, port: int | None = None, detector: Any = None) -> None:
    """Run the service with uvicorn (blocking)."""
    import uvicorn
    app = create_app(settings, detector=detector)
    uvicorn.run(app, host=host or settings.service.host, port=int(port or settings.service.port),
                log_level="warning", access_log=False, proxy_headers=False)
