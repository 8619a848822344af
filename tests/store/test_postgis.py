"""PostGIS store beyond the shared contract (tests/system/test_store_contract.py runs that on both
backends): GIS-ready tables, concurrent migration, dropped connections really killed with
pg_terminate_backend, two concurrent runs on overlapping flights, the demo on PostGIS vs
the embedded store, and the CLI against a postgresql:// URL. A real server is started by
the ``pg_server`` fixture (tests/conftest.py, tests/pg.py)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import box

from pipeline.core.errors import StoreError
from pipeline.store import open_store

CRS = "EPSG:4547"
X0, Y0 = 500_000.0, 3_400_000.0
ROOT = Path(__file__).resolve().parents[2]
NO_MODEL = "detector.model=/nonexistent/no-weights.onnx"   # the demo then uses truth as detections


def _db(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _kill(pg_server, url: str, state: str) -> int:
    """pg_terminate_backend every store connection of the database in ``state``."""
    rows = pg_server.sql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND application_name = 'lianwei-patrol' AND state = %s",
                         (_db(url), state))
    time.sleep(0.1)
    return sum(1 for (ok,) in rows if ok)


def _flight(fid: str, day: int = 1) -> dict:
    return {"flight_id": fid, "path": f"/data/{fid}.tif", "captured_at": datetime(2026, 3, day, 10),
            "crs": CRS, "gsd_m": 0.05, "footprint": box(X0, Y0, X0 + 400, Y0 + 400)}


def _dets(n: int) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"class_name": ["building"] * n, "confidence": [0.9] * n},
                            geometry=[box(X0 + 20 * i, Y0, X0 + 20 * i + 8, Y0 + 8) for i in range(n)], crs=CRS)


def _start_together(procs, go: Path, timeout: float = 60) -> None:
    """Wait until every process wrote its ``go.*`` ready marker, then let them all go."""
    deadline = time.time() + timeout
    while len(list(go.parent.glob(go.name + ".*"))) < len(procs):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.02)
    go.write_text("1")


@pytest.fixture(scope="module")
def district(tmp_path_factory):
    from pipeline.synth import generate_district
    out = tmp_path_factory.mktemp("district")
    generate_district(out, seed=3, size_m=120, epochs=3, gsd_m=0.1, progress=False)
    return out


# ------------------------------------------------------------------ schema for GIS clients
def test_tables_have_typed_geometry_columns_with_gist_indexes(pg_server, pg_url):
    with open_store(pg_url, CRS) as s:
        st = s.status()
        assert st["version"] == s.migrate() == st["latest_version"] >= 1
    db = _db(pg_url)
    cols = pg_server.sql(db, "SELECT f_table_name, f_geometry_column, srid, type FROM geometry_columns "
                             "ORDER BY 1")
    assert cols == [("cases", "geometry", 4547, "MULTIPOLYGON"), ("detection", "geometry", 4547, "MULTIPOLYGON"),
                    ("flight", "footprint", 4547, "MULTIPOLYGON"), ("house", "geometry", 4547, "MULTIPOLYGON"),
                    ("parcel", "geometry", 4547, "MULTIPOLYGON"), ("zone", "geometry", 4547, "MULTIPOLYGON")]
    gist = pg_server.sql(db, "SELECT tablename FROM pg_indexes WHERE indexdef LIKE '%USING gist%' ORDER BY 1")
    assert [t for (t,) in gist] == ["cases", "detection", "flight", "house", "parcel", "zone"]
    pks = pg_server.sql(db, "SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc "
                            "JOIN information_schema.key_column_usage kcu USING (constraint_name, table_name) "
                            "WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_name IN "
                            "('cases', 'detection', 'flight', 'parcel', 'zone') ORDER BY 1")
    assert {c for _, c in pks} == {"fid"} and len(pks) == 5
    # what a GIS desktop sees: a MultiPolygon with its SRID
    with open_store(pg_url, CRS) as s:
        s.upsert_flight(_flight("f1"))
        s.replace_detections("f1", _dets(2))
    assert pg_server.sql(db, "SELECT ST_SRID(geometry), GeometryType(geometry), ST_Area(geometry) "
                             "FROM detection ORDER BY fid LIMIT 1") == [(4547, "MULTIPOLYGON", 64.0)]


MIGRATOR = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.store import open_store
    url, go = sys.argv[1], Path(sys.argv[2])
    Path(f"{go}.{sys.argv[3]}").write_text("ready")
    while not go.exists():
        time.sleep(0.005)
    with open_store(url, "EPSG:4547") as s:
        print(s.status()["version"])
""")


