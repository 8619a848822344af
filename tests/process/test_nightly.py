"""Nightly batch runs (issue 9): safe twice, resumable after SIGKILL, failures isolated, Dask.

Detections come from the generated district's truth layer (``--truth-layer``, the test/demo
hook) through the same tiles, chunks, checkpoints and workers as the model; the model-only
assertions run when the shipped weights exist and are skipped (with the reason) before.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TRUTH_SET = {"processing.tile_px": 160, "processing.overlap_px": 16}    # 49 small tiles per flight
VOLATILE = ["case_uuid", "created_at", "updated_at"]                     # stamped with the wall clock
PATROL = [sys.executable, "-m", "pipeline.cli"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 100 m district (3 epochs), parcels/zones imported and flights registered, never processed."""
    from pipeline.core.config import load_settings
    from pipeline.ingest.parcels import import_registry
    from pipeline.process.run import register_flight
    from pipeline.store import open_store
    from pipeline.synth import generate_district

    root = tmp_path_factory.mktemp("nightly")
    res = generate_district(root / "district", seed=5, size_m=100.0, epochs=3)
    settings = load_settings(overrides={"store.url": str(root / "base.gpkg")})
    with open_store(settings.store.url, settings.store.crs) as store:
        import_registry(store, res.vectors, replace=True)
        ids = [register_flight(store, p, settings)["flight_id"] for p in res.orthos]
    return {"root": root, "store": root / "base.gpkg", "vectors": res.vectors, "orthos": res.orthos, "ids": ids}


def fresh(base, tmp_path, name="patrol.gpkg", **extra):
    """A copy of the base store and settings pointing at it."""
    from pipeline.core.config import load_settings
    path = tmp_path / name
    shutil.copy(base["store"], path)
    return path, load_settings(overrides={"store.url": str(path), **TRUTH_SET, **extra})


def nightly(store_path, settings, **kw):
    from pipeline.process.nightly import run_nightly
    from pipeline.store import open_store
    with open_store(store_path, settings.store.crs) as store:
        return run_nightly(store, settings, echo=lambda line: None, progress=False, **kw)


def table(store_path, what="cases"):
    from pipeline.store import open_store
    with open_store(store_path, "EPSG:4547") as store:
        if what == "cases":
            df = store.cases()
            return pd.DataFrame(df.drop(columns=VOLATILE + ["geometry"]).assign(wkt=df.geometry.to_wkt()))
        if what == "flights":
            return store.list_flights()
        df = store.detections().drop(columns="detection_id")
        return df.assign(b=[tuple(np.round(g.bounds, 3)) for g in df.geometry]).sort_values(
            ["flight_id", "class_name", "b"], ignore_index=True)


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    """The case table and detections of one uninterrupted in-process run."""
    tmp = tmp_path_factory.mktemp("reference")
    path, settings = fresh(base, tmp)
    s = nightly(path, settings, truth=base["vectors"])
    assert [f.status for f in s.flights] == ["done"] * 3 and s.failed == 0
    assert sum(f.new_cases for f in s.flights) > 0
    assert not any((tmp / "patrol.gpkg.checkpoints").iterdir())
    return table(path), table(path, "detections")


def cli_args(store_path, base, *more):
    sets = [a for k, v in TRUTH_SET.items() for a in ("--set", f"{k}={v}")]
    return [*PATROL, "--store", str(store_path), *sets, "nightly", "--truth-layer", str(base["vectors"]), *more]


