"""What every router of the web service shares: the service's state (settings, store, rules,
signer, uploads, processor, templates), who is asking (``Auth``, the role dependencies) and
the case/flight views the pages and the API both show. The stages are called, never
re-implemented: ``run.register_flight``, ``run.process_flight`` (through ``jobs.Processor``),
``track.change_status``, ``report.map.build_map``, ``report.evidence``, ``report.lists``.
"""
from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pandas as pd
from fastapi import Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from pipeline.cases.casework import CASE_FACTS, change_status, redraw_outline
from pipeline.cases.manual import add_manual_case, outline_from_geojson, report_from_ground
from pipeline.cases.media import add_media
from pipeline.core import accounts
from pipeline.core.errors import InputError, PatrolError
from pipeline.core.words import FLIGHT_STATUS, MODEL_ACTIONS, MODEL_STATES, ROLE_LABELS, translate
from pipeline.report.common import (
    rule_texts,
    safe_name,
    status_label,
    text,
)
from pipeline.report.documents import check_templates
from pipeline.report.evidence import case_chips, case_facts, height_chips, make_chips, phase_label
from pipeline.report.lists import export_cases
from pipeline.report.map import build_map
from pipeline.service import auth as A
from pipeline.service.jobs import Processor
from pipeline.service.uploads import Uploads
from pipeline.service.views import case_summary, flight_row, history_rows, media_rows, upload_info
from pipeline.store import open_store

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


# ---------------------------------------------------------------- errors
class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None, zh: str | None = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.zh = status, message, headers or {}, zh


class NotAuthenticated(HTTPProblem):
    def __init__(self):
        super().__init__(401, "sign in first", {"WWW-Authenticate": "Bearer"}, zh="请先登录")


SERVER_PATH = re.compile(r"(?<![\w:/.~])/(?:[^\s/'\"]+/)+(?=[^\s/'\"])")


def without_server_paths(message: str) -> str:
    """A message for a browser: every absolute path cut to its last name (no server layout)."""
    return SERVER_PATH.sub("", str(message))


def event_json(ev: dict) -> dict:
    """A case event as the API answers it (its time as text)."""
    return {k: text(v) if k == "at" else v for k, v in ev.items()}


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


# ---------------------------------------------------------------- request models (API)
class StatusChange(BaseModel):
    to_status: str = Field(..., max_length=40, description="next lifecycle state (rules.yaml)")
    note: str = Field(..., min_length=1, max_length=4000, description="why (kept in the case history)")
    order_no: str | None = Field(None, max_length=100, description="order number (to ordered)")
    deadline: date | None = Field(None, description="整改期限 (to ordered)")
    demolished_area_m2: float | None = Field(None, ge=0, le=1e7, description="(to demolished)")


@dataclass
class Auth:
    user: accounts.User
    via: Literal["session", "token"]
    csrf: str | None = None


