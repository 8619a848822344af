"""Ingest: turn what a patrol team uploads into a Flight dict for the store.

- ``raster``: orthomosaics (GeoTIFF, COG, BigTIFF; RGB/RGBA, masks, nodata; uint8/uint16; any
  CRS) — ``register_ortho``, ``file_id``, ``capture_time``, ``valid_footprint``;
- ``photos``: raw DJI photos, EXIF/XMP → an approximate georeferenced frame per photo;
- ``archive``: safe zip unpacking;
- ``flight``: one flight from a file, a split export or a folder/zip of photos
  (``ingest_flight``), the rasters detection runs on (``flight_frames``), the district check.
"""
from __future__ import annotations

from pipeline.ingest.flight import (
                                   IngestResult,
                                   check_district,
                                   check_flight_gsd,
                                   check_gsd,
                                   flight_frames,
                                   gsd_outside,
                                   ingest_flight,
)
from pipeline.ingest.raster import capture_time, file_id, register_ortho, valid_footprint

__all__ = ["IngestResult", "capture_time", "check_district", "check_flight_gsd", "check_gsd", "file_id",
           "flight_frames", "gsd_outside", "ingest_flight", "register_ortho", "valid_footprint"]
