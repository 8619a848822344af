"""A flight's DSM / DTM at ingest (pipeline.ingest.dsm): found in an export folder by content, given
with --dsm / --dtm, and every bad one refused in one line (English on the CLI, Chinese beside it)
with nothing stored."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio

from pipeline.core.config import load_settings
from pipeline.core.errors import InputError
from pipeline.ingest import ingest_flight
from pipeline.ingest.dsm import check_heights, dsm_and_dtm, is_height_raster


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A photogrammetry export of one generated flight: ortho, DSM and DTM."""
    from pipeline.synth import generate_district
    out = tmp_path_factory.mktemp("export")
    generate_district(out, seed=2, size_m=60, epochs=1, gsd_m=0.1, progress=False)
    return out


def _variant(export, tmp_path, name, fn=None, **profile):
    """A copy of the export's DSM with its values passed through ``fn`` and its profile changed."""
    with rasterio.open(export / "epoch_1_dsm.tif") as src:
        data, prof = src.read(1), src.profile
    prof.update(profile)
    data = fn(data) if fn else data
    path = tmp_path / name
    with rasterio.open(path, "w", **{**prof, "dtype": data.dtype.name, "count": 1 if data.ndim == 2 else data.shape[0]}) as dst:
        dst.write(data, 1) if data.ndim == 2 else dst.write(data)
    return path


def _store_args(tmp_path):
    return ["--store", str(tmp_path / "p.gpkg"), "--set", "store.crs=EPSG:4547",
            "--set", f"ingest.work_dir={tmp_path / 'w'}"]


def test_an_export_folder_brings_its_heights_and_the_cli_says_so(export, tmp_path, patrol):
    folder = tmp_path / "odm"
    folder.mkdir()
    shutil.copy(export / "epoch_1.tif", folder / "odm_orthophoto.tif")
    shutil.copy(export / "epoch_1_dsm.tif", folder / "dsm.tif")
    shutil.copy(export / "epoch_1_dtm.tif", folder / "dtm.tif")
    assert is_height_raster(folder / "dsm.tif") and not is_height_raster(folder / "odm_orthophoto.tif")
    res = patrol(*_store_args(tmp_path), "ingest", str(folder))
    assert res.exit_code == 0, res.output
    assert "heights: DSM dsm.tif, DTM dtm.tif" in res.stderr
    res = patrol(*_store_args(tmp_path), "flights", "show", res.stdout.strip())
    assert res.exit_code == 0, res.output
    shown = dict(line.split(None, 1) for line in res.stdout.splitlines() if len(line.split(None, 1)) == 2)
    assert shown["dsm"].endswith("dsm.tif") and shown["dtm"].endswith("dtm.tif")
    # unnamed, the higher of two float rasters is the surface
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    shutil.copy(export / "epoch_1_dtm.tif", a)
    shutil.copy(export / "epoch_1_dsm.tif", b)
    assert dsm_and_dtm([a, b]) == (b, a)


def test_dsm_given_on_the_command_line(export, tmp_path, patrol):
    res = patrol(*_store_args(tmp_path), "ingest", str(export / "epoch_1.tif"), "--dsm", str(export / "epoch_1_dsm.tif"))
    assert res.exit_code == 0, res.output
    assert "heights: DSM epoch_1_dsm.tif (ground filtered out of it)" in res.stderr


BAD = {
    "rgb": (lambda d: np.stack([np.clip(d, 0, 255).astype(np.uint8)] * 3), {"nodata": None}, "not a DSM"),
    "int": (lambda d: d.astype(np.int16), {"nodata": -9999}, "not a DSM"),
    "nocrs": (None, {"crs": None}, "no coordinate system"),
    "coarse": (None, {"transform": rasterio.Affine(5.0, 0, 500000, 0, -5.0, 3400000)}, "outside"),
    "elsewhere": (None, "moved", "another place"),
    "centimetres": (lambda d: np.where(d > -9000, d * 100, d), {}, "not plausible elevations"),
    "empty": (lambda d: np.full_like(d, -9999.0), {}, "values in only"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_heights_are_refused_in_one_line_and_nothing_is_stored(export, tmp_path, patrol, kind):
    fn, profile, words = BAD[kind]
    if profile == "moved":
        with rasterio.open(export / "epoch_1_dsm.tif") as src:
            t = src.transform
        profile = {"transform": rasterio.Affine(t.a, 0, t.c + 5000, 0, t.e, t.f)}
    bad = _variant(export, tmp_path, f"{kind}.tif", fn, **profile)
    res = patrol(*_store_args(tmp_path), "ingest", str(export / "epoch_1.tif"), "--dsm", str(bad))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{kind}.tif" in lines[0] and words in lines[0], res.stderr
    assert "Traceback" not in res.output and str(tmp_path) not in res.output
    res = patrol(*_store_args(tmp_path), "flights", "list")
    assert "epoch_1" not in res.output and res.stdout.count("\n") <= 1, res.output


def test_each_refusal_has_its_chinese_line(export, tmp_path):
    settings = load_settings(overrides={"store.crs": "EPSG:4547", "ingest.work_dir": str(tmp_path / "w")})
    flight = ingest_flight(export / "epoch_1.tif", settings).flight
    swapped = (export / "epoch_1_dtm.tif", export / "epoch_1_dsm.tif")
    with pytest.raises(InputError, match="swapped") as e:
        check_heights(flight, settings, *swapped)
    assert "颠倒" in e.value.zh
    with pytest.raises(InputError, match="DTM alone") as e:
        check_heights(flight, settings, None, export / "epoch_1_dtm.tif")
    assert "DSM" in e.value.zh
    with pytest.raises(InputError, match="not a DSM") as e:
        check_heights(flight, settings, export / "epoch_1.tif")
    assert "浮点" in e.value.zh
    assert check_heights(flight, settings, None) == {}
    ok = check_heights(flight, settings, export / "epoch_1_dsm.tif", export / "epoch_1_dtm.tif")
    assert ok["dsm"].endswith("epoch_1_dsm.tif") and ok["dtm"].endswith("epoch_1_dtm.tif")