# ---------------------------------------------------------------- the service
@dataclass
class Service:
    """The state of one running service and the views its routers share."""
    settings: Any
    store: Any
    rules: Any
    signer: A.Signer
    uploads: Uploads
    processor: Processor
    work: Path
    templates: Jinja2Templates
    guard: A.LoginGuard
    map_lock: threading.Lock = field(default_factory=threading.Lock)
    map_orthos: dict = field(default_factory=dict)      # review map page -> the overlays it draws

    @classmethod
    def start(cls, settings, detector: Any = None, store=None) -> "Service":
        svc = settings.service
        rules = settings.rules
        check_templates(settings)
        if store is None:
            store = open_store(settings.store.url, settings.store.crs, case_prefix=settings.district.case_prefix)
        work = Path(svc.work_dir).expanduser().resolve()
        (work / "maps" / "ortho").mkdir(parents=True, exist_ok=True)
        (work / "chips").mkdir(parents=True, exist_ok=True)
        templates = Jinja2Templates(directory=str(HERE / "templates"))
        templates.env.globals["css"] = (STATIC / "service.css").read_text(encoding="utf-8")
        templates.env.globals["district"] = settings.district.name
        templates.env.globals["T"] = partial(translate, lang=settings.report.language)
        templates.env.globals["lang"] = settings.report.language
        templates.env.globals["ROLE_LABELS"] = ROLE_LABELS
        templates.env.globals["MODEL_STATES"] = MODEL_STATES
        templates.env.globals["MODEL_ACTIONS"] = MODEL_ACTIONS
        templates.env.globals["FLIGHT_STATUS"] = FLIGHT_STATUS
        return cls(settings, store, rules,
                   A.Signer(A.load_secret(svc.secret_file), svc.session_hours * 3600, svc.token_hours * 3600),
                   Uploads(svc.upload_dir, svc.max_upload_mb * 2**20, svc.chunk_mb * 2**20, settings.ingest,
                           svc.upload_quota_mb),
                   Processor(settings, detector), work, templates, A.LoginGuard.from_settings(svc))

    @property
    def lifecycle(self):
        return self.rules.lifecycle

    @property
    def lang(self) -> str:
        return self.settings.report.language

    def slabel(self, s: Any) -> str:
        return status_label(s, self.lang, self.rules)

    # ------------------------------------------------------------ responses
    def render(self, request: Request, name: str, ctx: dict, status: int = 200) -> HTMLResponse:
        a: Auth | None = getattr(request.state, "auth", None)
        base = {"user": a.user if a else None, "csrf": a.csrf if a else "", "slabel": self.slabel}
        return self.templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)

    def problem(self, request: Request, status: int, message: str, headers: dict | None = None,
                zh: str | None = None) -> Response:
        """The refusal as a page (in Chinese when report.language is zh and there is a Chinese
        line) or, for the API, JSON with ``detail`` and, when there is one, ``detail_zh``."""
        message = without_server_paths(message)
        zh = without_server_paths(zh) if zh else None
        if is_api(request):
            body = {"detail": message, **({"detail_zh": zh} if zh else {})}
            return JSONResponse(body, status_code=status, headers=headers)
        if zh and self.lang == "zh":
            message = zh
        if status == 401:
            nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "") \
                if request.method == "GET" else "/"
            return RedirectResponse(f"/login?next={quote(nxt, safe='')}", status_code=303)
        return self.render(request, "error.html", {"status": status, "message": message}, status)

    # ------------------------------------------------------------ who is asking
    def current(self, request: Request) -> Auth | None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            user = A.user_for(self.store, self.signer.read_token(header[7:].strip()))
            return Auth(user, "token") if user else None
        claims = self.signer.read_session(request.cookies.get(A.SESSION_COOKIE, ""))
        user = A.user_for(self.store, claims)
        return Auth(user, "session", claims.get("c")) if user else None

    # ------------------------------------------------------------ flights
    def flight_row(self, f: dict) -> dict:
        return flight_row(f, self.processor.state(f["flight_id"]))

    def visible_flights(self, user: accounts.User) -> list[dict]:
        fl = self.store.list_flights()
        rows = [self.flight_row(r) for r in fl.drop(columns=fl.geometry.name).to_dict("records")]
        if not user.is_admin:
            rows = [r for r in rows if r["team"] == user.username]
        return sorted(rows, key=lambda r: r["captured_at"], reverse=True)

    def one_flight(self, user: accounts.User, flight_id: str) -> dict:
        f = self.store.get_flight(flight_id)
        if f is None or (not user.is_admin and f.get("team") != user.username):
            raise HTTPProblem(404, f"flight {flight_id} not found among your flights")
        f.pop("footprint", None)
        return self.flight_row(f)

    def start_processing(self, user: accounts.User, flight_id: str) -> dict:
        if not re.match(FLIGHT_ID_RE, flight_id):
            raise HTTPProblem(404, f"flight {flight_id} not found")
        if not self.settings.service.process_now:
            raise HTTPProblem(403, "processing now is switched off (service.process_now); the nightly run will do it")
        self.one_flight(user, flight_id)
        self.processor.submit(flight_id)
        return self.one_flight(user, flight_id)

    def upload_info(self, info: dict) -> dict:
        return upload_info(info, self.uploads.chunk_bytes)

    # ------------------------------------------------------------ cases
    def scoped_cases(self, user: accounts.User, **filters):
        cases = self.store.cases(**{k: v for k, v in filters.items() if v})
        if user.is_admin or not len(cases):
            return cases
        keep = [user.sees(t, v) for t, v in zip(cases["town"], cases["village"])]
        return cases[keep]

    def one_case(self, user: accounts.User, case_no: str):
        cases = self.store.cases()
        hit = cases[cases["case_no"] == case_no]
        if not len(hit) or not user.sees(hit["town"].iloc[0], hit["village"].iloc[0]):
            raise HTTPProblem(404, f"case {case_no} not found among your cases",
                              zh=f"未找到案件 {case_no}（不在您负责的乡镇/村）")
        return hit

    def add_media(self, user: accounts.User, case_no: str, data: bytes, filename: str, note: str = "",
                  lon: Any = None, lat: Any = None) -> dict:
        """Attach a photo or video to a case the account sees; the phone's position (lon/lat
        as text, may be empty) stands in when the photo has no GPS."""
        self.one_case(user, case_no)
        try:
            dlon = float(lon) if lon not in (None, "") else None
            dlat = float(lat) if lat not in (None, "") else None
        except ValueError:
            raise InputError(f"position '{lat}, {lon}' is not latitude and longitude in degrees",
                             zh=f"位置「{lat}, {lon}」不是有效的经纬度") from None
        row = add_media(self.store, self.settings, case_no, data, filename, user.username, note, dlon, dlat)
        return {k: (text(v) if k in ("taken_at", "uploaded_at") else v) for k, v in row.items()
                if k not in ("original_path", "stamped_path")}

    def ground_report(self, user: accounts.User, lat: Any, lon: Any, detector_class: str, area_m2: Any, note: str,
                      photo: bytes | None = None, filename: str = "") -> dict:
        """地面巡查上报 (any signed-in account): a case from a position on the ground, with its photo."""
        try:
            la, lo, area = float(lat), float(lon), float(area_m2)
        except (TypeError, ValueError):
            raise InputError(f"position '{lat}, {lon}' or size '{area_m2}' is not a number; "
                             f"let the phone locate you and give the size in m²",
                             zh=f"位置「{lat}, {lon}」或面积「{area_m2}」不是数字，请让手机定位并填写面积") from None
        r = report_from_ground(self.store, self.settings, lo, la, user.username, note or "",
                               detector_class=detector_class, area_m2=area, may_change=user.sees)
        if photo:
            add_media(self.store, self.settings, r["case_no"], photo, filename or "photo", user.username,
                      "地面巡查上报", lo, la)
        return r

    def redraw_outline(self, user: accounts.User, case_no: str, geometry: dict) -> dict:
        """轮廓修正: the officer's outline (GeoJSON, WGS84) replaces the case's; the event."""
        self.one_case(user, case_no)
        ev = redraw_outline(self.store, case_no, outline_from_geojson(geometry, self.settings), user.username)
        return event_json(ev)

    def draw_structure(self, user: accounts.User, geometry: dict, detector_class: str = "building",
                       note: str = "") -> dict:
        """人工补录: a structure the model missed, drawn on the ortho of the latest processed flight
        that covers it, becomes a case (source ``manual``) through the rules."""
        outline = outline_from_geojson(geometry, self.settings)
        done = self.store.list_flights(status="done")
        done = done[done.geometry.notna()]
        covering = done[done.geometry.covers(outline.representative_point())] if len(done) else done
        if not len(covering):
            raise InputError("no processed flight covers the drawn outline; draw on a flight's ortho",
                             zh="勾绘处没有已处理的航次影像，请在影像范围内勾绘")
        flight_id = covering.sort_values("captured_at")["flight_id"].iloc[-1]
        row = add_manual_case(self.store, self.settings, flight_id, outline, user.username,
                              note=note.strip() or "人工补录：模型漏检", detector_class=detector_class,
                              may_change=user.sees)
        return {"case_no": row["case_no"], "status": row["status"], "flight_id": flight_id}

    def media_file(self, user: accounts.User, media_id: str, original: bool = False) -> FileResponse:
        """A case's photo (stamped copy) or video, or its original, for an account that sees the case."""
        hit = self.store.media(media_id=media_id) if re.fullmatch(r"[0-9a-f]{32}", media_id) else None
        if hit is None or not len(hit):
            raise HTTPProblem(404, "not found", zh="未找到")
        row = hit.iloc[0]
        self.one_case(user, row["case_no"])
        path = Path(row["original_path"] if original or pd.isna(row["stamped_path"]) else row["stamped_path"])
        if not path.is_file():
            raise HTTPProblem(404, "the file of this photo is gone from the media folder; ask the administrator")
        kind = {"jpg": "image/jpeg", "png": "image/png", "mp4": "video/mp4", "mov": "video/quicktime"}
        return FileResponse(path, media_type=kind.get(path.suffix.lstrip("."), "application/octet-stream"),
                            headers={"Cache-Control": "private, max-age=3600"})

    def officers(self) -> list[accounts.User]:
        """Enabled officer and admin accounts."""
        return [u for u in accounts.list_users(self.store) if u.role in ("officer", "admin") and not u.disabled]

    def officers_for(self, town: Any, village: Any) -> list[accounts.User]:
        """The officers (and admins) that may work a case of this town / village."""
        return [u for u in self.officers() if u.sees(town, village)]

    def read_media(self, file: Any) -> bytes:
        """An uploaded photo or video, read up to one byte past ``media.max_mb`` (the check names it)."""
        return file.file.read(self.settings.media.max_mb * 2**20 + 1)

    def case_summary(self, c: dict) -> dict:
        return case_summary(c, self.lang, self.rules)

    def case_detail(self, user: accounts.User, case_no: str) -> dict:
        g = self.one_case(user, case_no)
        c = g.iloc[0].to_dict()
        history = history_rows(self.store.events(case_no), self.lang, self.rules)
        centre = g.to_crs("EPSG:4326").geometry.iloc[0].centroid
        site = {k: "" if pd.isna(c.get(k)) else (str(int(c[k])) if k == "floors" else text(c[k])) for k in CASE_FACTS}
        media = media_rows(self.store.media(case_no))
        return {**self.case_summary(c), "facts": case_facts(c, self.lang, self.rules), "site": site, "media": media,
                "reasons": rule_texts(c, self.lang, self.rules), "flags": list(c.get("flags") or []),
                "history": history, "allowed": self.lifecycle.allowed(text(c.get("status")) or self.lifecycle.initial),
                "lon": round(centre.x, 7), "lat": round(centre.y, 7), "house_no": text(c.get("house_no"))}

    def chips_for(self, case_gdf) -> list[dict]:
        """Evidence chips of one case (cut now if none recorded), copied under work/chips."""
        case_no = case_gdf["case_no"].iloc[0]
        rows = case_chips(self.store.evidence(case_no), case_no)
        if not rows:
            make_chips(self.store, case_gdf, self.store.list_flights(), self.work,
                       self.settings.report.chip_margin_m, progress=False)
            rows = case_chips(self.store.evidence(case_no), case_no)
        out = []
        for r in rows:
            src = Path(r["chip_path"]).resolve()
            name = src.name if src.parent == self.work / "chips" and CHIP_RE.match(src.name) else \
                f"{safe_name(case_no)}_{safe_name(r['flight_id'])}_{r['role']}.png"
            dest = self.work / "chips" / name
            if src != dest and (not dest.exists() or dest.stat().st_mtime < src.stat().st_mtime):
                shutil.copyfile(src, dest)     # a chip cut by `patrol report` elsewhere
            out.append({**r, "chip_path": str(dest), "name": name, "url": f"/chips/{quote(name)}",
                        "date": text(r.get("captured_at"))[:10], "role_label": phase_label(len(out), len(rows), self.lang)})
        return out

    def height_chips_for(self, case_gdf) -> list[dict]:
        """The 高度对比 of one case (flights with a DSM), drawn under work/chips."""
        return [{**h, "url": f"/chips/{quote(h['name'])}"}
                for h in height_chips(self.store, case_gdf, self.work, self.settings)]

    def apply_status(self, user: accounts.User, case_no: str, ch: StatusChange) -> dict:
        self.one_case(user, case_no)
        kw = {k: v for k, v in (("order_no", ch.order_no), ("deadline", ch.deadline),
                                ("demolished_area_m2", ch.demolished_area_m2)) if v is not None}
        ev = change_status(self.store, case_no, ch.to_status, user.username, (ch.note or "").strip(), self.lifecycle,
                           **kw)
        return event_json(ev)

    def export(self, user: accounts.User, fmt: str, status: str | None) -> FileResponse:
        from starlette.background import BackgroundTask

        if fmt not in EXPORT_FORMATS:
            raise HTTPProblem(404, f"no case list as '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
        cases = self.scoped_cases(user, status=status)
        tmp = Path(tempfile.mkdtemp(prefix="export-", dir=self.work))
        path = export_cases(cases, tmp / f"cases.{fmt}", fmt, lang=self.lang, rules=self.rules,
                            evidence=self.store.evidence() if fmt in ("xlsx", "kmz") else None, crs=self.store.crs,
                            columns=self.settings.ledger.columns, store=self.store)
        return FileResponse(path, media_type=MEDIA[fmt], filename=f"cases_{date.today():%Y%m%d}.{fmt}",
                            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))

    def orthos_of(self, user: accounts.User) -> frozenset[str]:
        """The orthophoto overlays the officer's review map draws (read once per built map)."""
        page = self.review_map(user)
        if page not in self.map_orthos:
            self.map_orthos[page] = frozenset(re.findall(r"ortho/([A-Za-z0-9_\-]+\.(?:png|jpg))",
                                                         page.read_text(encoding="utf-8")))
        return self.map_orthos[page]

    def review_map(self, user: accounts.User) -> Path:
        """The offline report map of the officer's cases (cached per scope and store state)."""
        cases = self.scoped_cases(user)
        flights = self.store.list_flights()
        events = self.store.events()
        stamp = json.dumps([sorted(user.towns) if not user.is_admin else "*", len(cases),
                            text(cases["updated_at"].max()) if len(cases) else "",
                            int(events["event_id"].max()) if len(events) else 0,
                            [[f, s] for f, s in zip(flights["flight_id"], flights["status"])]])
        maps = self.work / "maps"
        out = maps / f"{hashlib.sha256(stamp.encode()).hexdigest()[:20]}.html"
        with self.map_lock:
            if out.is_file():
                return out
            try:
                build_map(self.store, self.settings, out, cases=cases, evidence=pd.DataFrame(), rules=self.rules,
                          ortho_dir=maps / "ortho", sees=None if user.is_admin else user.sees)
            except PatrolError as e:
                out.write_text(f"<!doctype html><meta charset='utf-8'><p>{html.escape(str(e))}</p>",
                               encoding="utf-8")
                return out
            page = out.read_text(encoding="utf-8")
            hook = (STATIC / "map_hook.js").read_text(encoding="utf-8").replace("</script", "<\\/script")
            out.write_text(page.replace("</html>", f"<script>{hook}</script>\n</html>", 1), encoding="utf-8")
            for old in sorted(maps.glob("*.html"), key=lambda p: p.stat().st_mtime)[:-MAPS_KEPT]:
                old.unlink(missing_ok=True)
                self.map_orthos.pop(old, None)
        return out


