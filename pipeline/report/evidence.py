"""Evidence: image chips cut from each flight's orthophoto, and a printable A4 sheet per case.

``make_chips`` cuts, for every case and every flight whose footprint covers it, a PNG
around the case (bbox + margin, the case outlined in red), saves it under
``out_dir/chips`` and records it with ``store.add_evidence`` (role ``before`` for a flight
captured before the case was first seen, else ``after``; sha256 of the file, capture
time, GSD of the chip). ``height_chips`` draws the height above ground around a case on every
flight with a DSM (the case page's 高度对比). ``write_evidence_sheets`` writes
``out_dir/evidence/<case>.html``.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from tqdm import tqdm

from pipeline.cases.change import flight_shift
from pipeline.core.geo import to_wgs84_points
from pipeline.detection.heights import measure as measure_heights
from pipeline.detection.heights import read_heights
from pipeline.report.common import (
    CATEGORIES,
    CLASSES,
    FIELDS,
    FLAGS,
    STATUS_COLOURS,
    STOCK,
    change_text,
    height_text,
    label,
    missing,
    rule_texts,
    safe_name,
    status_label,
    text,
    to_uint8,
)
from pipeline.report.ledger import parcel_facts

CHIP_MAX_PX = 256
LOCATION_MAX_PX = 480


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ortho_path(flight: dict, store_url: str | None = None) -> Path | None:
    """The flight's orthophoto if the file is still there (relative paths: as given, then
    beside the store)."""
    p = flight.get("path")
    if missing(p) or not p:
        return None
    p = Path(p)
    if p.is_file():
        return p
    if not p.is_absolute() and store_url and "://" not in store_url:
        q = Path(store_url).parent / p
        if q.is_file():
            return q
    return None


def cut_chip(src, geom, geom_crs: str, out_png: Path, margin_m: float, max_px: int = CHIP_MAX_PX,
             outline: Any = None, context: Sequence[Any] = ()) -> float | None:
    """Cut the window around ``geom`` (+ margin) from the open raster ``src`` into a PNG.
    ``outline`` (default geom) is drawn red, ``context`` geometries thin yellow; pixels
    outside the valid-data mask are grey. Returns the chip's GSD in metres, or None when
    the window misses the raster."""
    from PIL import Image, ImageDraw
    from pyproj import CRS, Transformer
    from rasterio.windows import Window, from_bounds

    to_src = Transformer.from_crs(CRS.from_user_input(geom_crs), src.crs, always_xy=True)

    def project(g):
        return shapely.transform(g, lambda xy: np.column_stack(to_src.transform(xy[:, 0], xy[:, 1])))

    g = project(geom)
    minx, miny, maxx, maxy = g.bounds
    side = max(maxx - minx, maxy - miny) + 2 * margin_m
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    bounds = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    win = from_bounds(*bounds, transform=src.transform)
    full = Window(0, 0, src.width, src.height)
    try:
        inner = win.intersection(full)
    except Exception:  # rasterio raises WindowError when they do not overlap
        return None
    n = int(min(max_px, max(32, round(max(win.width, win.height)))))
    scale = n / max(win.width, win.height)
    # read only the part inside the raster (boundless reads are slow), place it on the canvas
    x0, y0 = int(round((inner.col_off - win.col_off) * scale)), int(round((inner.row_off - win.row_off) * scale))
    w, h = max(1, min(n - x0, int(round(inner.width * scale)))), max(1, min(n - y0, int(round(inner.height * scale))))
    count = min(src.count, 3)
    part = src.read(list(range(1, count + 1)), window=inner, out_shape=(count, h, w),
                    resampling=_resampling("bilinear"))
    pmask = src.read_masks(1, window=inner, out_shape=(h, w), resampling=_resampling("nearest")) > 0
    data = np.zeros((count, n, n), dtype=part.dtype)
    mask = np.zeros((n, n), dtype=bool)
    data[:, y0:y0 + h, x0:x0 + w] = part
    mask[y0:y0 + h, x0:x0 + w] = pmask
    if count == 1:
        data = np.repeat(data, 3, axis=0)
    rgb = np.moveaxis(to_uint8(data), 0, -1).copy()
    rgb[~mask] = 200
    img = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(img)
    sx = n / (bounds[2] - bounds[0])

    def px(geom_src):
        for poly in getattr(geom_src, "geoms", [geom_src]):
            if poly.is_empty or not hasattr(poly, "exterior"):
                continue
            xy = np.asarray(poly.exterior.coords)
            yield [((x - bounds[0]) * sx, (bounds[3] - y) * sx) for x, y in xy[:, :2]]

    for c in context:
        if c is not None and not c.is_empty:
            for ring in px(project(c)):
                draw.line(ring, fill=(255, 230, 0), width=1)
    for ring in px(g if outline is None else project(outline)):
        draw.line(ring, fill=(255, 0, 0), width=2)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if out_png.suffix.lower() in (".jpg", ".jpeg"):
        img.save(out_png, quality=85)
    else:
        img.save(out_png, compress_level=6)
    return float(side / n)


def scale_and_north(png: bytes, gsd_m: float, fmt: str = "PNG") -> tuple[bytes, int]:
    """Draw a scale bar (a round number of metres, about a quarter of the width) and a
    north arrow on a north-up map image; returns the image and the bar's metres."""
    import io

    from PIL import Image, ImageDraw
    im = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = im.size
    metres = next(m for m in (200, 100, 50, 20, 10, 5, 2, 1) if m / gsd_m <= w / 3.5) if gsd_m > 0 else 0
    d = ImageDraw.Draw(im)
    if metres:
        bar = int(round(metres / gsd_m))
        x0, y0 = 12, h - 18
        d.rectangle([x0 - 4, y0 - 16, x0 + bar + 40, y0 + 10], fill=(255, 255, 255))
        d.rectangle([x0, y0, x0 + bar // 2, y0 + 5], fill=(0, 0, 0))
        d.rectangle([x0 + bar // 2, y0, x0 + bar, y0 + 5], outline=(0, 0, 0), fill=(255, 255, 255))
        d.text((x0, y0 - 14), "0", fill=(0, 0, 0))
        d.text((x0 + bar + 4, y0 - 6), f"{metres} m", fill=(0, 0, 0))
    cx, top = w - 24, 10
    d.rectangle([cx - 14, top - 4, cx + 14, top + 44], fill=(255, 255, 255))
    d.polygon([(cx, top), (cx - 9, top + 26), (cx, top + 20), (cx + 9, top + 26)], fill=(0, 0, 0))
    d.text((cx - 3, top + 28), "N", fill=(0, 0, 0))
    out = io.BytesIO()
    im.save(out, format=fmt, optimize=True)
    return out.getvalue(), metres


def _resampling(name: str):
    from rasterio.enums import Resampling
    return getattr(Resampling, name)


def chip_role(flight_captured: Any, first_seen: Any) -> str:
    """before: the flight predates the case's first sighting (前时相); after: otherwise."""
    if missing(flight_captured) or missing(first_seen):
        return "after"
    return "before" if pd.Timestamp(flight_captured) < pd.Timestamp(first_seen) else "after"


def make_chips(store, cases, flights, out_dir: Path, margin_m: float = 8.0,
               progress: bool = True) -> pd.DataFrame:
    """Cut and record a chip per case and per flight covering it (the case's outline moved by the
    flight's co-registration shift, so it sits on the structure in every flight's image), side
    by side before and after. Returns the evidence rows
    (case_no, flight_id, role, chip_path, file_hash, captured_at, gsd_m) also written with
    ``store.add_evidence``."""

    rows: list[dict] = []
    if not len(cases) or not len(flights):
        return pd.DataFrame(rows)
    chip_dir = Path(out_dir) / "chips"
    geoms = np.asarray(cases.geometry.values, dtype=object)
    centroids = shapely.centroid(geoms)

    for _, fl in flights.sort_values("captured_at").iterrows():
        flight = fl.to_dict()
        path = ortho_path(flight, getattr(store, "url", None))
        fp = fl[flights.geometry.name]
        if path is None or fp is None or fp.is_empty:
            continue
        dx, dy = flight_shift(flight)                       # where this flight's ortho shows the case
        hit = np.flatnonzero(shapely.intersects(fp, shapely.transform(centroids, lambda xy: xy + [dx, dy])))
        if not len(hit):
            continue
        with rasterio.open(path) as src:
            it = tqdm(hit, desc=f"chips {flight['flight_id']}", unit="case", disable=not progress, leave=False)
            for i in it:
                c = cases.iloc[i]
                out = chip_dir / f"{safe_name(c['case_no'])}_{safe_name(flight['flight_id'])}.png"
                m = max(margin_m, 0.5 * max(np.ptp(np.asarray(geoms[i].bounds).reshape(2, 2), axis=0)))
                gsd = cut_chip(src, shapely.transform(geoms[i], lambda xy: xy + [dx, dy]), store.crs, out, m)
                if gsd is None:
                    continue
                rows.append({"case_no": c["case_no"], "flight_id": flight["flight_id"],
                             "role": chip_role(flight.get("captured_at"), c.get("first_seen_at")),
                             "chip_path": str(out.resolve()), "file_hash": file_hash(out),
                             "captured_at": flight.get("captured_at"), "gsd_m": round(gsd, 4)})
    if rows:
        with store.transaction():
            store.add_evidence(rows)
    return pd.DataFrame(rows)


def height_chip(flight: dict, geom, geom_crs: Any, out_png: Path, settings, margin_m: float = 8.0,
                top_m: float = 15.0) -> float | None:
    """A picture of the height above ground around ``geom`` (reference frame, ``geom_crs``) on one
    flight: 0 m dark blue to ``top_m`` yellow (turbo), no data grey, the outline drawn; returns the
    outline's measured top (m), None where the flight's DSM does not reach it."""
    g = gpd.GeoSeries([geom], crs=geom_crs).translate(*flight_shift(flight))
    with rasterio.open(flight["dsm"]) as src:
        local = g.to_crs(src.crs).iloc[0] if geom_crs is not None else g.iloc[0]
    dtm = None if missing(flight.get("dtm")) else flight["dtm"]
    hm = read_heights(flight["dsm"], dtm, settings, bounds=local.buffer(margin_m).bounds)
    top = measure_heights([local], hm, settings.heights.edge_m)["top"].iloc[0]
    r0, r1, c0, c1 = hm.window(local.buffer(margin_m).bounds)
    if r0 >= r1 or c0 >= c1 or not np.isfinite(top):
        return None
    above = hm.above[r0:r1, c0:c1]
    level = np.clip(np.nan_to_num(above, nan=0.0) / top_m * 255, 0, 255).astype(np.uint8)
    rgb = cv2.applyColorMap(level, cv2.COLORMAP_TURBO)
    rgb[~np.isfinite(above)] = 128
    scale = max(1, int(round(240 / max(rgb.shape))))
    rgb = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    inv = ~hm.transform
    for part in getattr(local, "geoms", [local]):
        ring = (np.array([inv * xy for xy in part.exterior.coords]) - [c0, r0]) * scale
        cv2.polylines(rgb, [np.round(ring * 8).astype(np.int32)], True, (255, 255, 255), 2, cv2.LINE_AA, 3)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), rgb)
    return round(float(top), 2)


def height_chips(store, case_gdf, out_dir: Path, settings) -> list[dict]:
    """The 高度对比 of a case: a height picture on every flight with a DSM that reaches it, oldest first
    (file under ``out_dir/chips``, flight, date, the outline's measured top)."""
    row = case_gdf.iloc[0]
    flights = store.list_flights()
    if not len(flights) or "dsm" not in flights.columns:
        return []
    out = []
    for fid in flights[flights["dsm"].notna()].sort_values("captured_at")["flight_id"]:
        f = store.get_flight(fid)
        if missing(f.get("dsm")) or not Path(str(f["dsm"])).is_file():
            continue
        name = f"{safe_name(row['case_no'])}_{safe_name(fid)}_height.png"
        top = height_chip(f, row.geometry, case_gdf.crs, Path(out_dir) / "chips" / name, settings)
        if top is not None:
            out.append({"name": name, "flight_id": fid, "date": text(f.get("captured_at"))[:10], "top_m": top})
    return out


def case_chips(evidence: pd.DataFrame, case_no: str) -> list[dict]:
    """The case's evidence rows whose chip file exists, oldest flight first."""
    if evidence is None or not len(evidence):
        return []
    ev = evidence[evidence["case_no"] == case_no]
    out = [r for r in ev.to_dict("records") if r.get("chip_path") and Path(r["chip_path"]).is_file()]
    return sorted(out, key=lambda r: (pd.Timestamp(r["captured_at"]) if not missing(r.get("captured_at"))
                                      else pd.Timestamp.min))


def rel_url(target: str | Path, from_dir: Path) -> str:
    """A relative URL from ``from_dir`` to ``target`` (forward slashes, percent-quoted)."""
    from urllib.parse import quote
    rel = os.path.relpath(Path(target).resolve(), Path(from_dir).resolve())
    return quote(rel.replace(os.sep, "/"))


# ---------------------------------------------------------------- evidence sheets
def phase_label(k: int, n: int, lang: str) -> str:
    """前时相 for the earliest of several images, 后时相 for the latest, 第k时相 between."""
    if n > 1 and k == 0:
        return label(FIELDS, "before", lang)
    if k == n - 1:
        return label(FIELDS, "after", lang)
    return f"第{k + 1}时相" if lang == "zh" else f"Image {k + 1}"

def _env():
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                       autoescape=select_autoescape(["html"], default=True))


def case_facts(c: dict, lang: str, rules=None, crs: str | None = None) -> list[tuple[str, str]]:
    """(label, text) pairs of a case for sheets and popups."""
    def F(k):
        return label(FIELDS, k, lang)
    pr = (c.get("reasons") or {}).get("priority") if isinstance(c.get("reasons"), dict) else None
    pairs = [
        (F("case_no"), text(c.get("case_no"))),
        (F("status"), status_label(c.get("status"), lang, rules)),
        (F("category"), label(CATEGORIES, c.get("category"), lang)),
        (F("stock"), label(STOCK, c.get("stock"), lang)),
        (F("detector_class"), label(CLASSES, c.get("detector_class"), lang)),
        (F("area_m2"), text(c.get("area_m2"))),
        (F("height_m"), height_text(c, lang)),
        (F("confidence"), "" if missing(c.get("confidence")) else f"{float(c['confidence']):.2f}"),
        (F("priority"), text(pr)),
        (F("flags"), "、".join(label(FLAGS, f, lang) for f in (c.get("flags") or []))),
        (F("change_confidence"), change_text(c, lang)),
        (F("town"), text(c.get("town"))), (F("village"), text(c.get("village"))),
        (F("village_code"), text(c.get("village_code"))),
        (F("parcel_id"), text(c.get("parcel_id"))), (F("owner"), text(c.get("owner"))),
        (F("party"), text(c.get("party"))), (F("phone"), text(c.get("phone"))),
        (F("basic_farmland_m2"), text(c.get("basic_farmland_m2"))),
        (F("redline_m2"), text(c.get("redline_m2"))),
        (F("first_seen_at"), text(c.get("first_seen_at"))), (F("last_seen_at"), text(c.get("last_seen_at"))),
        (F("order_no"), text(c.get("order_no"))), (F("deadline"), text(c.get("deadline"))),
        (F("assignee"), text(c.get("assignee"))), (F("closed_date"), text(c.get("closed_date"))),
        (F("demolished_area_m2"), text(c.get("demolished_area_m2"))),
    ]
    return pairs


def write_evidence_sheets(store, cases, evidence: pd.DataFrame, out_dir: Path, settings, rules=None,
                          flights=None, map_html: Path | None = None, progress: bool = True) -> dict[str, Path]:
    """One A4 HTML sheet per case under ``out_dir/evidence`` plus ``index.html``."""

    lang = settings.report.language
    ev_dir = Path(out_dir) / "evidence"
    ev_dir.mkdir(parents=True, exist_ok=True)
    env = _env()
    tpl = env.get_template("evidence.html")
    events = store.events()
    flights = store.list_flights() if flights is None else flights
    parcels = store.parcels(tuple(cases.total_bounds)) if len(cases) else None
    latest = None
    for _, fl in flights.sort_values("captured_at", ascending=False).iterrows():
        if ortho_path(fl.to_dict(), getattr(store, "url", None)) is not None:
            latest = fl
            break
    lonlat = to_wgs84_points(cases, store.crs) if len(cases) else np.zeros((0, 2))
    paths: dict[str, Path] = {}
    src = rasterio.open(ortho_path(latest.to_dict(), store.url)) if latest is not None else None
    latest_fp = latest[flights.geometry.name] if latest is not None else None
    try:
        for i, (_, c) in enumerate(tqdm(list(cases.iterrows()), desc="evidence sheets", unit="case",
                                        disable=not progress, leave=False)):
            c = c.to_dict()
            name = safe_name(c["case_no"])
            loc = None
            if src is not None and latest_fp is not None and latest_fp.intersects(c["geometry"]):
                loc_png = ev_dir / "location" / f"{name}.jpg"
                near = []
                if parcels is not None and len(parcels):
                    box = shapely.box(*shapely.buffer(c["geometry"], 60).bounds)
                    near = [g for g in parcels.geometry.values if g is not None and g.intersects(box)]
                gsd = cut_chip(src, c["geometry"], store.crs, loc_png, 40.0, LOCATION_MAX_PX, context=near)
                if gsd:
                    loc_png.write_bytes(scale_and_north(loc_png.read_bytes(), gsd, "JPEG")[0])
                    loc = rel_url(loc_png, ev_dir)
            rows = case_chips(evidence, c["case_no"])
            chips = [{"role": phase_label(k, len(rows), lang), "url": rel_url(r["chip_path"], ev_dir),
                      "date": text(r.get("captured_at")), "flight": r["flight_id"],
                      "gsd": text(r.get("gsd_m")), "hash": (r.get("file_hash") or "")[:16]}
                     for k, r in enumerate(rows)]
            snap = c.get("parcel_snapshot") if isinstance(c.get("parcel_snapshot"), dict) else {}
            parcel_rows = parcel_facts(snap) or [(label(FIELDS, "parcel_id", lang),
                                                  "不在登记宅基地内" if lang == "zh" else "outside every registered parcel")]
            evs = events[events["case_no"] == c["case_no"]] if len(events) else events
            hist = [{"at": text(e["at"]), "actor": text(e["actor"]),
                     "from": status_label(e["from_status"], lang, rules) if not missing(e["from_status"]) else "",
                     "to": status_label(e["to_status"], lang, rules), "note": text(e["note"])}
                    for _, e in evs.iterrows()]
            x, y = c["geometry"].centroid.x, c["geometry"].centroid.y
            html = tpl.render(
                lang=lang, L=lambda k: label(FIELDS, k, lang), district=settings.district.name,
                case_no=c["case_no"], facts=case_facts(c, lang, rules),
                rules=rule_texts(c, lang, rules), chips=chips, location=loc, parcel=parcel_rows,
                history=hist, colour=STATUS_COLOURS.get(text(c.get("status")), "#888"),
                coords_wgs=f"{lonlat[i][0]:.6f}, {lonlat[i][1]:.6f}",
                coords_store=f"{x:.2f}, {y:.2f} ({store.crs})",
                map_url=(rel_url(map_html, ev_dir) + "#case=" + c["case_no"]) if map_html else None,
                title=("案件证据单" if lang == "zh" else "Case evidence sheet"))
            p = ev_dir / f"{name}.html"
            p.write_text(html, encoding="utf-8")
            paths[c["case_no"]] = p
    finally:
        if src is not None:
            src.close()
    index = env.get_template("evidence_index.html").render(
        lang=lang, title=label({"t": ("案件证据单", "Case evidence sheets")}, "t", lang),
        district=settings.district.name,
        rows=[{"case_no": k, "url": rel_url(v, ev_dir),
               "status": status_label(cases.loc[cases["case_no"] == k, "status"].iloc[0], lang, rules)}
              for k, v in paths.items()])
    (ev_dir / "index.html").write_text(index, encoding="utf-8")
    paths["index"] = ev_dir / "index.html"
    return paths
