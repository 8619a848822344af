"""Enforcement documents (文书) as PDF: the evidence sheet, 现场检查笔录, 责令停止违法行为通知书,
限期拆除（改正）通知书 and 复查记录.

Templates are Jinja2 HTML in ``documents.template_dir`` (config/documents), rendered by
WeasyPrint with the Chinese fonts embedded. ``issue_document`` fills one from the case,
numbers it from a per-kind, per-year counter (``documents.number_format``), renders it and
records the document (its fields and the PDF's sha256) and a case event in one store
transaction, so two concurrent requests never get the same number and a failure leaves no
gap. ``reprint_document`` renders a recorded document again from its stored fields: the
same bytes while the template is unchanged.
"""
from __future__ import annotations

import base64
import hashlib
import io
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.cases.casework import get_case, mask_id
from pipeline.core.disk import os_error_line
from pipeline.core.errors import ConfigError, InputError, PatrolError
from pipeline.core.geo import to_wgs84_points
from pipeline.report.common import (
    CATEGORIES,
    CLASSES,
    STOCK,
    change_text,
    label,
    missing,
    rule_texts,
    status_label,
    text,
)
from pipeline.report.evidence import cut_chip, ortho_path, scale_and_north
from pipeline.report.ledger import M2_PER_MU, land_class, parcel_facts, progress_text

KINDS: dict[str, tuple[str, str]] = {
    "sheet": ("案件证据单", "Evidence sheet"),
    "inspection": ("现场检查（勘验）笔录", "Site inspection record"),
    "stop_notice": ("责令停止违法行为通知书", "Stop-work order"),
    "demolition_notice": ("限期拆除（改正）通知书", "Order to demolish or rectify"),
    "recheck": ("复查记录", "Re-inspection record"),
}
#: every field a template may show; a template naming any other is refused
FIELDS = (
    "authority", "district", "title", "kind", "doc_no", "issued_at", "issued_date", "case_no", "status_label",
    "category", "category_label", "class_label", "stock_label", "town", "village", "village_code", "lon", "lat",
    "area_m2", "area_mu", "floors", "floor_area_m2", "party", "phone", "id_number", "address", "parcel", "parcel_text", "land_class",
    "basic_farmland_m2", "redline_m2", "reasons", "first_seen_at", "last_seen_at", "before", "after", "location",
    "image_hashes", "site_photo", "order_no", "order_date", "deadline", "deadline_text", "assignee", "unit", "progress", "history",
    "change_text",
)
#: fields every document must show
REQUIRED = ("doc_no", "case_no")
NOT_FOR = {"lawful", "unfounded", "false_positive"}
LOCATION_PX = 420


class TemplateError(ConfigError):
    """A document template that cannot be used (syntax, unknown or missing field)."""


def kind_label(kind: str) -> str:
    return KINDS[kind][0]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f"'{kind}' is not a document kind; one of {', '.join(KINDS)}", zh=f"没有「{kind}」这种文书")


def template_dir(settings) -> Path:
    return settings.resolve(settings.documents.template_dir)


@lru_cache(maxsize=8)
def _environment(folder: str, stamp: tuple):
    """The templates' environment, sandboxed: a template fills fields and calls filters, it cannot
    reach Python's internals (``__class__``, ``__globals__``, …), change what it is given, or touch
    files and processes (docs/SECURITY.md)."""
    from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    return ImmutableSandboxedEnvironment(loader=FileSystemLoader(folder), undefined=StrictUndefined,
                                         autoescape=select_autoescape(["html"], default=True))


