"""The store contract: every backend must pass this whole file (``BACKENDS``).

A new backend adds its name to BACKENDS, a branch in ``_url`` (skip when its server is
absent) and in ``_raw_sql`` (for the append-only check below the interface).
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import date, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from pipeline.core.errors import StoreError
from pipeline.store import CASE_COLUMNS, Store, open_store

BACKENDS = ["gpkg", "postgis"]
CRS = "EPSG:4547"
X0, Y0 = 500_000.0, 3_400_000.0        # somewhere inside CGCS2000 / GK CM 114E


def _url(backend: str, tmp_path: Path, request=None) -> str:
    if backend == "gpkg":
        return str(tmp_path / "nested" / "folder" / "patrol.gpkg")
    if backend == "postgis":                     # a fresh database on the session's server
        return request.getfixturevalue("pg_url")   # (tests/conftest.py; skips without PostGIS)
    raise ValueError(backend)


def _raw_sql(store: Store, sql: str) -> None:
    """Run SQL on the backend directly, outside the interface."""
    if store.backend == "gpkg":
        con = sqlite3.connect(store.url, isolation_level=None)
        try:
            con.execute(sql)
        finally:
            con.close()
        return
    if store.backend == "postgis":
        import psycopg
        with psycopg.connect(store.url, autocommit=True) as con:
            con.execute(sql)
        return
    raise ValueError(store.backend)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = open_store(_url(request.param, tmp_path, request), CRS, case_prefix="LW")
    yield s
    s.close()


def B(x0, y0, x1, y1):
    return box(X0 + x0, Y0 + y0, X0 + x1, Y0 + y1)


def _flight(fid="f1", day=1, **kw):
    return {"flight_id": fid, "path": f"/data/{fid}.tif", "captured_at": datetime(2026, 3, day, 10, 30),
            "team": "一队", "source": "uav", "crs": "EPSG:4547", "gsd_m": 0.05,
            "footprint": B(0, 0, 400, 400), **kw}


def _detections(n=3, dx=0.0):
    geoms = [B(10 * i + dx, 0, 10 * i + 6 + dx, 5) for i in range(n)]
    classes = ["building", "steel_shed", "greenhouse"]
    return gpd.GeoDataFrame({"class_name": [classes[i % 3] for i in range(n)],
                             "confidence": np.linspace(0.5, 0.9, n)}, geometry=geoms, crs=CRS)


def _parcels():
    return gpd.GeoDataFrame({
        "parcel_id": ["P1", "P2", "P3"], "owner": ["张三", "李四", "王五"], "town": ["城关镇"] * 3,
        "village": ["东村", "东村", "西村"], "village_code": ["420100001001"] * 3,
        "land_use": ["0702", "0702", "0103"], "approved_area_m2": [120.0, 150.5, 90.0],
        "approved_floors": [2, None, 3], "permit_no": ["ZJ-1", None, "ZJ-3"],
        "BSM": ["b1", "b2", "b3"]},
        geometry=[B(0, 0, 20, 20), MultiPolygon([B(100, 100, 110, 110), B(120, 100, 130, 110)]),
                  Polygon([(X0 + 200, Y0 + 200), (X0 + 300, Y0 + 300), (X0 + 300, Y0 + 200)])],
        crs=CRS)


def _case(no, **kw):
    row = {"case_no": no, "source": "uav", "stock": "new_build", "category": "illegal_construction",
           "detector_class": "steel_shed", "status": "suspected", "flags": ["new"],
           "area_m2": 36.0, "growth_m2": 0.0, "confidence": 0.8, "rules": ["illegal_construction"],
           "reasons": {"outside_share": 0.93, "nested": {"a": [1, 2]}}, "parcel_id": "P1",
           "owner": "张三", "town": "城关镇", "village": "东村", "village_code": "420100001001",
           "parcel_snapshot": {"BSM": "b1", "DLBM": "0702"}, "basic_farmland_m2": 0.0,
           "redline_m2": 1.5, "farmland_m2": 2.5, "party": "张三", "phone": "13800000000",
           "order_no": "令2026-1", "order_date": date(2026, 3, 5), "deadline": date(2026, 4, 5),
           "assignee": "officer-1", "first_seen_flight": "f1",
           "first_seen_at": datetime(2026, 3, 1, 10, 30), "last_seen_flight": "f1",
           "last_seen_at": datetime(2026, 3, 1, 10, 30), "recheck_date": None, "closed_date": None,
           "demolished_area_m2": None}
    row.update(kw)
    return row


def _cases(rows, geoms):
    return gpd.GeoDataFrame(pd.DataFrame(rows), geometry=geoms, crs=CRS)


# ------------------------------------------------------------------ schema
def test_migrate_is_idempotent_and_status_counts_every_table(store):
    v = store.migrate()
    assert v == store.migrate() == store.status()["version"] >= 1
    st = store.status()
    assert st["version"] == st["latest_version"]
    assert set(st["counts"]) == {"flight", "detection", "parcel", "zone", "cases", "case_event", "evidence",
                                 "document", "media", "model", "model_event", "house", "house_event"}
    assert all(n == 0 for n in st["counts"].values())
    store.import_parcels(_parcels())
    assert store.status()["counts"]["parcel"] == 3


def test_reopen_keeps_data_and_refuses_another_crs(store):
    store.import_parcels(_parcels())
    store.close()
    with open_store(store.url, CRS) as again:
        assert len(again.parcels()) == 3
    with pytest.raises(StoreError, match="EPSG:4547"):
        open_store(store.url, "EPSG:32650")


def test_geographic_crs_is_refused(tmp_path):
    with pytest.raises(StoreError, match="not projected in metres"):
        open_store(tmp_path / "x.gpkg", "EPSG:4326")


# ------------------------------------------------------------------ flights
def test_flight_round_trip_partial_update_and_status(store):
    store.upsert_flight(_flight("f2", day=9))
    store.upsert_flight(_flight("f1", day=1))
    f = store.get_flight("f1")
    assert f["captured_at"] == datetime(2026, 3, 1, 10, 30) and f["status"] == "uploaded"
    assert f["team"] == "一队" and f["gsd_m"] == 0.05 and f["crs"] == "EPSG:4547"
    assert f["footprint"].equals(B(0, 0, 400, 400)) and f["error"] is None
    store.upsert_flight({"flight_id": "f1", "team": "二队"})             # partial: keeps the rest
    f = store.get_flight("f1")
    assert f["team"] == "二队" and f["path"] == "/data/f1.tif" and f["footprint"] is not None
    assert store.get_flight("nope") is None

    flights = store.list_flights()
    assert list(flights["flight_id"]) == ["f1", "f2"]                   # oldest capture first
    assert flights.crs.equals(store.parcels().crs) and flights.geometry.name == "footprint"
    store.set_flight_status("f1", "processing")
    assert store.get_flight("f1")["processed_at"] is None
    store.set_flight_status("f1", "failed", error="disk full")
    f = store.get_flight("f1")
    assert f["status"] == "failed" and f["error"] == "disk full" and f["processed_at"] is not None
    store.set_flight_status("f1", "done", model_version="yolo11n-1")
    f = store.get_flight("f1")
    assert f["error"] is None and f["model_version"] == "yolo11n-1"
    assert list(store.list_flights("done")["flight_id"]) == ["f1"]
    assert list(store.list_flights(["uploaded", "done"])["flight_id"]) == ["f1", "f2"]
    with pytest.raises(StoreError, match="unknown status"):
        store.set_flight_status("f1", "finished")
    with pytest.raises(StoreError, match="not in the store"):
        store.set_flight_status("nope", "done")
    with pytest.raises(StoreError, match="unknown status"):
        store.upsert_flight({"flight_id": "f3", "status": "bogus"})


# ------------------------------------------------------------------ detections
def test_replace_detections_is_idempotent_and_per_flight(store):
    store.upsert_flight(_flight("f1"))
    store.upsert_flight(_flight("f2", day=2))
    assert store.replace_detections("f1", _detections(3)) == 3
    assert store.replace_detections("f1", _detections(3)) == 3
    store.replace_detections("f2", _detections(2, dx=1000))
    d1 = store.detections("f1")
    assert len(d1) == 3 and len(store.detections()) == 5
    assert list(d1["detection_id"]) == ["f1-00000", "f1-00001", "f1-00002"]
    assert d1.crs.equals(gpd.GeoSeries([], crs=CRS).crs)
    assert d1["confidence"].dtype == np.float64 and d1["area_m2"].dtype == np.float64
    assert np.allclose(d1["area_m2"], 30.0)                              # computed when absent
    assert shapely.equals(d1.geometry.values, _detections(3).geometry.values).all()
    assert list(d1["class_name"]) == ["building", "steel_shed", "greenhouse"]
    store.replace_detections("f1", _detections(1))                        # a re-run finds fewer
    assert len(store.detections("f1")) == 1 and len(store.detections("f2")) == 2
    store.replace_detections("f1", _detections(0))
    assert len(store.detections("f1")) == 0
    with pytest.raises(StoreError, match="not in the store"):
        store.replace_detections("ghost", _detections(1))


def test_detections_in_another_crs_are_reprojected_and_bbox_filters(store):
    store.upsert_flight(_flight("f1"))
    d = _detections(3)
    store.replace_detections("f1", d.to_crs(4326))
    back = store.detections("f1")
    assert np.allclose(back.total_bounds, d.total_bounds, atol=0.01)
    hit = store.detections(bbox=(X0 + 11, Y0 + 1, X0 + 12, Y0 + 2))
    assert list(hit["detection_id"]) == ["f1-00001"]
    assert len(store.detections("f1", bbox=(X0 - 50, Y0 - 50, X0 - 40, Y0 - 40))) == 0
    with pytest.raises(StoreError, match="bbox"):
        store.detections(bbox=(1, 1, 0, 0))


# ------------------------------------------------------------------ parcels and zones
def test_parcels_round_trip_upsert_replace_and_bbox(store):
    p = _parcels()
    assert store.import_parcels(p) == 3
    back = store.parcels()
    assert list(back["parcel_id"]) == ["P1", "P2", "P3"]
    assert list(back["owner"]) == ["张三", "李四", "王五"]
    assert back["approved_area_m2"].tolist() == [120.0, 150.5, 90.0]
    assert str(back["approved_floors"].dtype) == "Int64" and back["approved_floors"].isna().tolist() == [False, True, False]
    assert back.loc[0, "attrs"] == {"BSM": "b1"}
    assert back.geometry.iloc[1].geom_type == "MultiPolygon"
    assert shapely.equals(back.geometry.values, p.geometry.values).all()
    # the triangle's envelope contains (X0+210, Y0+290) but the triangle does not
    assert len(store.parcels(bbox=(X0 + 205, Y0 + 285, X0 + 210, Y0 + 290))) == 0
    assert list(store.parcels(bbox=(X0 + 105, Y0 + 105, X0 + 125, Y0 + 106))["parcel_id"]) == ["P2"]

    upd = p.iloc[[0]].copy()
    upd["owner"] = "张三丰"
    store.import_parcels(upd)
    back = store.parcels()
    assert len(back) == 3 and back.loc[0, "owner"] == "张三丰"
    store.import_parcels(p.iloc[[2]], replace=True)
    assert list(store.parcels()["parcel_id"]) == ["P3"]


def test_parcel_import_is_all_or_nothing(store):
    store.import_parcels(_parcels())
    bad = _parcels().copy()
    bad["parcel_id"] = ["P1", "P9", "P9"]
    with pytest.raises(StoreError, match="duplicate"):
        store.import_parcels(bad, replace=True)
    bad = _parcels().copy()
    bad.loc[2, "geometry"] = shapely.Point(X0, Y0)
    with pytest.raises(StoreError, match="Point"):
        store.import_parcels(bad, replace=True)
    assert list(store.parcels()["owner"]) == ["张三", "李四", "王五"]


def test_zones_round_trip_and_bbox(store):
    z = gpd.GeoDataFrame({"zone_id": ["Z1", "Z2"], "kind": ["basic_farmland", "ecological_redline"],
                          "code": ["YJJBNT", "STHX"], "name": ["永农1", None]},
                         geometry=[B(0, 0, 50, 50), B(300, 300, 350, 350)], crs=CRS)
    assert store.import_zones(z) == 2
    assert store.import_zones(z) == 2
    back = store.zones()
    assert list(back["zone_id"]) == ["Z1", "Z2"] and back.loc[0, "name"] == "永农1"
    assert pd.isna(back.loc[1, "name"])
    assert list(store.zones(bbox=(X0 + 310, Y0 + 310, X0 + 400, Y0 + 400))["kind"]) == ["ecological_redline"]
    store.import_zones(z.iloc[[0]], replace=True)
    assert list(store.zones()["zone_id"]) == ["Z1"]


# ------------------------------------------------------------------ cases
def test_cases_round_trip_every_column(store):
    nos = store.allocate_case_numbers(2026, 2)
    rows = [_case(nos[0]), _case(nos[1], status="ordered", category="illegal_land_use", flags=[],
                                 village="西村", first_seen_at=datetime(2026, 5, 1))]
    assert store.save_cases(_cases(rows, [B(0, 0, 6, 6), B(200, 200, 210, 205)])) == 2
    back = store.cases()
    assert list(back.columns) == CASE_COLUMNS
    assert back.crs.equals(gpd.GeoSeries([], crs=CRS).crs)
    c = back.iloc[0]
    assert c["case_no"] == "LW2026-000001" and len(c["case_uuid"]) == 36
    assert c["flags"] == ["new"] and c["rules"] == ["illegal_construction"]
    assert c["reasons"] == {"outside_share": 0.93, "nested": {"a": [1, 2]}}
    assert c["parcel_snapshot"] == {"BSM": "b1", "DLBM": "0702"}
    assert c["order_date"] == pd.Timestamp("2026-03-05") and c["deadline"] == pd.Timestamp("2026-04-05")
    assert c["first_seen_at"] == pd.Timestamp("2026-03-01 10:30") and pd.isna(c["closed_date"])
    assert c["redline_m2"] == 1.5 and np.isnan(c["demolished_area_m2"])
    assert c["owner"] == "张三" and c["order_no"] == "令2026-1"
    assert back.iloc[1]["flags"] == []
    for col in ("area_m2", "confidence", "redline_m2"):
        assert back[col].dtype == np.float64
    for col in ("order_date", "first_seen_at", "created_at", "updated_at"):
        assert pd.api.types.is_datetime64_dtype(back[col])
    assert shapely.equals(back.geometry.iloc[0], B(0, 0, 6, 6))


def test_save_cases_upserts_only_given_columns(store):
    no = store.allocate_case_numbers(2026, 1)[0]
    store.save_cases(_cases([_case(no)], [B(0, 0, 6, 6)]))
    before = store.cases().iloc[0]
    time.sleep(0.01)
    store.save_cases(pd.DataFrame({"case_no": [no], "status": ["verified"], "assignee": ["officer-2"],
                                   "case_uuid": ["other"]}))
    after = store.cases().iloc[0]
    assert after["status"] == "verified" and after["assignee"] == "officer-2"
    assert after["case_uuid"] == before["case_uuid"]                      # stable
    assert after["created_at"] == before["created_at"] and after["updated_at"] > before["updated_at"]
    assert after["owner"] == "张三" and after["flags"] == ["new"]
    assert shapely.equals(after.geometry, before.geometry)
    # growth: a new geometry and a flag list
    store.save_cases(_cases([{"case_no": no, "flags": ["grown"], "area_m2": 60.0}], [B(0, 0, 10, 6)]))
    after = store.cases().iloc[0]
    assert after["flags"] == ["grown"] and after["area_m2"] == 60.0 and after.geometry.area == 60.0
    with pytest.raises(StoreError, match="case_no"):
        store.save_cases(pd.DataFrame({"status": ["verified"]}))


def test_new_case_gets_defaults(store):
    no = store.allocate_case_numbers(2026, 1)[0]
    store.save_cases(_cases([{"case_no": no, "category": "illegal_construction"}], [B(0, 0, 5, 5)]))
    c = store.cases().iloc[0]
    assert c["status"] == "suspected" and c["flags"] == [] and c["reasons"] == {}
    assert len(c["case_uuid"]) == 36 and not pd.isna(c["created_at"])


def test_case_filters(store):
    nos = store.allocate_case_numbers(2026, 4)
    rows = [
        _case(nos[0], status="suspected", category="illegal_construction", town="A", village="a1",
              first_seen_at=datetime(2026, 1, 15)),
        _case(nos[1], status="ordered", category="illegal_land_use", town="A", village="a2",
              first_seen_at=datetime(2026, 2, 15)),
        _case(nos[2], status="closed", category="over_approval", town="B", village="b1",
              first_seen_at=datetime(2026, 3, 15)),
        _case(nos[3], status="ordered", category="illegal_construction", town="B", village="b1",
              first_seen_at=None),
    ]
    store.save_cases(_cases(rows, [B(0, 0, 5, 5), B(100, 0, 105, 5), B(200, 0, 205, 5), B(300, 0, 305, 5)]))

    def nums(gdf):
        return [int(n[-6:]) for n in gdf["case_no"]]

    assert nums(store.cases()) == [1, 2, 3, 4]
    assert nums(store.cases(status="ordered")) == [2, 4]
    assert nums(store.cases(status=["ordered", "closed"])) == [2, 3, 4]
    assert nums(store.cases(category="illegal_construction")) == [1, 4]
    assert nums(store.cases(town="B")) == [3, 4]
    assert nums(store.cases(town="A", village="a2")) == [2]
    assert nums(store.cases(since="2026-02-01", until=date(2026, 3, 1))) == [2]
    assert nums(store.cases(until=datetime(2026, 2, 1))) == [1]
    assert nums(store.cases(bbox=(X0 + 99, Y0, X0 + 201, Y0 + 1))) == [2, 3]
    assert nums(store.cases(bbox=(X0 + 99, Y0, X0 + 201, Y0 + 1), status="closed")) == [3]
    # case 4 has no first_seen_at: created_at (now) counts
    assert 4 in nums(store.cases(since=datetime.now().replace(year=datetime.now().year - 1)))


# ------------------------------------------------------------------ case numbers
def test_case_numbers_are_sequential_per_year_and_skip_existing(store):
    assert store.allocate_case_numbers(2026, 3) == ["LW2026-000001", "LW2026-000002", "LW2026-000003"]
    assert store.allocate_case_numbers(2026, 1) == ["LW2026-000004"]
    assert store.allocate_case_numbers(2027, 1) == ["LW2027-000001"]
    assert store.allocate_case_numbers(2026, 0) == []
    store.save_cases(_cases([_case("LW2026-000050")], [B(0, 0, 5, 5)]))   # e.g. carried over by hand
    assert store.allocate_case_numbers(2026, 1) == ["LW2026-000051"]


def test_case_numbers_of_a_rolled_back_transaction_are_reused(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            assert store.allocate_case_numbers(2026, 2) == ["LW2026-000001", "LW2026-000002"]
            raise RuntimeError("crash")
    assert store.allocate_case_numbers(2026, 1) == ["LW2026-000001"]


WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.store import open_store
    url, crs, tag, rounds, mark = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    store = open_store(url, crs, case_prefix="LW")
    ready = Path(mark + "." + tag + ".ready"); ready.write_text("1")
    go = Path(mark + ".go")
    while not go.exists():
        time.sleep(0.01)
    out = []
    for _ in range(rounds):
        out += store.allocate_case_numbers(2026, 2)
    print(" ".join(out))
""")