def test_two_processes_migrating_a_new_database_at_once(pg_server, pg_url, tmp_path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATOR, pg_url, str(go), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT) for i in range(2)]
    _start_together(procs, go)
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    from pipeline.store.postgis import MIGRATIONS
    latest = MIGRATIONS[-1][0]
    assert [o[0].strip() for o in outs] == [str(latest)] * 2
    assert pg_server.sql(_db(pg_url), "SELECT version FROM schema_version ORDER BY 1") == \
        [(v,) for v, _, _ in MIGRATIONS]                               # each applied once


def test_a_writer_waiting_too_long_for_the_lock_gets_one_line(pg_url, monkeypatch):
    from pipeline.store import postgis
    monkeypatch.setattr(postgis, "LOCK_TIMEOUT_S", 0.5)
    with open_store(pg_url, CRS) as a, open_store(pg_url, CRS) as b:
        with a.transaction():
            a.upsert_flight(_flight("f1"))
            t = time.perf_counter()
            with pytest.raises(StoreError, match=r"is busy .*try again later") as e:
                b.upsert_flight(_flight("f2"))
            assert time.perf_counter() - t < 5 and "\n" not in str(e.value)
            assert len(b.list_flights()) == 0                      # readers still read
        b.upsert_flight(_flight("f2"))
        assert list(b.list_flights()["flight_id"]) == ["f1", "f2"]


# ------------------------------------------------------------------ dropped connections
def test_dead_idle_connections_are_replaced_at_transaction_start(pg_server, pg_url):
    with open_store(pg_url, CRS) as s:
        s.upsert_flight(_flight("f1"))
        assert _kill(pg_server, pg_url, "idle") >= 1               # the pool's idle connection
        s.upsert_flight(_flight("f2", day=2))                      # retried on a new one
        assert _kill(pg_server, pg_url, "idle") >= 1
        assert list(s.list_flights()["flight_id"]) == ["f1", "f2"]  # reads retry too
        assert s.status()["counts"]["flight"] == 2


def test_connection_killed_in_the_middle_of_a_write_leaves_nothing(pg_server, pg_url):
    with open_store(pg_url, CRS) as s:
        s.upsert_flight(_flight("f0"))
        with pytest.raises(StoreError, match="connection was lost .*nothing of it was kept") as e:
            with s.transaction():
                s.upsert_flight(_flight("f1"))
                s.replace_detections("f1", _dets(5))
                nos = s.allocate_case_numbers(2026, 2)
                assert _kill(pg_server, pg_url, "idle in transaction") == 1
                s.append_events([{"case_no": nos[0], "to_status": "suspected"}])
        assert "\n" not in str(e.value)
        counts = s.status()["counts"]                              # the store carries on
        assert counts["flight"] == 1 and counts["detection"] == 0 and counts["case_event"] == 0
        assert s.allocate_case_numbers(2026, 1) == ["LW2026-000001"]   # the numbers came back


