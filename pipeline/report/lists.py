"""Case lists (台账) for people and for GIS: xlsx, csv, GeoJSON, KML/KMZ, GeoPackage.

xlsx and csv carry display labels (Chinese headers by default, status/category labels,
one row per case; csv is UTF-8 with BOM so Excel shows Chinese). GeoJSON (EPSG:4326),
GeoPackage (store CRS) and KML/KMZ (for Google Earth and 奥维互动地图) carry the field ids
as keys, raw values plus ``status_label`` / ``category_label``.
"""
from __future__ import annotations

import html
import json
import unicodedata
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.core.errors import InputError
from pipeline.core.geo import to_wgs84_points
from pipeline.report.common import (
    CATEGORIES,
    FIELDS,
    STATUS_COLOURS,
    as_list,
    label,
    missing,
    rule_texts,
    status_label,
    text,
)
from pipeline.report.evidence import case_chips
from pipeline.report.ledger import IMAGES, columns_of, ledger_table

FORMATS = ("xlsx", "csv", "geojson", "kml", "kmz", "gpkg")

LIST_FIELDS = [
    "case_no", "status", "category", "stock", "detector_class", "area_m2", "town", "village",
    "village_code", "parcel_id", "owner", "party", "phone", "rules", "confidence", "flags", "change_confidence",
    "basic_farmland_m2", "redline_m2", "farmland_m2", "first_seen_at", "last_seen_at", "order_no",
    "order_date", "deadline", "assignee", "recheck_date", "closed_date", "demolished_area_m2",
    "floors", "floor_area_m2", "unit", "remark", "lon", "lat", "x", "y"]
NUMERIC = {"area_m2", "confidence", "change_confidence", "basic_farmland_m2", "redline_m2", "farmland_m2",
           "demolished_area_m2", "floors", "floor_area_m2", "lon", "lat", "x", "y"}
GIS_FIELDS = [f for f in LIST_FIELDS if f not in ("lon", "lat", "x", "y")] + [
    "status_label", "category_label", "reasons_text", "first_seen_flight", "last_seen_flight",
    "lon", "lat"]


def _coords(cases: gpd.GeoDataFrame, crs: str) -> pd.DataFrame:
    ll = to_wgs84_points(cases, crs)
    c = shapely.centroid(np.asarray(cases.geometry.values, dtype=object))
    return pd.DataFrame({"lon": np.round(ll[:, 0], 7), "lat": np.round(ll[:, 1], 7),
                         "x": np.round(shapely.get_x(c), 2), "y": np.round(shapely.get_y(c), 2)},
                        index=cases.index)


def case_table(cases: gpd.GeoDataFrame, lang: str = "zh", rules=None, crs: str | None = None,
               columns: list | None = None, store=None) -> pd.DataFrame:
    """The 台账 as a table (``ledger.ledger_table``): display values, never a live formula."""
    return ledger_table(cases, lang, rules, crs, columns, store)


def gis_frame(cases: gpd.GeoDataFrame, lang: str = "zh", rules=None, crs: str | None = None) -> gpd.GeoDataFrame:
    """Field ids as columns (ASCII for GIS), raw values as text/number, labels beside."""
    crs = crs or str(cases.crs)
    cc = _coords(cases, crs) if len(cases) else pd.DataFrame(columns=["lon", "lat", "x", "y"])
    recs = []
    for (idx, c) in zip(cases.index, cases.to_dict("records")):
        r: dict[str, Any] = {}
        for f in GIS_FIELDS:
            if f == "status_label":
                r[f] = status_label(c.get("status"), lang, rules)
            elif f == "category_label":
                r[f] = label(CATEGORIES, c.get("category"), lang)
            elif f == "reasons_text":
                r[f] = "；".join(rule_texts(c, lang, rules))
            elif f in ("lon", "lat"):
                r[f] = float(cc.at[idx, f])
            elif f in ("rules", "flags"):
                r[f] = ",".join(str(x) for x in as_list(c.get(f)))
            elif f in NUMERIC:
                r[f] = None if missing(c.get(f)) else float(c[f])
            else:
                r[f] = text(c.get(f))
        recs.append(r)
    df = pd.DataFrame(recs, columns=GIS_FIELDS)
    return gpd.GeoDataFrame(df, geometry=list(cases.geometry.values), crs=cases.crs or crs)


