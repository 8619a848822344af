"""Violation rules at their threshold edges, exemptions, vectorised matching at scale."""
from __future__ import annotations

import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box

from pipeline.cases.match import find_violations, load_rules
from pipeline.core.errors import ConfigError

RULES_PATH = Path(__file__).resolve().parents[2] / "config" / "rules.yaml"
CRS = "EPSG:4547"


@pytest.fixture(scope="module")
def rules():
    return load_rules(RULES_PATH)


def gdf(rows, geoms):
    return gpd.GeoDataFrame(rows, geometry=geoms, crs=CRS)


def parcels(*specs):
    """specs: (parcel_id, geometry, approved_area_m2[, land_use])"""
    rows = [{"parcel_id": s[0], "owner": f"owner {s[0]}", "town": "城关镇", "village": "东村",
             "village_code": "411102001001", "land_use": s[3] if len(s) > 3 else "0702",
             "approved_area_m2": s[2], "approved_floors": 2, "permit_no": f"P-{s[0]}"} for s in specs]
    return gdf(rows, [s[1] for s in specs])


def zones(*specs):
    """specs: (kind, geometry[, code])"""
    rows = [{"zone_id": f"Z{i}", "kind": s[0], "code": s[2] if len(s) > 2 else "", "name": s[0]}
            for i, s in enumerate(specs)]
    return gdf(rows, [s[1] for s in specs])


def dets(*specs):
    """specs: (class_name, geometry)"""
    rows = [{"detection_id": f"d{i}", "class_name": s[0], "confidence": 0.9} for i, s in enumerate(specs)]
    return gdf(rows, [s[1] for s in specs])


NO_ZONES = zones()
BIG_PARCEL = ("P1", box(0, 0, 100, 100), 5000.0)


# ---------------------------------------------------------------- illegal_construction
@pytest.mark.parametrize("inside,fires", [(4.9, True), (5.0, False), (5.1, False)])
def test_illegal_construction_edges(rules, inside, fires):
    # a 10 x 10 m house; the parcel holds `inside` metres of its width (share = inside / 10)
    par = parcels(("P1", box(0, 0, inside, 50), 5000.0))
    f = find_violations(dets(("building", box(0, 0, 10, 10))), par, NO_ZONES, rules, keep_all=True)
    row = f.iloc[0]
    assert ("illegal_construction" in row["rules"]) is fires
    assert row["inside_share"] == pytest.approx(inside / 10)
    if fires:
        assert row["category"] == "illegal_construction"
        assert row["reasons"]["illegal_construction"]["inside_m2"] == pytest.approx(inside * 10)


def test_structure_outside_every_parcel(rules):
    par = parcels(BIG_PARCEL)
    f = find_violations(dets(("steel_shed", box(150, 0, 160, 10))), par, NO_ZONES, rules)
    assert list(f["rules"].iloc[0]) == ["illegal_construction"]
    assert f["parcel_id"].iloc[0] is None
    assert f["village"].iloc[0] == "东村"          # from the nearest parcel, for dispatch
    assert f["parcel_snapshot"].iloc[0] is None


def test_share_counts_across_two_parcels(rules):
    par = parcels(("P1", box(0, 0, 3, 50), 500.0), ("P2", box(3, 0, 6, 50), 500.0))
    f = find_violations(dets(("building", box(0, 0, 10, 10))), par, NO_ZONES, rules, keep_all=True)
    assert f["inside_share"].iloc[0] == pytest.approx(0.6)
    assert f["rules"].iloc[0] == []


def test_min_structure_area(rules):
    par = parcels(BIG_PARCEL)
    small = dets(("building", box(200, 0, 201.9, 2)), ("building", box(300, 0, 302, 2)))
    f = find_violations(small, par, NO_ZONES, rules)
    assert list(f["detection_id"]) == ["d1"]       # 3.8 m² dropped, 4 m² kept


