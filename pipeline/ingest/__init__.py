"""Ingest: register a flight's orthophoto as a Flight dict for the store.

``register_ortho`` validates the raster (readable, georeferenced, north-up) and describes it:
content-hash id, capture time, CRS, ground GSD and the valid-data footprint in the store CRS.
The photo-set ingest (issue 7) builds on the same Flight dict.
"""
from __future__ import annotations

import hashlib
import math
from datetime import datetime
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, InputError

HASH_CHUNK = 4 << 20
FOOTPRINT_MAX_PX = 1024  # long side of the decimated mask the footprint is traced on


def file_id(path: str | Path) -> str:
    """sha256 of the file's content (streamed), first 16 hex digits: a re-upload is the same flight."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:16]


def capture_time(src, path: Path) -> str:
    """TIFFTAG_DATETIME ('YYYY:MM:DD HH:MM:SS') as ISO, else the file's mtime (local time), seconds."""
    raw = (src.tags().get("TIFFTAG_DATETIME") or "").strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y:%m:%d"):
        try:
            return datetime.strptime(raw, fmt).isoformat(timespec="seconds")
        except ValueError:
            continue
    return datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")


def valid_footprint(src, store_crs: str, max_px: int = FOOTPRINT_MAX_PX):
    """Polygon/MultiPolygon of the valid-data mask, traced at a decimated resolution, in store CRS."""
    import shapely
    from pyproj import CRS, Transformer
    from rasterio.features import shapes
    from rasterio.transform import Affine

    from pipeline.tiling import ground_pixel_size, low_res_valid

    f = max(1.0, max(src.width, src.height) / max_px)
    h, w = max(1, round(src.height / f)), max(1, round(src.width / f))
    mask = low_res_valid(src, (h, w), any_valid=False)
    if not mask.any():
        mask = low_res_valid(src, (h, w), any_valid=True)
    if not mask.any():
        raise InputError(f"{src.name} holds no valid pixels (all no-data); check the export")
    t = src.transform @ Affine.scale(src.width / w, src.height / h)
    polys = [shapely.geometry.shape(g) for g, v in shapes(mask.astype(np.uint8), mask=mask, transform=t) if v]
    geom = shapely.union_all(polys)
    cell = max(abs(t.a), abs(t.e))
    geom = shapely.simplify(geom, cell, preserve_topology=True)
    src_crs, dst_crs = CRS.from_user_input(src.crs.to_wkt()), CRS.from_user_input(store_crs)
    if not src_crs.equals(dst_crs):
        b = src.bounds
        geom = shapely.segmentize(geom, max(cell * 8, math.hypot(b.right - b.left, b.top - b.bottom) / 64))
        tr = Transformer.from_crs(src_crs, dst_crs, always_xy=True)
        geom = shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        cell_m = max(ground_pixel_size(src)) * max(src.width / w, src.height / h)
        geom = shapely.make_valid(shapely.simplify(geom, cell_m, preserve_topology=True))
    return geom


def register_ortho(path: str | Path, store_crs: str, team: str | None = None) -> dict:
    """Validate an orthophoto and describe it as a Flight dict (status 'uploaded')."""
    from pyproj import CRS

    from pipeline.tiling import ground_pixel_size, open_raster

    path = Path(path).expanduser().resolve()
    try:
        projected = CRS.from_user_input(store_crs).is_projected
    except Exception:
        raise ConfigError(f"store.crs {store_crs} is not a CRS; set e.g. EPSG:4547") from None
    if not projected:
        raise ConfigError(f"store.crs {store_crs} is not a projected CRS in metres; set a projected one")
    with open_raster(path) as src:
        gx, gy = ground_pixel_size(src)
        crs = src.crs.to_string()
        captured = capture_time(src, path)
        footprint = valid_footprint(src, store_crs)
    return {
        "flight_id": file_id(path),
        "path": str(path),
        "captured_at": captured,
        "team": team,
        "source": "ortho",
        "crs": crs,
        "gsd_m": round((gx + gy) / 2, 4),
        "footprint": footprint,
        "status": "uploaded",
    }
