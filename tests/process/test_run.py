"""One flight through every stage (pipeline/process/run.py): idempotent re-runs, and a crash
in the middle of a run leaves nothing half-written and the re-run completes."""
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
    root = tmp_path_factory.mktemp("run_district")
    result = generate_district(root / "d", seed=2, size_m=100.0, epochs=2, progress=False)
    meta = json.loads(result.meta.read_text(encoding="utf-8"))
    truth = gpd.read_file(result.vectors, layer="truth")
    return result, meta, truth


def _fresh_store(tmp_path, result):
    settings = load_settings(overrides={"store.url": str(tmp_path / "patrol.gpkg")}, environ={})
    store = open_store(settings.store.url, settings.store.crs)
    import_registry(store, result.vectors)
    return store, settings


def _epoch_truth(truth, epoch):
    t = truth[truth["epoch"] == epoch]
    return t.assign(confidence=0.9, area_m2=t.geometry.area)


def _snapshot(store):
    cases = store.cases()
    return (len(store.detections()), sorted(cases["case_no"]), sorted(cases["status"]),
            round(float(cases["area_m2"].sum()), 3), len(store.events()))


def test_rerun_is_idempotent(tmp_path, district):
    result, meta, truth = district
    store, settings = _fresh_store(tmp_path, result)
    for ep in meta["epochs"]:
        f = register_flight(store, result.out_dir / ep["ortho"], settings)
        process_flight(store, f["flight_id"], settings, detections=_epoch_truth(truth, ep["epoch"]),
                       progress=False)
    before = _snapshot(store)
    assert before[1], "the district should raise cases"
    # the same flights again: skipped when done, and a forced re-run changes nothing
    for ep in meta["epochs"]:
        f = register_flight(store, result.out_dir / ep["ortho"], settings)
        assert process_flight(store, f["flight_id"], settings, progress=False,
                              detections=_epoch_truth(truth, ep["epoch"])).skipped
        process_flight(store, f["flight_id"], settings, detections=_epoch_truth(truth, ep["epoch"]),
                       force=True, progress=False)
    assert _snapshot(store) == before
    assert len(store.list_flights()) == len(meta["epochs"])


def test_crash_mid_run_leaves_nothing_and_rerun_completes(tmp_path, district, monkeypatch):
    result, meta, truth = district
    store, settings = _fresh_store(tmp_path, result)
    ep = meta["epochs"][0]
    f = register_flight(store, result.out_dir / ep["ortho"], settings)
    dets = _epoch_truth(truth, ep["epoch"])

    import pipeline.store.gpkg as gpkg

    def crash(self, rows):          # the process dies after cases were written, before events
        raise RuntimeError("power cut")
    monkeypatch.setattr(gpkg.GpkgStore, "append_events", crash)
    with pytest.raises(RuntimeError):
        process_flight(store, f["flight_id"], settings, detections=dets, progress=False)
    monkeypatch.undo()
    assert len(store.detections(f["flight_id"])) == 0
    assert len(store.cases()) == 0 and len(store.events()) == 0
    assert store.get_flight(f["flight_id"])["status"] == "processing"

    res = process_flight(store, f["flight_id"], settings, detections=dets, progress=False)
    assert not res.skipped and res.new_cases == len(store.cases()) > 0
    assert store.get_flight(f["flight_id"])["status"] == "done"
    # a fresh store given the same flight once agrees with the recovered one
    other, _ = _fresh_store(tmp_path / "b", result)
    g = register_flight(other, result.out_dir / ep["ortho"], settings)
    process_flight(other, g["flight_id"], settings, detections=dets, progress=False)
    assert _snapshot(other)[:4] == _snapshot(store)[:4]


def test_patrol_run_cli_missing_model_fails_the_flight_in_one_line(tmp_path, district):
    import subprocess
    import sys
    result, meta, _ = district
    store_path = tmp_path / "s.gpkg"
    base = [sys.executable, "-m", "pipeline.cli", "--store", str(store_path),
            "--set", f"detector.model={tmp_path / 'missing.onnx'}"]
    subprocess.run(base + ["import", "parcels", str(result.vectors)], check=True, capture_output=True)
    ortho = str(result.out_dir / meta["epochs"][0]["ortho"])
    proc = subprocess.run(base + ["run", ortho], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "missing.onnx" in proc.stderr and "not found" in proc.stderr
    with open_store(store_path, "EPSG:4547") as store:
        (flight,) = store.list_flights().to_dict("records")
        assert flight["status"] == "failed" and "missing.onnx" in flight["error"]
    proc = subprocess.run(base + ["run", "no-such-flight"], capture_output=True, text=True)
    assert proc.returncode == 2 and "neither a flight id" in proc.stderr
