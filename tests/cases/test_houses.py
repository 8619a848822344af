"""The building register (自建房台账, pipeline/cases/houses.py): every building of a flight is one
numbered record; later flights see it again, add new houses and mark the ones they cover but no
longer see; a 两违 case and the record of the same house point to each other."""
from __future__ import annotations

import json

import geopandas as gpd
import pytest

from pipeline.core.config import load_settings
from pipeline.ingest.parcels import import_registry
from pipeline.process.run import process_flight, register_flight
from pipeline.store import open_store
from pipeline.synth import generate_district


@pytest.fixture(scope="module")
def district(tmp_path_factory):
    root = tmp_path_factory.mktemp("houses_district")
    result = generate_district(root / "d", seed=2, size_m=100.0, epochs=2, progress=False)
    meta = json.loads(result.meta.read_text(encoding="utf-8"))
    return result, meta, gpd.read_file(result.vectors, layer="truth")


def _detections(truth, epoch, drop=()):
    t = truth[(truth["epoch"] == epoch) & ~truth["structure_id"].isin(drop)]
    return t.assign(confidence=0.9, area_m2=t.geometry.area)


def test_a_village_register_through_three_flights(tmp_path, district, patrol):
    result, meta, truth = district
    settings = load_settings(overrides={"store.url": str(tmp_path / "patrol.gpkg")}, environ={})
    store = open_store(settings.store.url, settings.store.crs)
    import_registry(store, result.vectors)
    buildings = truth[truth["class_name"] == "building"]
    first = set(buildings.loc[buildings["epoch"] == 1, "structure_id"])
    second = set(buildings.loc[buildings["epoch"] == 2, "structure_id"])
    assert first <= second and len(second - first) >= 1, "the district should build a new house"
    demolished = sorted(first)[0]                     # between the flights this house comes down
    e1, e2 = (result.out_dir / ep["ortho"] for ep in meta["epochs"])

    f1 = register_flight(store, e1, settings)
    r1 = process_flight(store, f1["flight_id"], settings, detections=_detections(truth, 1), progress=False)
    assert (r1.houses_new, r1.houses_gone) == (len(first), 0)
    houses = store.houses()
    assert houses["house_no"].str.fullmatch(r"ZJ\d{4}-\d{6}").all() and houses["house_no"].is_unique
    assert (houses["first_seen_flight"] == f1["flight_id"]).all() and houses["town"].notna().all()
    assert houses["floors"].notna().all() and set(houses["floors_source"]) == {"parcel"}
    numbers = set(houses["house_no"])

    f2 = register_flight(store, e2, settings)
    r2 = process_flight(store, f2["flight_id"], settings, detections=_detections(truth, 2, drop=[demolished]),
                        progress=False)
    assert (r2.houses_new, r2.houses_gone) == (len(second - first), 1)
    houses = store.houses()
    assert len(houses) == len(second)
    gone = houses[houses["gone_flight"].notna()]
    assert gone["gone_flight"].tolist() == [f2["flight_id"]]
    kept = houses[houses["first_seen_flight"] == f1["flight_id"]]
    assert set(kept["house_no"]) == numbers                          # numbers stay (a grown house too)
    assert (kept.loc[kept["gone_flight"].isna(), "flights"].map(len) == 2).all()
    assert "疑已拆除" in store.house_events(gone["house_no"].iloc[0])["note"].iloc[-1]

    # the same flight again, with the house standing after all: back in the register, nothing doubled
    process_flight(store, f2["flight_id"], settings, detections=_detections(truth, 2), force=True, progress=False)
    again = store.houses()
    assert len(again) == len(second) and again["gone_flight"].isna().all()
    assert "再次发现" in store.house_events(gone["house_no"].iloc[0])["note"].iloc[-1]

    # cases and houses of the same structure point at each other
    cases = store.cases()
    linked = cases[cases["house_no"].notna()]
    assert len(linked) >= 1
    by_no = again.set_index("house_no")
    for case_no, house_no in zip(linked["case_no"], linked["house_no"]):
        assert by_no.loc[house_no, "case_no"] == case_no
    store.close()

    code, out, _ = patrol("--store", settings.store.url, "houses", "list")
    assert code == 0 and f"{len(second)} houses" in out and linked["case_no"].iloc[0] in out
    code, out, _ = patrol("--store", settings.store.url, "houses", "show", gone["house_no"].iloc[0])
    assert code == 0 and "再次发现" in out and "疑已拆除" in out
    code, _, err = patrol("--store", settings.store.url, "houses", "show", "ZJ1999-000001")
    assert code == 2 and err.strip() == ("error: no house ZJ1999-000001 in the register; list them with "
                                         "`patrol houses list`")
