"""Parcel / zone import: every supported format and every bad input, with a one-line
InputError and nothing already stored lost."""
from __future__ import annotations

import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely.geometry import Point, Polygon, box

from pipeline.core.errors import InputError
from pipeline.ingest.parcels import read_parcels, read_zones
from pipeline.store import open_store

CRS = "EPSG:4547"
X0, Y0 = 500_000.0, 3_400_000.0


def _parcels(n=4, offset=0.0) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({
        "parcel_id": [f"P{i}" for i in range(1, n + 1)],
        "owner": ["张三", "李四", "王五", "赵六"][:n] + [f"户{i}" for i in range(4, n)],
        "town": ["城关镇"] * n, "village": ["东村", "西村"] * (n // 2) + ["东村"] * (n % 2),
        "village_code": ["420100001001"] * n, "land_use": ["0702"] * n,
        "approved_area_m2": [100.0 + i for i in range(n)], "approved_floors": [2] * n,
        "permit_no": [f"ZJ-{i}" for i in range(n)], "DLMC": ["农村宅基地"] * n},
        geometry=[box(X0 + offset + 30 * i, Y0, X0 + offset + 30 * i + 20, Y0 + 20) for i in range(n)],
        crs=CRS)


def _zones() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"zone_id": ["Z1", "Z2"], "kind": ["basic_farmland", "ecological_redline"],
                             "code": ["YJJBNT", "STHX"], "name": ["永久基本农田", "生态红线"]},
                            geometry=[box(X0, Y0 + 100, X0 + 200, Y0 + 200),
                                      box(X0 + 300, Y0, X0 + 400, Y0 + 100)], crs=CRS)


@pytest.fixture
def store_url(tmp_path):
    return str(tmp_path / "store" / "patrol.gpkg")


def _stored(store_url):
    with open_store(store_url, CRS) as s:
        return s.parcels()


def _import_fails(patrol, store_url, path, match, *extra):
    """The CLI refuses ``path`` with one line matching ``match``; the stored parcels stay."""
    code, out, err = patrol("--store", store_url, "import", "parcels", str(path), *extra)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]
    stored = _stored(store_url)
    assert list(stored["parcel_id"]) == ["P1", "P2", "P3", "P4"]
    assert list(stored["owner"]) == ["张三", "李四", "王五", "赵六"]
    return lines[0]


@pytest.fixture
def seeded(tmp_path, store_url, patrol):
    """A store that already holds four parcels (imported through the CLI)."""
    src = tmp_path / "district.gpkg"
    _parcels().to_file(src, layer="parcels", engine="pyogrio")
    _zones().to_file(src, layer="zones", engine="pyogrio")
    code, out, err = patrol("--store", store_url, "import", "parcels", str(src))
    assert code == 0, err
    assert "imported 4 parcels" in out
    return store_url


# ------------------------------------------------------------------ good inputs
def test_import_from_gpkg_default_layers_and_cli(tmp_path, patrol, seeded):
    src = tmp_path / "district.gpkg"
    stored = _stored(seeded)
    assert list(stored["owner"]) == ["张三", "李四", "王五", "赵六"]
    assert stored.loc[0, "attrs"] == {"DLMC": "农村宅基地"}
    assert stored["approved_floors"].tolist() == [2, 2, 2, 2]
    code, out, err = patrol("--store", seeded, "import", "zones", str(src))
    assert code == 0 and "imported 2 zones" in out, err
    with open_store(seeded, CRS) as s:
        assert list(s.zones()["kind"]) == ["basic_farmland", "ecological_redline"]
    code, out, _ = patrol("--store", seeded, "db", "status")
    from pipeline.store.gpkg import MIGRATIONS
    assert code == 0 and "parcel" in out and "4" in out and f"version {MIGRATIONS[-1][0]}" in out
    # --replace: only the new file's parcels remain
    one = tmp_path / "one.geojson"
    _parcels(1, offset=1000).to_file(one, engine="pyogrio")
    code, out, err = patrol("--store", seeded, "import", "parcels", str(one), "--replace")
    assert code == 0, err
    assert len(_stored(seeded)) == 1


def test_geojson_in_wgs84_is_reprojected(tmp_path):
    src = tmp_path / "parcels.geojson"
    p = _parcels()
    p.to_crs(4326).to_file(src, engine="pyogrio")
    got = read_parcels(src, store_crs=CRS)
    assert got.crs.to_epsg() == 4547
    assert np.allclose(got.total_bounds, p.total_bounds, atol=0.01)
    assert list(got.columns[:9]) == ["parcel_id", "owner", "town", "village", "village_code",
                                     "land_use", "approved_area_m2", "approved_floors", "permit_no"]


