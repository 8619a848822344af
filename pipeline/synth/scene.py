"""In-memory scenes for training chips: `render_scene(seed, size_m, gsd_m, randomisation)`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import cv2
import geopandas as gpd
import numpy as np
from affine import Affine

from pipeline.synth.layout import build_layout, structures_at, violation_of
from pipeline.synth.parts import Layout, blob
from pipeline.synth.randomisation import SEASONS, Randomisation
from pipeline.synth.render import Look, Renderer, Sun, View

CRS = "EPSG:4547"
LAT, LON = 30.6, 114.3  # around Wuhan, inside the CM 114°E zone


@dataclass
class Scene:
    rgb: np.ndarray  # H x W x 3 uint8
    valid: np.ndarray  # H x W bool
    transform: Affine
    crs: str
    truth: gpd.GeoDataFrame  # structure_id, class_name, violation, geometry
    randomisation: Randomisation
    sun: Sun
    layout: Layout


def sun_at(when: datetime, lat: float = LAT, lon: float = LON, tz_h: float = 8.0) -> Sun:
    """Approximate solar azimuth/elevation (degrees) for a local clock time."""
    doy = when.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365)
    solar_h = when.hour + when.minute / 60 + (lon - 15 * tz_h) / 15
    ha = math.radians(15 * (solar_h - 12))
    phi = math.radians(lat)
    el = math.asin(math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha))
    az = math.atan2(math.sin(ha), math.cos(ha) * math.sin(phi) - math.tan(decl) * math.cos(phi))
    return Sun((math.degrees(az) + 180) % 360, math.degrees(el))


def season_of(when: datetime) -> str:
    return SEASONS[((when.month - 3) % 12) // 3]


def flight_footprint(lay: Layout, epoch: int):
    """Irregular flight footprint of one epoch: contains the structure region with a margin."""
    rng = np.random.default_rng([lay.seed, epoch, 4242])
    S = lay.size_m
    margin = max(2.5, 0.035 * S)
    cx, cy = lay.x0 + S / 2, lay.y0 + S / 2
    fp = lay.region.buffer(margin * rng.uniform(0.9, 1.3), quad_segs=8)
    fp = fp.union(blob(cx + rng.normal(0, S * 0.02), cy + rng.normal(0, S * 0.02), S * 0.47, rng, 0.07))
    return fp.intersection(lay.bounds().buffer(-0.5)).simplify(0.05)


def truth_frame(lay: Layout, epoch: int) -> gpd.GeoDataFrame:
    rows = []
    for s in structures_at(lay, epoch):
        rows.append({"structure_id": s.sid, "epoch": epoch, "class_name": s.cls,
                     "violation": violation_of(lay, s, epoch), "parcel_id": s.parcel_id,
                     "height_m": round(s.top(epoch), 2), "floors": s.floors(epoch),
                     "geometry": s.footprint(epoch)})
    cols = ["structure_id", "epoch", "class_name", "violation", "parcel_id", "height_m", "floors", "geometry"]
    return gpd.GeoDataFrame(rows, columns=cols, geometry="geometry", crs=CRS)


def render_view(lay: Layout, epoch: int, look: Look, gsd: float, r0: int, c0: int, h: int, w: int,
                renderer: Renderer | None = None, halo: int = 0, grain_seed: int = 0) -> np.ndarray:
    """Render rows r0..r0+h, cols c0..c0+w of the scene grid (halo px rendered then cropped)."""
    rd = renderer or Renderer(lay, epoch, look, gsd)
    top = max(0, r0 - halo)
    n = int(round(lay.size_m / gsd))
    bot = min(n, r0 + h + halo)
    view = View(lay.x0, lay.ytop, gsd, top, c0, bot - top, w)
    img = rd.render(view, grain_seed)
    return img[r0 - top:r0 - top + h]


def render_scene(seed: int, size_m: float = 64.0, gsd_m: float | None = None,
                 randomisation: Randomisation | None = None) -> Scene:
    """A single-epoch scene rendered directly at `gsd_m` (default: randomisation.gsd_m)."""
    rnd = randomisation or Randomisation()
    gsd = float(gsd_m or rnd.gsd_m)
    lay = build_layout(seed, size_m, 1, rnd, full_region=True)
    rng = np.random.default_rng([seed, 99])
    sun = Sun(rnd.sun_azimuth_deg if rnd.sun_azimuth_deg is not None else float(rng.uniform(100, 260)),
              rnd.sun_elevation_deg if rnd.sun_elevation_deg is not None else float(rng.uniform(30, 70)))
    look = Look(rnd, sun, rnd.season, seed)
    n = int(round(size_m / gsd))
    rd = Renderer(lay, 1, look, gsd)
    rgb = render_view(lay, 1, look, gsd, 0, 0, n, n, renderer=rd, grain_seed=seed)
    transform = Affine(gsd, 0, lay.x0, 0, -gsd, lay.ytop)
    truth = truth_frame(lay, 1)
    if rnd.nodata_edges:  # a flight edge crosses the scene: truth is clipped to the valid footprint
        S = lay.size_m
        fp = blob(lay.x0 + S / 2 + rng.normal(0, S * 0.1), lay.y0 + S / 2 + rng.normal(0, S * 0.1),
                  S * rng.uniform(0.45, 0.6), rng, 0.1).intersection(lay.bounds())
        valid = rasterise_valid(fp, View(lay.x0, lay.ytop, gsd, 0, 0, n, n))
        rgb[~valid] = 0
        truth["geometry"] = truth.geometry.intersection(fp)
        truth = truth[truth.geometry.area > 1.0].reset_index(drop=True)
    else:
        valid = np.ones((n, n), bool)
    return Scene(rgb, valid, transform, CRS, truth, rnd, sun, lay)


def rasterise_valid(fp, view: View) -> np.ndarray:
    mask = np.zeros((view.h, view.w), np.uint8)
    geoms = getattr(fp, "geoms", [fp])
    for g in geoms:
        cv2.fillPoly(mask, [view.fixed(np.asarray(g.exterior.coords))], 1, cv2.LINE_8, 3)
        for hole in g.interiors:
            cv2.fillPoly(mask, [view.fixed(np.asarray(hole.coords))], 0, cv2.LINE_8, 3)
    return mask.astype(bool)