def test_case_numbers_unique_under_two_concurrent_writer_processes(store, tmp_path):
    rounds = 40
    mark = str(tmp_path / "mark")                    # marker files (a URL is not a folder)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, store.url, CRS, tag, str(rounds), mark],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    deadline = time.time() + 60
    while not all(Path(f"{mark}.{t}.ready").exists() for t in "ab"):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    Path(mark + ".go").write_text("1")
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    numbers = [n for o in outs for n in o[0].split()]
    assert len(numbers) == 2 * rounds * 2
    assert len(set(numbers)) == len(numbers)
    assert sorted(int(n[-6:]) for n in numbers) == list(range(1, len(numbers) + 1))
    for o in outs:                                                       # each pair contiguous
        seq = [int(n[-6:]) for n in o[0].split()]
        assert all(b == a + 1 for a, b in zip(seq[::2], seq[1::2]))


# ------------------------------------------------------------------ document numbers
def test_document_numbers_per_kind_and_year_and_recorded_once(store):
    assert [store.next_sequence("doc:stop_notice", 2026) for _ in range(3)] == [1, 2, 3]
    assert store.next_sequence("doc:recheck", 2026) == 1 and store.next_sequence("doc:stop_notice", 2027) == 1
    with pytest.raises(RuntimeError):
        with store.transaction():
            assert store.next_sequence("doc:stop_notice", 2026) == 4
            raise RuntimeError("the PDF failed")                # the number is given back
    assert store.next_sequence("doc:stop_notice", 2026) == 4
    row = {"doc_no": "责停〔2026〕第004号", "kind": "stop_notice", "year": 2026, "seq": 4, "case_no": "LW2026-000001",
           "issued_at": datetime(2026, 3, 1, 9, 30), "actor": "off", "fields": {"party": "王五", "reasons": ["a"]},
           "file_hash": "ab" * 32}
    store.add_document(row)
    with pytest.raises(StoreError, match="already recorded"):
        store.add_document(row)
    store.add_document({**row, "doc_no": "复查〔2026〕第001号", "kind": "recheck", "seq": 1})
    docs = store.documents(case_no="LW2026-000001")
    assert list(docs["doc_no"]) == ["责停〔2026〕第004号", "复查〔2026〕第001号"]
    assert docs["fields"].iloc[0] == {"party": "王五", "reasons": ["a"]}
    assert list(store.documents(kind="recheck")["seq"]) == [1] and not len(store.documents(case_no="nope"))
    assert store.status()["counts"]["document"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_version_3_store_upgrades_to_documents_keeping_its_cases(backend, request, tmp_path, monkeypatch):
    from pipeline.store.gpkg import GpkgStore
    from pipeline.store.postgis import PostgisStore
    cls = GpkgStore if backend == "gpkg" else PostgisStore
    url = _url(backend, tmp_path, request)
    full = cls.MIGRATIONS
    monkeypatch.setattr(cls, "MIGRATIONS", full[:3])             # the store as the last release left it
    old = open_store(url, CRS, case_prefix="LW")
    assert old.status()["version"] == 3 and "document" not in old.status()["counts"]
    with old.transaction():                                      # a case as version 3 wrote it
        old._x("INSERT INTO cases (case_no, case_uuid, status, party) VALUES ('LW2025-000007', 'u-7', "
               "'ordered', '李四')")
    old.close()
    monkeypatch.setattr(cls, "MIGRATIONS", full)
    new = open_store(url, CRS, case_prefix="LW")
    try:
        assert new.status()["version"] == len(full) == 10 and new.status()["counts"]["document"] == 0
        assert new.status()["counts"]["house"] == 0 == new.status()["counts"]["house_event"]
        assert new.status()["counts"]["media"] == 0 == new.status()["counts"]["model"]
        c = new.cases().set_index("case_no").loc["LW2025-000007"]
        assert c["status"] == "ordered" and c["party"] == "李四" and c["case_uuid"] == "u-7"
        assert pd.isna(c["floors"]) and pd.isna(c["unit"]) and pd.isna(c["id_number"])
        new.save_cases(pd.DataFrame([{"case_no": "LW2025-000007", "floors": 3, "unit": "二中队"}]))
        c = new.cases().set_index("case_no").loc["LW2025-000007"]
        assert c["floors"] == 3 and c["unit"] == "二中队" and c["party"] == "李四"
        with new.transaction():                                  # migration 6: a failed flight's Chinese line
            new.upsert_flight({"flight_id": "f-old", "captured_at": "2025-05-01T10:00:00", "status": "uploaded"})
        new.set_flight_status("f-old", "failed", error="model x cannot be loaded", error_zh="识别模型无法使用")
        f = new.get_flight("f-old")
        assert f["status"] == "failed" and f["error_zh"] == "识别模型无法使用" and f["error"].startswith("model")
    finally:
        new.close()


SEQ_WORKER = WORKER.replace("out += store.allocate_case_numbers(2026, 2)",
                            "out.append(str(store.next_sequence('doc:stop_notice', 2026)))")


def test_document_numbers_unique_under_two_concurrent_writer_processes(store, tmp_path):
    rounds, mark = 30, str(tmp_path / "mark")
    procs = [subprocess.Popen([sys.executable, "-c", SEQ_WORKER, store.url, CRS, tag, str(rounds), mark],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    deadline = time.time() + 60
    while not all(Path(f"{mark}.{t}.ready").exists() for t in "ab"):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    Path(mark + ".go").write_text("1")
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    seqs = sorted(int(n) for o in outs for n in o[0].split())
    assert seqs == list(range(1, 2 * rounds + 1))                 # no gap, none twice


# ------------------------------------------------------------------ history and evidence
def test_events_append_only(store):
    ids = store.append_events([
        {"case_no": "LW2026-000001", "actor": "system", "from_status": None, "to_status": "suspected",
         "at": datetime(2026, 3, 1, 10, 0), "note": "新增"},
        {"case_no": "LW2026-000002", "actor": "system", "to_status": "suspected"},
    ])
    more = store.append_events(pd.DataFrame([{"case_no": "LW2026-000001", "actor": "officer-1",
                                              "from_status": "suspected", "to_status": "verified",
                                              "note": "现场核查"}]))
    assert len(ids) == 2 and more[0] > ids[1] > ids[0]
    ev = store.events("LW2026-000001")
    assert list(ev.columns) == ["event_id", "case_no", "at", "actor", "from_status", "to_status", "note"]
    assert ev["to_status"].tolist() == ["suspected", "verified"] and ev["note"].tolist() == ["新增", "现场核查"]
    assert ev.loc[0, "at"] == pd.Timestamp("2026-03-01 10:00") and pd.isna(ev.loc[0, "from_status"])
    assert not pd.isna(store.events("LW2026-000002").loc[0, "at"])          # defaults to now
    assert len(store.events()) == 3
    assert not any(hasattr(store, m) for m in ("update_event", "delete_event", "delete_events"))
    with pytest.raises(Exception, match="append-only"):
        _raw_sql(store, "UPDATE case_event SET note = 'rewritten'")
    with pytest.raises(Exception, match="append-only"):
        _raw_sql(store, "DELETE FROM case_event")
    assert store.events("LW2026-000001")["note"].tolist() == ["新增", "现场核查"]
    with pytest.raises(StoreError, match="case_no"):
        store.append_events([{"actor": "x"}])


def test_evidence_upsert_by_case_flight_role(store):
    rows = [{"case_no": "C1", "flight_id": "f1", "role": "before", "chip_path": "chips/a.jpg",
             "file_hash": "aa", "captured_at": datetime(2026, 3, 1), "gsd_m": 0.05},
            {"case_no": "C1", "flight_id": "f2", "role": "after", "chip_path": "chips/b.jpg",
             "file_hash": "bb", "captured_at": datetime(2026, 4, 1), "gsd_m": 0.05},
            {"case_no": "C2", "flight_id": "f2", "role": "after", "chip_path": "chips/c.jpg",
             "file_hash": "cc", "captured_at": datetime(2026, 4, 1), "gsd_m": 0.1}]
    assert store.add_evidence(rows) == 3
    store.add_evidence([{**rows[1], "chip_path": "chips/b2.jpg"}])             # a re-run
    ev = store.evidence("C1")
    assert ev["role"].tolist() == ["before", "after"] and ev["chip_path"].tolist() == ["chips/a.jpg", "chips/b2.jpg"]
    assert ev["captured_at"].iloc[0] == pd.Timestamp("2026-03-01") and ev["gsd_m"].dtype == np.float64
    assert len(store.evidence()) == 3 and len(store.evidence("C9")) == 0


# ------------------------------------------------------------------ transactions and concurrency
def test_failed_transaction_leaves_nothing(store):
    store.import_parcels(_parcels())
    before = store.status()["counts"]
    with pytest.raises(RuntimeError, match="crash"):
        with store.transaction():
            store.upsert_flight(_flight("f1"))
            store.replace_detections("f1", _detections(3))
            nos = store.allocate_case_numbers(2026, 2)
            store.save_cases(_cases([_case(n) for n in nos], [B(0, 0, 5, 5), B(9, 9, 12, 12)]))
            store.append_events([{"case_no": nos[0], "to_status": "suspected"}])
            store.add_evidence([{"case_no": nos[0], "flight_id": "f1", "role": "before"}])
            store.import_parcels(_parcels().iloc[[0]], replace=True)
            assert len(store.cases()) == 2                                  # visible inside
            raise RuntimeError("crash in the middle of a flight")
    assert store.status()["counts"] == before
    assert store.get_flight("f1") is None and len(store.parcels()) == 3


def test_nested_transaction_failure_undoes_only_the_inner_block(store):
    with store.transaction():
        store.upsert_flight(_flight("f1"))
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.upsert_flight(_flight("f2"))
                with store.transaction():
                    store.replace_detections("f2", _detections(2))
                raise RuntimeError("inner")
        store.replace_detections("f1", _detections(1))
    assert [f for f in store.list_flights()["flight_id"]] == ["f1"]
    assert len(store.detections()) == 1


def test_reader_is_not_blocked_by_a_writer(store):
    store.import_parcels(_parcels().iloc[[0]])
    reader = open_store(store.url, CRS)
    try:
        with store.transaction():
            store.import_parcels(_parcels())
            t = time.perf_counter()
            seen = reader.parcels()                     # the last committed state, at once
            assert time.perf_counter() - t < 2.0
            assert list(seen["parcel_id"]) == ["P1"]
            assert reader.status()["counts"]["parcel"] == 1
        assert len(reader.parcels()) == 3
    finally:
        reader.close()


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.store import open_store
    url, crs, mark = sys.argv[1], sys.argv[2], sys.argv[3]
    store = open_store(url, crs)
    with store.transaction():
        store.allocate_case_numbers(2026, 1)
        Path(mark + ".locked").write_text("1")
        while not Path(mark + ".release").exists():
            time.sleep(0.01)
    print("done")
""")


def test_reader_reads_while_another_process_holds_the_write_lock(store, tmp_path):
    store.import_parcels(_parcels())
    mark = str(tmp_path / "mark")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, store.url, CRS, mark],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not Path(mark + ".locked").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
            time.sleep(0.02)
        t = time.perf_counter()
        assert len(store.parcels()) == 3 and len(store.cases()) == 0
        assert time.perf_counter() - t < 2.0
    finally:
        Path(mark + ".release").write_text("1")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert store.allocate_case_numbers(2026, 1) == ["LW2026-000002"]   # waited for, then after


# ------------------------------------------------------------------ the embedded file itself
def test_gpkg_is_a_geopackage_gdal_reads(tmp_path):
    import pyogrio
    url = _url("gpkg", tmp_path)
    with open_store(url, CRS) as s:
        s.import_parcels(_parcels())
        s.upsert_flight(_flight("f1"))
        s.replace_detections("f1", _detections(3))
        no = s.allocate_case_numbers(2026, 1)[0]
        s.save_cases(_cases([_case(no)], [B(0, 0, 6, 6)]))
        s.append_events([{"case_no": no, "to_status": "suspected"}])
    assert Path(url).is_file()
    layers = dict(pyogrio.list_layers(url))
    assert {"flight", "detection", "parcel", "zone", "cases", "case_event", "evidence"} <= set(layers)
    assert layers["parcel"] == "MultiPolygon" and layers["case_event"] is None
    assert "store_meta" not in layers and "case_counter" not in layers
    info = pyogrio.read_info(url, layer="parcel")
    assert info["crs"] == "EPSG:4547" and info["features"] == 3
    parcels = pyogrio.read_dataframe(url, layer="parcel")
    assert parcels["owner"].tolist() == ["张三", "李四", "王五"]
    assert np.allclose(parcels.total_bounds, _parcels().total_bounds)
    inside = pyogrio.read_dataframe(url, layer="parcel", bbox=(X0 + 101, Y0 + 101, X0 + 102, Y0 + 102))
    assert inside["parcel_id"].tolist() == ["P2"]
    cases = pyogrio.read_dataframe(url, layer="cases")
    assert cases["case_no"].tolist() == [no] and cases["category"].tolist() == ["illegal_construction"]
    assert pyogrio.read_dataframe(url, layer="case_event", read_geometry=False)["to_status"].tolist() == ["suspected"]
    con = sqlite3.connect(url)
    try:
        assert con.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
        assert con.execute("PRAGMA user_version").fetchone()[0] == 10200
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM rtree_parcel_geometry").fetchone()[0] == 3
        assert con.execute("SELECT COUNT(*) FROM rtree_flight_footprint").fetchone()[0] == 1
        srs = con.execute("SELECT organization, organization_coordsys_id, definition FROM "
                          "gpkg_spatial_ref_sys WHERE srs_id = 4547").fetchone()
        assert srs[:2] == ("EPSG", 4547) and "114" in srs[2]
    finally:
        con.close()


def test_gpkg_refuses_files_that_are_not_patrol_stores(tmp_path):
    junk = tmp_path / "junk.gpkg"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable"):
        open_store(junk, CRS)
    other = tmp_path / "district.gpkg"
    _parcels().to_file(other, layer="parcels", engine="pyogrio")
    with pytest.raises(StoreError, match="not a patrol store"):
        open_store(other, CRS)
    with pytest.raises(StoreError, match="postgresql"):
        open_store("ftp://host/x", CRS)


def test_the_building_register_round_trips_and_its_history_is_append_only(store):
    rec = gpd.GeoDataFrame({"house_no": ["ZJ2026-000001", "ZJ2026-000002"], "town": ["新店镇", "新店镇"],
                            "village": ["石桥村", "河口村"], "flights": [["f1"], ["f1", "f2"]], "floors": [2, 3],
                            "area_m2": [96.0, 120.5]},
                           geometry=[box(X0, Y0, X0 + 10, Y0 + 9.6), box(X0 + 40, Y0, X0 + 50, Y0 + 12.05)], crs=CRS)
    assert store.save_houses(rec) == 2
    got = store.houses()
    assert got["house_no"].tolist() == ["ZJ2026-000001", "ZJ2026-000002"]
    assert got["status"].tolist() == ["registered", "registered"] and got["flights"].tolist() == [["f1"], ["f1", "f2"]]
    assert got.geometry.area.round(1).tolist() == [96.0, 120.5] and got["created_at"].notna().all()
    assert store.houses(village="河口村")["house_no"].tolist() == ["ZJ2026-000002"]
    assert store.houses(bbox=(X0 - 1, Y0 - 1, X0 + 11, Y0 + 11))["house_no"].tolist() == ["ZJ2026-000001"]
    store.save_houses(pd.DataFrame({"house_no": ["ZJ2026-000001"], "case_no": ["LW2026-000007"]}))
    one = store.houses(house_no="ZJ2026-000001").iloc[0]
    assert one["case_no"] == "LW2026-000007" and one["town"] == "新店镇" and one["floors"] == 2   # the rest kept
    store.append_house_events([{"house_no": "ZJ2026-000001", "actor": "system", "to_status": "registered",
                                "note": "航次 f1 发现，登记入台账", "facts": {"flight": "f1"}}])
    store.append_house_events([{"house_no": "ZJ2026-000001", "actor": "system", "note": "航次 f2 覆盖此处但未再发现"}])
    ev = store.house_events("ZJ2026-000001")
    assert ev["note"].tolist() == ["航次 f1 发现，登记入台账", "航次 f2 覆盖此处但未再发现"]
    assert ev["facts"].iloc[0] == {"flight": "f1"} and store.status()["counts"]["house_event"] == 2
    with pytest.raises(Exception, match="append-only"):
        _raw_sql(store, "UPDATE house_event SET note = 'rewritten'")
    with pytest.raises(Exception, match="append-only"):
        _raw_sql(store, "DELETE FROM house_event")
    assert len(store.house_events()) == 2