# ---------------------------------------------------------------- illegal_land_use
@pytest.mark.parametrize("width,fires", [(0.49, False), (0.5, True), (0.6, True)])
def test_land_use_min_overlap_m2(rules, width, fires):
    # a structure inside its parcel; a basic-farmland strip covers `width` x 10 m of it
    par = parcels(BIG_PARCEL)
    zn = zones(("basic_farmland", box(10 - width, -50, 60, 50)))
    # a 1 x 10 m shed: width w of it on the zone → 10 w m², share w (the share rule holds)
    house = box(9, 0, 10, 10)
    f = find_violations(dets(("building", house)), par, zn, rules, keep_all=True)
    row = f.iloc[0]
    assert ("illegal_land_use" in row["rules"]) is fires
    assert row["basic_farmland_m2"] == pytest.approx(10 * width)


@pytest.mark.parametrize("width,fires", [(1.9, False), (2.0, True), (2.1, True)])
def test_land_use_min_share(rules, width, fires):
    # 10 x 10 house; a farmland strip of `width` m covers 10 w m² (≥ 5 m²), share w / 10
    par = parcels(BIG_PARCEL)
    zn = zones(("farmland", box(10 - width, -50, 60, 50)))
    f = find_violations(dets(("building", box(0, 0, 10, 10))), par, zn, rules, keep_all=True)
    row = f.iloc[0]
    assert ("illegal_land_use" in row["rules"]) is fires
    assert row["restricted_share"] == pytest.approx(width / 10)
    assert row["farmland_m2"] == pytest.approx(10 * width)


def test_land_use_by_dlbm_code_and_redline(rules):
    # a parcel registered as 水田 (0101) counts as restricted land; red line zones too
    par = parcels(("P1", box(0, 0, 20, 20), 500.0, "0101"), ("P2", box(100, 0, 120, 20), 500.0))
    zn = zones(("ecological_redline", box(100, 0, 120, 20)))
    d = dets(("building", box(2, 2, 12, 12)), ("building", box(102, 2, 112, 12)))
    f = find_violations(d, par, zn, rules).set_index("detection_id")
    assert f.loc["d0", "rules"] == ["illegal_land_use"]
    assert f.loc["d0", "zone_m2"] == {"dlbm:0101": 100.0}
    assert f.loc["d0", "parcel_snapshot"]["DLMC"] == "水田"
    assert f.loc["d1", "redline_m2"] == pytest.approx(100)
    assert f.loc["d1", "category"] == "illegal_land_use"
    assert f.loc["d1", "priority_level"] == "high"


def test_overlapping_zones_of_one_kind_count_once(rules):
    par = parcels(BIG_PARCEL)
    zn = zones(("farmland", box(0, 0, 10, 10)), ("farmland", box(0, 0, 10, 10)))
    f = find_violations(dets(("building", box(0, 0, 10, 10))), par, zn, rules)
    assert f["farmland_m2"].iloc[0] == pytest.approx(100)
    assert f["restricted_share"].iloc[0] == pytest.approx(1.0)


def test_category_order_when_two_rules_fire(rules):
    zn = zones(("basic_farmland", box(0, 0, 50, 50)))
    f = find_violations(dets(("building", box(0, 0, 10, 10))), parcels(), zn, rules)
    assert set(f["rules"].iloc[0]) == {"illegal_construction", "illegal_land_use"}
    assert f["category"].iloc[0] == "illegal_land_use"


# ---------------------------------------------------------------- exemptions
def test_greenhouse_on_farmland_is_exempt(rules):
    zn = zones(("farmland", box(0, 0, 100, 100)), ("ecological_redline", box(200, 0, 300, 100)))
    d = dets(("greenhouse", box(10, 10, 40, 20)),        # on farmland, outside parcels: 设施农用地
             ("greenhouse", box(210, 10, 240, 20)),      # on the red line: still illegal land use
             ("steel_shed", box(50, 10, 60, 20)))        # a shed on farmland: not exempt
    f = find_violations(d, parcels(), zn, rules, keep_all=True).set_index("detection_id")
    assert f.loc["d0", "rules"] == [] and f.loc["d0", "exemption"] == "facility_agriculture"
    assert set(f.loc["d1", "rules"]) == {"illegal_construction", "illegal_land_use"}
    assert f.loc["d1", "category"] == "illegal_land_use"
    assert set(f.loc["d2", "rules"]) == {"illegal_construction", "illegal_land_use"}


