"""Ingest of real-world formats (issue 7): orthos in every format and CRS, split exports,
DJI photos (EXIF/XMP) as georeferenced frames, zips, and hostile input refused one line each."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from makers import LAT, LON, make_photo
from pyproj import Transformer
from rasterio.enums import ColorInterp
from rasterio.transform import Affine, from_origin

from pipeline.core.config import load_settings
from pipeline.core.errors import InputError
from pipeline.ingest import flight_frames, ingest_flight, register_ortho
from pipeline.ingest.raster import combined_id

STORE_CRS = "EPSG:4547"  # CGCS2000 3-degree GK, CM 114E
TO_STORE = Transformer.from_crs("EPSG:4326", STORE_CRS, always_xy=True)


def settings_for(tmp_path, **over):
    o = {"store.url": str(tmp_path / "patrol.gpkg"), "ingest.work_dir": str(tmp_path / "work")}
    o.update(over)
    return load_settings(overrides=o, environ={})


def site(crs: str) -> tuple[float, float]:
    """The test site's coordinates in ``crs``."""
    return Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(LON, LAT)


def site_in_store() -> shapely.Point:
    return shapely.Point(*site(STORE_CRS))


def write_tif(path: Path, *, crs="EPSG:32650", origin=None, res=0.1, width=200, height=150, count=3,
              dtype="uint8", mask=None, alpha=False, nodata=None, transform=None, data=None, **opts) -> Path:
    if origin is None:
        origin = site(crs)
    t = transform or from_origin(origin[0], origin[1], res, res)
    if data is None:
        hi = 255 if dtype == "uint8" else 4000
        rng = np.random.default_rng(1)
        data = rng.integers(20, hi, (count, height, width)).astype(dtype)
    if alpha:
        a = np.full((1, height, width), np.iinfo(dtype).max, dtype) if mask is None else \
            (np.asarray(mask)[None] * np.iinfo(dtype).max).astype(dtype)
        data = np.concatenate([data, a])
    prof = dict(driver="GTiff", width=width, height=height, count=data.shape[0], dtype=dtype, crs=crs,
                transform=t, tiled=True, blockxsize=64, blockysize=64, nodata=nodata, **opts)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)
            if alpha:
                dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
            elif mask is not None:
                dst.write_mask(np.asarray(mask).astype(np.uint8) * 255)
    return path


# ---------------------------------------------------------------- DJI photos


# ================================================================ orthomosaics
@pytest.mark.parametrize("kind", ["geotiff", "cog", "bigtiff", "rgba", "mask", "nodata", "uint16", "jp2", "img"])
def test_ortho_formats_register_with_their_valid_footprint(tmp_path, kind):
    h, w = 150, 200
    hole = np.ones((h, w), bool)
    hole[:, 150:] = False  # the right quarter holds no data
    kw: dict = {}
    if kind == "rgba":
        kw = dict(alpha=True, mask=hole)
    elif kind in ("mask", "cog"):
        kw = dict(mask=hole)
    elif kind == "nodata":
        data = np.random.default_rng(2).integers(20, 255, (3, h, w)).astype("uint8")
        data[:, ~hole] = 0
        kw = dict(nodata=0, data=data)
    elif kind == "uint16":
        kw = dict(dtype="uint16", mask=hole)
    elif kind == "bigtiff":
        kw = dict(BIGTIFF="YES", mask=hole)
    path = write_tif(tmp_path / "o.tif", **kw)
    if kind == "cog":
        from rasterio.shutil import copy
        cog = tmp_path / "cog.tif"
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            copy(path, cog, driver="COG", BLOCKSIZE=64)
        path = cog
    if kind in ("jp2", "img"):   # JPEG 2000 and ERDAS Imagine exports, no mask
        from rasterio.shutil import copy
        other = tmp_path / f"o.{kind}"
        copy(path, other, driver={"jp2": "JP2OpenJPEG", "img": "HFA"}[kind])
        path = other
    if kind == "bigtiff":
        assert path.read_bytes()[:4] == b"II+\x00"
    f = register_ortho(path, STORE_CRS, team="t1")
    assert f["source"] == "ortho" and f["gsd_m"] == pytest.approx(0.1, rel=0.01)
    full = 200 * 150 * 0.01
    expected = 0.75 * full if kind not in ("geotiff", "jp2", "img") else full
    assert f["footprint"].area == pytest.approx(expected, rel=0.04)
    assert f["footprint"].distance(site_in_store()) < 1.0