# ---------------------------------------------------------------- writers
def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def write_xlsx(cases: gpd.GeoDataFrame, path: Path, lang: str, rules=None, evidence: pd.DataFrame | None = None,
               crs: str | None = None, title: str | None = None, columns: list | None = None,
               store=None) -> Path:
    """The 台账: configured columns with Chinese headers, frozen header row, filters, widths
    from content, chip thumbnails in the image columns; printed A4 landscape, fit to the
    page width, the header row repeated on every page."""
    from openpyxl import Workbook
    from openpyxl.drawing.image import Image as XImage
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.properties import PageSetupProperties

    cols = columns_of(columns)
    table = case_table(cases, lang, rules, crs, columns, store)
    wb = Workbook()
    ws = wb.active
    ws.title = "两违台账" if lang == "zh" else "Cases"
    ws.append(list(table.columns))
    for cell in ws[1]:
        cell.font = Font(bold=True)
        cell.fill = PatternFill("solid", fgColor="DDEBF7")
        cell.alignment = Alignment(vertical="center", horizontal="center", wrap_text=True)
    for row in table.itertuples(index=False):
        ws.append([None if (isinstance(v, float) and np.isnan(v)) or v == "" else v for v in row])
    ws.freeze_panes = "C2" if len(cols) > 2 else "A2"
    last = get_column_letter(len(cols))
    ws.auto_filter.ref = f"A1:{last}{len(table) + 1}"
    for j, h in enumerate(table.columns, start=1):
        vals = [str(h)] + [text(v) for v in table.iloc[:, j - 1].tolist()[:500]]
        ws.column_dimensions[get_column_letter(j)].width = min(40, max(6, max(_width(v) for v in vals) + 2))
    # print setup: A4 landscape, every column on the page width, header row on every page
    ws.page_setup.orientation = "landscape"
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr = PageSetupProperties(fitToPage=True)
    ws.print_title_rows = "1:1"
    ws.print_options.gridLines = True
    ws.page_margins.left = ws.page_margins.right = 0.4
    ws.oddHeader.center.text = title or ("两违台账" if lang == "zh" else "Case ledger")
    ws.oddFooter.center.text = "第 &P 页 共 &N 页" if lang == "zh" else "Page &P of &N"
    image_cols = {f: k for k, (f, _) in enumerate(cols, start=1) if f in IMAGES}
    photos: dict[str, str] = {}
    if "site_photo" in image_cols and store is not None:
        media = store.media()
        media = media[(media["kind"] == "photo") & media["stamped_path"].notna()] if len(media) else media
        photos = {no: p for no, p in zip(media["case_no"], media["stamped_path"]) if Path(p).is_file()}  # latest wins
    if image_cols and ((evidence is not None and len(evidence)) or photos):
        size = 80
        for k in image_cols.values():
            ws.column_dimensions[get_column_letter(k)].width = 13
        for i, case_no in enumerate(cases["case_no"], start=2):
            chips = case_chips(evidence, case_no)
            before = [c for c in chips if c["role"] == "before"]
            picks = {"image_before": before[-1] if before else (chips[0] if len(chips) > 1 else None),
                     "image_after": chips[-1] if chips else None,
                     "site_photo": {"chip_path": photos[case_no]} if case_no in photos else None}
            if any(picks[f] for f in image_cols):
                ws.row_dimensions[i].height = size * 0.78
            for f, k in image_cols.items():
                ch = picks[f]
                if ch is None:
                    continue
                ws.cell(i, k).value = None
                img = XImage(_thumbnail(ch["chip_path"], size * 2))
                img.width = img.height = size
                ws.add_image(img, f"{get_column_letter(k)}{i}")
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


