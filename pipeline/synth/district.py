"""`generate_district`: orthophoto GeoTIFF per epoch + district.gpkg + district.json."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm import tqdm

from pipeline.core.errors import InputError
from pipeline.synth.heights import NODATA, surface_models
from pipeline.synth.layout import build_layout, structures_at, violation_of
from pipeline.synth.randomisation import Randomisation
from pipeline.synth.render import Look, Renderer, View
from pipeline.synth.scene import (
    CRS,
    flight_footprint,
    rasterise_valid,
    render_view,
    season_of,
    sun_at,
    truth_frame,
)

BAND_ROWS = 1024
HALO = 16


@dataclass
class DistrictResult:
    out_dir: Path
    orthos: list[Path]
    vectors: Path
    meta: Path
    dates: list[datetime]


def epoch_dates(seed: int, epochs: int) -> list[datetime]:
    rng = np.random.default_rng([seed, 2024])
    d = datetime(2025, 3, 1, 9, 0) + timedelta(days=int(rng.integers(0, 30)))
    out = []
    for _ in range(epochs):
        out.append(d.replace(hour=int(rng.integers(9, 14)), minute=int(rng.integers(0, 60))))
        d = d + timedelta(days=int(rng.integers(95, 125)))
    return out


def epoch_look(seed: int, epoch: int, when: datetime, gsd: float, look: dict | None = None) -> Look:
    """The look of one epoch: the demo district's, with ``look``'s Randomisation fields over it."""
    rng = np.random.default_rng([seed, epoch, 77])
    wb = tuple(float(v) for v in rng.normal(1.0, 0.02, 3))
    rnd = Randomisation(palette="china", season=season_of(when), gsd_m=gsd,
                        brightness=float(rng.uniform(0.95, 1.05)), white_balance=wb,  # type: ignore[arg-type]
                        blur_sigma_px=float(rng.uniform(0.45, 0.7)), noise_sigma=float(rng.uniform(1.5, 2.5)))
    if look:
        rnd = rnd.with_(**look)
    return Look(rnd, sun_at(when), rnd.season, seed * 100 + epoch)


def epoch_shifts(seed: int, epochs: int, shift_m: float, rotate_deg: float = 0.0) -> list[tuple[float, float, float]]:
    """The georeference error of each epoch's ortho: metres east, north and degrees of rotation
    about the district's centre; none for the first, up to ``shift_m`` in any direction and up
    to ``rotate_deg`` either way for the later ones (GPS without RTK, another mosaicking)."""
    rng = np.random.default_rng([seed, 6061])
    out = [(0.0, 0.0, 0.0)]
    for _ in range(1, epochs):
        r, a = float(rng.uniform(0.0, shift_m)), float(rng.uniform(0.0, 2 * np.pi))
        rot = float(rng.uniform(-rotate_deg, rotate_deg))
        out.append((round(r * np.cos(a), 3), round(r * np.sin(a), 3), round(rot, 4)))
    return out


def georeference_error(x0: float, ytop: float, size_m: float, shift: tuple[float, float, float]) -> rasterio.Affine:
    """The map affine that moves true positions to where an ortho with ``shift`` shows them."""
    cx, cy = x0 + size_m / 2, ytop - size_m / 2
    dx, dy, rot = shift
    return rasterio.Affine.translation(cx + dx, cy + dy) * rasterio.Affine.rotation(rot) * \
        rasterio.Affine.translation(-cx, -cy)


def generate_district(out_dir: Path | str, seed: int = 1, size_m: float = 400.0, epochs: int = 3,
                      gsd_m: float = 0.05, progress: bool = True, shift_m: float = 0.0,
                      rotate_deg: float = 0.0, look: dict | None = None,
                      dsm_gsd_m: float | None = 0.25) -> DistrictResult:
    """Write epoch_*.tif, district.gpkg and district.json for a seeded district. ``shift_m`` /
    ``rotate_deg``: each later ortho is georeferenced up to that far off and turned up to that
    much (the truth stays where it is; the ``footprints`` layer and district.json record each
    epoch's error). ``look``: Randomisation fields over every epoch's look (another palette,
    season or colour: a county whose roofs the training scenes did not show). ``dsm_gsd_m``: also
    epoch_*_dsm.tif and epoch_*_dtm.tif at this ground pixel (``pipeline.synth.heights``; None: none)."""
    out = Path(out_dir)
    if not 20 <= size_m <= 4000:
        raise InputError(f"size {size_m} m is out of range; choose --size-m between 20 and 4000")
    if not 1 <= epochs <= 12:
        raise InputError(f"{epochs} epochs is out of range; choose --epochs between 1 and 12")
    if not 0.01 <= gsd_m <= 1.0:
        raise InputError(f"GSD {gsd_m} m is out of range; choose --gsd between 0.01 and 1.0")
    if not 0.0 <= shift_m <= 50.0:
        raise InputError(f"shift {shift_m} m is out of range; choose --shift-m between 0 and 50")
    if not 0.0 <= rotate_deg <= 5.0:
        raise InputError(f"rotation {rotate_deg}° is out of range; choose --rotate-deg between 0 and 5")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {out}: {e.strerror}; choose another --out folder") from e
    look = dict(look or {})
    bad = sorted(set(look) - set(Randomisation().as_dict()))
    if bad:
        raise InputError(f"unknown look field(s) {', '.join(bad)}; use fields of synth.Randomisation")
    lay = build_layout(seed, size_m, epochs, Randomisation(palette=look.get("palette", "china")))
    dates = epoch_dates(seed, epochs)
    n = int(round(size_m / gsd_m))
    shifts = epoch_shifts(seed, epochs, shift_m, rotate_deg)
    orthos, meta_epochs, footprints = [], [], []
    for e in range(1, epochs + 1):
        epoch_rnd = epoch_look(seed, e, dates[e - 1], gsd_m, look)
        fp = flight_footprint(lay, e)
        path = out / f"epoch_{e}.tif"
        dx, dy, rot = shifts[e - 1]
        transform = georeference_error(lay.x0, lay.ytop, size_m, shifts[e - 1]) * \
            rasterio.Affine(gsd_m, 0.0, lay.x0, 0.0, -gsd_m, lay.ytop)
        _write_ortho(path, lay, e, epoch_rnd, fp, n, gsd_m, transform, dates[e - 1], progress)
        orthos.append(path)
        heights = {}
        if dsm_gsd_m:
            heights = _write_heights(out, lay, e, fp, float(dsm_gsd_m),
                                     georeference_error(lay.x0, lay.ytop, size_m, shifts[e - 1]))
        footprints.append({"epoch": e, "captured_at": dates[e - 1].isoformat(), "shift_x": dx, "shift_y": dy,
                           "rotation_deg": rot, "centre_x": lay.x0 + size_m / 2, "centre_y": lay.ytop - size_m / 2,
                           "geometry": fp})
        meta_epochs.append({"epoch": e, "date": dates[e - 1].isoformat(), "ortho": path.name, "shift_m": [dx, dy],
                            "rotation_deg": rot, "centre": [lay.x0 + size_m / 2, lay.ytop - size_m / 2],
                            "sun_azimuth_deg": round(epoch_rnd.sun.azimuth_deg, 2),
                            "sun_elevation_deg": round(epoch_rnd.sun.elevation_deg, 2),
                            "season": epoch_rnd.season, **heights})
    vectors = out / "district.gpkg"
    _write_vectors(vectors, lay, epochs, footprints)
    meta = out / "district.json"
    meta.write_text(json.dumps({
        "seed": seed, "size_m": size_m, "gsd_m": gsd_m, "crs": CRS,
        "origin": {"x": lay.x0, "y": lay.ytop, "corner": "upper-left"},
        "width_px": n, "height_px": n, "epochs": meta_epochs,
        "counts": {f"epoch_{e}": len(structures_at(lay, e)) for e in range(1, epochs + 1)},
    }, ensure_ascii=False, indent=2), encoding="utf-8")
    return DistrictResult(out, orthos, vectors, meta, dates)


def render_epoch(seed: int, size_m: float, epochs: int, gsd_m: float, epoch: int,
                 structures: bool = True) -> np.ndarray:
    """The RGB of one district epoch in memory (optionally without any structure: the bare ground)."""
    lay = build_layout(seed, size_m, epochs, Randomisation())
    look = epoch_look(seed, epoch, epoch_dates(seed, epochs)[epoch - 1], gsd_m)
    rd = Renderer(lay, epoch, look, gsd_m)
    if not structures:
        rd.parts = []
    n = int(round(size_m / gsd_m))
    return render_view(lay, epoch, look, gsd_m, 0, 0, n, n, renderer=rd, grain_seed=look.seed)


def _write_ortho(path: Path, lay, epoch, look, fp, n, gsd, transform, when, progress):
    profile = dict(driver="GTiff", width=n, height=n, count=3, dtype="uint8", crs=CRS, transform=transform,
                   tiled=True, blockxsize=512, blockysize=512, compress="JPEG", photometric="YCBCR",
                   jpeg_quality=90, interleave="pixel", BIGTIFF="IF_SAFER")
    rd = Renderer(lay, epoch, look, gsd)
    env = dict(GDAL_TIFF_INTERNAL_MASK=True, COMPRESS_OVERVIEW="JPEG", PHOTOMETRIC_OVERVIEW="YCBCR",
               INTERLEAVE_OVERVIEW="PIXEL", JPEG_QUALITY_OVERVIEW=85, GDAL_NUM_THREADS=2)
    bands = range(0, n, BAND_ROWS)
    with rasterio.Env(**env):
        with rasterio.open(path, "w", **profile) as dst:
            for r0 in tqdm(bands, desc=f"epoch {epoch}", unit="band", disable=not progress, leave=False):
                h = min(BAND_ROWS, n - r0)
                rgb = render_view(lay, epoch, look, gsd, r0, 0, h, n, renderer=rd, halo=HALO,
                                  grain_seed=look.seed * 10007 + r0)
                valid = rasterise_valid(fp, View(lay.x0, lay.ytop, gsd, r0, 0, h, n))
                rgb[~valid] = 0
                win = Window(0, r0, n, h)
                dst.write(np.moveaxis(rgb, 2, 0), window=win)
                dst.write_mask((valid * 255).astype(np.uint8), window=win)
            dst.update_tags(TIFFTAG_DATETIME=when.strftime("%Y:%m:%d %H:%M:%S"),
                            TIFFTAG_IMAGEDESCRIPTION=f"lianwei-patrol synthetic district seed={lay.seed} "
                                                     f"epoch={epoch}",
                            TIFFTAG_SOFTWARE="lianwei-patrol synth")
        with rasterio.open(path, "r+") as dst:
            factors = [f for f in (2, 4, 8, 16) if n // f >= 64] or [2]
            dst.build_overviews(factors, Resampling.average)
            dst.update_tags(ns="rio_overview", resampling="average")


def _write_heights(out: Path, lay, epoch: int, fp, gsd: float, error: rasterio.Affine) -> dict:
    """epoch_{epoch}_dsm.tif and _dtm.tif, georeferenced with the epoch's error like its ortho."""
    dsm, dtm = surface_models(lay, epoch, gsd, fp)
    n = dsm.shape[0]
    profile = dict(driver="GTiff", width=n, height=n, count=1, dtype="float32", crs=CRS, nodata=NODATA,
                   transform=error * rasterio.Affine(gsd, 0.0, lay.x0, 0.0, -gsd, lay.ytop), tiled=True,
                   blockxsize=256, blockysize=256, compress="DEFLATE", predictor=3)
    names = {}
    for kind, arr in (("dsm", dsm), ("dtm", dtm)):
        name = f"epoch_{epoch}_{kind}.tif"
        with rasterio.open(out / name, "w", **profile) as dst:
            dst.write(arr, 1)
            dst.update_tags(TIFFTAG_SOFTWARE="lianwei-patrol synth", AREA_OR_POINT="Area")
        names[kind] = name
    return names


def _write_vectors(path: Path, lay, epochs: int, footprints: list[dict]):
    if path.exists():
        path.unlink()
    parcels = gpd.GeoDataFrame(lay.parcels, geometry="geometry", crs=CRS) if lay.parcels else gpd.GeoDataFrame(
        columns=["parcel_id", "owner", "town", "village", "village_code", "land_use", "approved_area_m2",
                 "approved_floors", "permit_no", "geometry"], geometry="geometry", crs=CRS)
    zones = gpd.GeoDataFrame(lay.zones, geometry="geometry", crs=CRS) if lay.zones else gpd.GeoDataFrame(
        columns=["zone_id", "kind", "code", "name", "geometry"], geometry="geometry", crs=CRS)
    truth = pd.concat([truth_frame(lay, e) for e in range(1, epochs + 1)], ignore_index=True)
    truth = gpd.GeoDataFrame(truth, geometry="geometry", crs=CRS)
    changes = []
    for e in range(2, epochs + 1):
        for s in lay.structures:
            for ch in s.change_at(e):
                geom = s.footprint(e - 1) if ch == "demolished" else s.footprint(e)
                viol = violation_of(lay, s, e - 1 if ch == "demolished" else e)
                changes.append({"epoch": e, "structure_id": s.sid, "change": ch, "class_name": s.cls,
                                "violation": viol, "geometry": geom})
    changes = gpd.GeoDataFrame(changes, columns=["epoch", "structure_id", "change", "class_name", "violation",
                                                 "geometry"], geometry="geometry", crs=CRS)
    fps = gpd.GeoDataFrame(footprints, geometry="geometry", crs=CRS)
    for name, gdf in (("parcels", parcels), ("zones", zones), ("truth", truth), ("changes", changes),
                      ("footprints", fps)):
        gdf.to_file(path, layer=name, driver="GPKG", engine="pyogrio")