@pytest.mark.parametrize("crs", ["EPSG:32650", "EPSG:4547", "EPSG:4526", "EPSG:4509", "EPSG:4498",
                                 "EPSG:4326", "EPSG:4490"])
def test_every_crs_lands_in_the_same_place(tmp_path, crs):
    """UTM, CGCS2000 GK 3° by CM (4547) and zone-prefixed (4526 = zone 38), 6° by CM (4509) and
    zone-prefixed (4498 = zone 20), and geographic WGS84 / CGCS2000."""
    geographic = crs in ("EPSG:4326", "EPSG:4490")
    res = 1e-6 if geographic else 0.1
    f = register_ortho(write_tif(tmp_path / "o.tif", crs=crs, res=res), STORE_CRS)
    assert f["crs"] == crs
    assert f["footprint"].distance(site_in_store()) < 1.0
    assert f["gsd_m"] == pytest.approx(0.1 if not geographic else 0.103, rel=0.1)


def test_zone_prefixed_eastings_under_a_central_meridian_crs_are_refused(tmp_path):
    """DOMAIN.md's common mistake: eastings like 38,5xx,xxx but the CRS says the CM form."""
    x, y = site("EPSG:4526")  # zone 38 prefixed: x ~ 38,501,900
    assert x > 38e6
    path = write_tif(tmp_path / "gk.tif", crs="EPSG:4547", origin=(x, y))
    with pytest.raises(InputError, match=r"EPSG:4526.*zone 38") as e:
        register_ortho(path, STORE_CRS)
    assert "gk.tif" in str(e.value) and "\n" not in str(e.value)


def test_rotated_ortho_is_handled_by_footprint_and_tiling(tmp_path):
    from pipeline.detection.tiling import iter_tiles, open_raster, plan_windows

    x0, y0 = site("EPSG:32650")
    ang = math.radians(25)
    t = Affine(0.1 * math.cos(ang), 0.1 * math.sin(ang), x0, 0.1 * math.sin(ang), -0.1 * math.cos(ang), y0)
    path = write_tif(tmp_path / "rot.tif", transform=t, width=300, height=200)
    f = register_ortho(path, STORE_CRS)
    assert f["gsd_m"] == pytest.approx(0.1, rel=0.01)
    assert f["footprint"].area == pytest.approx(300 * 200 * 0.01, rel=0.03)
    with open_raster(path) as src:
        plan = plan_windows(src, 0.2, 64, 8)
    tiles = list(iter_tiles(path, 0.2, 64, 8, windows=plan))
    assert tiles
    for tile in tiles[:3]:  # the tile transform = raster transform at the processing pixel
        col, row = tile.window.col_off, tile.window.row_off
        assert np.allclose(tile.transform * (0, 0), t * (col, row), atol=1e-6)
        assert np.allclose(tile.transform * (10, 0), t * (col + 20, row), atol=1e-6)


def test_a_huge_sparse_bigtiff_is_registered_without_reading_it_whole(tmp_path):
    """20000 x 20000 x 3 (1.2 GB decoded) with one block of data: registering stays far below
    that in memory (decimated mask read, capped GDAL cache), measured in a fresh process."""
    import subprocess
    import sys

    from rasterio.windows import Window

    n = 20000
    path = tmp_path / "huge.tif"
    x0, y0 = site("EPSG:32650")
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=3, dtype="uint8", crs="EPSG:32650",
                       transform=from_origin(x0, y0, 0.05, 0.05), tiled=True, blockxsize=512, blockysize=512,
                       nodata=0, compress="deflate", BIGTIFF="YES", SPARSE_OK=True) as d:
        d.write(np.full((3, 512, 512), 100, np.uint8), window=Window(1024, 1024, 512, 512))
    assert path.stat().st_size < 1 << 20
    code = ("import resource, sys; from pipeline.ingest import register_ortho; "
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            f"f = register_ortho({str(path)!r}, {STORE_CRS!r}); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) // 1024, f['footprint'].area)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"})
    assert out.returncode == 0, out.stderr
    grown_mb, area = out.stdout.split()
    assert int(grown_mb) < 400
    assert float(area) == pytest.approx((512 * 0.05) ** 2, rel=0.15)


