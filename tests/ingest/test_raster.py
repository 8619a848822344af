"""register_ortho: content id, capture time, CRS, ground GSD, valid-data footprint, errors."""
from __future__ import annotations

import hashlib
import os
from datetime import datetime

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import from_origin

from pipeline.core.errors import ConfigError, InputError
from pipeline.ingest import register_ortho

# an irregular flight footprint (concave, with a notch) in EPSG:32650 metres
AREA = shapely.Polygon([(500005, 3399995), (500070, 3399990), (500075, 3399950), (500045, 3399955),
                        (500040, 3399930), (500010, 3399935)])


def footprint_raster(make_raster, crs="EPSG:32650", **kw):
    w, h, res = 1600, 1400, 0.05
    mask = rasterize([AREA], out_shape=(h, w), transform=from_origin(500000, 3400000, res, res)) > 0
    return make_raster(width=w, height=h, res=res, crs=crs, mask=mask, **kw)


def test_register_ortho_describes_the_flight(make_raster):
    path = footprint_raster(make_raster, tags={"TIFFTAG_DATETIME": "2026:03:14 10:20:30"})
    f = register_ortho(path, "EPSG:4547", team="一队")
    assert f["flight_id"] == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert f["captured_at"] == "2026-03-14T10:20:30"
    assert (f["team"], f["source"], f["status"], f["crs"]) == ("一队", "ortho", "uploaded", "EPSG:32650")
    assert f["gsd_m"] == pytest.approx(0.05)
    assert f["path"] == str(path.resolve())


def test_footprint_follows_an_irregular_mask_in_the_store_crs(make_raster):
    f = register_ortho(footprint_raster(make_raster), "EPSG:4547")
    tr = Transformer.from_crs(32650, 4547, always_xy=True)
    expected = shapely.transform(shapely.segmentize(AREA, 1.0),
                                 lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    fp = f["footprint"]
    assert fp.is_valid and fp.geom_type in ("Polygon", "MultiPolygon")
    iou = fp.intersection(expected).area / fp.union(expected).area
    assert iou > 0.97
    assert fp.area == pytest.approx(expected.area, rel=0.03)
    assert not fp.contains(shapely.Point(tr.transform(500060, 3399940)))  # the notch stays out
    assert len(shapely.get_coordinates(fp)) < 200  # simplified, not a staircase of pixels


def test_geographic_ortho_gets_ground_gsd_and_mtime_capture(make_raster):
    path = make_raster(width=300, height=300, res=5e-7, crs="EPSG:4326", origin=(114.0, 30.0))
    os.utime(path, (1_700_000_000, 1_700_000_000))
    f = register_ortho(path, "EPSG:4547")
    assert f["gsd_m"] == pytest.approx((0.0482 + 0.0554) / 2, abs=0.002)
    assert f["captured_at"] == datetime.fromtimestamp(1_700_000_000).isoformat(timespec="seconds")
    minx, miny, maxx, maxy = f["footprint"].bounds
    assert 14 < maxx - minx < 15.5 and 16 < maxy - miny < 17.5  # ~300 px x 4.8 / 5.5 cm, metres


def test_unusable_inputs_raise_one_line_errors(tmp_path, make_raster):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(InputError, match="not a readable raster") as e:
        register_ortho(bad, "EPSG:4547")
    assert "\n" not in str(e.value)
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=10, height=10, count=3, dtype="uint8") as d:
        d.write(np.zeros((3, 10, 10), np.uint8))
    with pytest.raises(InputError, match="no georeference"):
        register_ortho(plain, "EPSG:4547")
    empty = make_raster("empty.tif", width=64, height=64, nodata=0, data=np.zeros((3, 64, 64)))
    with pytest.raises(InputError, match="no valid pixels"):
        register_ortho(empty, "EPSG:4547")
    with pytest.raises(ConfigError, match="not a projected CRS"):
        register_ortho(empty, "EPSG:4326")
