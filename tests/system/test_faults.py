"""Faults (issue 22): a full disk and a read-only store are one line each and lose nothing; a run
killed with SIGKILL while unpacking or inside a commit leaves no half-written state, and
`patrol gc` clears what the killed unpacking left. The disk tests mount a small tmpfs (root
only) and are skipped, with the reason, where it cannot be mounted."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

PATROL = [sys.executable, "-m", "pipeline.cli"]


def content(store: Path) -> str:
    """What a store holds (every table's rows), whatever its file layout."""
    con = sqlite3.connect(store)
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


def patrol(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*PATROL, *map(str, args)], capture_output=True, text=True, timeout=120, **kw)


def one_line(proc, code=2) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'not root'})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_and_read_only_store_are_one_line_and_lose_nothing(small_district_store, small_disk, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    src, _, district = small_district_store
    store = small_disk / "patrol.gpkg"
    shutil.copy(src, store)
    before = content(store)
    work = small_disk / "work"
    base = ["--store", store, "--set", f"ingest.work_dir={work}"]
    # a zip that would not fit: refused before a byte is written
    big = tmp_path / "photos.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as z:
        z.writestr("DJI_0001.JPG", os.urandom(30 << 20))
    line = one_line(patrol(*base, "ingest", big))
    assert "the disk has" in line and "free" in line, line
    assert not work.exists() or not any(work.rglob("*"))
    # the disk fills during a write: the store refuses in one line and keeps what it held
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(free - (300 << 10), 0))
    b = gpd.read_file(district / "district.gpkg", layer="parcels").total_bounds
    many = gpd.GeoDataFrame({"parcel_id": [f"X{i}" for i in range(20000)], "owner": ["某"] * 20000,
                             "town": ["东山镇"] * 20000, "village": ["东村"] * 20000, "land_use": ["0702"] * 20000,
                             "approved_area_m2": [100.0] * 20000},
                            geometry=[box(b[0] + i % 100, b[1] + i // 100, b[0] + i % 100 + .5, b[1] + i // 100 + .5)
                                      for i in range(20000)], crs="EPSG:4547")
    parcels = tmp_path / "many.gpkg"
    many.to_file(parcels, engine="pyogrio")
    line = one_line(patrol(*base, "import", "parcels", parcels))
    assert "disk is full" in line and "new" not in line
    filler.unlink()
    assert content(store) == before
    # a write-protected store: one line, no advice to start another file (that would split the ledger)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        line = one_line(patrol(*base, "users", "add", "wang", "--role", "officer", "--password", "longenough"))
        assert "cannot be written" in line or "read-only" in line, line
        assert "point store.url at a new" not in line
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert content(store) == before


SLOW_UNPACK = """
import sys, time, zipfile
from pipeline.core.config import load_settings
from pipeline.ingest.flight import ingest_flight
read = zipfile.ZipExtFile.read
def slow(self, n=-1):
    time.sleep(0.5)
    return read(self, n)
zipfile.ZipExtFile.read = slow
s = load_settings(overrides={"ingest.work_dir": sys.argv[2], "service.upload_dir": sys.argv[3]})
ingest_flight(sys.argv[1], s)
"""


def test_kill_during_unpacking_leaves_nothing_after_gc(tmp_path):
    work, uploads = tmp_path / "work", tmp_path / "uploads"
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as f:
        for i in range(4):
            f.writestr(f"DJI_{i:04d}.JPG", os.urandom(3 << 20))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_UNPACK, str(z), str(work), str(uploads)])
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.is_file() and p.name != ".busy" for p in work.glob("*.part-*/*")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(work.glob("*.part-*")), "the unpacking was not caught in the act"
    sets = ["--set", f"ingest.work_dir={work}", "--set", f"service.upload_dir={uploads}"]
    r = patrol(*sets, "gc")
    assert r.returncode == 0 and "removed 1 unfinished unpackings" in r.stdout, r.stdout + r.stderr
    assert not list(work.glob("*.part-*"))
    # a running unpacking is left alone
    busy = work / f"zip-x.part-{uuid.uuid4().hex[:8]}"
    from pipeline.core.disk import unpacking
    with unpacking(busy):
        assert "removed 0 unfinished" in patrol(*sets, "gc").stdout
    assert busy.is_dir()


