"""Geographic helpers every layer uses: centroids in WGS84, and the Chinese map datums (GCJ-02 for
高德, BD-09 for 百度) with the 导航 links an officer's phone opens."""
from __future__ import annotations

import math
from urllib.parse import quote

import numpy as np


def to_wgs84_points(gdf, crs: str) -> np.ndarray:
    """Centroid lon/lat (EPSG:4326) of every row, shape (n, 2)."""
    import geopandas as gpd
    import shapely

    if not len(gdf):
        return np.zeros((0, 2))
    pts = gpd.GeoSeries(shapely.centroid(np.asarray(gdf.geometry.values, dtype=object)), crs=gdf.crs or crs)
    p = pts.to_crs("EPSG:4326")
    return np.column_stack([p.x.to_numpy(), p.y.to_numpy()])


_A = 6378245.0
_EE = 0.00669342162296594323


def out_of_china(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return (lon < 72.004) | (lon > 137.8347) | (lat < 0.8293) | (lat > 55.8271)


def _dlat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x))
    r += (20.0 * np.sin(6.0 * x * math.pi) + 20.0 * np.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * np.sin(y * math.pi) + 40.0 * np.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    r += (160.0 * np.sin(y / 12.0 * math.pi) + 320.0 * np.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    return r


def _dlon(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x))
    r += (20.0 * np.sin(6.0 * x * math.pi) + 20.0 * np.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * np.sin(x * math.pi) + 40.0 * np.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    r += (150.0 * np.sin(x / 12.0 * math.pi) + 300.0 * np.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    return r


def wgs84_to_gcj02(lon, lat):
    """WGS84 (≈ CGCS2000) lon/lat → GCJ-02 (the standard published formula; points
    outside China are returned unchanged). Vectorised over numpy arrays."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    dlat = _dlat(lon - 105.0, lat - 35.0)
    dlon = _dlon(lon - 105.0, lat - 35.0)
    rad = lat / 180.0 * math.pi
    magic = 1 - _EE * np.sin(rad) ** 2
    sq = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * sq) * math.pi)
    dlon = (dlon * 180.0) / (_A / sq * np.cos(rad) * math.pi)
    outside = out_of_china(lon, lat)
    return np.where(outside, lon, lon + dlon), np.where(outside, lat, lat + dlat)


def gcj02_to_bd09(lon, lat):
    """GCJ-02 lon/lat → BD-09 (百度), the published formula. Vectorised."""
    x, y = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    k = math.pi * 3000.0 / 180.0
    z = np.sqrt(x * x + y * y) + 0.00002 * np.sin(y * k)
    theta = np.arctan2(y, x) + 0.000003 * np.cos(x * k)
    return z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006


def navigation_links(lon: float, lat: float, name: str) -> dict[str, str]:
    """导航 links to a WGS84 point: 高德 (GCJ-02), 百度 (BD-09), the phone's own map (geo:, WGS84)."""
    glon, glat = (float(v) for v in wgs84_to_gcj02(lon, lat))
    blon, blat = (float(v) for v in gcj02_to_bd09(glon, glat))
    q = quote(name)
    return {"amap": f"https://uri.amap.com/marker?position={glon:.6f},{glat:.6f}&name={q}&coordinate=gaode"
                    f"&callnative=1",
            "baidu": f"https://api.map.baidu.com/marker?location={blat:.6f},{blon:.6f}&title={q}&content={q}"
                     f"&coord_type=bd09ll&output=html&src=lianwei.patrol",
            "geo": f"geo:{lat:.6f},{lon:.6f}?q={lat:.6f},{lon:.6f}({q})"}


def shift_gcj02(geoms):
    """Shapely geometries (EPSG:4326) shifted to GCJ-02."""
    import shapely

    def f(xy: np.ndarray) -> np.ndarray:
        x, y = wgs84_to_gcj02(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])
    return shapely.transform(geoms, f)
