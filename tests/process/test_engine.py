"""What the model has not seen (issue 16): imagery coarser or finer than ``detector.gsd_range_m``
is refused by `patrol ingest`, `patrol run` and `patrol detect` with one line naming the measured
GSD and the range; `--force` runs it anyway and the flight records that it was forced. (The web
upload's refusal is in tests/service/test_service.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.core.config import load_settings
from pipeline.store import open_store


@pytest.fixture()
def coarse(make_raster):
    """A 0.5 m ortho (a park seen by an aerial survey): 10 times coarser than a drone flight."""
    data = np.random.default_rng(0).integers(60, 200, (3, 256, 256), dtype=np.uint8)
    return make_raster("park_0.5m.tif", 256, 256, res=0.5, crs="EPSG:4547", origin=(500000.0, 3400000.0), data=data)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) >= 1
    return err.splitlines()[-1]


def test_ingest_refuses_a_coarse_ortho_and_force_records_it(coarse, tmp_path, capsys):
    store = str(tmp_path / "s.gpkg")
    assert main(["--store", store, "ingest", str(coarse)]) != 0
    line = _one_line(capsys)
    assert "0.500 m" in line and "0.02–0.16 m" in line and "--force" in line, line
    with open_store(store, "EPSG:4547") as s:
        assert len(s.list_flights()) == 0
    assert main(["--store", store, "ingest", str(coarse), "--force"]) == 0
    out = capsys.readouterr()
    fid = out.out.strip().splitlines()[-1]
    assert "registered because of --force" in out.err
    with open_store(store, "EPSG:4547") as s:
        forced = s.get_flight(fid)["forced"]
    assert forced.startswith("0.500 m ∉ 0.02–0.16 m")
    assert main(["--store", store, "flights", "show", fid]) == 0
    assert "0.500 m ∉" in capsys.readouterr().out


def test_run_refuses_a_flight_outside_the_range_then_force_runs_it(coarse, tmp_path, capsys):
    """A flight registered when the range was wider (an older release) is refused by `patrol run`
    with the model, recorded as failed with its Chinese line; `--force` processes it and says so."""
    from pipeline.process.run import register_flight
    store = str(tmp_path / "s.gpkg")
    wide = load_settings(overrides={"store.url": store, "detector.gsd_range_m": [0.01, 1.0]})
    with open_store(store, wide.store.crs) as s:
        fid = register_flight(s, coarse, wide)["flight_id"]
    assert main(["--store", store, "run", fid]) == 2
    line = _one_line(capsys)
    assert "0.500 m is coarser than the 0.02–0.16 m" in line and "\n" not in line
    with open_store(store, wide.store.crs) as s:
        f = s.get_flight(fid)
        assert f["status"] == "failed" and "超出模型适用范围 0.02–0.16 m" in f["error_zh"]
        assert len(s.detections(fid)) == 0
    assert main(["--store", store, "run", fid, "--force"]) == 0
    with open_store(store, wide.store.crs) as s:
        f = s.get_flight(fid)
        assert f["status"] == "done" and f["forced"].startswith("0.500 m ∉ 0.02–0.16 m")


def test_detect_refuses_finer_and_coarser_imagery_unless_forced(coarse, make_raster, tmp_path, capsys):
    out = tmp_path / "d.gpkg"
    assert main(["detect", str(coarse), "--out", str(out)]) == 2
    assert "0.500 m is coarser" in _one_line(capsys) and not out.exists()
    fine = make_raster("fine.tif", 64, 64, res=0.01, crs="EPSG:4547")
    assert main(["detect", str(fine), "--out", str(out)]) == 2
    assert "0.010 m is finer than the 0.02–0.16 m" in _one_line(capsys)
    assert main(["detect", str(coarse), "--out", str(out), "--force"]) == 0
    assert "run because of --force" in capsys.readouterr().err and out.exists()


def test_the_range_must_be_two_increasing_ground_pixels():
    from pipeline.core.errors import ConfigError
    with pytest.raises(ConfigError, match="gsd_range_m"):
        load_settings(overrides={"detector.gsd_range_m": [0.3, 0.1]})


def test_nightly_refuses_a_flight_outside_the_range_as_run_does(coarse, tmp_path, capsys):
    """The flight engine's start is shared: `patrol nightly` with the model refuses the same flight
    as `patrol run` (recorded failed, nothing detected) and goes on; `--force` runs it."""
    from pipeline.process.run import register_flight
    store = str(tmp_path / "s.gpkg")
    wide = load_settings(overrides={"store.url": store, "detector.gsd_range_m": [0.01, 1.0]})
    with open_store(store, wide.store.crs) as s:
        fid = register_flight(s, coarse, wide)["flight_id"]
    assert main(["--store", store, "nightly"]) == 1
    assert "0.500 m is coarser than the 0.02–0.16 m" in capsys.readouterr().out
    with open_store(store, wide.store.crs) as s:
        f = s.get_flight(fid)
        assert f["status"] == "failed" and "超出模型适用范围 0.02–0.16 m" in f["error_zh"]
        assert len(s.detections(fid)) == 0
    assert main(["--store", store, "nightly", "--flights", fid, "--force"]) == 0
    with open_store(store, wide.store.crs) as s:
        f = s.get_flight(fid)
        assert f["status"] == "done" and f["forced"].startswith("0.500 m ∉ 0.02–0.16 m")
