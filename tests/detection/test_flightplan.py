"""The flight plan: every tile of every frame once, in one index space; chunks that skip what a
checkpoint holds; the registered file checked before planning; reading ahead that passes errors on."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.detection.flightplan import (
    Tiling,
    batched,
    plan_flight,
    plan_registered_flight,
    prefetch,
)
from pipeline.ingest.raster import file_id

TILING = Tiling(gsd_m=0.10, tile_px=64, overlap_px=8, stretch=(2.0, 98.0))


def test_two_frames_share_one_index_space_and_chunks_cover_each_tile_once(make_raster):
    a = make_raster("a.tif", 300, 200, res=0.10, crs="EPSG:4547", origin=(500000.0, 3400000.0))
    b = make_raster("b.tif", 150, 150, res=0.10, crs="EPSG:4547", origin=(500100.0, 3400000.0))
    plan = plan_flight([a, b], TILING, "f1")
    assert plan.n > 0 and set(plan.frame_of) == {0, 1} and len(plan.frame_of) == plan.n
    chunks = plan.chunks(chunk_tiles=3)
    seen = [i for c in chunks for i in c.indices]
    assert sorted(seen) == list(range(plan.n))
    assert all(len(c.indices) <= 3 and {plan.frame_of[i] for i in c.indices} == {plan.frame_of[c.indices[0]]}
               for c in chunks)
    done = set(range(0, plan.n, 2))
    left = [i for c in plan.chunks(chunk_tiles=4, done=done) for i in c.indices]
    assert sorted(left) == sorted(set(range(plan.n)) - done)


def test_frames_in_two_coordinate_systems_are_refused(make_raster):
    a = make_raster("a.tif", 128, 128, res=0.10, crs="EPSG:4547")
    b = make_raster("b.tif", 128, 128, res=0.10, crs="EPSG:32650")
    with pytest.raises(InputError, match="b.tif is in"):
        plan_flight([a, b], TILING, "f2")


def test_a_registered_file_that_is_gone_or_changed_is_refused(make_raster, tmp_path):
    from pipeline.core.config import load_settings
    path = make_raster("o.tif", 128, 128, res=0.10, crs="EPSG:4547")
    flight = {"flight_id": file_id(path), "path": str(path), "source": "ortho", "captured_at": None}
    settings = load_settings(overrides={"processing.tile_px": 64, "processing.overlap_px": 8})
    assert plan_registered_flight(flight, settings).n > 0
    make_raster("o.tif", 128, 128, res=0.10, crs="EPSG:4547", data=np.zeros((3, 128, 128)))
    with pytest.raises(InputError, match="changed since it was registered"):
        plan_registered_flight(flight, settings)
    path.unlink()
    with pytest.raises(InputError, match="is gone"):
        plan_registered_flight(flight, settings)


def test_reading_ahead_keeps_the_order_and_passes_an_error_on():
    assert list(batched(prefetch(range(7), depth=2), 3)) == [[0, 1, 2], [3, 4, 5], [6]]

    def broken():
        yield 1
        raise InputError("tile 2 is unreadable")

    it = prefetch(broken(), depth=2)
    assert next(it) == 1
    with pytest.raises(InputError, match="tile 2"):
        next(it)
