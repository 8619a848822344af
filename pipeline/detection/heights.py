"""Heights: what a flight's DSM says about its detections (docs/HEIGHTS.md).

- ``read_heights``: the DSM read at ``heights.gsd_m``, less the ground: the flight's DTM when it has
  one, else the ground filtered out of the DSM (``derive_ground``: the lowest point of every metre,
  a morphological opening wider than the largest building, smoothed);
- ``measure``: per outline (eroded ``heights.edge_m`` from its smeared edge) the top (90th
  percentile of the height above ground: ``height_m``) and the median (does it stand? and its
  storeys: ``floors_est``, ``floors_of``);
- ``apply_heights``: every detection measured; one whose median stands lower than
  ``heights.min_structure_m`` is flat ground read as a roof and dropped, unless its class may be
  flat (``heights.flat_classes``: a site or a foundation is still a 违法建设 to stop); elevated,
  smooth, not green regions no detection covers become candidates (``source`` 'height');
- ``rise_since``: how much higher each detection stands than in the latest earlier flight with
  heights (加层 when ≥ ``heights.storey_rise_m``).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
import shapely.ops
from rasterio.enums import Resampling
from rasterio.fill import fillnodata
from rasterio.warp import reproject

from pipeline.core.values import is_missing

HEIGHT_COLUMNS = ("height_m", "floors_est", "source", "rise_m")
HEIGHT_SOURCE = "height"


@dataclass
class Heights:
    """Height above ground on a grid (NaN: unknown), its roughness, and where the grid lies."""
    above: np.ndarray
    rough: np.ndarray
    transform: Any
    crs: Any
    gsd: float

    def window(self, bounds: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1) of the grid cells under map ``bounds``, clipped to the grid."""
        inv = ~self.transform
        xs, ys = zip(*(inv * (x, y) for x in bounds[0::2] for y in bounds[1::2]))
        h, w = self.above.shape
        return (max(0, int(math.floor(min(ys)))), min(h, int(math.ceil(max(ys))) + 1),
                max(0, int(math.floor(min(xs)))), min(w, int(math.ceil(max(xs))) + 1))


