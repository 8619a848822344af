"""Change an officer can trust (pipeline.cases.change): flights lined up on each other, and every
新增 / 扩建 / 拆除 flag confirmed in the other flight's image — on generated districts whose
later flights are georeferenced up to 6 m off and turned up to 0.2°, flown in another season and
sun, with detector
flicker (a fifth of the first flight's structures missed, spurious boxes on the ground)."""
from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from makers import Flicker

from pipeline.cases.track import set_status
from pipeline.core.config import load_settings
from pipeline.core.rules import load_rules
from pipeline.detection.detectors import TruthTileDetector
from pipeline.process.run import process_flight, register_flight
from pipeline.store import open_store

MODEL = Path(__file__).resolve().parents[2] / "models" / "lianwei-yolo11n.onnx"


def _district(tmp_path_factory, seed: int):
    synth = pytest.importorskip("pipeline.synth")
    out = tmp_path_factory.mktemp(f"change{seed}")
    synth.generate_district(out, seed=seed, size_m=200, epochs=3, gsd_m=0.1, shift_m=6.0, rotate_deg=0.2,
                            progress=False)
    return out


def _iou_hit(g, pool: gpd.GeoDataFrame, iou: float = 0.3) -> bool:
    if not len(pool):
        return False
    p = np.asarray(pool.geometry.values)
    inter = shapely.area(shapely.intersection(p, g))
    return bool((inter / (shapely.area(p) + g.area - inter) >= iou).any())


def replay(out: Path, store_path: Path, detector_for) -> dict:
    """Fly the district's epochs through the product (register, process), the officer acting
    between flights as the truth implies; count the 新增 flags, demolition flags and shifts."""
    meta = json.loads((out / "district.json").read_text())
    settings = load_settings(overrides={"store.url": str(store_path), "store.crs": meta["crs"]})
    lc = load_rules(settings.rules_path).lifecycle
    layer = lambda name: gpd.read_file(out / "district.gpkg", layer=name)      # noqa: E731
    truth, changes = layer("truth"), layer("changes")
    changes["violation"] = changes["violation"].fillna("")
    tally = {"flagged": 0, "right": 0, "new": 0, "found": 0, "shift_err": [], "standing_flagged": [],
             "demolished": 0, "demolished_seen": 0, "contradicted": 0, "notes": [], "misses": []}
    detector = detector_for(settings, out)
    with open_store(str(store_path), meta["crs"]) as store:
        store.import_parcels(layer("parcels"))
        store.import_zones(layer("zones"))
        for e in (1, 2, 3):
            f = register_flight(store, out / f"epoch_{e}.tif", settings)
            process_flight(store, f["flight_id"], settings, detector=detector, progress=False, force=True)
            reg = store.get_flight(f["flight_id"])["registration"]
            cases = store.cases()
            t_e = truth[truth["epoch"] == e]
            if e > 1:
                true = meta["epochs"][e - 1]["shift_m"]
                tally["shift_err"].append(float(np.hypot(reg["dx_total"] - true[0], reg["dy_total"] - true[1])))
                tally["notes"].append(reg["note"])
                mine = cases[cases["first_seen_flight"] == f["flight_id"]]
                flagged = mine[mine["stock"] == "new_build"]
                appeared = changes[(changes["epoch"] == e) & changes["change"].isin(["new", "rebuilt", "grown"])]
                wanted = appeared[appeared["violation"] != ""]
                wanted = wanted[wanted["change"] != "grown"]                 # a grown house keeps its case
                tally["flagged"] += len(flagged)
                tally["right"] += sum(_iou_hit(g, appeared) for g in flagged.geometry)
                tally["new"] += len(wanted)
                rebuilt = cases[cases["flags"].map(lambda x: "rebuilt" in x)]
                for ch, g in zip(wanted["change"], wanted.geometry):
                    ok = _iou_hit(g, flagged) or (ch == "rebuilt" and _iou_hit(g, rebuilt))
                    tally["found"] += ok
                    if not ok:
                        near = cases[cases.intersects(g)]
                        tally["misses"].append((e, ch, round(g.area), near[["case_no", "stock", "flags", "status",
                                                "change_confidence", "change_evidence"]].to_dict("records")))
                tally["contradicted"] += int((mine["stock"] == "existing").sum())
                seen = cases[cases["flags"].map(lambda x: "demolition_seen" in x)]
                tally["standing_flagged"] += [c for c, g in zip(seen["case_no"], seen.geometry) if _iou_hit(g, t_e)]
                gone = changes[(changes["epoch"] == e) & (changes["change"] == "demolished")]
                watched = cases[cases["status"].isin(lc.demolition_watch)]
                tally["demolished"] += sum(_iou_hit(g, watched) for g in gone.geometry)
                tally["demolished_seen"] += sum(_iou_hit(g, seen) for g in gone.geometry)
            # the officer: illegal ones ordered, the rest false positives, demolition confirmed
            evs = []
            viol = t_e[t_e["violation"].fillna("") != ""]
            with store.transaction():
                for c, st, fl, g in zip(cases["case_no"], cases["status"], cases["flags"], cases.geometry):
                    if st == "suspected":
                        path = ["verified", "ordered"] if _iou_hit(g, viol) else ["false_positive"]
                    elif "demolition_seen" in fl and st in lc.demolition_watch:
                        path = ["demolished"]
                    else:
                        continue
                    for s in path:
                        evs.append(set_status(cases, c, s, "officer", "truth", lc))
                store.save_cases(cases)
                store.append_events(evs)
    return tally


