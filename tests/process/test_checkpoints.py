"""Nightly checkpoints: finished chunks survive a killed run, damaged or foreign ones are dropped."""
from __future__ import annotations

import numpy as np

from pipeline.process.checkpoints import Checkpoint


def part(first: int, n: int = 3) -> dict:
    return {"indices": np.arange(first, first + n), "quads": np.zeros((n, 4, 2)), "seconds": np.float64(0.5)}


def test_saved_parts_come_back_by_their_first_tile_and_go_with_the_flight(tmp_path):
    cp = Checkpoint(tmp_path, "flight/1", "k1")
    cp.save(part(0))
    cp.save(part(3))
    back = cp.load(n_plan=10)
    assert sorted(back) == [0, 3] and back[3]["indices"].tolist() == [3, 4, 5]
    assert not list(cp.dir.glob(".part-*"))                 # written atomically, nothing half left
    Checkpoint(tmp_path, "flight/1", "k2").save(part(6))
    cp.remove_all()
    assert not any(tmp_path.iterdir())


def test_a_damaged_part_or_one_beyond_the_plan_is_dropped(tmp_path):
    cp = Checkpoint(tmp_path, "f", "k")
    cp.save(part(0))
    cp.save(part(8))
    (cp.dir / "part-0000004.npz").write_bytes(b"not a zip")
    back = cp.load(n_plan=6)                                # the plan shrank: tile 8 is foreign now
    assert sorted(back) == [0]
    assert sorted(p.name for p in cp.dir.iterdir()) == ["part-0000000.npz"]