def test_shapefile_truncated_and_uppercase_names(tmp_path):
    p = _parcels().rename(columns={"owner": "QLR", "parcel_id": "PARCEL_ID", "land_use": "DLBM"})
    src = tmp_path / "zd.shp"
    p.to_file(src, engine="pyogrio", encoding="UTF-8")          # approved_area_m2 → approved_a
    got = read_parcels(src, store_crs=CRS)
    assert got["approved_area_m2"].tolist() == [100.0, 101.0, 102.0, 103.0]
    assert got["owner"].tolist() == ["张三", "李四", "王五", "赵六"]
    assert got["parcel_id"].tolist() == ["P1", "P2", "P3", "P4"]


def test_layer_choice(tmp_path, patrol, seeded):
    src = tmp_path / "many.gpkg"
    _parcels().to_file(src, layer="zd_2024", engine="pyogrio")
    _zones().to_file(src, layer="other", engine="pyogrio")
    line = _import_fails(patrol, seeded, src, r"has layers .*zd_2024.*--layer")
    assert "many.gpkg" in line
    _import_fails(patrol, seeded, src, r"no layer 'nope'", "--layer", "nope")
    assert len(read_parcels(src, "zd_2024", store_crs=CRS)) == 4
    single = tmp_path / "single.gpkg"
    _zones().to_file(single, layer="whatever", engine="pyogrio")
    assert list(read_zones(single, store_crs=CRS)["zone_id"]) == ["Z1", "Z2"]


# ------------------------------------------------------------------ encodings
def _shapefile(tmp_path: Path, name: str, encoding: str, cpg: str | None) -> Path:
    src = tmp_path / f"{name}.shp"
    _parcels().to_file(src, engine="pyogrio", encoding=encoding)
    cpg_path = src.with_suffix(".cpg")
    cpg_path.unlink(missing_ok=True)
    if cpg is not None:
        cpg_path.write_text(cpg)
    return src


@pytest.mark.parametrize("encoding,cpg", [
    ("GBK", None),          # Chinese desktop GIS without .cpg
    ("GBK", "GBK"),
    ("GBK", "936"),
    ("GBK", "UTF-8"),       # a wrong .cpg: the bytes are not UTF-8
    ("GBK", "1252"),        # a wrong .cpg: would give mojibake (ÕÅÈý)
    ("UTF-8", None),
    ("UTF-8", "UTF-8"),
])
def test_shapefile_attribute_encodings(tmp_path, encoding, cpg):
    src = _shapefile(tmp_path, "zd", encoding, cpg)
    got = read_parcels(src, store_crs=CRS)
    assert got["owner"].tolist() == ["张三", "李四", "王五", "赵六"]
    assert got["village"].tolist() == ["东村", "西村", "东村", "西村"]
    assert got.loc[0, "DLMC"] == "农村宅基地"


def test_mojibake_in_a_geopackage_is_refused(tmp_path, patrol, seeded):
    p = _parcels()
    p["owner"] = [s.encode("gbk").decode("latin-1") for s in p["owner"]]   # 'ÕÅÈý'
    src = tmp_path / "garbled.gpkg"
    p.to_file(src, layer="parcels", engine="pyogrio")
    line = _import_fails(patrol, seeded, src, r"garbled.*张三")
    assert "owner" in line


def test_undecodable_shapefile_text_is_refused(tmp_path, patrol, seeded):
    src = _shapefile(tmp_path, "bad", "UTF-8", None)
    dbf = src.with_suffix(".dbf")
    raw = bytearray(dbf.read_bytes())
    i = raw.index("张三".encode("utf-8"))
    raw[i:i + 2] = b"\xff\xff"                                  # neither UTF-8 nor GBK
    dbf.write_bytes(bytes(raw))
    _import_fails(patrol, seeded, src, r"neither UTF-8 nor GBK.*\.cpg")


# ------------------------------------------------------------------ bad inputs
def test_no_crs(tmp_path, patrol, seeded):
    src = tmp_path / "noprj.shp"
    _parcels().to_file(src, engine="pyogrio", encoding="UTF-8")
    src.with_suffix(".prj").unlink()
    _import_fails(patrol, seeded, src, r"noprj\.shp has no CRS \(the \.prj file is missing\)")
    geo = tmp_path / "nocrs.gpkg"
    _parcels().set_crs(None, allow_override=True).to_file(geo, layer="parcels", engine="pyogrio")
    _import_fails(patrol, seeded, geo, r"nocrs\.gpkg has no CRS")


def test_invalid_geometry_refused_naming_the_parcel(tmp_path, patrol, seeded):
    p = _parcels()
    x, y = X0 + 30, Y0
    p.loc[1, "geometry"] = Polygon([(x, y), (x + 20, y + 20), (x + 20, y), (x, y + 20)])  # bow-tie
    src = tmp_path / "bowtie.gpkg"
    p.to_file(src, layer="parcels", engine="pyogrio")
    line = _import_fails(patrol, seeded, src, r"parcel_id P2 has an invalid geometry", "--replace")
    assert "Self-intersection" in line and "Fix Geometries" in line