# ================================================================ split exports
def test_split_export_is_one_flight(tmp_path):
    from pipeline.detection.tiling import open_raster, plan_windows

    folder = tmp_path / "export"
    folder.mkdir()
    x0, y0 = site("EPSG:32650")
    m = np.ones((150, 200), bool)
    m[100:, 150:] = False
    a = write_tif(folder / "ortho_part_1.tif", origin=(x0, y0), alpha=True, mask=m)
    b = write_tif(folder / "ortho_part_2.tif", origin=(x0 + 20.0, y0), alpha=True)
    (folder / "ortho_part_1.tfw").write_text("0.1\n0\n0\n-0.1\n0\n0\n")   # sidecars are ignored
    dsm = write_tif(folder / "dsm.tif", count=1, dtype="float32",
                    data=np.zeros((1, 150, 200), "float32"))
    from PIL import Image
    Image.new("RGB", (32, 24)).save(folder / "quicklook.jpg")              # a preview: left out
    s = settings_for(tmp_path)
    r = ingest_flight(folder, s, team="t")
    f = r.flight
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
    assert f["flight_id"] == combined_id(hashes)
    assert ingest_flight([b, a], s).flight["flight_id"] == f["flight_id"]   # order does not matter
    refused = {x.file: x.reason for x in r.refused}
    assert sorted(refused) == [str(folder / "quicklook.jpg")]
    assert "beside orthophotos" in refused[str(folder / "quicklook.jpg")]
    assert r.heights == [dsm]                    # the export's DSM: the flight's heights (tests/ingest/test_dsm.py)
    assert f["source"] == "orthos" and f["path"].endswith("mosaic.vrt")
    assert f["footprint"].area == pytest.approx((400 * 150 - 50 * 50) * 0.01, rel=0.03)
    members = json.loads((Path(f["path"]).parent / "members.json").read_text())["members"]
    assert sorted(Path(mm["file"]).name for mm in members) == ["ortho_part_1.tif", "ortho_part_2.tif"]
    with open_raster(f["path"]) as src:   # the mosaic reads as one raster, mask = union of the alphas
        assert (src.width, src.height) == (400, 150)
        mask = src.dataset_mask()
        assert mask[120, 170] == 0 and mask[50, 50] == 255 and mask[50, 350] == 255
        assert len(plan_windows(src, 0.1, 128, 16)) >= 4
    assert flight_frames(f) == [Path(f["path"])]


# ================================================================ DJI photos
def test_photo_metadata_and_frame(tmp_path):
    from pipeline.ingest.photos import georeference, read_photo

    p = read_photo(make_photo(tmp_path / "DJI_0001.JPG"))
    assert (p.model, p.rtk, p.captured_at) == ("FC6310R", True, "2026-03-14T10:20:30")
    assert p.rel_alt == 100.0 and p.yaw == 30.0 and p.pitch == -90.0
    assert p.lat == pytest.approx(LAT, abs=1e-6) and p.lon == pytest.approx(LON, abs=1e-6)
    s = settings_for(tmp_path)
    fr = georeference(p, s.ingest, STORE_CRS)
    assert fr.gsd_m == pytest.approx(13.2 * 100 / (8.8 * 400))   # sensor · altitude / (focal · width)
    assert fr.footprint.centroid.distance(site_in_store()) < 0.01
    assert fr.uncertainty_m >= s.ingest.rtk_error_m
    # image up points 30° east of north: the top edge's midpoint lies north-north-east of the centre
    top = fr.transform * (200, 0)
    c = fr.transform * (200, 150)
    assert math.degrees(math.atan2(top[0] - c[0], top[1] - c[1])) == pytest.approx(30.0, abs=0.01)


