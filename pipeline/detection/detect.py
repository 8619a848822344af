"""Detection, the stage: structures on an ortho or on every frame of a flight, without a store:
the one processing path (``pipeline.detection.flightplan``) run in this process, as ``patrol run`` and
``patrol nightly`` run it. The model is ``pipeline.detection.yolo``; box post-processing ``pipeline.detection.postprocess``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, InputError, one_line
from pipeline.detection.detectors import tile_detector
from pipeline.detection.flightplan import Tiling, detect_plan, plan_flight
from pipeline.detection.postprocess import drop_nested, merge_seams, quads_to_map  # noqa: F401  (the stage's names)
from pipeline.detection.yolo import Detector, model_task, offline_ultralytics  # noqa: F401


def detect_frames(frames: Sequence[str | Path], settings, store_crs: str | None = None, detector: Any = None,
                  progress: bool = True, flight_id: str = "", captured_at: Any = None):
    """Detections of one ortho or of every frame of a photo flight (duplicates across tiles and
    frames merged in one pass): GeoDataFrame(class_name, confidence, area_m2, geometry) in the
    store CRS. ``detector``: a tile detector, a loaded model, or None for the settings' model."""
    from pyproj import CRS

    store_crs = store_crs or settings.store.crs
    if not CRS.from_user_input(store_crs).is_projected:
        raise ConfigError(f"store.crs {store_crs} is not a projected CRS in metres; set a projected one "
                          f"(e.g. EPSG:4547)")
    plan = plan_flight(frames, Tiling.from_settings(settings), flight_id, captured_at)
    return detect_plan(tile_detector(settings, detector), plan, settings, store_crs, progress)


def detect_ortho(path: str | Path, settings, store_crs: str | None = None, detector: Any = None,
                 progress: bool = True):
    """Detect structures on an ortho: GeoDataFrame(class_name, confidence, area_m2, geometry) in
    the store CRS, seam duplicates merged."""
    return detect_frames([path], settings, store_crs, detector, progress)


def write_detections(gdf, path: str | Path) -> Path:
    """Write detections as GeoPackage (layer ``detections``) or GeoParquet, by file extension."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".gpkg", ".parquet", ".geoparquet"):
        raise InputError(f"output {path} must end in .gpkg or .parquet; pick one of those")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if ext == ".gpkg":  # replaces the layer, keeps any other layer of an existing GeoPackage
            extra = {"geometry_type": "Polygon"} if len(gdf) == 0 else {}
            gdf.to_file(path, layer="detections", driver="GPKG", **extra)
        else:
            gdf.to_parquet(path)
    except Exception as e:  # unwritable folder, a file that is not a GeoPackage, a full disk
        raise InputError(f"cannot write {path} ({one_line(e, 120)}); check the folder is writable") from None
    return path