def _check(t: dict) -> None:
    assert t["new"] >= 5, f"too few new structures to measure: {t}"
    assert t["right"] >= 0.97 * t["flagged"], f"新增 precision {t['right']}/{t['flagged']}: {t}"
    assert t["found"] >= 0.95 * t["new"], f"新增 recall {t['found']}/{t['new']}: {t}"
    assert not t["standing_flagged"], f"flagged demolished while standing: {t['standing_flagged']}"
    assert max(t["shift_err"]) <= 0.5, f"shift errors {t['shift_err']} m: {t['notes']}"


def _truth(settings, out):
    return TruthTileDetector(out / "district.gpkg", settings.detector.classes)


@pytest.mark.parametrize("seed", [3, 5])
def test_new_flags_are_confirmed_on_shifted_flickering_flights(seed, tmp_path_factory, tmp_path):
    """The truth as the detector, flickering: a structure missed in the first flight and found
    in the second is 存量 (the earlier image shows it), a spurious box on unchanged ground is no
    新增, every new structure is; the flights' shifts are found within 0.5 m."""
    out = _district(tmp_path_factory, seed)
    t = replay(out, tmp_path / "patrol.gpkg", lambda s, o: Flicker(_truth(s, o), seed=seed))
    _check(t)
    assert t["contradicted"] > 0          # the flicker was caught, not absent
    assert t["demolished_seen"] == t["demolished"]


def test_the_evidence_is_shown_and_filtered(tmp_path_factory, tmp_path, patrol):
    """`patrol cases list --flag new --min-change-confidence X` keeps the confirmed 新增 cases; the
    case facts (case page, sheets, popups) say in Chinese what the images showed."""
    from pipeline.report.common import change_text
    out = _district(tmp_path_factory, 3)
    store_path = tmp_path / "patrol.gpkg"
    replay(out, store_path, lambda s, o: Flicker(_truth(s, o), seed=3))
    meta = json.loads((out / "district.json").read_text())
    with open_store(str(store_path), meta["crs"]) as store:
        cases = store.cases()
    confirmed = cases[cases["flags"].map(lambda f: "new" in f) & (cases["change_confidence"].fillna(-1) >= 0.5)]
    assert len(confirmed) and set(confirmed["stock"]) == {"new_build"}
    r = patrol("--store", store_path, "--set", f"store.crs={meta['crs']}", "cases", "list",
               "--flag", "new", "--min-change-confidence", "0.5")
    assert r.exit_code == 0, r.output
    listed = {line.split()[0] for line in r.output.splitlines()[1:-1]}
    assert listed == set(confirmed["case_no"])
    seen_before = cases["change_evidence"].map(lambda e: (e or {}).get("redetected_cover", 0) >= 0.5)
    existing = cases[(cases["stock"] == "existing") & seen_before].iloc[0].to_dict()
    line = change_text(existing, "zh")
    assert "复检已见建筑" in line and "定为存量" in line and "配准改正" in line, line
    line = change_text(confirmed.iloc[0].to_dict(), "zh")
    assert "复检未见建筑" in line and "定为存量" not in line, line
    # a spurious box (the detector unsure): looked at again in its own image, not found there
    looked = cases["change_evidence"].map(lambda e: "second_look_cover" in (e or {}))
    spurious = cases[looked & (cases["stock"] == "existing")]
    assert len(spurious), "no unsure candidate had a second look"
    assert "本时相复看未确认" in change_text(spurious.iloc[0].to_dict(), "zh")


