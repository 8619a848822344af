"""地面巡查上报: a case from the ground runs through the same rules and tracking as a flight's,
and the next flight over it matches it instead of opening another case."""
from __future__ import annotations

import geopandas as gpd
import pytest

from pipeline.core.config import load_settings
from pipeline.core.errors import InputError
from pipeline.store import open_store


@pytest.fixture()
def fresh_district(small_district_store, tmp_path):
    """The small district's registry in an empty store (no flight processed yet)."""
    from pipeline.ingest.parcels import import_registry
    _, _, district = small_district_store
    s = load_settings(overrides={"store.url": str(tmp_path / "g.gpkg"), "media.dir": str(tmp_path / "media")})
    store = open_store(s.store.url, s.store.crs)
    import_registry(store, district / "district.gpkg", replace=True)
    yield store, s, district
    store.close()


def _truth(district, epoch):
    t = gpd.read_file(district / "district.gpkg", layer="truth")
    return t[t["epoch"] == epoch] if "epoch" in t else t


def test_a_ground_report_on_farmland_is_a_land_use_case_and_the_flight_matches_it(fresh_district):
    from pipeline.cases.manual import report_from_ground
    from pipeline.detection.detectors import TruthTileDetector
    from pipeline.process.run import process_flight, register_flight
    store, s, district = fresh_district
    epochs = sorted(district.glob("epoch_[0-9].tif"))
    truth = gpd.read_file(district / "district.gpkg", layer="truth")
    last = truth[truth["epoch"] == int(epochs[-1].stem.split("_")[1])]
    on_farm = last[last["violation"].fillna("") == "illegal_land_use"]
    assert len(on_farm), "the district's last epoch has no structure on protected land"
    target = on_farm.iloc[[0]]
    c = target.to_crs("EPSG:4326").geometry.iloc[0].centroid
    area = float(target.to_crs(s.store.crs).area.iloc[0])
    kind = target["class_name"].iloc[0]
    r = report_from_ground(store, s, c.x, c.y, "pat", "耕地上新建彩钢棚", detector_class=kind, area_m2=max(area, 4.0))
    assert r["new"] and r["source"] == "ground_patrol" and "illegal_land_use" in r["rules"]
    assert r["reasons"]["illegal_land_use"]["text"]
    ev = store.events(r["case_no"])
    assert ev["note"].iloc[0].startswith("地面巡查 发现疑似图斑") and "耕地上新建彩钢棚" in ev["note"].iloc[-1]
    # a second report at the same place is the same case
    again = report_from_ground(store, s, c.x + 0.00001, c.y, "off", "复查仍在建", detector_class=kind, area_m2=area)
    assert again["case_no"] == r["case_no"] and not again["new"]
    # the flight over it: the structure is that case, not a new one
    flight = register_flight(store, epochs[-1], s, team="test")
    det = TruthTileDetector(district / "district.gpkg", s.detector.classes, confidence=0.9)
    process_flight(store, flight["flight_id"], s, progress=False, detector=det)
    cases = store.cases()
    mine = cases[cases["case_no"] == r["case_no"]].iloc[0]
    assert mine["last_seen_flight"] == flight["flight_id"]
    near = cases[cases.intersects(mine.geometry.buffer(1))]
    assert len(near) == 1, near[["case_no", "source", "first_seen_flight"]]


@pytest.mark.parametrize("kw, want", [
    ({"lon": 200.0}, "not latitude and longitude"),
    ({"detector_class": "tank"}, "not a kind of structure"),
    ({"area_m2": 1.0}, "not 4–100000 m²"),
    ({"note": "  "}, "say what you found"),
    ({"lat": 89.9}, "outside the district's coordinate system|from every parcel"),
    ({"lon": 120.0}, "from every parcel and zone"),
])
def test_bad_ground_reports_are_one_line_and_store_nothing(fresh_district, kw, want):
    from pipeline.cases.manual import report_from_ground
    store, s, _ = fresh_district
    c = store.parcels().to_crs("EPSG:4326").geometry.iloc[0].centroid
    args = {"lon": c.x, "lat": c.y, "actor": "pat", "note": "x", **kw}
    with pytest.raises(InputError, match=want) as e:
        report_from_ground(store, s, args.pop("lon"), args.pop("lat"), args.pop("actor"), args.pop("note"), **args)
    assert "\n" not in str(e.value) and len(store.cases()) == 0
