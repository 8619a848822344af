"""Streamed tiling: windows over the valid-data footprint, read at the processing GSD.

The processing grid starts at the raster's top-left corner and has square ground pixels of
``gsd_m`` metres (in a geographic CRS the pixel size in degrees comes from the latitude of the
raster's centre). Tiles of ``tile_px`` processing pixels step by ``tile_px - overlap_px``. Each tile
is one rasterio read of a (fractional) native window with ``out_shape``, so GDAL resamples on read
and uses overviews when they fit; the whole raster is never in memory.

Tiles whose footprint holds no valid pixel are skipped: a low-resolution valid mask (dataset mask:
internal mask, alpha band or nodata) decides which windows to read, and a tile that turns out to
be all no-data once read is dropped too. Edge tiles are padded to ``tile_px`` with invalid pixels.
The last fraction (< one processing pixel) of the right and bottom edges is not read.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.windows import Window

from pipeline.core.errors import InputError, one_line

MASK_CELLS_PER_STRIDE = 4  # low-res mask cells along one tile stride (plan resolution)
STATS_MAX_PX = 1024  # long side of the decimated read used for the uint16 stretch
BLOCK_CACHE_BYTES = 64 << 20  # GDAL block cache while tiling


@dataclass(frozen=True)
class TileWindow:
    """One planned tile: its place in the processing grid and the native window it reads."""
    row: int  # processing-grid pixel row of the tile's top-left corner
    col: int
    height: int  # processing pixels holding data (<= tile_px; the rest is padding)
    width: int
    window: Window  # native-pixel window (fractional)
    transform: Affine  # affine of the tile pixels at the processing GSD, raster CRS


@dataclass
class Tile:
    """A tile ready for the detector."""
    image: np.ndarray  # tile_px x tile_px x 3 uint8 RGB
    valid: np.ndarray  # tile_px x tile_px bool; padding is False
    transform: Affine  # pixel (col, row) top-left corner -> transform * (col, row), raster CRS
    crs: object  # rasterio CRS of the raster
    window: Window  # native window read
    index: tuple[int, int]  # (row, col) of the tile in the processing grid, in processing pixels


# ---------------------------------------------------------------- georeference
def check_georeferenced(src, path: str | Path | None = None) -> None:
    """Raise InputError unless the raster has a CRS and a north-up or rotated (not sheared)
    geotransform; tiles of a rotated raster (photo frames) get rotated tile transforms."""
    name = path or src.name
    t = src.transform
    if src.crs is None or t == Affine.identity():
        raise InputError(f"{name} has no georeference (CRS and geotransform); "
                         f"export the ortho as a GeoTIFF with its CRS",
                         zh=f"{name} 没有地理参考（坐标系与仿射参数），请导出带坐标系的 GeoTIFF 正射影像")
    if abs(t.a * t.b + t.d * t.e) > 1e-6 * math.hypot(t.a, t.d) * math.hypot(t.b, t.e):
        raise InputError(f"{name} is sheared (its pixel axes are not perpendicular); warp it to a "
                         f"north-up grid first (gdalwarp) and try again",
                         zh=f"{name} 的像素轴不垂直（存在剪切），请先用 gdalwarp 重采样为正北朝上后重试")


def ground_pixel_size(src) -> tuple[float, float]:
    """Native pixel size on the ground in metres (x, y), measured geodesically at the raster's centre.

    Right for any CRS: geographic (degrees) and projections whose map units are not ground metres
    (EPSG:3857: 1 unit = cos(latitude) m). On a projected grid whose scale is within 1 % of true
    (UTM, Gauss-Krüger) the grid size in metres is used as is, so 5 cm -> 10 cm stays a factor 2.
    """
    from pyproj import CRS, Transformer

    check_georeferenced(src)
    crs = CRS.from_user_input(src.crs.to_wkt())
    t = src.transform
    n = 16  # measure over n pixels from the centre
    col, row = src.width / 2, src.height / 2
    pts = [t * (col, row), t * (col + n, row), t * (col, row + n)]
    if not crs.is_geographic:
        to_geo = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        pts = [to_geo.transform(x, y) for x, y in pts]
    geod = crs.get_geod()
    assert geod is not None                 # a geographic or projected CRS has an ellipsoid
    (lon0, lat0), (lon1, lat1), (lon2, lat2) = pts
    gx = geod.inv(lon0, lat0, lon1, lat1)[2] / n
    gy = geod.inv(lon0, lat0, lon2, lat2)[2] / n
    if not (gx > 0 and gy > 0):
        raise InputError(f"{src.name}: cannot measure the ground pixel size in {src.crs}; "
                         f"reproject the ortho to a projected CRS",
                         zh=f"{src.name} 无法计算地面分辨率，请将正射影像重投影为投影坐标系")
    if not crs.is_geographic and crs.axis_info:
        f = crs.axis_info[0].unit_conversion_factor
        grid = math.hypot(t.a, t.d) * f, math.hypot(t.b, t.e) * f  # rotated grids too
        if abs(gx / grid[0] - 1) < 0.01 and abs(gy / grid[1] - 1) < 0.01:
            return grid
    return gx, gy


def processing_pixel(src, gsd_m: float) -> tuple[float, float]:
    """Processing pixel size in raster CRS units (x, y), both positive."""
    gx, gy = ground_pixel_size(src)
    t = src.transform
    return math.hypot(t.a, t.d) * gsd_m / gx, math.hypot(t.b, t.e) * gsd_m / gy


# ---------------------------------------------------------------- planning
def implicit_alpha(src) -> int | None:
    """A last band that is an alpha band in all but name, or None.

    Mosaics stitched from web tiles often carry a 4th (or 2nd) band of only 0/255 whose colour
    interpretation is 'undefined', so GDAL does not use it as a mask. Such a band (colour
    interpretation undefined, every value 0 or the dtype's maximum in a decimated read) is taken
    as alpha. A band marked alpha, an internal mask or a nodata value are handled by GDAL itself.
    """
    ci = list(src.colorinterp)
    if src.count not in (2, 4) or ci[-1] != ColorInterp.undefined or src.nodata is not None:
        return None
    if any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in src.mask_flag_enums):
        return None
    dt = np.dtype(src.dtypes[-1])
    if dt.kind != "u":
        return None
    f = max(1.0, max(src.width, src.height) / STATS_MAX_PX)
    shape = (max(1, int(src.height / f)), max(1, int(src.width / f)))
    v = np.unique(src.read(src.count, out_shape=shape, resampling=Resampling.nearest))
    return src.count if set(v.tolist()) <= {0, np.iinfo(dt).max} else None


def read_valid(src, alpha: int | None, shape: tuple[int, int], window: Window | None = None,
               resampling: Resampling = Resampling.nearest) -> np.ndarray:
    """The valid-data mask (0 = no data) of a window at ``shape``: GDAL's dataset mask, or
    the implicit alpha band."""
    if alpha is None:
        return src.dataset_mask(window=window, out_shape=shape, resampling=resampling)
    return src.read(alpha, window=window, out_shape=shape, resampling=resampling)


def low_res_valid(src, shape: tuple[int, int], any_valid: bool = True,
                  alpha: int | None | bool = False) -> np.ndarray:
    """Valid-data mask of the whole raster at a decimated ``shape`` (rows, cols).

    ``any_valid``: a cell is valid if any of its pixels is (average > 0); otherwise if most are.
    Uses mask overviews when present. ``alpha=False`` looks for an implicit alpha band.
    """
    if alpha is False:
        alpha = implicit_alpha(src)
    m = read_valid(src, alpha, shape, resampling=Resampling.average)
    hi = 255 if m.dtype == np.uint8 else np.iinfo(m.dtype).max
    return m > 0 if any_valid else m >= (hi + 1) // 2


def plan_windows(src, gsd_m: float, tile_px: int, overlap_px: int) -> list[TileWindow]:
    """Tile windows at the processing GSD over the raster's valid-data footprint (row-major)."""
    check_georeferenced(src)
    if overlap_px >= tile_px:
        raise InputError(f"overlap_px ({overlap_px}) must be smaller than tile_px ({tile_px})")
    px, py = processing_pixel(src, gsd_m)
    t = src.transform
    na, ne = math.hypot(t.a, t.d), math.hypot(t.b, t.e)  # native pixel size (rotated grids too)
    sx, sy = _snap(px / na), _snap(py / ne)  # native pixels per processing pixel
    grid_w = int(math.floor(src.width / sx + 1e-6))
    grid_h = int(math.floor(src.height / sy + 1e-6))
    if grid_w < 1 or grid_h < 1:
        return []
    stride = tile_px - overlap_px
    base = t @ Affine.scale(sx, sy)  # processing pixel -> map; north-up or rotated (photo frames)

    cell = max(1, stride // MASK_CELLS_PER_STRIDE)  # processing pixels per mask cell
    mh, mw = max(1, math.ceil(grid_h / cell)), max(1, math.ceil(grid_w / cell))
    mask = low_res_valid(src, (mh, mw), alpha=implicit_alpha(src))
    mask = _dilate(mask)
    cy, cx = src.height / mh, src.width / mw  # native pixels per mask cell

    def starts(n: int) -> list[int]:
        if n <= tile_px:
            return [0]
        return list(range(0, n - overlap_px, stride))

    out = []
    for r in starts(grid_h):
        for c in starts(grid_w):
            h, w = min(tile_px, grid_h - r), min(tile_px, grid_w - c)
            if h <= 0 or w <= 0:
                continue
            win = Window(c * sx, r * sy, w * sx, h * sy)
            r0, r1 = int(win.row_off // cy), math.ceil(((win.row_off + win.height) / cy))
            c0, c1 = int(win.col_off // cx), math.ceil(((win.col_off + win.width) / cx))
            if not mask[r0:r1, c0:c1].any():
                continue
            out.append(TileWindow(r, c, h, w, win, base @ Affine.translation(c, r)))
    return out


def windows_at(src, gsd_m: float, tile_px: int, points: np.ndarray) -> list[TileWindow]:
    """One tile window centred on each point (raster CRS; x, y rows), kept inside the raster, on
    the same processing grid as ``plan_windows``; points in one window share it."""
    check_georeferenced(src)
    px, py = processing_pixel(src, gsd_m)
    t = src.transform
    na, ne = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    sx, sy = _snap(px / na), _snap(py / ne)
    grid_w = int(math.floor(src.width / sx + 1e-6))
    grid_h = int(math.floor(src.height / sy + 1e-6))
    if grid_w < 1 or grid_h < 1 or not len(points):
        return []
    base = t @ Affine.scale(sx, sy)
    inv = ~base
    out, seen = [], set()
    for x, y in np.asarray(points, dtype=float).reshape(-1, 2):
        c, r = inv * (x, y)
        r0 = int(min(max(round(r - tile_px / 2), 0), max(grid_h - tile_px, 0)))
        c0 = int(min(max(round(c - tile_px / 2), 0), max(grid_w - tile_px, 0)))
        if (r0, c0) in seen or not (0 <= r < grid_h and 0 <= c < grid_w):
            continue
        seen.add((r0, c0))
        h, w = min(tile_px, grid_h - r0), min(tile_px, grid_w - c0)
        out.append(TileWindow(r0, c0, h, w, Window(c0 * sx, r0 * sy, w * sx, h * sy),
                              base @ Affine.translation(c0, r0)))
    return out


def _snap(ratio: float) -> float:
    """Snap a resampling ratio within float noise of an integer or of 1/integer to it exactly."""
    for r in (ratio, 1 / ratio):
        n = round(r)
        if n >= 1 and abs(r - n) < 1e-9 * n:
            return float(n) if r is ratio else 1 / n
    return ratio


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation (numpy only)."""
    p = np.pad(mask, 1)
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(3):
        for dx in range(3):
            out |= p[dy:dy + h, dx:dx + w]
    return out


# ---------------------------------------------------------------- reading
def part_polygon(src, fractions: Sequence[float], crs=None):
    """The part ``(left, top, right, bottom)`` of a raster, as fractions of its width and height,
    as a polygon in ``crs`` (default: the raster's own)."""
    import shapely
    from rasterio.warp import transform_geom

    left, top, right, bottom = (float(f) for f in fractions)
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise InputError(f"part {list(fractions)} is not left, top, right, bottom fractions of the "
                         f"raster (0 <= left < right <= 1, 0 <= top < bottom <= 1)")
    c = np.array([left, right, right, left]) * src.width
    r = np.array([top, top, bottom, bottom]) * src.height
    xs, ys = src.transform * (c, r)
    poly = shapely.Polygon(np.c_[xs, ys])
    if crs is None or crs == src.crs:
        return poly
    dense = shapely.segmentize(poly, max(poly.length / 400, 1e-9))      # straight here, curved there
    return shapely.geometry.shape(transform_geom(src.crs, crs, shapely.geometry.mapping(dense)))


def rgb_bands(src) -> list[int]:
    """Band indexes (1-based) read as R, G, B: colour interpretation first, else the first bands."""
    ci = list(src.colorinterp)
    if all(c in ci for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return [ci.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)]
    alpha = implicit_alpha(src)
    data = [i + 1 for i, c in enumerate(ci) if c != ColorInterp.alpha and i + 1 != alpha] or [1]
    return data[:3] if len(data) >= 3 else [data[0]] * 3


def stretch_limits(src, bands: Sequence[int], percentiles: tuple[float, float]) -> np.ndarray | None:
    """Per-band (low, high) of the percentile stretch for non-uint8 rasters (None for uint8).

    Computed once over the valid pixels of a decimated read (overviews when present), so every
    tile gets the same stretch.
    """
    if src.dtypes[bands[0] - 1] == "uint8":
        return None
    f = max(1.0, max(src.width, src.height) / STATS_MAX_PX)
    shape = (max(1, int(src.height / f)), max(1, int(src.width / f)))
    uniq = sorted(set(bands))
    data = src.read(uniq, out_shape=(len(uniq), *shape), resampling=Resampling.nearest)
    valid = read_valid(src, implicit_alpha(src), shape) > 0
    lims = np.zeros((len(bands), 2), dtype=np.float64)
    for i, b in enumerate(bands):
        v = data[uniq.index(b)][valid].astype(np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            lims[i] = (0.0, 1.0)
            continue
        lo, hi = np.percentile(v, percentiles)
        lims[i] = (lo, hi if hi > lo else lo + 1.0)
    return lims


def to_uint8(data: np.ndarray, limits: np.ndarray | None) -> np.ndarray:
    """(3, h, w) array -> (h, w, 3) uint8, stretching with per-band limits when given."""
    if limits is None:
        return np.ascontiguousarray(np.moveaxis(data, 0, -1))
    lo = limits[:, 0].reshape(-1, 1, 1)
    hi = limits[:, 1].reshape(-1, 1, 1)
    x = (data.astype(np.float32) - lo) * (255.0 / (hi - lo))
    x = np.nan_to_num(x, nan=0.0, posinf=255.0, neginf=0.0)
    return np.ascontiguousarray(np.moveaxis(np.clip(x, 0, 255).astype(np.uint8), 0, -1))


def read_tile(src, tw: TileWindow, tile_px: int, bands: Sequence[int],
              limits: np.ndarray | None, alpha: int | None = None) -> Tile | None:
    """Read one planned window at the processing GSD; None if it holds no valid pixel."""
    shape = (tw.height, tw.width)
    valid = read_valid(src, alpha, shape, window=tw.window) > 0
    if not valid.any():
        return None
    down = tw.window.width > tw.width * 1.001  # native finer than processing: average on read
    uniq = sorted(set(bands))
    data = src.read(uniq, window=tw.window, out_shape=(len(uniq), *shape),
                    resampling=Resampling.average if down else Resampling.bilinear)
    data = data[[uniq.index(b) for b in bands]]
    rgb = to_uint8(data, limits)
    image = np.zeros((tile_px, tile_px, 3), dtype=np.uint8)
    mask = np.zeros((tile_px, tile_px), dtype=bool)
    image[:tw.height, :tw.width] = rgb
    mask[:tw.height, :tw.width] = valid
    image[~mask] = 0
    return Tile(image, mask, tw.transform, src.crs, tw.window, (tw.row, tw.col))


def open_raster(path: str | Path):
    """rasterio.open with one-line InputErrors for unreadable or ungeoreferenced files."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"raster {p} not found; check the path",
                         zh=f"找不到影像 {p.name}，请检查路径")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            src = rasterio.open(p)
    except rasterio.errors.RasterioIOError:
        raise InputError(f"{p} is not a readable raster; export the ortho as GeoTIFF",
                         zh=f"{p.name} 不是可读的影像，请导出为 GeoTIFF") from None
    try:
        check_georeferenced(src, p)
    except InputError:
        src.close()
        raise
    return src


def iter_tiles(path: str | Path, gsd_m: float, tile_px: int, overlap_px: int,
               stretch_percentiles: tuple[float, float] = (2.0, 98.0),
               windows: list[TileWindow] | None = None) -> Iterator[Tile]:
    """Yield the tiles of ``path`` that hold valid pixels, one window read at a time.

    GDAL's block cache is capped (``BLOCK_CACHE_BYTES``; GDAL's default is 5 % of RAM) so memory
    stays flat however large the ortho: enough to keep the block row a tile row overlaps.
    """
    with rasterio.Env(GDAL_CACHEMAX=BLOCK_CACHE_BYTES), open_raster(path) as src:
        plan = plan_windows(src, gsd_m, tile_px, overlap_px) if windows is None else windows
        bands = rgb_bands(src)
        limits = stretch_limits(src, bands, stretch_percentiles)
        alpha = implicit_alpha(src)
        for tw in plan:
            try:
                tile = read_tile(src, tw, tile_px, bands, limits, alpha)
            except rasterio.errors.RasterioIOError as e:
                raise InputError(f"{path}: cannot read window at row {tw.row} col {tw.col} "
                                 f"({one_line(e, 200)}); the file may be truncated",
                         zh=f"{Path(path).name} 第 {tw.row} 行第 {tw.col} 列的影像块无法读取，文件可能不完整") from None
            if tile is not None:
                yield tile
