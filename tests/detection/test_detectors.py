"""The tile detectors: the truth layer gives the epoch captured when the flight was, each structure
once however the tiles overlap; the choice between a given detector, the truth and the model."""
from __future__ import annotations

import json

import geopandas as gpd
import pytest

from pipeline.core.errors import InputError
from pipeline.detection.detectors import ModelTileDetector, TruthTileDetector, tile_detector
from pipeline.detection.flightplan import Tiling, finish, plan_flight, run_chunk


def test_the_truth_layer_gives_each_structure_of_the_flights_epoch_once(small_district_store):
    _, settings, district = small_district_store
    meta = json.loads((district / "district.json").read_text(encoding="utf-8"))
    truth = TruthTileDetector(district / "district.gpkg", settings.detector.classes)
    for ep in meta["epochs"]:
        plan = plan_flight([district / ep["ortho"]], Tiling.from_settings(settings), "f", ep["date"])
        parts = [run_chunk(truth, c) for c in plan.chunks(chunk_tiles=2)]
        dets = finish(truth, plan, parts, settings)
        layer = gpd.read_file(district / "district.gpkg", layer="truth")
        expected = layer[(layer["epoch"] == ep["epoch"]) & layer["class_name"].isin(settings.detector.classes)]
        assert len(dets) == len(expected) and sorted(dets["class_name"]) == sorted(expected["class_name"])
    with pytest.raises(InputError, match="has no epoch captured at"):
        truth.epoch("1999-01-01")


def test_the_detector_of_a_run_is_the_one_given_else_the_truth_else_the_model(small_district_store, tmp_path):
    _, settings, district = small_district_store
    truth = TruthTileDetector(district / "district.gpkg", settings.detector.classes)
    assert tile_detector(settings, truth) is truth
    assert isinstance(tile_detector(settings, truth=district / "district.gpkg"), TruthTileDetector)
    assert isinstance(tile_detector(settings), ModelTileDetector)
    with pytest.raises(InputError, match="truth layer file nope.gpkg not found"):
        TruthTileDetector(tmp_path / "nope.gpkg", settings.detector.classes)