def _thumbnail(path: str, px: int):
    """A small JPEG copy of a chip (in memory) so the workbook stays light."""
    import io

    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((px, px))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    buf.seek(0)
    return buf


def write_csv(cases: gpd.GeoDataFrame, path: Path, lang: str, rules=None, crs: str | None = None,
              columns: list | None = None, store=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    case_table(cases, lang, rules, crs, columns, store).to_csv(path, index=False, encoding="utf-8-sig")
    return path


def write_geojson(cases: gpd.GeoDataFrame, path: Path, lang: str, rules=None, crs: str | None = None) -> Path:
    g = gis_frame(cases, lang, rules, crs).to_crs("EPSG:4326")
    feats = []
    for geom, rec in zip(g.geometry, g.drop(columns="geometry").to_dict("records")):
        rec = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
        feats.append({"type": "Feature", "id": rec["case_no"], "properties": rec,
                      "geometry": None if geom is None else json.loads(shapely.to_geojson(geom))})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, ensure_ascii=False),
                    encoding="utf-8")
    return path


def write_gpkg(cases: gpd.GeoDataFrame, path: Path, lang: str, rules=None, crs: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    gis_frame(cases, lang, rules, crs).to_file(path, layer="cases", driver="GPKG")
    return path


def _kml_colour(hex_rgb: str, alpha: int) -> str:
    r, g, b = hex_rgb[1:3], hex_rgb[3:5], hex_rgb[5:7]
    return f"{alpha:02x}{b}{g}{r}"


def _ring(coords) -> str:
    return " ".join(f"{x:.7f},{y:.7f},0" for x, y in np.asarray(coords)[:, :2])


def kml_document(cases: gpd.GeoDataFrame, lang: str, rules=None, crs: str | None = None,
                 images: dict[str, list[str]] | None = None, name: str = "cases") -> bytes:
    """A KML document: one Placemark per case (point + polygon), ExtendedData with every
    field, style by status; ``images`` maps case_no to image hrefs shown in the balloon."""
    g = gis_frame(cases, lang, rules, crs).to_crs("EPSG:4326")
    kml = ET.Element("kml", xmlns="http://www.opengis.net/kml/2.2")
    doc = ET.SubElement(kml, "Document")
    ET.SubElement(doc, "name").text = name
    for st, colour in STATUS_COLOURS.items():
        style = ET.SubElement(doc, "Style", id=f"s_{st}")
        ls = ET.SubElement(style, "LineStyle")
        ET.SubElement(ls, "color").text = _kml_colour(colour, 255)
        ET.SubElement(ls, "width").text = "2"
        ps = ET.SubElement(style, "PolyStyle")
        ET.SubElement(ps, "color").text = _kml_colour(colour, 80)
        ic = ET.SubElement(style, "IconStyle")
        ET.SubElement(ic, "color").text = _kml_colour(colour, 255)
    for geom, rec in zip(g.geometry, g.drop(columns="geometry").to_dict("records")):
        pm = ET.SubElement(doc, "Placemark", id=str(rec["case_no"]))
        ET.SubElement(pm, "name").text = str(rec["case_no"])
        rows = "".join(f"<tr><th>{html.escape(label(FIELDS, k, lang))}</th><td>{html.escape(text(v))}</td></tr>"
                       for k, v in rec.items() if k in FIELDS and text(v))
        imgs = "".join(f'<img src="{html.escape(h)}" width="200"/>' for h in (images or {}).get(rec["case_no"], []))
        ET.SubElement(pm, "description").text = f"<table>{rows}</table>{imgs}"
        ET.SubElement(pm, "styleUrl").text = f"#s_{rec['status']}"
        ext = ET.SubElement(pm, "ExtendedData")
        for k, v in rec.items():
            d = ET.SubElement(ext, "Data", name=k)
            ET.SubElement(d, "displayName").text = label(FIELDS, k, lang)
            ET.SubElement(d, "value").text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
        mg = ET.SubElement(pm, "MultiGeometry")
        pt = ET.SubElement(mg, "Point")
        ET.SubElement(pt, "coordinates").text = f"{rec['lon']:.7f},{rec['lat']:.7f},0"
        for poly in getattr(geom, "geoms", [geom]):
            if poly is None or poly.is_empty:
                continue
            p = ET.SubElement(mg, "Polygon")
            ob = ET.SubElement(ET.SubElement(p, "outerBoundaryIs"), "LinearRing")
            ET.SubElement(ob, "coordinates").text = _ring(poly.exterior.coords)
            for hole in poly.interiors:
                ib = ET.SubElement(ET.SubElement(p, "innerBoundaryIs"), "LinearRing")
                ET.SubElement(ib, "coordinates").text = _ring(hole.coords)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(kml, encoding="utf-8")


def write_kml(cases, path: Path, lang: str, rules=None, crs: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(kml_document(cases, lang, rules, crs, name=path.stem))
    return path


def write_kmz(cases, path: Path, lang: str, rules=None, crs: str | None = None,
              evidence: pd.DataFrame | None = None, store=None) -> Path:
    """doc.kml plus JPEG copies of the evidence chips and (with ``store``) the stamped on-site
    photos under files/ (shown in each case's balloon; JPEG keeps the file light enough for
    phones running 奥维)."""
    images: dict[str, list[str]] = {}
    files: dict[str, str] = {}
    media = store.media() if store is not None else pd.DataFrame()
    photos = media[(media["kind"] == "photo") & media["stamped_path"].notna()] if len(media) else media
    for case_no in cases["case_no"]:
        shown = [(f"files/{Path(ch['chip_path']).stem}.jpg", ch["chip_path"]) for ch in case_chips(evidence, case_no)]
        if len(photos):
            shown += [(f"files/photo_{m['sha256'][:16]}.jpg", m["stamped_path"])
                      for m in photos[photos["case_no"] == case_no].to_dict("records") if Path(m["stamped_path"]).is_file()]
        for arc, src in shown:
            files[arc] = src
            images.setdefault(case_no, []).append(arc)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("doc.kml", kml_document(cases, lang, rules, crs, images, name=path.stem))
        for arc, src in files.items():
            z.writestr(arc, _thumbnail(src, 256).getvalue())
    return path


def read_kml(path: Path) -> pd.DataFrame:
    """The ExtendedData of every Placemark of a KML or KMZ file (for checks and re-import)."""
    data = Path(path).read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith(".kml")))
    ns = {"k": "http://www.opengis.net/kml/2.2"}
    root = ET.fromstring(data)
    rows = []
    for pm in root.iter("{http://www.opengis.net/kml/2.2}Placemark"):
        rec = {d.get("name"): (d.findtext("k:value", default="", namespaces=ns)) for d in pm.iterfind(".//k:Data", ns)}
        rec["_name"] = pm.findtext("k:name", default="", namespaces=ns)
        rows.append(rec)
    return pd.DataFrame(rows)


def export_cases(cases: gpd.GeoDataFrame, path: str | Path, fmt: str | None = None, *, lang: str = "zh",
                 rules=None, evidence: pd.DataFrame | None = None, crs: str | None = None,
                 columns: list | None = None, store=None) -> Path:
    """Write ``cases`` as ``fmt`` (default: from the file suffix) to ``path``; xlsx and csv
    carry the 台账 ``columns`` (ledger.columns), with progress and document numbers from
    ``store``."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt == "json":
        fmt = "geojson"
    if fmt not in FORMATS:
        raise InputError(f"cannot export cases as '{fmt}' ({path}); use one of {', '.join(FORMATS)}")
    if fmt == "xlsx":
        return write_xlsx(cases, path, lang, rules, evidence, crs, columns=columns, store=store)
    if fmt == "csv":
        return write_csv(cases, path, lang, rules, crs, columns, store)
    if fmt == "geojson":
        return write_geojson(cases, path, lang, rules, crs)
    if fmt == "kml":
        return write_kml(cases, path, lang, rules, crs)
    if fmt == "kmz":
        return write_kmz(cases, path, lang, rules, crs, evidence, store)
    return write_gpkg(cases, path, lang, rules, crs)
