"""A flight's heights: the DSM (surface model) a photogrammetry tool writes beside the orthophoto,
and optionally its DTM (terrain model), checked before the flight records them.

DJI Terra, FlightHub 2 mapping, Pix4D and OpenDroneMap / WebODM all write them as single-band float
GeoTIFFs in metres. ``is_height_raster`` tells one from an ortho by content (one float band), so a
folder or zip of an export may hold them beside the ortho; ``dsm_and_dtm`` says which is which
(names first: dsm / dtm; else the DTM is the lower). ``check_heights`` refuses, one line
each and nothing stored: not float, no CRS, a ground pixel outside ``heights.gsd_range_m``, no
overlap with the flight (a DSM of another place), absurd or mostly missing values, a DTM above
its DSM.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError
from pipeline.ingest.raster import check_name, shown, sniff

FLOAT_DTYPES = ("float32", "float64")
ELEVATION_RANGE_M = (-450.0, 9000.0)     # below the Dead Sea shore, above Everest: not heights in metres
MIN_RELIEF_LIMIT_M = 150.0               # one flight's highest less lowest point may reach this, or its
                                         # diagonal (a mean slope of 45° over the whole flight)
MIN_OVERLAP = 0.5                        # share of the flight's footprint the DSM must cover
MIN_VALID = 0.2                          # share of the DSM's pixels over the flight holding a value
SAMPLE_PX = 512                          # long side of the decimated read the values are checked on


def is_height_raster(path: str | Path) -> bool:
    """True for a TIFF of one float band (a DSM or DTM), False for anything else."""
    import rasterio

    try:
        if sniff(path) != "tiff":
            return False
        with rasterio.open(path) as src:
            return src.count == 1 and src.dtypes[0] in FLOAT_DTYPES
    except (InputError, rasterio.errors.RasterioIOError):
        return False


def dsm_and_dtm(paths: list[Path]) -> tuple[Path | None, Path | None]:
    """Which of a flight's height rasters is the DSM and which the DTM: by name (DJI Terra and ODM
    write dsm.tif / dtm.tif, Pix4D *_dsm.tif / *_dtm.tif), else the lower one is the terrain."""
    if not paths:
        return None, None
    named = {p: ("dtm" if any(k in p.name.lower() for k in ("dtm", "dem_terrain", "terrain"))
                 else "dsm" if "dsm" in p.name.lower() else None) for p in paths}
    dsm = [p for p in paths if named[p] == "dsm"]
    dtm = [p for p in paths if named[p] == "dtm"]
    rest = [p for p in paths if named[p] is None]
    if len(paths) == 1:
        return (None, paths[0]) if dtm else (paths[0], None)
    if len(dsm) == 1 and len(dtm) == 1 and not rest:
        return dsm[0], dtm[0]
    if len(paths) == 2:
        a, b = sorted(paths, key=_top_height)
        return b, a
    raise InputError(f"{len(paths)} height rasters ({', '.join(shown(p.name) for p in paths[:4])}); "
                     f"give one DSM and at most one DTM",
                     zh=f"有 {len(paths)} 个高程栅格，请只提供一个 DSM 和至多一个 DTM")


def _top_height(path: Path) -> float:
    """The 95th percentile of a height raster (roofs and crowns lift a surface model's)."""
    with _open(path) as src:
        v = _sample(src)
    return float(np.percentile(v, 95)) if v.size else float("nan")


def _open(path: Path):
    import rasterio

    check_name(path)
    name = shown(path.name)
    if not path.is_file():
        raise InputError(f"height raster {name} not found; check the path", zh=f"找不到高程文件 {name}，请检查路径")
    if sniff(path) != "tiff":
        raise InputError(f"{name} is not a GeoTIFF; give the DSM/DTM GeoTIFF the photogrammetry tool wrote",
                         zh=f"{name} 不是 GeoTIFF，请提供建模软件导出的 DSM/DTM GeoTIFF")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError:
        raise InputError(f"{name} cannot be read as a raster; export the DSM again",
                         zh=f"{name} 无法读取，请重新导出 DSM") from None


def _sample(src) -> np.ndarray:
    """The raster's valid values on a decimated grid (overviews when present)."""
    return _read_sample(src)[0]


def _read_sample(src) -> tuple[np.ndarray, int]:
    """(the valid values, the pixels read) of the raster on a decimated grid (overviews when present)."""
    k = max(1, int(np.ceil(max(src.width, src.height) / SAMPLE_PX)))
    a = src.read(1, out_shape=(max(1, src.height // k), max(1, src.width // k)), masked=True)
    v = a.compressed().astype(np.float64)
    return v[np.isfinite(v)], a.size


def check_height_raster(path: str | Path, kind: str, flight: dict, settings) -> dict:
    """Check one DSM or DTM (``kind``) against its flight; returns its facts (path, crs, gsd_m,
    overlap, range). InputError (one line, Chinese beside) on the first thing wrong."""
    import shapely
    from pyproj import CRS
    from rasterio.warp import transform_bounds

    # lazy: loads rasterio and pyproj only when used
    from pipeline.detection.tiling import ground_pixel_size

    path = Path(path).expanduser()
    name = shown(path.name)
    label, label_zh = ("DSM", "DSM") if kind == "dsm" else ("DTM", "DTM")
    with _open(path) as src:
        if src.count != 1 or src.dtypes[0] not in FLOAT_DTYPES:
            raise InputError(f"{name} is not a {label}: {src.count} band(s) of {src.dtypes[0]}, not one band of "
                             f"float heights in metres; export the {label} as a float GeoTIFF",
                             zh=f"{name} 不是 {label_zh}（{src.count} 个 {src.dtypes[0]} 波段，而非一个浮点高程波段），"
                                f"请导出浮点型 GeoTIFF")
        if src.crs is None or src.transform.is_identity:
            raise InputError(f"{name} has no coordinate system; export the {label} georeferenced, in the ortho's CRS",
                             zh=f"{name} 没有坐标系，请导出带坐标的 {label_zh}（与正射影像同一坐标系）")
        gx, gy = ground_pixel_size(src)
        gsd = (gx + gy) / 2
        lo, hi = settings.heights.gsd_range_m
        if not lo <= gsd <= hi:
            raise InputError(f"{name}: ground pixel {gsd:.3g} m is outside {lo:g}–{hi:g} m (heights.gsd_range_m); "
                             f"export the {label} at a resolution in that range",
                             zh=f"{name} 的地面分辨率 {gsd:.3g} m 超出 {lo:g}–{hi:g} m，请按此范围重新导出")
        store_crs = settings.store.crs
        bounds = transform_bounds(src.crs, CRS.from_user_input(store_crs).to_wkt(), *src.bounds)
        footprint = flight.get("footprint")
        overlap = 1.0
        if footprint is not None and footprint.area > 0:
            overlap = shapely.box(*bounds).intersection(footprint).area / footprint.area
            if overlap < MIN_OVERLAP:
                where = "does not overlap" if overlap == 0 else f"covers only {overlap:.0%} of"
                raise InputError(f"{name} {where} the flight (a {label} of another place?); give the {label} "
                                 f"exported with this orthophoto",
                                 zh=f"{name} " + ("与航线不重叠" if overlap == 0 else f"只覆盖航线的 {overlap:.0%}")
                                 + f"（是否为其他地方的 {label_zh}？），请提供与本正射影像同批导出的 {label_zh}")
        v, total = _read_sample(src)
        if v.size < MIN_VALID * total * min(1.0, overlap):
            raise InputError(f"{name} holds values in only {v.size / total:.0%} of its pixels (nodata not set, "
                             f"or an empty export?); export the {label} again",
                             zh=f"{name} 只有 {v.size / total:.0%} 的像素有高程值（未设置无效值或导出为空？），请重新导出")
        p1, p99 = np.percentile(v, [1, 99])
        diagonal = math.hypot(src.width * gx, src.height * gy)
        if p1 < ELEVATION_RANGE_M[0] or p99 > ELEVATION_RANGE_M[1] or p99 - p1 > max(MIN_RELIEF_LIMIT_M, diagonal):
            raise InputError(f"{name}: heights {p1:,.1f} to {p99:,.1f} m are not plausible elevations in metres "
                             f"(centimetres, feet, or nodata not set?); export the {label} in metres",
                             zh=f"{name} 的高程 {p1:,.1f}～{p99:,.1f} m 不合理（单位为厘米或英尺，或未设置无效值？），"
                                f"请以米为单位重新导出")
        return {"path": str(path.resolve()), "crs": src.crs.to_string(), "gsd_m": round(gsd, 4),
                "overlap": round(overlap, 3), "median_m": round(float(np.median(v)), 2),
                "p95_m": round(float(np.percentile(v, 95)), 2)}


def check_heights(flight: dict, settings, dsm: str | Path | None, dtm: str | Path | None = None) -> dict:
    """The flight's heights checked: {'dsm': path, 'dtm': path or None} (empty without a DSM)."""
    if dsm is None:
        if dtm is not None:
            raise InputError(f"{shown(Path(dtm).name)}: a DTM alone gives no heights; give the DSM with it",
                             zh="只有 DTM 无法得到建筑高度，请同时提供 DSM")
        return {}
    d = check_height_raster(dsm, "dsm", flight, settings)
    out = {"dsm": d["path"], "dtm": None}
    if dtm is not None:
        t = check_height_raster(dtm, "dtm", flight, settings)
        if t["p95_m"] > d["p95_m"] + 0.5:        # roofs and crowns: the surface's top is the higher
            raise InputError(f"{shown(Path(dtm).name)} stands above {shown(Path(dsm).name)} (95th percentile "
                             f"{t['p95_m']} m against {d['p95_m']} m): DSM and DTM swapped?; give the surface model "
                             f"as the DSM",
                             zh=f"{shown(Path(dtm).name)} 高于 DSM（DSM 与 DTM 是否颠倒？），请确认后重新提供")
        out["dtm"] = t["path"]
    return out