def test_process_flight_killed_mid_flight_is_marked_failed_with_nothing_half_written(pg_server, pg_url):
    from pipeline.core.config import load_settings
    from pipeline.process.run import process_flight

    settings = load_settings(None, {"store.url": pg_url, "store.crs": CRS}, environ={})
    with open_store(pg_url, CRS) as s:
        s.import_parcels(gpd.GeoDataFrame({"parcel_id": ["P1"], "land_use": ["0702"],
                                           "approved_area_m2": [10.0]},
                                          geometry=[box(X0 + 500, Y0 + 500, X0 + 510, Y0 + 510)], crs=CRS))
        s.upsert_flight(_flight("f1"))
        real_save = s.save_cases

        def save_then_lose_the_connection(gdf):
            assert len(gdf)                                        # the flight made cases
            real_save(gdf)
            assert _kill(pg_server, pg_url, "idle in transaction") == 1
            return len(gdf)

        s.save_cases = save_then_lose_the_connection
        with pytest.raises(StoreError, match="connection was lost"):
            process_flight(s, "f1", settings, detections=_dets(4).assign(area_m2=64.0), progress=False)
        f = s.get_flight("f1")
        assert f["status"] == "failed" and "connection was lost" in f["error"]
        counts = s.status()["counts"]
        assert counts["detection"] == counts["cases"] == counts["case_event"] == 0
        del s.save_cases                                           # a re-run completes the flight
        res = process_flight(s, "f1", settings, detections=_dets(4).assign(area_m2=64.0), progress=False)
        assert res.new_cases == 4 and s.get_flight("f1")["status"] == "done"
        assert sorted(int(n[-6:]) for n in s.cases()["case_no"]) == [1, 2, 3, 4]   # no numbers lost


# ------------------------------------------------------------------ concurrent runs
RUNNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import geopandas as gpd
    from pipeline.core.config import load_settings
    from pipeline.process.run import process_flight
    from pipeline.store import open_store
    url, vectors, go, jobs = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
    settings = load_settings(None, {"store.url": url}, environ={})
    truth = gpd.read_file(vectors, layer="truth")
    store = open_store(url, settings.store.crs)
    read_cases = store.cases
    def slow_cases(*args, **kw):          # widen the read-then-write window of a flight
        out = read_cases(*args, **kw)
        time.sleep(1.0)
        return out
    store.cases = slow_cases
    Path(f"{go}.{jobs[0]}").write_text("ready")
    while not go.exists():
        time.sleep(0.005)
    for job in jobs:
        fid, epoch = job.split(":")
        t = truth[truth["epoch"] == int(epoch)]
        dets = t.assign(confidence=1.0, area_m2=t.geometry.area)
        r = process_flight(store, fid, settings, detections=dets, force=True, progress=False)
        print(fid, r.new_cases, flush=True)
    store.close()