def derive_ground(dsm: np.ndarray, gsd: float, window_m: float) -> np.ndarray:
    """The ground under a DSM (NaN: no data): the lowest point of every metre, opened with a window of
    ``window_m`` (wider than the largest building, so no roof survives it), smoothed over 5 m and
    brought back to the DSM's grid. A plane or a valley survives an opening exactly; a hill top or a
    terrace edge narrower than the window is cut (heights read too high there: docs/HEIGHTS.md)."""
    k = max(1, int(round(1.0 / gsd)))
    h, w = dsm.shape
    hh, ww = -(-h // k) * k, -(-w // k) * k
    padded = np.full((hh, ww), np.inf, np.float32)
    padded[:h, :w] = np.where(np.isfinite(dsm), dsm, np.inf)
    coarse = padded.reshape(hh // k, k, ww // k, k).min(axis=(1, 3))
    known = np.isfinite(coarse)
    if not known.any():
        return np.full_like(dsm, np.nan)
    coarse = np.where(known, coarse, 0).astype(np.float32)
    coarse = fillnodata(coarse, mask=known.astype(np.uint8), max_search_distance=max(coarse.shape), smoothing_iterations=0)
    size = max(3, int(round(window_m * k * gsd)) | 1)
    kernel = np.ones((size, size), np.uint8)
    ground = cv2.morphologyEx(coarse, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_REPLICATE)
    ground = cv2.blur(ground, (5, 5), borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(ground, (ww, hh), interpolation=cv2.INTER_LINEAR)[:h, :w]


def roughness(above: np.ndarray, gsd: float) -> np.ndarray:
    """Mean absolute departure from the surface smoothed over a metre (m): tree crowns are rough,
    roofs (flat or pitched planes) are not."""
    filled = np.nan_to_num(above, nan=0.0).astype(np.float32)
    sigma = max(0.5, 0.75 / gsd)
    dev = np.abs(filled - cv2.GaussianBlur(filled, (0, 0), sigma))
    k = max(3, int(round(1.0 / gsd)) | 1)
    return cv2.blur(dev, (k, k))


def read_heights(dsm_path: str | Path, dtm_path: str | Path | None, settings, bounds=None) -> Heights:
    """The height above ground of a flight at ``heights.gsd_m`` (the DSM's own pixel when coarser);
    ``bounds`` (the DSM's CRS): only there, read with a margin of the ground filter's window."""
    from rasterio.windows import Window, from_bounds

    hs = settings.heights
    with rasterio.open(dsm_path) as src:
        win = Window(0, 0, src.width, src.height)
        if bounds is not None:
            pad = hs.ground_window_m
            want = from_bounds(bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad, src.transform)
            win = want.round_offsets().round_lengths().intersection(win)
        native = abs(src.transform.a)
        k = max(1.0, hs.gsd_m / native) if native > 0 else 1.0
        shape = (max(1, int(round(win.height / k))), max(1, int(round(win.width / k))))
        dsm = src.read(1, window=win, out_shape=shape, masked=True,
                       resampling=Resampling.average if k > 1 else Resampling.nearest)
        wt = src.window_transform(win)
        transform = wt * wt.scale(win.width / shape[1], win.height / shape[0])
        crs = src.crs
    surface = np.where(np.ma.getmaskarray(dsm), np.nan, dsm.filled(np.nan)).astype(np.float32)
    surface[~np.isfinite(surface)] = np.nan
    gsd = abs(transform.a)
    if dtm_path:
        ground = np.full(shape, np.nan, np.float32)
        with rasterio.open(dtm_path) as src:
            reproject(rasterio.band(src, 1), ground, dst_transform=transform, dst_crs=crs, dst_nodata=np.nan,
                      resampling=Resampling.bilinear)
        known = np.isfinite(ground)
        if known.any() and not known.all():
            ground = fillnodata(np.nan_to_num(ground), mask=known.astype(np.uint8), max_search_distance=200)
    else:
        ground = derive_ground(surface, gsd, hs.ground_window_m)
    above = (surface - ground).astype(np.float32)
    return Heights(above, roughness(above, gsd), transform, crs, gsd)


def _mask(hm: Heights, geom) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    win = hm.window(geom.bounds)
    r0, r1, c0, c1 = win
    if r0 >= r1 or c0 >= c1:
        return None
    inv = ~hm.transform
    mask = np.zeros((r1 - r0, c1 - c0), np.uint8)
    for g in getattr(geom, "geoms", [geom]):
        ring = np.array([inv * xy for xy in g.exterior.coords]) - [c0, r0]
        cv2.fillPoly(mask, [np.round(ring * 8).astype(np.int32)], 1, cv2.LINE_8, 3)
    return win, mask.astype(bool)


def measure(geoms, hm: Heights, edge_m: float) -> pd.DataFrame:
    """Per outline (in ``hm``'s CRS): top (p90) and median of the height above ground inside
    it, eroded ``edge_m`` (less for a small outline); NaN where the DSM holds too little there."""
    rows = []
    for g in geoms:
        inner = g.buffer(-edge_m) if g is not None and not g.is_empty else None
        if inner is None or inner.is_empty or inner.area < 1.0:
            inner = g.buffer(-edge_m / 2) if g is not None and not g.is_empty else None
        if inner is None or inner.is_empty:
            inner = g
        m = _mask(hm, inner) if inner is not None and not inner.is_empty else None
        vals = np.zeros(0, np.float32)
        if m is not None:
            (r0, r1, c0, c1), mask = m
            vals = hm.above[r0:r1, c0:c1][mask]
            vals = vals[np.isfinite(vals)]
            if vals.size < max(3, 0.3 * mask.sum()):
                vals = np.zeros(0, np.float32)
        if vals.size:
            med, p90 = np.percentile(vals, [50, 90])
            rows.append((float(p90), float(med)))
        else:
            rows.append((np.nan, np.nan))
    return pd.DataFrame(rows, columns=["top", "median"])


ROOF_ALLOWANCE_M = 0.8     # half a village roof's pitch rise, or a flat roof's slab above its top floor


def floors_of(median: float, storey_m: float) -> int:
    """Storeys of a structure whose roof stands ``median`` metres above the ground at its middle: the
    middle of a pitched roof lies half its rise above the eaves, a flat slab a little above the top
    storey; less ``ROOF_ALLOWANCE_M``, in storeys. The median, not a lower quantile: a lower annex
    (a one-storey kitchen beside three storeys) does not pull the house down unless it is most of it."""
    return max(1, int(round((median - ROOF_ALLOWANCE_M) / storey_m)))


def _floors(medians, storey_m: float, min_structure_m: float) -> list:
    """``floors_of`` of each median; None where it is unknown or the structure does not stand."""
    return [floors_of(med, storey_m) if np.isfinite(med) and med >= min_structure_m else None for med in medians]


def _green_share(src, geom_ortho_crs, gsd: float) -> float:
    """Share of the outline's pixels on the open ortho ``src`` whose colour is vegetation (excess
    green); 0 without an ortho or colour."""
    if src is None or src.count < 3:
        return 0.0
    from rasterio.windows import from_bounds

    win = from_bounds(*geom_ortho_crs.bounds, transform=src.transform).round_offsets().round_lengths()
    k = max(1.0, gsd / abs(src.transform.a))
    shape = (3, max(1, int(win.height / k)), max(1, int(win.width / k)))
    rgb = src.read([1, 2, 3], window=win, out_shape=shape, boundless=True, fill_value=0).astype(np.float32)
    total = rgb.sum(axis=0) + 1e-6
    r, g, b = rgb / total
    lit = total > 30
    return float(((2 * g - r - b) > 0.06)[lit].mean()) if lit.any() else 0.0


def candidates(hm: Heights, taken, settings, ortho_src: Any = None) -> list:
    """Outlines of elevated regions no detection covers: at least ``candidate_min_m`` above the ground,
    smooth (not a crown), not green on the open ortho ``ortho_src``, between the candidate areas
    (minimum rotated rectangles, in ``hm``'s CRS). ``taken``: outlines already detected (same CRS)."""
    hs = settings.heights
    high = np.isfinite(hm.above) & (hm.above >= hs.candidate_min_m) & (hm.rough <= hs.candidate_max_roughness_m)
    high = high.astype(np.uint8)
    inv = ~hm.transform
    for g in taken:
        for part in getattr(g.buffer(1.0), "geoms", [g.buffer(1.0)]):
            if part.is_empty:
                continue
            ring = np.array([inv * xy for xy in part.exterior.coords])
            cv2.fillPoly(high, [np.round(ring * 8).astype(np.int32)], 0, cv2.LINE_8, 3)
    k = max(3, int(round(1.0 / hm.gsd)) | 1)
    high = cv2.morphologyEx(high, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(high, connectivity=8)
    px = hm.gsd * hm.gsd
    out = []
    to_ortho = None
    if ortho_src is not None and ortho_src.crs != hm.crs:
        from pyproj import Transformer
        to_ortho = Transformer.from_crs(hm.crs, ortho_src.crs, always_xy=True).transform
    for i in range(1, n):
        area = stats[i, cv2.CC_STAT_AREA] * px
        if not hs.candidate_min_area_m2 <= area <= hs.candidate_max_area_m2:
            continue
        x, y, w, h = (stats[i, c] for c in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
        ys, xs = np.nonzero(labels[y:y + h, x:x + w] == i)
        pts = np.c_[xs + x, ys + y].astype(np.float32)
        (cx, cy), (rw, rh), ang = cv2.minAreaRect(pts)
        if rw * rh * px <= 0 or area / (max(rw, 1) * max(rh, 1) * px) < 0.6:     # not a compact block
            continue
        corners = cv2.boxPoints(((cx + 0.5, cy + 0.5), (rw + 1, rh + 1), ang))
        poly = shapely.Polygon([hm.transform * (float(c), float(r)) for c, r in corners])
        seen = shapely.ops.transform(to_ortho, poly) if to_ortho else poly
        if _green_share(ortho_src, seen, hm.gsd) > hs.candidate_max_green:
            continue
        out.append(poly)
    return out


def apply_heights(detections: gpd.GeoDataFrame, flight: dict, settings, ortho: str | Path | None = None
                  ) -> tuple[gpd.GeoDataFrame, dict]:
    """The flight's detections with ``height_m``, ``floors_est`` and ``source``, flat ones dropped and
    height candidates added (see the module docstring); and a summary (measured, dropped, found)."""
    hs = settings.heights
    hm = read_heights(flight["dsm"], _dtm(flight), settings)
    det = detections.copy()
    local = det.geometry.to_crs(hm.crs) if det.crs is not None and len(det) else det.geometry
    m = measure(list(local), hm, hs.edge_m)
    det["height_m"] = m["top"].round(2).to_numpy()
    det["floors_est"] = _floors(m["median"], hs.storey_m, hs.min_structure_m)
    if "source" not in det.columns:
        det["source"] = None
    flat = (m["median"].to_numpy() < hs.min_structure_m) & ~det["class_name"].isin(hs.flat_classes).to_numpy()
    dropped = det[flat]
    det = det[~flat]
    with rasterio.open(ortho) if ortho is not None else nullcontext() as src:
        found = candidates(hm, list(local), settings, src)
    if found:
        k = len(found)
        cand = gpd.GeoDataFrame({"class_name": ["building"] * k, "confidence": [hs.candidate_confidence] * k,
                                 "source": [HEIGHT_SOURCE] * k}, geometry=found, crs=hm.crs).to_crs(det.crs)
        cm = measure(found, hm, hs.edge_m)
        cand["height_m"] = cm["top"].round(2).to_numpy()
        cand["floors_est"] = _floors(cm["median"], hs.storey_m, hs.min_structure_m)
        cand["area_m2"] = cand.geometry.area
        det = gpd.GeoDataFrame(pd.concat([det, cand], ignore_index=True), geometry="geometry", crs=det.crs)
    det = det.reset_index(drop=True)
    summary = {"measured": int(np.isfinite(m["top"]).sum()), "flat_dropped": int(len(dropped)),
               "found_by_height": len(found)}
    return det, summary


def _dtm(flight: dict) -> str | None:
    return None if is_missing(flight.get("dtm")) else str(flight["dtm"])


def rise_since(detections: gpd.GeoDataFrame, earlier: list[tuple[dict, Any, tuple[float, float]]],
               settings) -> np.ndarray:
    """How much higher (m) each detection (reference frame) stands than on the latest earlier flight
    with heights whose corrected footprint holds it; NaN where none does, or where nothing stood
    there then (a new structure appeared; it did not rise). ``earlier``: (flight, its
    corrected footprint, its shift), newest first."""
    hs = settings.heights
    out = np.full(len(detections), np.nan)
    if not len(detections) or "height_m" not in detections.columns:
        return out
    now = pd.to_numeric(detections["height_m"], errors="coerce").to_numpy(dtype=float)
    todo = np.isfinite(now)
    cents = detections.geometry.centroid
    for flight, footprint, shift in earlier:
        if is_missing(flight.get("dsm")) or footprint is None or not todo.any():
            continue
        if not Path(str(flight["dsm"])).is_file():
            continue
        here = todo & np.asarray(shapely.covers(footprint, np.asarray(cents.values)), dtype=bool)
        if not here.any():
            continue
        moved = detections.geometry[here].translate(shift[0], shift[1])     # into that flight's own frame
        if detections.crs is not None:
            with rasterio.open(flight["dsm"]) as src:
                moved = moved.to_crs(src.crs)
        hm = read_heights(flight["dsm"], _dtm(flight), settings, bounds=tuple(moved.total_bounds))
        before = measure(list(moved), hm, hs.edge_m)
        stood = before["median"].to_numpy() >= hs.min_structure_m     # a new structure did not rise: it appeared
        rise = np.where(stood, now[here] - before["top"].to_numpy(), np.nan)
        out[np.flatnonzero(here)] = np.round(rise, 2)
        todo &= ~here
    return out