def test_invalid_geometry_repaired_when_area_is_kept(tmp_path):
    p = _parcels()
    x, y = X0 + 30, Y0
    # a square with a tiny self-intersecting loop at one corner: make_valid keeps ~the area
    p.loc[1, "geometry"] = Polygon([(x, y), (x + 20, y), (x + 20, y + 20), (x + 0.1, y + 20),
                                    (x + 0.05, y + 20.05), (x, y + 19.9), (x, y)])
    p.loc[2, "geometry"] = Polygon([(x + 30, y), (x + 50, y), (x + 50, y + 20), (x + 30, y + 20),
                                    (x + 30, y + 10), (x + 29.99, y + 10.01), (x + 30, y + 10), (x + 30, y)])
    assert not p.geometry.iloc[2].is_valid
    src = tmp_path / "spike.gpkg"
    p.to_file(src, layer="parcels", engine="pyogrio")
    got = read_parcels(src, store_crs=CRS)
    assert got.geometry.is_valid.all() and len(got) == 4
    assert abs(got.geometry.iloc[2].area - 400) < 1


def test_duplicate_parcel_ids(tmp_path, patrol, seeded):
    p = _parcels()
    p["parcel_id"] = ["A1", "A2", "A1", "A2"]
    src = tmp_path / "dup.gpkg"
    p.to_file(src, layer="parcels", engine="pyogrio")
    _import_fails(patrol, seeded, src, r"duplicate parcel_id A1, A2", "--replace")
    p["parcel_id"] = ["A1", None, "A3", "A4"]
    p.to_file(src, layer="parcels", engine="pyogrio")
    _import_fails(patrol, seeded, src, r"no parcel_id \(first: feature #2\)")


def test_missing_columns_are_named(tmp_path, patrol, seeded):
    src = tmp_path / "thin.gpkg"
    _parcels().drop(columns=["town", "approved_area_m2"]).to_file(src, layer="parcels", engine="pyogrio")
    line = _import_fails(patrol, seeded, src, r"lacks the required column\(s\) town, approved_area_m2")
    assert "owner" in line                                      # says what it has
    z = tmp_path / "z.gpkg"
    _zones().drop(columns=["kind"]).to_file(z, layer="zones", engine="pyogrio")
    with pytest.raises(InputError, match=r"column\(s\) kind "):
        read_zones(z, store_crs=CRS)


def test_wrong_gauss_kruger_zone(tmp_path, patrol, seeded):
    p = _parcels()
    p = p.set_geometry(shapely.transform(p.geometry.values, lambda c: c + [38_000_000, 0]))
    src = tmp_path / "prefixed.shp"
    p.to_file(src, engine="pyogrio", encoding="UTF-8")          # .prj says EPSG:4547 (CM 114E)
    line = _import_fails(patrol, seeded, src, r"Gauss-Kruger zone number 38")
    assert "EPSG:4526" in line
    # with the right (zone-prefixed) CRS the same coordinates import fine
    right = tmp_path / "right.gpkg"
    p.set_crs(4526, allow_override=True).to_file(right, layer="parcels", engine="pyogrio")
    got = read_parcels(right, store_crs=CRS)
    assert np.allclose(got.total_bounds, _parcels().total_bounds, atol=0.01)


def test_bad_values_and_geometries(tmp_path, patrol, seeded):
    p = _parcels()
    p["approved_area_m2"] = ["100", "abc", "3", "4"]
    src = tmp_path / "text.gpkg"
    p.to_file(src, layer="parcels", engine="pyogrio")
    _import_fails(patrol, seeded, src, r"approved_area_m2 of parcel_id P2 is 'abc', not a number")
    pts = _parcels()
    pts = pts.set_geometry([Point(X0, Y0 + i) for i in range(4)], crs=CRS)
    src = tmp_path / "points.gpkg"
    pts.to_file(src, layer="parcels", engine="pyogrio")
    _import_fails(patrol, seeded, src, r"parcel_id P1 is a Point, not a polygon")
    _import_fails(patrol, seeded, tmp_path / "missing.gpkg", r"does not exist")
    junk = tmp_path / "junk.geojson"
    junk.write_text("{ not json")
    _import_fails(patrol, seeded, junk, r"not a readable")


def test_flights_cli(tmp_path, patrol, store_url):
    with open_store(store_url, CRS) as s:
        s.upsert_flight({"flight_id": "abc123", "path": "/d/e1.tif", "captured_at": "2026-03-01T10:00:00",
                         "gsd_m": 0.05, "team": "一队", "footprint": box(X0, Y0, X0 + 100, Y0 + 100)})
    code, out, _ = patrol("--store", store_url, "flights", "list")
    assert code == 0 and "abc123" in out and "uploaded" in out and "一队" in out
    code, out, _ = patrol("--store", store_url, "flights", "show", "abc123")
    assert code == 0 and "10,000 m²" in out and "detections    0" in out
    code, _, err = patrol("--store", store_url, "flights", "show", "nope")
    assert code == 2 and "flight nope is not in" in err
    code, out, _ = patrol("--store", store_url, "db", "migrate")
    assert code == 0 and "up to date" in out