def test_greenhouse_half_on_farmland_edge(rules):
    zn = zones(("farmland", box(0, 0, 10, 100)))
    at_half = find_violations(dets(("greenhouse", box(0, 0, 20, 10))), parcels(), zn, rules, keep_all=True)
    assert at_half["exemption"].iloc[0] == "facility_agriculture"
    below = find_violations(dets(("greenhouse", box(0.1, 0, 20.1, 10))), parcels(), zn, rules, keep_all=True)
    assert below["exemption"].iloc[0] is None
    assert "illegal_land_use" in below["rules"].iloc[0]   # 99 m² of farmland, 49.5 %


# ---------------------------------------------------------------- over_approval
@pytest.mark.parametrize("built,fires", [(119.9, False), (120.0, False), (120.1, True)])
def test_over_approval_tolerance_edges(rules, built, fires):
    # approved 100 m², tolerance 20 % → fires strictly above 120 m²
    par = parcels(("P1", box(0, 0, 50, 50), 100.0))
    f = find_violations(dets(("building", box(0, 0, built / 10, 10))), par, NO_ZONES, rules, keep_all=True)
    row = f.iloc[0]
    assert ("over_approval" in row["rules"]) is fires
    assert row["built_m2"] == pytest.approx(built)
    assert row["approved_m2"] == 100.0
    if fires:
        r = row["reasons"]["over_approval"]
        assert r["limit_m2"] == pytest.approx(120) and r["parcel_id"] == "P1"


def test_over_approval_sums_every_structure_in_the_parcel(rules):
    # house 80 m² + shed 48 m² = 128 m² > 120 m² → flagged; the greenhouse is not counted.
    # Over-approval is the parcel's: house and shed make one finding (one case per 宅基地).
    par = parcels(("P1", box(0, 0, 50, 50), 100.0))
    d = dets(("building", box(0, 0, 8, 10)), ("steel_shed", box(20, 0, 24.8, 10)),
             ("greenhouse", box(30, 0, 40, 10)))
    f = find_violations(d, par, NO_ZONES, rules, keep_all=True).set_index("detection_id")
    assert "d1" not in f.index and f.loc["d0", "rules"] == ["over_approval"]
    assert f.loc["d0", "built_m2"] == pytest.approx(128) and f.loc["d0", "area_m2"] == pytest.approx(128)
    assert f.loc["d0", "geometry"].area == pytest.approx(128) and f.loc["d0", "class_name"] == "building"
    assert f.loc["d2", "rules"] == []
    assert f.loc["d0", "owner"] == "owner P1" and f.loc["d0", "parcel_snapshot"]["permit_no"] == "P-P1"


def test_over_approval_clipped_counts_only_the_part_inside(rules):
    # house 13 x 10 with 3 m outside the parcel: 100 m² inside → not over (limit 120)
    par = parcels(("P1", box(0, 0, 10, 50), 100.0))
    f = find_violations(dets(("building", box(0, 0, 13, 10))), par, NO_ZONES, rules, keep_all=True)
    assert f["built_m2"].iloc[0] == pytest.approx(100) and f["rules"].iloc[0] == []
    whole = rules.model_copy(deep=True)
    whole.rules.over_approval.built_area = "whole"
    f = find_violations(dets(("building", box(0, 0, 13, 10))), par, NO_ZONES, whole, keep_all=True)
    assert f["built_m2"].iloc[0] == pytest.approx(130) and f["rules"].iloc[0] == ["over_approval"]


