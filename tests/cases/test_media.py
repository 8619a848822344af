"""On-site photos and videos: checked by content, EXIF read, distance flagged, original and
stamped copy kept, nothing stored half; through the store, the web page and the API."""
from __future__ import annotations

from datetime import datetime

import geopandas as gpd
import pytest
import shapely
from makers import jpeg

from pipeline.core.config import load_settings
from pipeline.core.errors import InputError, StoreError
from pipeline.store import open_store


@pytest.fixture()
def media_store(tmp_path):
    store = open_store(tmp_path / "s.gpkg", "EPSG:4547")
    g = shapely.box(500_000, 3_380_000, 500_010, 3_380_010)
    store.save_cases(gpd.GeoDataFrame([{"case_no": "LW2026-000001", "status": "verified", "town": "东镇",
                                        "geometry": g}], geometry="geometry", crs="EPSG:4547"))
    c = gpd.GeoSeries([g.centroid], crs="EPSG:4547").to_crs("EPSG:4326").iloc[0]
    s = load_settings(overrides={"store.url": str(tmp_path / "s.gpkg"), "media.dir": str(tmp_path / "media")})
    yield store, s, (c.x, c.y), tmp_path / "media"
    store.close()


def _files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_photo_at_the_case_is_kept_with_a_stamped_copy(media_store):
    from PIL import Image

    from pipeline.cases.media import add_media
    store, s, (lon, lat), folder = media_store
    data = jpeg(lon + 0.00005, lat)                              # ≈ 5 m east of the centre
    row = add_media(store, s, "LW2026-000001", data, "IMG_0001.jpg", "off", "东侧加建")
    assert row["kind"] == "photo" and row["position_source"] == "exif" and row["far"] == 0
    assert 0 <= row["distance_m"] < 10 and row["taken_at"] == datetime(2026, 11, 30, 10, 15)
    import hashlib
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    kept = store.media("LW2026-000001").iloc[0]
    assert open(kept["original_path"], "rb").read() == data       # the original, untouched
    stamped = Image.open(kept["stamped_path"])
    assert stamped.size == (640, 480) and open(kept["stamped_path"], "rb").read() != data
    assert "现场照片 IMG_0001.jpg（距案件" in store.events("LW2026-000001")["note"].iloc[-1]
    # far away: flagged
    far = add_media(store, s, "LW2026-000001", jpeg(lon + 0.01, lat, when="2026:11:30 10:20:00"), "far.jpg", "off")
    assert far["far"] == 1 and far["distance_m"] > 900
    assert "超出" in store.events("LW2026-000001")["note"].iloc[-1]


@pytest.mark.parametrize("data, name, want", [
    (b"#!/bin/sh\nrm -rf /\n", "photo.jpg", "not a photo or video"),
    (b"", "empty.jpg", "the file is empty"),
    (None, "noexif.jpg", "has no EXIF"),
    ("truncated", "cut.jpg", "damaged or cut short"),
])
def test_bad_files_are_refused_in_one_line_and_nothing_is_kept(media_store, data, name, want):
    from pipeline.cases.media import add_media
    store, s, (lon, lat), folder = media_store
    if data is None:
        data = jpeg(exif=False)
    elif data == "truncated":
        data = jpeg(lon, lat, size=(2000, 1500))[:5000]
    with pytest.raises(InputError, match=want) as e:
        add_media(store, s, "LW2026-000001", data, name, "off")
    assert "\n" not in str(e.value) and name in str(e.value)
    assert _files(folder) == [] and len(store.media()) == 0


def test_oversized_file_and_unknown_case(media_store):
    from pipeline.cases.media import add_media
    store, s, (lon, lat), folder = media_store
    small = load_settings(overrides={"store.url": s.store.url, "media.dir": str(folder), "media.max_mb": "1"})
    with pytest.raises(InputError, match="more than the 1 MiB"):
        add_media(store, small, "LW2026-000001", jpeg(lon, lat) + b"\0" * 2**21, "big.jpg", "off")
    with pytest.raises(InputError, match="not in"):
        add_media(store, s, "NOPE", jpeg(lon, lat), "x.jpg", "off")
    assert _files(folder) == [] and len(store.media()) == 0


def test_a_video_takes_the_phone_position_and_a_failed_record_leaves_no_file(media_store, monkeypatch):
    from pipeline.cases.media import add_media
    store, s, (lon, lat), folder = media_store
    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 4096
    row = add_media(store, s, "LW2026-000001", mp4, "VID_1.mp4", "off", device_lon=lon, device_lat=lat)
    assert row["kind"] == "video" and row["position_source"] == "device" and row["distance_m"] == 0
    assert row["stamped_path"] is None and _files(folder) == [f"{row['sha256']}.mp4"]

    def broken(self, r):
        raise StoreError("store s.gpkg: the disk is full; free some space (patrol gc) and try again")
    monkeypatch.setattr(type(store), "add_media", broken)
    with pytest.raises(StoreError):
        add_media(store, s, "LW2026-000001", jpeg(lon, lat), "IMG_2.jpg", "off")
    assert _files(folder) == [f"{row['sha256']}.mp4"]                 # the photo's files went with it
    assert "IMG_2.jpg" not in " ".join(store.events("LW2026-000001")["note"])


def test_cli_attaches_photos(media_store, tmp_path, capsys):
    from pipeline.cli import main
    store, s, (lon, lat), folder = media_store
    p = tmp_path / "IMG_9.jpg"
    p.write_bytes(jpeg(lon, lat))
    assert main(["--store", s.store.url, "--set", f"media.dir={folder}", "cases", "photo", "LW2026-000001",
                 str(p), "--note", "拆除后"]) == 0
    assert "photo IMG_9.jpg" in capsys.readouterr().out and len(store.media()) == 1
    bad = tmp_path / "notes.jpg"
    bad.write_text("hello", encoding="utf-8")
    assert main(["--store", s.store.url, "--set", f"media.dir={folder}", "cases", "photo", "LW2026-000001",
                 str(bad)]) == 2
    assert "notes.jpg: not a photo" in capsys.readouterr().err