def test_photo_folder_is_a_flight_of_frames(tmp_path):
    from pipeline.detection.tiling import open_raster

    folder = tmp_path / "DCIM"
    folder.mkdir()
    make_photo(folder / "DJI_0001.JPG")
    make_photo(folder / "DJI_0002.JPG", lat=LAT + 0.0002, yaw="-150.0", rtk=False, when="2026:03:14 10:20:35")
    make_photo(folder / "DJI_0003.JPG", pitch="-45.0")                                  # oblique
    make_photo(folder / "DJI_0004.JPG", gps={})                                         # no GPS
    make_photo(folder / "DJI_0005.JPG", gps={2: ((30, 0), (1, 1), (0, 1)), 4: ((114, 1), (0, 1), (0, 1))})
    make_photo(folder / "DJI_0006.JPG", rel_alt="abc")                                  # junk XMP
    make_photo(folder / "DJI_0007.JPG", when="9999:99:99 xx")                           # junk time: kept
    (folder / "DJI_0001.MRK").write_text("rtk log")                                    # sidecar
    jpg = (folder / "DJI_0001.JPG").read_bytes()                                        # corrupt EXIF block
    payload = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff\x01\x02" + b"\xee" * 40
    (folder / "DJI_0008.JPG").write_bytes(jpg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
                                          + jpg[2:])
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 not for us")                       # not an image
    s = settings_for(tmp_path)
    r = ingest_flight(folder, s, team="t")
    f = r.flight
    refused = {x.file: x.reason for x in r.refused}
    assert set(Path(n).name for n in refused) == {"DJI_0004.JPG", "DJI_0005.JPG", "DJI_0006.JPG", "DJI_0008.JPG",
                                                  "notes.docx"}
    assert "EXIF" in refused[str(folder / "DJI_0008.JPG")]
    assert "no GPS" in refused[str(folder / "DJI_0004.JPG")]
    assert "junk" in refused[str(folder / "DJI_0005.JPG")] and "junk" in refused[str(folder / "DJI_0006.JPG")]
    assert all("\n" not in why for why in refused.values())
    assert all(re.search("[\u4e00-\u9fff]", x.zh) and "\n" not in x.zh for x in r.refused)   # the officer's line
    assert any("oblique" in n and "DJI_0003" in n for n in r.notes)
    manifest = json.loads((Path(f["path"]) / "frames.json").read_text())
    # in capture order (the junk-time photo first: no capture time)
    assert [Path(fr["file"]).name for fr in manifest["frames"]] == ["DJI_0007.JPG", "DJI_0001.JPG", "DJI_0002.JPG"]
    assert any("DJI_0007" in n and "junk" in n for n in r.notes)
    assert [Path(e["file"]).name for e in manifest["evidence_only"]] == ["DJI_0003.JPG"]
    unc = {Path(fr["file"]).name: fr["uncertainty_m"] for fr in manifest["frames"]}
    assert unc["DJI_0002.JPG"] > unc["DJI_0001.JPG"]   # no RTK fix: metres, not centimetres
    kept = ["DJI_0001.JPG", "DJI_0002.JPG", "DJI_0003.JPG", "DJI_0007.JPG"]
    assert f["flight_id"] == combined_id([hashlib.sha256((folder / k).read_bytes()).hexdigest() for k in kept])
    assert (f["source"], f["crs"], f["captured_at"]) == ("photos", STORE_CRS, "2026-03-14T10:20:30")
    assert f["gsd_m"] == pytest.approx(0.375, rel=0.01)
    frames = flight_frames(f)
    assert len(frames) == 3
    with open_raster(frames[0]) as src:   # a georeferenced, rotated frame
        assert src.crs.to_string() == STORE_CRS and src.transform.b != 0
    assert f["footprint"].contains(site_in_store())