def _stamp(folder: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*.html")))


def check_templates(settings) -> Path:
    """Refuse, with one line naming the template and the field, a template folder whose
    templates do not parse, name a field the product does not fill, or leave out one every
    document must carry. Returns the folder (checked once while its files stay the same)."""
    folder = template_dir(settings)
    if not folder.is_dir():
        raise TemplateError(f"document templates: folder {folder} does not exist; "
                            f"set documents.template_dir to the folder holding {', '.join(KINDS)}.html")
    _check_folder(str(folder), _stamp(folder))
    return folder


@lru_cache(maxsize=8)
def _check_folder(folder_name: str, stamp: tuple) -> None:
    from jinja2 import TemplateSyntaxError, meta
    folder = Path(folder_name)
    env = _environment(folder_name, stamp)
    known = set(FIELDS) | {"range", "loop"}
    for name in ["base.html"] + [f"{k}.html" for k in KINDS]:
        path = folder / name
        if not path.is_file():
            raise TemplateError(f"document template {path} is missing; copy it from the product's config/documents")
        source = path.read_text(encoding="utf-8")
        try:
            ast = env.parse(source, name=name, filename=str(path))
        except TemplateSyntaxError as e:
            raise TemplateError(f"document template {path} line {e.lineno}: {e.message}; fix the template") from None
        unknown = sorted(meta.find_undeclared_variables(ast) - known - _loop_names(ast))
        if unknown:
            raise TemplateError(f"document template {path} uses field '{unknown[0]}', which no document fills; "
                                f"fields: {', '.join(FIELDS)}")
    for kind in KINDS:
        used = _fields_used(env, folder, f"{kind}.html")
        for field in REQUIRED:
            if field not in used:
                raise TemplateError(f"document template {folder / (kind + '.html')} does not show the field "
                                    f"'{field}', which every document must carry")


def _loop_names(ast) -> set[str]:
    from jinja2 import nodes
    return {n.name for f in ast.find_all(nodes.For) for n in f.target.find_all(nodes.Name)}


def _fields_used(env, folder: Path, name: str) -> set[str]:
    """The fields a template and the templates it extends show."""
    from jinja2 import meta
    used: set[str] = set()
    while name:
        ast = env.parse((folder / name).read_text(encoding="utf-8"))
        used |= meta.find_undeclared_variables(ast)
        parents = list(meta.find_referenced_templates(ast))
        name = parents[0] if parents else None
    return used


# ---------------------------------------------------------------- filling
def _data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def _num(v: Any, nd: int = 1) -> str:
    return "" if missing(v) else f"{float(v):.{nd}f}"


def _day(v: Any) -> str:
    return "" if missing(v) else pd.Timestamp(v).strftime("%Y-%m-%d")


def _chinese_date(t: pd.Timestamp) -> str:
    return f"{t.year}年{t.month}月{t.day}日"


def _cut(src, geom, crs: str, margin: float, px: int, context=()) -> tuple[bytes, float] | None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "chip.png"
        gsd = cut_chip(src, geom, crs, out, margin, px, context=context)
        return (out.read_bytes(), gsd) if gsd else None


def _pictures(store, case: dict, flights) -> dict[str, Any]:
    """前时相 / 后时相 chips and the location map (scale bar, north arrow) from the flights
    whose orthophoto covers the case: 前时相 the last flight before the case was first seen
    (else the first covering flight), 后时相 the latest."""
    import rasterio

    g = case["geometry"]
    cover = []
    for _, fl in flights.sort_values("captured_at").iterrows():
        fp = fl[flights.geometry.name]
        path = ortho_path(fl.to_dict(), getattr(store, "url", None))
        if path is not None and fp is not None and not fp.is_empty and fp.intersects(g.centroid):
            cover.append((fl.to_dict(), path))
    out: dict[str, Any] = {"before": None, "after": None, "location": None, "image_hashes": ""}
    if not cover:
        return out
    first = pd.Timestamp(case["first_seen_at"]) if not missing(case.get("first_seen_at")) else None
    earlier = [c for c in cover if first is not None and not missing(c[0].get("captured_at"))
               and pd.Timestamp(c[0]["captured_at"]) < first]
    picks = {"after": cover[-1], "before": earlier[-1] if earlier else (cover[0] if len(cover) > 1 else None)}
    side = max(np.ptp(np.asarray(g.bounds).reshape(2, 2), axis=0))
    hashes = []
    for role, pick in picks.items():
        if pick is None:
            continue
        with rasterio.open(pick[1]) as src:
            cut = _cut(src, g, store.crs, max(8.0, 0.5 * side), 360)
            if role == "after":
                near = store.parcels(tuple(shapely.buffer(g, 60).bounds))
                loc = _cut(src, g, store.crs, 40.0, LOCATION_PX, context=[p for p in near.geometry if p is not None])
                if loc:
                    png, metres = scale_and_north(*loc)
                    out["location"] = {"src": _data_uri(png), "scale_m": metres,
                                       "date": _day(pick[0].get("captured_at"))}
        if cut:
            hashes.append(hashlib.sha256(cut[0]).hexdigest()[:12])
            out[role] = {"src": _data_uri(cut[0]), "label": "前时相" if role == "before" else "后时相",
                         "date": _day(pick[0].get("captured_at")), "flight": pick[0]["flight_id"],
                         "gsd": f"{cut[1]:.2f}"}
    out["image_hashes"] = " ".join(hashes)
    return out


def case_fields(store, settings, rules, case: dict, kind: str, *, flights=None, zones=None,
                events=None) -> dict[str, Any]:
    """Everything a document of ``kind`` shows about ``case`` (the number comes later)."""
    flights = store.list_flights() if flights is None else flights
    zones = store.zones(tuple(case["geometry"].bounds)) if zones is None else zones
    events = store.events(case["case_no"]) if events is None else events
    ll = to_wgs84_points(gpd.GeoDataFrame(geometry=[case["geometry"]], crs=store.crs), store.crs)[0]
    snap = case.get("parcel_snapshot") if isinstance(case.get("parcel_snapshot"), dict) else {}
    parcel_rows = parcel_facts(snap)
    area = float(case["area_m2"]) if not missing(case.get("area_m2")) else 0.0
    deadline = _day(case.get("deadline"))
    hist = [{"at": _day(e["at"]), "step": status_label(e["to_status"], "zh", rules) if not missing(e["to_status"])
             else "文书", "note": text(e["note"])} for _, e in events.iterrows()]
    parcel_id = text(case.get("parcel_id"))
    inside = bool(snap)
    fields = {
        "authority": settings.documents.authority, "district": settings.district.name,
        "title": kind_label(kind), "kind": kind, "case_no": case["case_no"],
        "status_label": status_label(case.get("status"), "zh", rules),
        "category": text(case.get("category")), "category_label": label(CATEGORIES, case.get("category"), "zh"),
        "class_label": label(CLASSES, case.get("detector_class"), "zh"),
        "stock_label": label(STOCK, case.get("stock"), "zh"),
        "change_text": change_text(case, "zh"),
        "town": text(case.get("town")), "village": text(case.get("village")),
        "village_code": text(case.get("village_code")), "lon": f"{ll[0]:.6f}", "lat": f"{ll[1]:.6f}",
        "area_m2": f"{area:.1f}", "area_mu": f"{area / M2_PER_MU:.2f}",
        "floors": "" if missing(case.get("floors")) else str(int(case["floors"])),
        "floor_area_m2": _num(case.get("floor_area_m2")),
        "party": text(case.get("party")), "phone": text(case.get("phone")),
        "id_number": mask_id(text(case.get("id_number"))) if text(case.get("id_number")) else "",
        "address": text(case.get("address")),
        "parcel": parcel_rows,
        "parcel_text": (f"宅基地 {parcel_id}（{text(case.get('owner'))}）" if inside and parcel_id else
                        f"不在登记宅基地内（最近地块 {parcel_id}）" if parcel_id else "不在登记宅基地内"),
        "land_class": land_class(case, zones),
        "basic_farmland_m2": _num(case.get("basic_farmland_m2")), "redline_m2": _num(case.get("redline_m2")),
        "reasons": rule_texts(case, "zh", rules),
        "first_seen_at": _day(case.get("first_seen_at")), "last_seen_at": _day(case.get("last_seen_at")),
        "order_no": text(case.get("order_no")), "order_date": _day(case.get("order_date")),
        "deadline": deadline,
        "deadline_text": _chinese_date(pd.Timestamp(deadline)) if deadline else "____年__月__日",
        "assignee": text(case.get("assignee")), "unit": text(case.get("unit")),
        "progress": progress_text(events, rules), "history": hist,
    }
    fields.update(_pictures(store, case, flights))
    fields["site_photo"] = _site_photo(store, case["case_no"])
    return fields


def _site_photo(store, case_no: str) -> dict | None:
    """The case's latest on-site photo (its stamped copy), or None."""
    media = store.media(case_no)
    media = media[(media["kind"] == "photo") & media["stamped_path"].notna()] if len(media) else media
    for m in reversed(media.to_dict("records")):
        p = Path(m["stamped_path"])
        if p.is_file():
            from PIL import Image
            im = Image.open(p)
            im.thumbnail((720, 720))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            return {"src": _data_uri(buf.getvalue(), "image/jpeg"), "date": _day(m["taken_at"]) or _day(m["uploaded_at"]),
                    "actor": text(m["actor"]), "distance": "" if missing(m["distance_m"]) else f"{m['distance_m']:.0f}",
                    "sha": m["sha256"][:12]}
    return None


# ---------------------------------------------------------------- rendering
def _empty(field: str) -> Any:
    return [] if field in ("parcel", "reasons", "history") else None if field in (
        "before", "after", "location", "site_photo") else ""


@lru_cache(maxsize=1)
def check_chinese_font() -> None:
    """Refuse to print where fontconfig knows no Chinese font: every character would print as an
    empty box (checked once it passes; without ``fc-list`` nothing can be told and nothing is refused)."""
    import subprocess
    try:
        found = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return
    if not found.strip():
        raise ConfigError("no Chinese font is installed here, so documents would print as empty boxes; install "
                          "fonts-noto-cjk (bash tools/system-deps.sh) and print again",
                          zh="服务器未安装中文字体，文书无法打印；请管理员安装 fonts-noto-cjk 后重试")


def render_pdf(settings, kind: str, fields: dict[str, Any]) -> tuple[bytes, int]:
    """The PDF of a filled document and its page count. Same fields, same template: same bytes."""
    folder = check_templates(settings)   # a document issued before a field existed prints with it empty
    return render_template_pdf(folder, f"{kind}.html", {**{f: _empty(f) for f in FIELDS}, **fields}, FIELDS)


def render_template_pdf(folder: Path, name: str, fields: dict[str, Any], known: tuple[str, ...]) -> tuple[bytes, int]:
    """Any template of the document folder (sandboxed, fonts checked, nothing fetched) filled with
    ``fields`` (which carry issued_at, title, doc_no and authority): the PDF and its page count."""
    import weasyprint
    from jinja2 import TemplateNotFound, TemplateSyntaxError, UndefinedError
    from jinja2.exceptions import SecurityError
    check_chinese_font()
    env = _environment(str(folder), _stamp(folder))
    try:
        html = env.get_template(name).render(**fields)
    except TemplateNotFound:
        raise TemplateError(f"document template {folder / name} is missing; copy it from the product's "
                            f"config/documents") from None
    except TemplateSyntaxError as e:
        raise TemplateError(f"document template {folder / name} line {e.lineno}: {e.message}; fix the template") from None
    except UndefinedError as e:
        raise TemplateError(f"document template {folder / name}: {e.message}; fields: {', '.join(known)}") from None
    except SecurityError as e:
        raise TemplateError(f"document template {name} reaches outside its fields ({e}); a template may "
                            f"only show fields and use filters: fix it in {folder.name}/",
                            zh=f"文书模板 {name} 试图访问字段以外的内容，已拒绝；请管理员修正模板") from None
    doc = weasyprint.HTML(string=html, base_url=str(folder), url_fetcher=_local_fetcher(folder)).render()
    doc.metadata.created = doc.metadata.modified = fields["issued_at"]
    doc.metadata.title = f"{fields['title']} {fields['doc_no']}"
    doc.metadata.authors = [fields["authority"]]
    doc.metadata.generator = "Lianwei Patrol"
    pdf = doc.write_pdf(pdf_identifier=hashlib.sha256(fields["doc_no"].encode()).digest()[:16])
    return pdf, len(doc.pages)


def _local_fetcher(folder: Path):
    """A WeasyPrint URL fetcher for data: URIs and files of the template folder only:
    nothing is downloaded while a document renders, whatever a template names."""
    from weasyprint.urls import URLFetcher

    root = folder.resolve()

    class LocalOnly(URLFetcher):
        def fetch(self, url, headers=None):
            if url.startswith("file:"):
                from urllib.parse import unquote, urlparse
                path = Path(unquote(urlparse(url).path)).resolve()
                if not path.is_relative_to(root):
                    raise ValueError(f"document templates may only use files of {root.name}/")
            elif not url.startswith("data:"):
                raise ValueError("document templates may not fetch from the network")
            return super().fetch(url, headers)

    return LocalOnly(allowed_protocols={"data", "file"}, timeout=2)


def document_number(settings, kind: str, year: int, seq: int) -> str:
    return settings.documents.number_format.format(word=settings.documents.words.get(kind, ""), year=year, seq=seq)


def issue_document(store, settings, rules, kind: str, case_no: str, actor: str, now: datetime | None = None,
                   fields: dict[str, Any] | None = None) -> tuple[dict, bytes]:
    """Number, render and record a new document of ``kind`` for the case; returns the
    document row and the PDF."""
    _check_kind(kind)
    check_templates(settings)
    case = get_case(store, case_no).iloc[0].to_dict()
    if case.get("status") in NOT_FOR and kind != "sheet":
        raise InputError(f"case {case_no} is {status_label(case['status'], 'zh', rules)}; "
                         f"no {kind_label(kind)} is issued for a dismissed case",
                         zh=f"案件 {case_no} 已{status_label(case['status'], 'zh', rules)}，不再出具{kind_label(kind)}")
    fields = dict(fields) if fields is not None else case_fields(store, settings, rules, case, kind)
    at = pd.Timestamp(now or datetime.now()).floor("s")
    with store.transaction():
        seq = store.next_sequence(f"doc:{kind}", at.year)
        doc_no = document_number(settings, kind, at.year, seq)
        fields.update(doc_no=doc_no, issued_at=at.isoformat(), issued_date=_chinese_date(at))
        pdf, pages = render_pdf(settings, kind, fields)
        digest = hashlib.sha256(pdf).hexdigest()
        row = {"doc_no": doc_no, "kind": kind, "year": at.year, "seq": seq, "case_no": case_no,
               "issued_at": at, "actor": actor, "fields": fields, "file_hash": digest}
        store.add_document(row)
        store.append_events([{"case_no": case_no, "at": at, "actor": actor, "from_status": None, "to_status": None,
                              "note": f"出具{kind_label(kind)} {doc_no}（{pages} 页，sha256 {digest[:16]}）"}])
    return row, pdf


def reprint_document(store, settings, doc_no: str) -> tuple[dict, bytes, bool]:
    """A recorded document rendered again from its stored fields: (row, PDF, identical to
    the PDF issued)."""
    hit = store.documents(doc_no=doc_no)
    if not len(hit):
        raise InputError(f"document {doc_no} is not in the store; see `patrol docs list CASE_NO`", zh=f"没有文书 {doc_no}")
    row = hit.iloc[-1].to_dict()
    pdf, _ = render_pdf(settings, row["kind"], row["fields"])
    return row, pdf, hashlib.sha256(pdf).hexdigest() == row["file_hash"]


def latest_document(store, case_no: str, kind: str) -> str | None:
    docs = store.documents(case_no=case_no, kind=kind)
    return None if not len(docs) else str(docs["doc_no"].iloc[-1])


def write_pdf(path: Path, pdf: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(pdf)
        tmp.replace(path)
    except OSError as e:
        raise PatrolError(os_error_line(e, f"writing {path}")) from None
    return path


def print_document(store, settings, rules, kind: str, case_no: str, actor: str, new: bool = False,
                   now: datetime | None = None) -> tuple[dict, bytes, bool]:
    """The case's latest document of ``kind`` printed again (same number, same bytes while
    the template is unchanged), or a new one when there is none or ``new``. Returns
    (row, PDF, identical: False only for a re-print that differs from the issued PDF)."""
    _check_kind(kind)
    known = None if new else latest_document(store, case_no, kind)
    if known is None:
        row, pdf = issue_document(store, settings, rules, kind, case_no, actor, now)
        return row, pdf, True
    return reprint_document(store, settings, known)