# ---------------------------------------------------------------- claims
def test_claim_is_exclusive_and_dies_with_its_process(tmp_path):
    from pipeline.store import open_store
    path = tmp_path / "s.gpkg"
    with open_store(path, "EPSG:4547") as a, open_store(path, "EPSG:4547") as b:
        claim = a.claim_flight("f1")
        assert claim is not None and b.claim_flight("f1") is None and a.claim_flight("f1") is None
        other = b.claim_flight("f2")
        assert other is not None
        claim.release()
        assert b.claim_flight("f1") is not None
        holder = subprocess.Popen([sys.executable, "-c", (
            "import sys, time; from pipeline.store import open_store\n"
            f"s = open_store({str(path)!r}, 'EPSG:4547'); c = s.claim_flight('f3'); print(c is not None, flush=True)\n"
            "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "True"
        assert a.claim_flight("f3") is None
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert a.claim_flight("f3") is not None            # the kernel freed the dead run's lock


def test_postgis_claim_is_exclusive_per_store_and_freed_on_close(pg_url):
    from pipeline.store import open_store
    a, b = open_store(pg_url, "EPSG:4547"), open_store(pg_url, "EPSG:4547")
    try:
        claim = a.claim_flight("f1")
        assert claim is not None and b.claim_flight("f1") is None and a.claim_flight("f1") is None
        claim.release()
        kept = b.claim_flight("f1")
        assert kept is not None and a.claim_flight("f1") is None
        b.close()                                           # its session ends: claims go with it
        deadline = time.time() + 10                         # (once the server has ended that backend)
        while (got := a.claim_flight("f1")) is None and time.time() < deadline:
            time.sleep(0.05)
        assert got is not None
    finally:
        a.close()
        b.close()


def test_nightly_on_postgis_claims_and_commits_like_the_embedded_store(base, reference, pg_url, tmp_path):
    from pipeline.core.config import load_settings
    from pipeline.ingest.parcels import import_registry
    from pipeline.process.run import register_flight
    from pipeline.store import open_store

    settings = load_settings(overrides={"store.url": pg_url, **TRUTH_SET})
    with open_store(pg_url, settings.store.crs) as store:
        import_registry(store, base["vectors"], replace=True)
        for p in base["orthos"]:
            register_flight(store, p, settings)
        held = store.claim_flight(base["ids"][2])             # "another run" holds the last flight
        other = open_store(pg_url, settings.store.crs)
        try:
            from pipeline.process.nightly import run_nightly
            s = run_nightly(other, settings, truth=base["vectors"], checkpoints=tmp_path / "ck",
                            echo=lambda line: None, progress=False)
            assert [f.status for f in s.flights] == ["done", "done", "skipped"]
            held.release()
            s = run_nightly(other, settings, truth=base["vectors"], checkpoints=tmp_path / "ck",
                            echo=lambda line: None, progress=False)
            assert [f.status for f in s.flights] == ["done"]
            cases = other.cases()
        finally:
            other.close()
    assert list(cases["case_no"]) == list(reference[0]["case_no"])
    assert np.allclose(cases["area_m2"], reference[0]["area_m2"])


# ---------------------------------------------------------------- the "done when"
def test_two_runs_started_together_process_each_flight_exactly_once(base, reference, tmp_path):
    path, _ = fresh(base, tmp_path)
    procs = [subprocess.Popen(cli_args(path, base, "--chunk-tiles", "1", "--summary", str(tmp_path / f"s{i}")),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    done = []
    for i in (1, 2):
        (summary,) = (tmp_path / f"s{i}").glob("nightly-*.json")
        done += [f["flight_id"] for f in json.loads(summary.read_text())["flights"] if f["status"] == "done"]
    assert sorted(done) == sorted(base["ids"])            # every flight once, none twice
    flights = table(path, "flights")
    assert set(flights["status"]) == {"done"}
    pd.testing.assert_frame_equal(table(path), reference[0])   # same cases as one run, in capture order


def test_run_killed_mid_flight_resumes_from_checkpoints_to_the_same_cases(base, reference, tmp_path):
    path, settings = fresh(base, tmp_path)
    second = base["ids"][1]
    ckpt = Path(str(path) + ".checkpoints")
    proc = subprocess.Popen(cli_args(path, base, "--chunk-tiles", "1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and not list(ckpt.glob(f"{second}.*/part-*.npz")):
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    flights = table(path, "flights").set_index("flight_id")["status"]
    assert flights[base["ids"][0]] == "done" and flights[second] == "processing"   # killed mid-flight
    assert len(table(path, "detections").query("flight_id == @second")) == 0       # nothing half-written

    s = nightly(path, settings, truth=base["vectors"])
    assert s.failed == 0
    resumed = {f.flight_id: f for f in s.flights}
    assert base["ids"][0] not in resumed                       # done flights are not redone
    assert 0 < resumed[second].tiles_reused < resumed[second].tiles   # only the unfinished tiles redone
    assert not any(ckpt.iterdir())                              # checkpoints go with the commit
    pd.testing.assert_frame_equal(table(path), reference[0])


def test_a_corrupt_flight_fails_alone_and_the_run_exits_nonzero(base, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.process.run import register_flight
    from pipeline.store import open_store

    path, settings = fresh(base, tmp_path)
    bad = tmp_path / "epoch_2_corrupt.tif"
    data = bytearray(Path(base["orthos"][1]).read_bytes())
    lo, hi = len(data) // 10, 3 * len(data) // 10                # full-resolution tiles, not the overviews
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    bad.write_bytes(bytes(data))
    with open_store(path, settings.store.crs) as store:
        bad_id = register_flight(store, bad, settings)["flight_id"]
    rc = main(cli_args(path, base, "--summary", str(tmp_path / "sum"))[3:])
    assert rc == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "| failed |" in out
    flights = table(path, "flights").set_index("flight_id")
    assert flights.loc[bad_id, "status"] == "failed"
    err = flights.loc[bad_id, "error"]
    assert "epoch_2_corrupt.tif" in err and "\n" not in err and "Traceback" not in err
    assert (flights.drop(index=bad_id)["status"] == "done").all()
    (md,) = (tmp_path / "sum").glob("nightly-*.md")
    assert "failed 1" in md.read_text()


def test_local_dask_cluster_of_two_workers_matches_the_in_process_run(base, reference, tmp_path):
    path, settings = fresh(base, tmp_path)
    s = nightly(path, settings, truth=base["vectors"], workers=2, chunk_tiles=4)
    assert s.executor.startswith("local Dask cluster, 2") and s.failed == 0
    assert [f.status for f in s.flights] == ["done"] * 3
    pd.testing.assert_frame_equal(table(path, "detections"), reference[1])
    pd.testing.assert_frame_equal(table(path), reference[0])


def test_model_detections_on_dask_match_in_process_and_detect_ortho(base, tmp_path):
    from pipeline.core.config import load_settings
    from pipeline.detection.detect import detect_ortho

    model = load_settings().model_path
    if not model.is_file():
        pytest.skip(f"model weights {model} not shipped yet: the model-dependent comparison needs them")
    one = base["ids"][:1]
    a, settings = fresh(base, tmp_path, "a.gpkg", **{"processing.tile_px": 640, "processing.overlap_px": 96})
    b, _ = fresh(base, tmp_path, "b.gpkg", **{"processing.tile_px": 640, "processing.overlap_px": 96})
    inline = nightly(a, settings, flight_ids=one, chunk_tiles=1)
    dask = nightly(b, settings, flight_ids=one, chunk_tiles=1, workers=2)
    assert inline.failed == dask.failed == 0 and inline.flights[0].tiles > 1
    da, db = table(a, "detections"), table(b, "detections")
    assert len(da) > 0
    pd.testing.assert_frame_equal(da, db, atol=1e-6)
    whole = detect_ortho(base["orthos"][0], settings, progress=False)     # the single-pass detector
    assert len(whole) == len(da)
    assert np.allclose(np.sort(whole.geometry.area.to_numpy()), np.sort(da.geometry.area.to_numpy()), rtol=1e-3)


def test_a_photo_flight_is_planned_frame_by_frame_and_matches_patrol_run(base, tmp_path):
    """A folder of DJI photos (one flight of rotated frames) runs nightly: every frame's tiles are
    planned, chunks read one frame each, and the detections equal `patrol run`'s (detect_flight)."""
    import rasterio
    from affine import Affine
    from makers import LAT, make_photo
    from rasterio.warp import Resampling, reproject

    from pipeline.core.config import load_settings
    from pipeline.ingest.photos import georeference, read_photo
    from pipeline.process.run import detect_flight, register_flight
    from pipeline.store import open_store

    if not load_settings().model_path.is_file():
        pytest.skip("the shipped model is needed to detect on the photos")
    store_path = tmp_path / "photos.gpkg"
    settings = load_settings(overrides={"store.url": str(store_path), "ingest.work_dir": str(tmp_path / "work")},
                             environ={})
    folder = tmp_path / "DCIM"
    folder.mkdir()
    shift = None
    with rasterio.open(base["orthos"][0]) as src:      # the photos see the generated district
        cx, cy = (src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2
        for name, lat, yaw in (("DJI_0001.JPG", LAT, "+30.0"), ("DJI_0002.JPG", LAT + 0.0003, "-60.0")):
            kw = dict(lat=lat, yaw=yaw, rel_alt="+80.00", size=(1200, 900))     # 0.10 m, 120 m x 90 m
            fr = georeference(read_photo(make_photo(folder / name, **kw)), settings.ingest, settings.store.crs)
            if shift is None:
                px, py = fr.transform * (600, 450)
                shift = Affine.translation(cx - px, cy - py)
            img = np.zeros((3, 900, 1200), np.uint8)
            reproject(rasterio.band(src, (1, 2, 3)), img, dst_transform=shift * fr.transform, dst_crs=src.crs,
                      resampling=Resampling.bilinear)
            make_photo(folder / name, image=img.transpose(1, 2, 0), **kw)
    with open_store(store_path, settings.store.crs) as store:
        flight = register_flight(store, folder, settings)
    assert flight["source"] == "photos"
    s = nightly(store_path, settings, chunk_tiles=1)
    assert [f.status for f in s.flights] == ["done"] and s.flights[0].tiles >= 4
    got = table(store_path, "detections")
    want = detect_flight(flight, settings, progress=False)
    assert len(got) == len(want) > 0
    # one processing path: the same roofs, the same geometry to the millimetre
    key = lambda g: tuple(np.round(g.bounds, 3))                                     # noqa: E731
    got_g = sorted(got.geometry, key=key)
    want_g = sorted(want.geometry, key=key)
    assert [key(g) for g in got_g] == [key(g) for g in want_g]
    assert all(a.equals_exact(b, 1e-3) for a, b in zip(got_g, want_g))


def test_a_postgresql_restart_in_the_middle_of_a_nightly_flight_loses_nothing(base, reference, tmp_path):
    """The server is killed and restarted while the nightly run detects the second flight: the run
    ends with one-line failures at most, and the next run completes the same cases as one that was
    never interrupted."""
    from pg import PgServer

    from pipeline.core.config import load_settings
    from pipeline.ingest.parcels import import_registry
    from pipeline.process.run import register_flight
    from pipeline.store import open_store

    _, why = PgServer.find_bin()
    if why:
        pytest.skip(why)
    server = PgServer.start()
    try:
        url = server.new_database()
        settings = load_settings(overrides={"store.url": url, **TRUTH_SET})
        with open_store(url, settings.store.crs) as store:
            import_registry(store, base["vectors"], replace=True)
            for p in base["orthos"]:
                register_flight(store, p, settings)
        ck = tmp_path / "ck"
        sets = [a for k, v in TRUTH_SET.items() for a in ("--set", f"{k}={v}")]
        cmd = [*PATROL, "--store", url, *sets, "nightly", "--truth-layer", str(base["vectors"]),
               "--checkpoints", str(ck), "--chunk-tiles", "1", "--summary", str(tmp_path / "s")]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 90
        while time.time() < deadline and not list(ck.glob(f"{base['ids'][1]}.*/part-*.npz")):
            time.sleep(0.01)
        server.restart()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode in (0, 1, 2) and "Traceback" not in out + err, err
        assert proc.returncode != 2 or len(err.strip().splitlines()) == 1, err      # aborted: in one line
        for line in (x for x in out.splitlines() if "FAILED" in x):
            assert "connection" in line.lower() or "store" in line.lower(), line
        s = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert s.returncode == 0 and "Traceback" not in s.stdout + s.stderr, s.stdout[-2000:] + s.stderr[-2000:]
        with open_store(url, settings.store.crs) as store:
            assert set(store.list_flights()["status"]) == {"done"}
            cases = store.cases()
        assert list(cases["case_no"]) == list(reference[0]["case_no"])
        assert np.allclose(cases["area_m2"], reference[0]["area_m2"])
    finally:
        server.stop()


def test_a_cluster_of_separate_processes_over_tcp_matches_the_in_process_run(base, reference, tmp_path):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1: the flights are split by tile
    chunks across them, the result equals the in-process run, and the machine's cores are shared
    out among the two workers (inference threads per worker = cores // 2, at least 1)."""
    import socket

    dask = Path(sys.executable).with_name("dask")
    if not dask.is_file():
        pytest.skip("the dask command line is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1.0)
        procs += [subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--no-dashboard",
                                    "--memory-limit", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for _ in range(2)]
        from distributed import Client
        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        path, settings = fresh(base, tmp_path)
        s = nightly(path, settings, truth=base["vectors"], scheduler=address, chunk_tiles=4)
        assert s.failed == 0 and [f.status for f in s.flights] == ["done"] * 3
        assert sorted(s.inference_threads.values()) == [max(1, os.cpu_count() // 2)] * 2
        pd.testing.assert_frame_equal(table(path, "detections"), reference[1])
        pd.testing.assert_frame_equal(table(path), reference[0])
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)