def test_without_the_check_flicker_becomes_new(tmp_path_factory, tmp_path, monkeypatch):
    """The same district with the check and the co-registration switched off: the first
    flight's misses and the spurious boxes come back as 新增 — the failure this check exists for."""
    out = _district(tmp_path_factory, 3)
    monkeypatch.setenv("PATROL__CHANGE_CHECK__CONFIRM", "false")
    monkeypatch.setenv("PATROL__CHANGE_CHECK__COREGISTER", "false")
    off = replay(out, tmp_path / "off.gpkg", lambda s, o: Flicker(_truth(s, o), seed=3))
    assert off["flagged"] - off["right"] >= 3, off
    assert max(off["shift_err"]) > 0.5


@pytest.mark.slow
@pytest.mark.skipif(not MODEL.is_file(), reason=f"shipped model {MODEL} is absent")
def test_new_flags_with_the_shipped_model(tmp_path_factory, tmp_path):
    """The shipped detector on the shifted, re-seasoned flights of a held-out district."""
    out = _district(tmp_path_factory, 5)
    from pipeline.detection.detectors import ModelTileDetector
    t = replay(out, tmp_path / "patrol.gpkg", lambda s, o: ModelTileDetector(s))
    _check(t)


def test_coregistration_finds_a_known_shift_and_refuses_to_guess(tmp_path, make_raster):
    """Phase correlation recovers the shift of a textured ortho to a tenth of a metre; a flight
    of noise against it, or too small an overlap, is not shifted and says why."""
    from pipeline.cases.change import coregister
    settings = load_settings(overrides={"store.crs": "EPSG:32650"})
    rng = np.random.default_rng(4)
    base = rng.integers(0, 255, (3, 1200, 1200)).astype(np.uint8)
    base = np.repeat(np.repeat(base[:, ::4, ::4], 4, axis=1), 4, axis=2)      # texture of 0.4 m blobs
    a = make_raster("a.tif", 1000, 1000, res=0.1, crs="EPSG:32650", origin=(500000.0, 3400100.0),
                    data=base[:, :1000, :1000])
    # the same ground, its ortho georeferenced 2.3 m east and 1.2 m south of the truth
    b = make_raster("b.tif", 1000, 1000, res=0.1, crs="EPSG:32650", origin=(500000.0 + 2.3, 3400100.0 - 1.2),
                    data=base[:, :1000, :1000])
    noise = make_raster("n.tif", 1000, 1000, res=0.1, crs="EPSG:32650", origin=(500000.0, 3400100.0),
                        data=rng.integers(0, 255, (3, 1000, 1000)).astype(np.uint8))

    def flight(path, fid, x0, y1):
        return {"flight_id": fid, "path": str(path), "source": "ortho",
                "footprint": shapely.box(x0, y1 - 100, x0 + 100, y1)}
    ref = flight(a, "A", 500000.0, 3400100.0)
    reg = coregister(flight(b, "B", 500002.3, 3400098.8), ref, settings)
    assert reg.applied and abs(reg.dx - 2.3) < 0.1 and abs(reg.dy + 1.2) < 0.1, reg
    reg = coregister(flight(noise, "N", 500000.0, 3400100.0), ref, settings)
    assert not reg.applied and "未做位移改正" in reg.note
    tiny = {**flight(b, "B", 500002.3, 3400098.8), "footprint": shapely.box(500000, 3400000, 500030, 3400030)}
    reg = coregister(tiny, ref, settings)
    assert not reg.applied and "重叠不足" in reg.note
