"""Streamed tiling: footprint coverage, no-data skipping, resampling, band layouts, CRSs."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from pyproj import Geod

from pipeline.core.errors import InputError
from pipeline.detection.tiling import ground_pixel_size, iter_tiles, plan_windows

GSD, TILE, OVERLAP = 0.10, 128, 16


def ellipse_mask(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx - w * 0.45) / (w * 0.42)) ** 2 + ((yy - h * 0.55) / (h * 0.4)) ** 2 < 1


def coverage(tiles, shape):
    """Processing-grid pixels that some tile marks valid."""
    cov = np.zeros(shape, dtype=bool)
    for t in tiles:
        r, c = t.index
        h, w = min(TILE, shape[0] - r), min(TILE, shape[1] - c)
        cov[r:r + h, c:c + w] |= t.valid[:h, :w]
        assert not t.valid[h:, :].any() and not t.valid[:, w:].any()  # padding is invalid
    return cov


def test_windows_cover_the_whole_valid_footprint(make_raster):
    h, w = 900, 1300
    mask = ellipse_mask(h, w)
    path = make_raster(width=w, height=h, mask=mask, overviews=True)
    tiles = list(iter_tiles(path, GSD, TILE, OVERLAP))
    grid = (h // 2, w // 2)
    with rasterio.open(path) as src:  # the valid mask at the processing GSD, read in one go
        expected = src.dataset_mask(out_shape=grid) > 0
    assert np.array_equal(coverage(tiles, grid), expected)
    assert all(t.image.shape == (TILE, TILE, 3) and t.image.dtype == np.uint8 for t in tiles)
    assert all(t.valid.shape == (TILE, TILE) and t.valid.dtype == bool for t in tiles)


def test_all_nodata_tiles_are_skipped(make_raster):
    h, w = 1000, 1000
    mask = np.zeros((h, w), dtype=bool)
    mask[40:300, 60:280] = True  # data only in the top-left corner
    path = make_raster(width=w, height=h, mask=mask)
    with rasterio.open(path) as src:
        plan = plan_windows(src, GSD, TILE, OVERLAP)
    tiles = list(iter_tiles(path, GSD, TILE, OVERLAP))
    full_grid = 5 * 5  # 500 processing px per side, stride 112
    assert 0 < len(tiles) <= len(plan) < full_grid
    assert len(tiles) == 4  # the corner block spans 2 x 2 tiles
    assert all(t.valid.any() for t in tiles)
    assert np.array_equal(coverage(tiles, (500, 500)), mask[::2, ::2])


def test_an_all_nodata_raster_gives_no_tiles(make_raster):
    path = make_raster(width=400, height=400, nodata=0, data=np.zeros((3, 400, 400)))
    assert list(iter_tiles(path, GSD, TILE, OVERLAP)) == []


def test_tiles_are_resampled_to_the_processing_gsd(make_raster):
    # native 5 cm, a ramp along x: each 10 cm pixel averages two native columns
    h, w = 300, 500
    ramp = np.tile((np.arange(w) % 200).astype(np.uint8), (h, 1))
    path = make_raster(width=w, height=h, data=np.stack([ramp] * 3))
    tiles = list(iter_tiles(path, GSD, TILE, OVERLAP))
    for t in tiles:
        assert t.transform.a == pytest.approx(GSD) and t.transform.e == pytest.approx(-GSD)
        r, c = t.index
        assert t.transform.c == pytest.approx(500000 + c * GSD)
        assert t.transform.f == pytest.approx(3400000 - r * GSD)
    t = tiles[0]
    native = (np.arange(0, 2 * TILE, 2) % 200 + np.arange(1, 2 * TILE, 2) % 200) / 2
    ok = (np.arange(0, 2 * TILE, 2) % 200) != 199  # skip the ramp's wrap-around
    assert np.allclose(t.image[5, ok, 0], native[ok], atol=1)
    # coarser native (20 cm) is upsampled: a tile still holds TILE pixels of 10 cm
    coarse = make_raster("coarse.tif", width=60, height=50, res=0.20)
    (tc,) = list(iter_tiles(coarse, GSD, TILE, OVERLAP))
    assert tc.transform.a == pytest.approx(GSD)
    assert tc.valid.sum() == 120 * 100 and tc.valid[:100, :120].all()
    assert (tc.window.width, tc.window.height) == pytest.approx((60, 50))


def test_rgba_input_uses_the_alpha_band_as_mask(make_raster):
    h, w = 300, 300
    mask = np.zeros((h, w), dtype=bool)
    mask[:, :150] = True
    data = np.stack([np.full((h, w), v, np.uint8) for v in (200, 100, 50)])
    path = make_raster(width=w, height=h, data=data, mask=mask, alpha=True)
    tiles = list(iter_tiles(path, GSD, TILE, OVERLAP))
    assert tiles
    assert np.array_equal(coverage(tiles, (150, 150)), mask[::2, ::2])
    for t in tiles:
        assert (t.image[t.valid] == [200, 100, 50]).all()
        assert (t.image[~t.valid] == 0).all()


def test_nodata_value_and_single_band(make_raster):
    h, w = 200, 200
    g = np.full((h, w), 77, np.uint8)
    g[:, 100:] = 0
    path = make_raster(width=w, height=h, count=1, data=g, nodata=0)
    (t,) = list(iter_tiles(path, GSD, TILE, OVERLAP))
    assert t.valid[:100, :50].all() and not t.valid[:, 50:].any()
    assert (t.image[:100, :50] == 77).all()  # gray replicated to three channels


def test_uint16_is_percentile_stretched_to_uint8(make_raster):
    h, w = 100, 120  # native 10 cm: no resampling, the stretch alone maps the values
    ramp = np.tile(np.linspace(1000, 5000, w), (h, 1)).astype(np.uint16)
    data = np.stack([ramp, ramp // 2, np.full((h, w), 3000, np.uint16)])
    path = make_raster(width=w, height=h, data=data, dtype="uint16", res=0.10)
    (t,) = list(iter_tiles(path, GSD, TILE, OVERLAP))
    red = t.image[0, :w, 0].astype(int)
    assert t.image.dtype == np.uint8
    assert red[0] == 0 and red[-1] == 255  # the 2-98 % stretch saturates the tails
    assert (np.diff(red) >= 0).all() and 100 < red[w // 2] < 155
    assert np.abs(t.image[0, :w, 1].astype(int) - red).max() <= 3  # per-band limits
    assert (t.image[:h, :w, 2] == t.image[0, 0, 2]).all()  # a constant band stays constant


def test_geographic_crs_tiles_have_the_ground_gsd(make_raster):
    # EPSG:4490 (CGCS2000 geographic) at 30 N, ~5 cm pixels
    lat, res = 30.0, 5e-7
    path = make_raster(width=600, height=600, res=res, crs="EPSG:4490", origin=(114.0, lat))
    with rasterio.open(path) as src:
        gx, gy = ground_pixel_size(src)
    geod = Geod(ellps="GRS80")
    assert gx == pytest.approx(geod.inv(114.0, lat, 114.0 + res, lat)[2], rel=1e-3)
    assert gy == pytest.approx(geod.inv(114.0, lat, 114.0, lat - res)[2], rel=1e-3)
    tiles = list(iter_tiles(path, GSD, TILE, OVERLAP))
    assert len(tiles) > 1
    t = tiles[0]
    lon0, lat0 = t.transform * (0, 0)
    lon1, lat1 = t.transform * (TILE, TILE)
    assert (lon0, lat0) == pytest.approx((114.0, lat))
    assert geod.inv(lon0, lat0, lon1, lat0)[2] == pytest.approx(TILE * GSD, rel=1e-3)
    assert geod.inv(lon0, lat0, lon0, lat1)[2] == pytest.approx(TILE * GSD, rel=1e-3)


def test_unusable_rasters_raise_one_line_input_errors(tmp_path, make_raster):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="not a readable raster"):
        list(iter_tiles(bad, GSD, TILE, OVERLAP))
    with pytest.raises(InputError, match="not found"):
        list(iter_tiles(tmp_path / "missing.tif", GSD, TILE, OVERLAP))
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8") as d:
        d.write(np.zeros((1, 10, 10), np.uint8))
    with pytest.raises(InputError, match="no georeference") as e:
        list(iter_tiles(plain, GSD, TILE, OVERLAP))
    assert "\n" not in str(e.value)


def test_an_undeclared_alpha_band_of_a_web_mosaic_masks_no_data(make_raster):
    # EPSG:3857 RGBA stitched from web tiles: band 4 is 0/255 but typed 'undefined', not alpha
    h, w = 256, 256
    data = np.full((4, h, w), 90, np.uint8)
    data[3] = 255
    data[3, 128:, :] = 0  # a missing web tile
    lat = 30.0
    y0 = 6378137 * np.log(np.tan(np.pi / 4 + np.radians(lat) / 2))
    res = 0.149
    path = make_raster(width=w, height=h, count=4, data=data, crs="EPSG:3857", res=res,
                       origin=(12_700_000.0, y0))
    ci = rasterio.enums.ColorInterp
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ci.red, ci.green, ci.blue, ci.undefined]
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ci.undefined and src.dataset_mask().all()
        gx, gy = ground_pixel_size(src)
    assert gx == pytest.approx(res * np.cos(np.radians(lat)), rel=0.01)  # 3857 units are not metres
    assert gy == pytest.approx(gx, rel=0.01)
    tiles = list(iter_tiles(path, GSD, TILE, OVERLAP))
    valid_rows = np.zeros(int(h * gy / GSD), bool)
    for t in tiles:
        assert (t.image[t.valid] == 90).all()
        rows = t.index[0] + np.nonzero(t.valid.any(1))[0]
        valid_rows[rows[rows < len(valid_rows)]] = True
    half = 128 * gy / GSD
    assert valid_rows[: int(half) - 1].all() and not valid_rows[int(half) + 1:].any()
