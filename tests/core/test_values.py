"""The one set of value helpers: what counts as missing, plain Python out of frame cells, JSON."""
from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import InputError
from pipeline.core.values import is_missing, iso_datetime, json_text, jsonable, plain, timestamp


def test_missing_is_none_nan_nat_and_na_but_never_an_empty_container_or_text():
    assert all(is_missing(v) for v in (None, float("nan"), np.float32("nan"), pd.NaT, pd.NA))
    assert not any(is_missing(v) for v in ([], {}, "", np.zeros(0), 0, False, b""))


def test_frame_cells_become_plain_python_and_then_json():
    cell = {"n": np.int64(3), "at": pd.Timestamp("2026-03-01 10:00"), "gone": np.nan, "ids": (np.float64(1.5),)}
    assert plain(cell) == {"n": 3, "at": datetime(2026, 3, 1, 10, 0), "gone": None, "ids": [1.5]}
    assert type(plain(cell)["n"]) is int
    assert jsonable(cell)["at"] == "2026-03-01T10:00:00"
    assert json.loads(json_text({"村": "张湾村", "a": np.arange(2), "s": {1}})) == {"村": "张湾村", "a": [0, 1], "s": [1]}
    assert "张湾村" in json_text("张湾村")


def test_timestamps_are_naive_utc_and_bad_text_is_one_clear_error():
    assert timestamp("2026-03-01T10:00:00+08:00") == pd.Timestamp("2026-03-01 02:00")
    assert timestamp(None) is None and iso_datetime(float("nan")) is None
    assert iso_datetime("2026-03-01") == "2026-03-01T00:00:00"
    with pytest.raises(InputError, match="'yesterday' is not a date/time; use ISO 8601"):
        timestamp("yesterday")