def test_photo_zip_is_the_same_flight_and_gbk_names_decode(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    a = make_photo(folder / "a.jpg")
    b = make_photo(folder / "b.jpg", lat=LAT + 0.0003)
    s = settings_for(tmp_path)
    by_folder = ingest_flight(folder, s).flight
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(zipfile.ZipInfo("航拍/a.jpg"), a.read_bytes())    # UTF-8 flagged
        class Legacy(zipfile.ZipInfo):      # what Windows zip tools write: GBK bytes, no UTF-8 flag
            def _encodeFilenameFlags(self):
                return self.filename.encode("cp437"), self.flag_bits
        info = Legacy("照片/b.jpg".encode("gbk").decode("cp437"))
        zf.writestr(info, b.read_bytes())
        zf.writestr("readme.txt", "hello")
    r = ingest_flight(z, s)
    assert r.flight["flight_id"] == by_folder["flight_id"]
    manifest = json.loads((Path(r.flight["path"]) / "frames.json").read_text())
    assert sorted(fr["name"].rsplit(":", 1)[1] for fr in manifest["frames"]) == ["a.jpg", "b.jpg"]
    from pipeline.ingest.archive import member_name
    with zipfile.ZipFile(z) as zf:
        assert [member_name(i) for i in zf.infolist()] == ["航拍/a.jpg", "照片/b.jpg", "readme.txt"]


def test_frame_detections_land_on_the_ground_and_merge_across_photos(tmp_path):
    """Two overlapping photos with different headings see the same red roof; a colour-threshold
    detector (our Detector's interface) finds it in each frame; run.detect_flight maps both to
    the ground within the recorded uncertainty and merges them into one detection."""
    from pipeline.ingest.photos import georeference, read_photo
    from pipeline.process.run import detect_flight

    s = settings_for(tmp_path, **{"processing.tile_px": 128, "processing.overlap_px": 16,
                                  "processing.gsd_m": 0.4})
    folder = tmp_path / "p"
    folder.mkdir()
    roof = shapely.Point(site(STORE_CRS)[0] + 12.0, site(STORE_CRS)[1] - 6.0)   # a roof 12 m E, 6 m S
    for name, lat, yaw in (("a.jpg", LAT, "+30.0"), ("b.jpg", LAT + 0.00005, "-100.0")):
        probe = make_photo(folder / name, lat=lat, yaw=yaw)
        fr = georeference(read_photo(probe), s.ingest, STORE_CRS)
        col, row = (~fr.transform) * (roof.x, roof.y)
        img = np.full((300, 400, 3), 90, np.uint8)
        img[int(row) - 6:int(row) + 6, int(col) - 6:int(col) + 6] = (255, 0, 0)
        make_photo(folder / name, lat=lat, yaw=yaw, image=img)

    class RedRoofs:
        classes, path = ["building"], Path("red-roofs")

        def predict(self, images):
            out = []
            for im in images:
                ys, xs = np.nonzero((im[..., 0] > 200) & (im[..., 1] < 60))
                if len(xs) < 4:
                    out.append((np.zeros((0, 4, 2)), np.zeros(0), np.zeros(0, int)))
                    continue
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                q = np.array([[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]], float)
                out.append((q, np.array([0.9]), np.array([0])))
            return out

    flight = ingest_flight(folder, s).flight
    dets = detect_flight(flight, s, detector=RedRoofs(), progress=False)
    assert len(dets) == 1
    manifest = json.loads((Path(flight["path"]) / "frames.json").read_text())
    unc = max(fr["uncertainty_m"] for fr in manifest["frames"])
    assert dets.geometry.iloc[0].centroid.distance(roof) < min(unc, 1.0)
    assert dets.crs.to_string() == STORE_CRS


def test_photo_georeferencing_round_trip_and_area_property():
    from hypothesis import given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st

    from pipeline.ingest.photos import Photo, georeference

    ingest = load_settings(environ={}).ingest

    @hsettings(max_examples=60, deadline=None)
    @given(lat=st.floats(22.0, 40.0), dlon=st.floats(-1.4, 1.4), alt=st.floats(20.0, 500.0),
           yaw=st.floats(-180.0, 180.0), pitch=st.floats(-90.0, -75.0), w=st.integers(200, 6000),
           h=st.integers(200, 4000), focal=st.floats(4.0, 35.0),
           col=st.floats(0, 1), row=st.floats(0, 1))
    def check(lat, dlon, alt, yaw, pitch, w, h, focal, col, row):
        photo = Photo("p.jpg", Path("p.jpg"), w, h, lat, 114.0 + dlon, alt, pitch, yaw, focal, None,
                      "FC6310R", "DJI", None)
        fr = georeference(photo, ingest, STORE_CRS)
        px = (col * w, row * h)
        back = (~fr.transform) * (fr.transform * px)
        assert back == pytest.approx(px, abs=1e-6)
        assert fr.footprint.area == pytest.approx(fr.gsd_m ** 2 * w * h, rel=1e-9)
        assert fr.gsd_m == pytest.approx(13.2 * alt / (focal * w))
        # the footprint's centre is the GPS position (pushed along the heading when tilted)
        x, y = TO_STORE.transform(114.0 + dlon, lat)
        shift = alt * math.tan(math.radians(abs(pitch + 90)))
        assert fr.footprint.centroid.distance(shapely.Point(x, y)) == pytest.approx(shift, abs=1e-3)

    check()


# ================================================================ hostile input
def _one_line(excinfo, name: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and name in msg, msg
    return msg


def test_hostile_files_are_refused_with_one_line_naming_them(tmp_path):
    s = settings_for(tmp_path, **{"ingest.max_raster_mpix": 0.01})
    txt = tmp_path / "report.tif"
    txt.write_text("this is not an image")
    with pytest.raises(InputError, match="not a readable raster") as e:
        ingest_flight(txt, s)
    _one_line(e, "report.tif")

    empty = tmp_path / "zero.tif"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as e:
        ingest_flight(empty, s)
    _one_line(e, "zero.tif")

    whole = write_tif(tmp_path / "whole.tif", width=96, height=96)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(InputError, match="truncated") as e:
        ingest_flight(cut, s)
    _one_line(e, "cut.tif")

    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=10, height=10, count=3, dtype="uint8") as d:
        d.write(np.zeros((3, 10, 10), np.uint8))
    with pytest.raises(InputError, match="no georeference") as e:
        ingest_flight(plain, s)
    _one_line(e, "plain.tif")

    big = write_tif(tmp_path / "big.tif", width=200, height=100)   # 0.02 Mpx > 0.01 Mpx
    with pytest.raises(InputError, match="max_raster_mpix") as e:
        ingest_flight(big, s)
    _one_line(e, "big.tif")

    vrt = tmp_path / "link.vrt"   # a VRT may point at any file on the server: refused
    vrt.write_text('<VRTDataset rasterXSize="1" rasterYSize="1"></VRTDataset>')
    with pytest.raises(InputError, match="VRT") as e:
        ingest_flight(vrt, s)
    _one_line(e, "link.vrt")

    sheared = write_tif(tmp_path / "shear.tif", transform=Affine(0.1, 0.05, 0, 0, -0.1, 0))
    with pytest.raises(InputError, match="sheared"):
        ingest_flight(sheared, s)


def test_non_utf8_file_name_is_refused_and_the_rest_goes_on(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    good = write_tif(folder / "good.tif")
    bad = Path(os.fsdecode(bytes(folder) + b"/\xb7\xc9\xd0\xd0.tif"))   # GBK bytes, not UTF-8
    bad.write_bytes(good.read_bytes())
    r = ingest_flight(folder, settings_for(tmp_path))
    assert r.flight["flight_id"] == hashlib.sha256(good.read_bytes()).hexdigest()[:16]
    assert len(r.refused) == 1 and "not valid UTF-8" in r.refused[0].reason
    r.refused[0].reason.encode("utf-8")   # printable


def _zip(path: Path, entries) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize("case,match", [
    ("traversal", "leaving the folder"), ("absolute", "absolute path"), ("symlink", "symbolic link"),
    ("bomb", "zip bomb"), ("total", "max_zip_mb"), ("garbage", "not a readable zip")])
def test_hostile_zips_are_refused_and_nothing_is_unpacked(tmp_path, case, match):
    photo = make_photo(tmp_path / "a.jpg").read_bytes()
    z = tmp_path / f"{case}.zip"
    if case == "traversal":
        _zip(z, [("ok.jpg", photo, 0), ("../../evil.jpg", photo, 0)])
    elif case == "absolute":
        _zip(z, [("/etc/evil.jpg", photo, 0)])
    elif case == "symlink":
        _zip(z, [("link.jpg", "/etc/passwd", 0o120777)])
    elif case == "bomb":
        _zip(z, [("bomb.jpg", b"\0" * (8 << 20), 0)])
    elif case == "total":
        _zip(z, [("a.jpg", photo, 0), ("big.jpg", os.urandom(2 << 20), 0)])
    else:
        z.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    s = settings_for(tmp_path, **{"ingest.max_zip_mb": 1})
    with pytest.raises(InputError, match=match) as e:
        ingest_flight(z, s)
    _one_line(e, z.name)
    work = tmp_path / "work"
    assert not work.exists() or not any(work.rglob("*.jpg"))
    assert not (tmp_path.parent / "evil.jpg").exists()


# ================================================================ district, CLI batch, store
def _store_with_parcel(s, where: shapely.Geometry):
    import geopandas as gpd

    from pipeline.ingest.parcels import read_parcels
    from pipeline.store import open_store

    store = open_store(s.store.url, s.store.crs)
    gdf = gpd.GeoDataFrame({"parcel_id": ["P1"], "owner": ["张三"], "town": ["T"], "village": ["V"],
                            "village_code": ["420115001001"], "land_use": ["0702"], "approved_area_m2": [120.0],
                            "approved_floors": [2], "permit_no": ["X1"]}, geometry=[where], crs=s.store.crs)
    path = Path(s.store.url).with_name("parcels.gpkg")
    gdf.to_file(path, layer="parcels")
    with store.transaction():
        store.import_parcels(read_parcels(path, store_crs=s.store.crs))
    return store


def test_flight_outside_the_district_is_refused(tmp_path):
    from pipeline.process.run import register_flight

    s = settings_for(tmp_path)
    far = shapely.Point(site(STORE_CRS)).buffer(10).envelope
    far = shapely.affinity.translate(far, 30_000, 0)
    store = _store_with_parcel(s, far)
    ortho = write_tif(tmp_path / "o.tif")
    with pytest.raises(InputError, match="outside the district") as e:
        register_flight(store, ortho, s)
    _one_line(e, "o.tif")
    assert len(store.list_flights()) == 0
    near = settings_for(tmp_path, **{"ingest.district_margin_m": 40_000})
    assert register_flight(store, ortho, near)["status"] == "uploaded"
    store.close()


def test_district_boundary_file_replaces_the_parcel_extent(tmp_path):
    import geopandas as gpd

    from pipeline.ingest import check_district

    here = shapely.Point(*site("EPSG:4326")).buffer(0.001)
    gpd.GeoDataFrame(geometry=[here], crs="EPSG:4326").to_file(tmp_path / "district.geojson")
    gpd.GeoDataFrame(geometry=[shapely.affinity.translate(here, 0.5, 0)], crs="EPSG:4326") \
        .to_file(tmp_path / "elsewhere.geojson")
    ortho = write_tif(tmp_path / "o.tif")
    s = settings_for(tmp_path, **{"ingest.district_boundary": str(tmp_path / "district.geojson"),
                                  "ingest.district_margin_m": 100})
    flight = ingest_flight(ortho, s).flight
    check_district(flight, None, s)      # inside: no store needed
    s = settings_for(tmp_path, **{"ingest.district_boundary": str(tmp_path / "elsewhere.geojson"),
                                  "ingest.district_margin_m": 100})
    with pytest.raises(InputError, match="outside the district boundary") as e:
        check_district(flight, None, s)
    _one_line(e, "o.tif")


def test_cli_batch_goes_on_past_refused_files(tmp_path, patrol):
    good = write_tif(tmp_path / "good.tif")
    other = write_tif(tmp_path / "other.tif", origin=(site("EPSG:32650")[0] + 30, site("EPSG:32650")[1]))
    junk = tmp_path / "junk.tif"
    junk.write_text("nope")
    args = ["--store", str(tmp_path / "p.gpkg"), "--set", f"ingest.work_dir={tmp_path / 'w'}"]
    res = patrol(*args, *["ingest", "--each", "--team", "一队", str(good), str(junk), str(other)])
    assert res.exit_code == 1, res.output
    ids = [line for line in res.stdout.splitlines() if len(line) == 16]
    assert len(ids) == 2
    assert "refused 1:" in res.stderr and "junk.tif" in res.stderr.split("refused 1:")[1]
    res = patrol(*args, *["flights", "list"])
    assert res.exit_code == 0 and all(i in res.output for i in ids) and "一队" in res.output
    # the same file again is the same flight: nothing already stored is lost
    res = patrol(*args, *["ingest", str(good)])
    assert res.exit_code == 0 and res.stdout.strip() == ids[0]
    res = patrol(*args, *["ingest", str(junk)])
    assert res.exit_code == 2 and "junk.tif" in res.stderr
    res = patrol(*args, *["flights", "list"])
    assert sum(i in res.output for i in ids) == 2


# ================================================================ real format, whole pipeline
def test_rgba_utm_ortho_with_irregular_alpha_goes_through_the_pipeline(tmp_path):
    """A 4-band RGBA orthophoto in UTM 50N whose alpha traces an irregular flight footprint:
    register_flight + process_flight (truth as detections; the model too when it is shipped);
    the flight footprint comes from the alpha mask."""
    import geopandas as gpd
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from pipeline.ingest.parcels import import_registry
    from pipeline.process.run import process_flight, register_flight
    from pipeline.store import open_store
    from pipeline.synth import generate_district

    d = generate_district(tmp_path / "d", seed=2, size_m=100.0, epochs=1, progress=False)
    src_path = d.orthos[0]
    utm = tmp_path / "rgba_utm.tif"
    with rasterio.open(src_path) as src:
        t, w, h = calculate_default_transform(src.crs, "EPSG:32650", src.width, src.height, *src.bounds)
        rgb = np.zeros((3, h, w), np.uint8)
        reproject(rasterio.band(src, [1, 2, 3]), rgb, dst_transform=t, dst_crs="EPSG:32650",
                  resampling=Resampling.bilinear)
        valid = np.zeros((h, w), np.uint8)
        reproject(src.dataset_mask(), valid, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=t, dst_crs="EPSG:32650", resampling=Resampling.nearest)
        when = src.tags()["TIFFTAG_DATETIME"]
    # an irregular footprint: the district's own mask, with a bite out of one side
    yy, xx = np.mgrid[0:h, 0:w]
    bite = (xx - w * 0.8) ** 2 + (yy - h * 0.3) ** 2 < (min(h, w) * 0.22) ** 2
    alpha = np.where((valid > 0) & ~bite, 255, 0).astype(np.uint8)
    rgb[:, alpha == 0] = 0
    with rasterio.open(utm, "w", driver="GTiff", width=w, height=h, count=4, dtype="uint8", crs="EPSG:32650",
                       transform=t, tiled=True, compress="deflate", photometric="RGB", alpha="YES") as dst:
        dst.write(np.concatenate([rgb, alpha[None]]))
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        dst.update_tags(TIFFTAG_DATETIME=when)
    with rasterio.open(utm) as chk:
        assert chk.count == 4 and chk.colorinterp[3] == ColorInterp.alpha and chk.crs.to_epsg() == 32650

    s = settings_for(tmp_path)
    store = open_store(s.store.url, s.store.crs)
    import_registry(store, d.vectors)
    flight = register_flight(store, utm, s, team="t")
    # footprint from the alpha mask, in the store CRS: the bite is out
    alpha_shapes = [shapely.geometry.shape(g) for g, v in
                    rasterio.features.shapes(alpha, mask=alpha > 0, transform=t) if v]
    expected = gpd.GeoSeries([shapely.union_all(alpha_shapes)], crs="EPSG:32650").to_crs(STORE_CRS).iloc[0]
    fp = flight["footprint"]
    assert fp.intersection(expected).area / fp.union(expected).area > 0.97
    bite_centre = gpd.GeoSeries([shapely.Point(t * (w * 0.8, h * 0.3))], crs="EPSG:32650").to_crs(STORE_CRS).iloc[0]
    assert not fp.contains(bite_centre)
    truth = gpd.read_file(d.vectors, layer="truth")
    truth = truth[truth["epoch"] == 1]
    res = process_flight(store, flight["flight_id"], s, progress=False,
                         detections=truth.assign(confidence=0.9, area_m2=truth.geometry.area))
    assert store.get_flight(flight["flight_id"])["status"] == "done"
    assert res.detections == len(truth) and res.findings > 0
    if s.model_path.is_file():   # the shipped model reads the RGBA UTM ortho through the tiler
        res = process_flight(store, flight["flight_id"], s, progress=False, force=True)
        assert store.get_flight(flight["flight_id"])["status"] == "done"
    store.close()


def test_a_fake_jpeg_is_refused_in_one_line_with_ultralytics_loaded(tmp_path):
    """Once the detector is loaded, ultralytics' PIL.Image.open patch tries an optional HEIC
    plugin on files PIL cannot identify; the ingest still refuses the file in one line."""
    from pipeline.detection.detect import offline_ultralytics
    offline_ultralytics()
    import ultralytics.utils.patches  # noqa: F401  (patches PIL.Image.open, as a loaded detector does)

    from pipeline.ingest.photos import read_photo
    fake = tmp_path / "DJI_0001.JPG"
    fake.write_bytes(b"\xff\xd8\xff" + b"0" * 100)
    with pytest.raises(InputError) as e:
        read_photo(fake)
    assert "DJI_0001.JPG is not a readable image" in str(e.value) and "\n" not in str(e.value)