# ---------------------------------------------------------------- scale, config errors
def test_vectorised_on_many_parcels(rules):
    n = 60                                                # 3600 parcels, 3600 structures
    xs, ys = np.meshgrid(np.arange(n) * 30.0, np.arange(n) * 30.0)
    xs, ys = xs.ravel(), ys.ravel()
    par = parcels(*[(f"P{i}", box(x, y, x + 20, y + 20), 150.0) for i, (x, y) in enumerate(zip(xs, ys))])
    # every 3rd house oversized (14 x 14 = 196 > 180), every 7th shifted outside its parcel
    size = np.where(np.arange(len(xs)) % 3 == 0, 14.0, 10.0)
    shift = np.where(np.arange(len(xs)) % 7 == 0, 16.0, 2.0)
    d = dets(*[("building", box(x + s, y + 2, x + s + w, y + 2 + w)) for x, y, s, w in zip(xs, ys, shift, size)])
    zn = zones(("basic_farmland", box(0, 0, 300, 300)))
    t = time.perf_counter()
    f = find_violations(d, par, zn, rules, keep_all=True)
    took = time.perf_counter() - t
    assert len(f) == len(d)
    idx = np.arange(len(xs))
    ic = np.array(["illegal_construction" in r for r in f["rules"]])
    assert (ic == (idx % 7 == 0)).all()
    oa = np.array(["over_approval" in r for r in f["rules"]])
    assert (oa == ((idx % 3 == 0) & (idx % 7 != 0))).all()
    lu = np.array(["illegal_land_use" in r for r in f["rules"]])
    on_bf = (xs + shift + size <= 300) & (ys + 2 + size <= 300)
    assert (lu[on_bf]).all() and lu.sum() >= on_bf.sum()
    assert took < 10, f"matching 3600 x 3600 took {took:.1f} s"


def test_empty_inputs(rules):
    f = find_violations(dets(), parcels(), NO_ZONES, rules)
    assert len(f) == 0 and "rules" in f.columns


def test_bad_rules_file(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text(RULES_PATH.read_text(encoding="utf-8").replace("tolerance: 0.20", "tolerance: -1"),
                 encoding="utf-8")
    with pytest.raises(ConfigError, match="rules.over_approval.tolerance"):
        load_rules(p)
    p.write_text(RULES_PATH.read_text(encoding="utf-8").replace(
        "    filed: [ordered]\n", "    filed: [ordered, archived]\n"), encoding="utf-8")
    with pytest.raises(ConfigError, match="archived"):
        load_rules(p)
    with pytest.raises(ConfigError, match="not found"):
        load_rules(tmp_path / "missing.yaml")


def test_greenhouse_off_farmland_is_not_exempt(rules):
    zn = zones(("basic_farmland", box(0, 0, 100, 100)))
    d = dets(("greenhouse", box(10, 10, 40, 20)), ("greenhouse", box(210, 10, 240, 20)))
    f = find_violations(d, parcels(), zn, rules, keep_all=True).set_index("detection_id")
    assert f.loc["d0", "exemption"] is None and f.loc["d0", "category"] == "illegal_land_use"
    assert f.loc["d1", "rules"] == ["illegal_construction"]      # on no farmland, outside parcels


def test_parcel_snapshot_carries_the_3diao_attributes(rules, tmp_path):
    # parcels as the store returns them: 三调 fields in the JSON column attrs
    from pipeline.store import open_store
    par = parcels(("P1", box(0, 0, 50, 50), 100.0))
    par["BSM"], par["TBBH"] = "4201160001", "0123"
    with open_store(str(tmp_path / "s.gpkg"), CRS) as store:
        store.import_parcels(par)
        back = store.parcels()
    f = find_violations(dets(("building", box(0, 0, 12, 12))), back, NO_ZONES, rules)
    snap = f["parcel_snapshot"].iloc[0]
    assert snap["BSM"] == "4201160001" and snap["TBBH"] == "0123" and "attrs" not in snap
    assert snap["DLBM"] == "0702" and snap["DLMC"] == "农村宅基地" and snap["ZLDWDM"] == "411102001001"