# ---------------------------------------------------------------- dependencies
def service(request: Request) -> Service:
    return request.app.state.svc


async def check_csrf(request: Request, a: Auth) -> None:
    if request.method in ("GET", "HEAD", "OPTIONS") or a.via == "token":
        return
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.method == "POST" and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = (await request.form()).get("csrf_token")
    if not (isinstance(sent, str) and a.csrf and hmac.compare_digest(sent, a.csrf)):
        raise HTTPProblem(403, "the form's CSRF token is missing or stale; reload the page and try again",
                          zh="表单已过期，请刷新页面后重试")


def need(*roles: str):
    """A dependency: the signed-in account (401 without one), of one of ``roles`` (403 else),
    with a valid CSRF token on a form post."""
    async def dep(request: Request) -> Auth:
        a = service(request).current(request)
        if a is None:
            raise NotAuthenticated()
        request.state.auth = a
        if roles and a.user.role not in roles:
            raise HTTPProblem(403, f"your role ({a.user.role}) may not do this",
                              zh=f"您的角色（{ROLE_LABELS.get(a.user.role, a.user.role)}）不能执行此操作")
        await check_csrf(request, a)
        return a
    return dep


anyone, patrol, officer, admin = need(), need("patrol", "admin"), need("officer", "admin"), need("admin")
