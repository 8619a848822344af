"""The one set of value helpers: what counts as missing, plain Python values, JSON, timestamps.

Used by the stores, tracking, reports and the web service, so a bad value behaves the same
everywhere: a missing value (None, NaN, NaT, pandas NA) is missing; a list or a dict never is;
a date that cannot be read raises one ``InputError`` line.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import InputError


def is_missing(v: Any) -> bool:
    """None, NaN, NaT or pandas NA (a list, a dict or an array is never missing)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    if isinstance(v, (list, tuple, dict, set, np.ndarray, str, bytes)):
        return False
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def plain(v: Any) -> Any:
    """A frame cell as a plain Python value: missing → None, numpy scalars unwrapped, timestamps as
    ``datetime``; lists and mappings converted item by item."""
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if is_missing(v):
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    if isinstance(v, np.generic):
        return v.item()
    return v


def jsonable(v: Any) -> Any:
    """``plain`` with dates and times as ISO 8601 text (ready for JSON)."""
    v = plain(v)
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    return v


def json_default(v: Any) -> Any:
    """``json.dumps(default=)``: numpy values, arrays, dates, sets and tuples."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (datetime, date, pd.Timestamp)):
        return v.isoformat()
    if isinstance(v, (set, tuple)):
        return list(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def json_text(v: Any) -> str:
    """JSON text of a value (non-ASCII kept, numpy and dates handled)."""
    return json.dumps(v, ensure_ascii=False, default=json_default)


def timestamp(v: Any) -> pd.Timestamp | None:
    """A naive timestamp (tz-aware values converted to UTC), None when missing."""
    if is_missing(v):
        return None
    try:
        ts = pd.Timestamp(v)
    except (ValueError, TypeError):
        raise InputError(f"'{v}' is not a date/time; use ISO 8601 like 2026-03-01T10:00:00") from None
    if ts is pd.NaT:
        return None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def iso_datetime(v: Any) -> str | None:
    """ISO 8601 text of a date/time, None when missing."""
    ts = timestamp(v)
    return None if ts is None else ts.isoformat()


def day_after(day: str | None) -> str | None:
    """The day after a YYYY-MM-DD date (None stays None): an inclusive last day as the exclusive end
    the stores and the statistics count up to (``--to 2026-11-30`` counts all of the 30th)."""
    from datetime import date, timedelta
    return None if not day else (date.fromisoformat(day) + timedelta(days=1)).isoformat()

