"""Shared pytest fixtures (small, additive: one section per owner)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest


# ---------------------------------------------------------------- rasters (tiling / detect / ingest)
@pytest.fixture
def make_raster(tmp_path):
    """Factory: write a small tiled GeoTIFF and return its path.

    make_raster(name, width, height, res=0.05, crs="EPSG:32650", origin=(500000, 3400000),
                count=3, dtype="uint8", data=None, mask=None, nodata=None, alpha=False,
                overviews=False, tags=None, res_y=None)
    ``mask`` (bool HxW) is written as an internal mask, or as the alpha band when ``alpha``.
    """
    import rasterio
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.transform import from_origin

    def make(name="ortho.tif", width=256, height=256, res=0.05, crs="EPSG:32650",
             origin=(500000.0, 3400000.0), count=3, dtype="uint8", data=None, mask=None,
             nodata=None, alpha=False, overviews=False, tags=None, res_y=None):
        path = tmp_path / name
        if data is None:
            data = np.full((count, height, width), 120, dtype=dtype)
        data = np.asarray(data, dtype=dtype).reshape(-1, height, width)
        if alpha:
            a = np.full((1, height, width), 255, dtype=dtype) if mask is None else \
                (np.asarray(mask)[None] * 255).astype(dtype)
            data = np.concatenate([data, a])
        prof = dict(driver="GTiff", width=width, height=height, count=data.shape[0], dtype=dtype,
                    crs=crs, transform=from_origin(origin[0], origin[1], res, res_y or res),
                    tiled=True, blockxsize=256, blockysize=256, nodata=nodata)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(path, "w", **prof) as dst:
                dst.write(data)
                if alpha:
                    n = data.shape[0]
                    ci = [ColorInterp.gray] if n == 2 else \
                        [ColorInterp.red, ColorInterp.green, ColorInterp.blue][:n - 1]
                    dst.colorinterp = ci + [ColorInterp.alpha]
                elif mask is not None:
                    dst.write_mask(np.asarray(mask).astype(np.uint8) * 255)
                if tags:
                    dst.update_tags(**tags)
                if overviews:
                    dst.build_overviews([2, 4, 8], Resampling.average)
        return path

    return make


# ---------------------------------------------------------------- PostGIS server (store / issue 6)
@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL + PostGIS server on a free local port for the whole session
    (tests/pg.py); skipped with the reason when the binaries are not installed."""
    from pg import PgServer

    _, why = PgServer.find_bin()
    if why:
        pytest.skip(why)
    server = PgServer.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """URL of a fresh database (with postgis) on the session server."""
    return pg_server.new_database()


# ---------------------------------------------------------------- small processed district (reports / issue 5)
@pytest.fixture(scope="session")
def small_district_store(tmp_path_factory):
    """A generated 120 m district (seed 3, 2 epochs) run through register_flight and
    process_flight with its truth layer as detections (no model), in an embedded store.
    Built once per session; returns (store_path, settings, district_dir). Tests that
    change the store must work on a copy (shutil.copy of the .gpkg)."""
    import json
    from pathlib import Path

    from pipeline.core.config import load_settings
    from pipeline.detection.detectors import TruthTileDetector
    from pipeline.ingest.parcels import import_registry
    from pipeline.process.run import process_flight, register_flight
    from pipeline.store import open_store
    from pipeline.synth import generate_district

    root = tmp_path_factory.mktemp("small_district")
    result = generate_district(root / "district", seed=3, size_m=120.0, epochs=2)
    settings = load_settings(overrides={"store.url": str(root / "patrol.gpkg")})
    store = open_store(settings.store.url, settings.store.crs, case_prefix=settings.district.case_prefix)
    import_registry(store, result.vectors, replace=True)
    truth = TruthTileDetector(result.vectors, settings.detector.classes, confidence=0.9)
    meta = json.loads(Path(result.meta).read_text(encoding="utf-8"))
    for ep in meta["epochs"]:
        flight = register_flight(store, result.out_dir / ep["ortho"], settings, team="test")
        process_flight(store, flight["flight_id"], settings, progress=False, detector=truth)
    store.close()
    return root / "patrol.gpkg", settings, result.out_dir


# ---------------------------------------------------------------- the command line (one way for every test)
class CliResult(NamedTuple):
    """What `patrol …` did: its exit code and what it printed (unpacks as code, out, err)."""
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def patrol(capsys):
    """Run `patrol ARG…` as the console script runs it (``pipeline.cli.main``: a PatrolError is one
    line on stderr and exit code 2), in this process, its output captured."""
    from pipeline.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)
    return run