""")


def test_two_concurrent_runs_on_overlapping_flights(pg_url, district, tmp_path):
    from pipeline.core.config import load_settings
    from pipeline.ingest.parcels import import_registry
    from pipeline.process.run import register_flight

    settings = load_settings(None, {"store.url": pg_url}, environ={})
    vectors = district / "district.gpkg"
    with open_store(pg_url, CRS) as s:
        import_registry(s, vectors)
        fids = [register_flight(s, district / f"epoch_{e}.tif", settings)["flight_id"] for e in (1, 2, 3)]
        assert all(f.intersects(g) for f, g in zip(s.list_flights().geometry, s.list_flights().geometry[1:]))
    go = tmp_path / "go"
    jobs = [[f"{fids[1]}:2", f"{fids[0]}:1"], [f"{fids[2]}:3", f"{fids[1]}:2"]]   # overlapping; one flight twice
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, pg_url, str(vectors), str(go), *j],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for j in jobs]
    _start_together(procs, go)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    with open_store(pg_url, CRS) as s:
        cases = s.cases()
        events = s.events()
        flights = s.list_flights()
    assert len(cases) >= 2 and set(flights["status"]) == {"done"}
    nums = sorted(int(n[-6:]) for n in cases["case_no"])
    assert nums == list(range(1, len(nums) + 1))                  # no duplicates, no gaps
    g = np.asarray(cases.geometry.values, dtype=object)
    a, b = shapely.STRtree(g).query(g, predicate="intersects")
    keep = a < b
    iou = shapely.area(shapely.intersection(g[a[keep]], g[b[keep]])) / \
        shapely.area(shapely.union(g[a[keep]], g[b[keep]]))
    assert not (iou > 0.5).any(), "the same structure became two cases"
    new_events = events[events["from_status"].isna()]
    assert sorted(new_events["case_no"]) == sorted(cases["case_no"])   # one 'new' event per case


# ------------------------------------------------------------------ the demo on both stores
def _demo(district: Path, url: str):
    from pipeline.cli import Context
    from pipeline.cli.demo import run_demo
    run_demo(Context(None, url, (NO_MODEL,)), district, seed=3, size_m=120, epochs=3, echo=lambda *a: None)
    with open_store(url, CRS) as s:
        return s.cases(), s.events(), s.list_flights(), len(s.detections()), s.houses(), s.house_events()


def test_demo_on_postgis_makes_the_same_cases_as_the_embedded_store(pg_url, district, tmp_path):
    gc, ge, gf, gd, gh, ghe = _demo(district, str(tmp_path / "demo.gpkg"))
    pc, pe, pf, pd_, ph, phe = _demo(district, pg_url)
    assert len(gc) >= 3 and gd == pd_
    assert list(pc["case_no"]) == list(gc["case_no"])
    for col in ("category", "status", "stock", "detector_class", "parcel_id", "first_seen_flight",
                "last_seen_flight"):
        assert pc[col].tolist() == gc[col].tolist(), col
    assert pc["flags"].tolist() == gc["flags"].tolist() and pc["rules"].tolist() == gc["rules"].tolist()
    assert np.allclose(pc["area_m2"], gc["area_m2"])
    assert shapely.equals(pc.geometry.values, gc.geometry.values).all()
    assert (pc["first_seen_at"] == gc["first_seen_at"]).all()
    key = ["case_no", "from_status", "to_status", "actor"]
    assert pe[key].astype(str).values.tolist() == ge[key].astype(str).values.tolist()
    assert pf[["flight_id", "status", "model_version"]].values.tolist() == \
        gf[["flight_id", "status", "model_version"]].values.tolist()
    # the 自建房 register and its census, the same on both
    assert len(gh) >= 3 and list(ph["house_no"]) == list(gh["house_no"])
    for col in ("status", "hazard", "case_no", "gone_flight", "floors"):
        assert ph[col].astype(str).tolist() == gh[col].astype(str).tolist(), col
    assert ph["measures"].tolist() == gh["measures"].tolist() and ph["inspection"].tolist() == gh["inspection"].tolist()
    key = ["house_no", "from_status", "to_status", "note"]
    assert phe[key].astype(str).values.tolist() == ghe[key].astype(str).values.tolist()


# ------------------------------------------------------------------ the CLI on a postgresql:// URL
def test_cli_db_and_import_commands_against_postgis(pg_url, district, capsys, monkeypatch):
    from pipeline.cli import main

    def patrol(*args, env_store=None):
        monkeypatch.delenv("PATROL_STORE", raising=False)
        if env_store:
            monkeypatch.setenv("PATROL_STORE", env_store)
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = patrol("db", "status", env_store=pg_url)
    assert code == 0 and "schema   version 0" in out and "(postgis)" in out, out + err
    code, out, err = patrol("--store", pg_url, "db", "init")
    assert code == 0 and "schema version" in out and "version 0" not in out, err
    code, out, err = patrol("db", "migrate", env_store=pg_url)
    assert code == 0 and "up to date" in out, err
    vectors = str(district / "district.gpkg")
    code, out, err = patrol("--store", pg_url, "import", "parcels", vectors)
    assert code == 0 and "imported" in out, err
    code, out, err = patrol("import", "zones", vectors, env_store=pg_url)
    assert code == 0 and "imported" in out, err
    with open_store(pg_url, CRS) as s:
        n = s.status()["counts"]
        assert n["parcel"] > 0 and n["zone"] > 0
        assert len(s.parcels()) == len(gpd.read_file(vectors, layer="parcels"))
    code, out, err = patrol("db", "status", env_store=pg_url)
    assert code == 0 and "parcel" in out and str(n["parcel"]) in out, out
    bad = pg_url.rsplit("/", 1)[0] + "/no_such_db"
    code, out, err = patrol("--store", bad, "db", "status")
    assert code == 2 and err.count("\n") == 1 and "cannot connect" in err and "no_such_db" in err, err


# ------------------------------------------------------------------ least-privilege roles (README)
def _readme_sql() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("## PostGIS deployment", 1)[1]
    text = text.split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in text.split("```sql\n")[1:]]


def test_readme_roles_give_each_service_what_it_needs_and_no_more(pg_server, pg_url):
    import psycopg
    setup, grants = _readme_sql()
    db = _db(pg_url)
    pg_server.sql(db, setup)
    as_role = {r: pg_url.replace("postgresql://postgres@", f"postgresql://{r}@")
               for r in ("patrol_owner", "patrol_nightly", "patrol_web", "gis_reader")}
    with open_store(as_role["patrol_owner"], CRS) as s:
        assert s.status()["version"] == s.status()["latest_version"]
    with psycopg.connect(as_role["patrol_owner"], autocommit=True) as con:
        con.execute(grants)
    with open_store(as_role["patrol_nightly"], CRS) as s:          # the nightly run
        s.import_parcels(gpd.GeoDataFrame({"parcel_id": ["P1"]}, geometry=[box(X0, Y0, X0 + 9, Y0 + 9)], crs=CRS))
        s.upsert_flight(_flight("f1"))
        s.replace_detections("f1", _dets(2))
        nos = s.allocate_case_numbers(2026, 2)
        s.save_cases(gpd.GeoDataFrame({"case_no": nos, "category": ["illegal_construction"] * 2},
                                      geometry=list(_dets(2).geometry), crs=CRS))
        s.append_events([{"case_no": n, "to_status": "suspected"} for n in nos])
        s.set_flight_status("f1", "done")
    with open_store(as_role["patrol_web"], CRS) as s:              # the web service
        s.save_cases(pd.DataFrame({"case_no": [nos[0]], "status": ["verified"]}))
        s.append_events([{"case_no": nos[0], "from_status": "suspected", "to_status": "verified"}])
        assert s.cases()["status"].tolist() == ["verified", "suspected"]
        with pytest.raises(StoreError, match="permission denied .*may not do that") as e:
            s.import_parcels(gpd.GeoDataFrame({"parcel_id": ["P2"]}, geometry=[box(X0, Y0, X0 + 1, Y0 + 1)], crs=CRS))
        assert "\n" not in str(e.value)
        with pytest.raises(StoreError, match="permission denied"):
            s.replace_detections("f1", _dets(1))
        assert len(s.parcels()) == 1 and len(s.detections()) == 2
    with psycopg.connect(as_role["gis_reader"], autocommit=True) as con:   # QGIS / GeoServer
        assert con.execute("SELECT count(*) FROM cases").fetchone() == (2,)
        for q in ("DELETE FROM cases", "INSERT INTO zone (zone_id) VALUES ('z')",
                  "SELECT * FROM schema_version", "SELECT * FROM users"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(q)
    with psycopg.connect(as_role["patrol_web"], autocommit=True) as con:   # accounts: web only
        con.execute("SELECT count(*) FROM users")
    with psycopg.connect(as_role["patrol_nightly"], autocommit=True) as con, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        con.execute("SELECT count(*) FROM users")
    for role in ("patrol_nightly", "patrol_web"):
        with psycopg.connect(as_role[role], autocommit=True) as con:
            for q in ("UPDATE case_event SET note = 'x'", "DROP TABLE cases", "ALTER TABLE cases ADD COLUMN x int"):
                with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.RaiseException)):
                    con.execute(q)