KILL_IN_COMMIT = """
import os, signal, sys
import geopandas as gpd
from shapely.geometry import box
from pipeline.store import open_store
s = open_store(sys.argv[1], "EPSG:4547")
fid = s.list_flights()["flight_id"].iloc[0]
with s.transaction():
    b = s.parcels().total_bounds
    s.replace_detections(fid, gpd.GeoDataFrame({"class_name": ["building"], "confidence": [0.9], "area_m2": [4.0]},
                                               geometry=[box(b[0], b[1], b[0] + 2, b[1] + 2)], crs="EPSG:4547"))
    s.set_flight_status(fid, "failed", error="half-way")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_inside_a_commit_rolls_everything_back(small_district_store, tmp_path):
    src, _, _ = small_district_store
    store = tmp_path / "patrol.gpkg"
    shutil.copy(src, store)
    before = content(store)
    proc = subprocess.run([sys.executable, "-c", KILL_IN_COMMIT, str(store)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert content(store) == before
    con = sqlite3.connect(store)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_quotas_refuse_at_the_start_and_gc_removes_abandoned_uploads(tmp_path):
    from pipeline.core.config import load_settings
    from pipeline.core.disk import collect_garbage
    from pipeline.core.errors import InputError
    from pipeline.service.uploads import Uploads

    work, uploads = tmp_path / "work", tmp_path / "uploads"
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as f:
        f.writestr("DJI_0001.JPG", os.urandom(3 << 20))
    sets = ["--set", f"ingest.work_dir={work}", "--set", "ingest.work_quota_mb=2"]
    line = one_line(patrol("--store", tmp_path / "p.gpkg", *sets, "ingest", z))
    assert "quota" in line and not any(work.rglob("*.JPG"))
    up = Uploads(uploads, 100 << 20, 1 << 20, quota_mb=1)
    with pytest.raises(InputError, match="quota"):
        up.create("big.tif", 2 << 20, "pat")
    # an upload nobody finished: removed after service.upload_keep_hours, a recent one kept
    settings = load_settings(overrides={"ingest.work_dir": str(work), "service.upload_dir": str(uploads),
                                        "service.upload_keep_hours": "1"})
    old, new = (Uploads(uploads, 100 << 20, 1 << 20).create(n, 10, "pat")["upload_id"] for n in ("a.tif", "b.tif"))
    hours_ago = time.time() - 3 * 3600
    for p in (uploads / "parts").glob(f"{old}.*"):
        os.utime(p, (hours_ago, hours_ago))
    done = collect_garbage(settings)
    assert done["abandoned_uploads"] == 1
    assert sorted(p.stem for p in (uploads / "parts").iterdir()) == [new, new]


def test_a_web_download_on_a_full_disk_is_one_line_not_a_bare_500(small_district_store, small_disk, tmp_path):
    from makers import GOOD, make_app, token

    app, c = make_app(small_district_store, tmp_path, work_dir=str(small_disk / "service"))
    auth = {"Authorization": "Bearer " + token(c).json()["access_token"]}
    with open(small_disk / "filler", "wb") as f:          # every last block taken
        try:
            while True:
                f.write(b"\0" * (64 << 10))
                f.flush()
        except OSError:
            pass
    r = c.get("/api/cases.xlsx", headers=auth)
    assert r.status_code == 507, r.text
    detail = r.json()["detail"]
    assert "disk is full" in detail and "\n" not in detail and str(small_disk) not in detail
    assert GOOD
    app.state.store.close()
