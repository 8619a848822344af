"""The nightly summary: totals over the flights done, JSON and Markdown side by side, never
overwritten by a second run in the same second."""
from __future__ import annotations

import json

import pytest

from pipeline.core.errors import InputError
from pipeline.process.summary import FlightOutcome, NightlySummary


def summary() -> NightlySummary:
    s = NightlySummary(started_at="2026-12-07T22:00:00Z", store="s.gpkg", executor="in-process", model="m1",
                       seconds=1800.0)
    s.flights = [FlightOutcome("a", status="done", tiles=10, tiles_reused=4, detections=7, new_cases=2, area_km2=0.5),
                 FlightOutcome("b", status="failed", note="flight b: its file b.tif is gone | restore it"),
                 FlightOutcome("c", status="done", tiles=5, detections=3, new_cases=1, area_km2=0.25),
                 FlightOutcome("d", status="skipped", note="already done")]
    return s


def test_totals_count_only_the_flights_done():
    t = summary().totals()
    assert (t["flights_done"], t["flights_failed"], t["flights_skipped"]) == (2, 1, 1)
    assert (t["tiles"], t["tiles_reused"], t["detections"], t["new_cases"]) == (15, 4, 10, 3)
    assert t["area_km2"] == 0.75 and t["km2_per_hour"] == 1.5


def test_json_and_markdown_are_written_twice_in_one_second_without_loss(tmp_path):
    s = summary()
    j1, m1 = s.write(tmp_path)
    j2, m2 = s.write(tmp_path)
    assert j1 != j2 and m1 != m2
    assert json.loads(j1.read_text(encoding="utf-8"))["totals"]["new_cases"] == 3
    md = m1.read_text(encoding="utf-8")
    assert "flights done 2, failed 1, skipped 1" in md and "b.tif is gone / restore it" in md
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write the run summary"):
        s.write(blocker / "sub")
