"""What both store backends share below the table methods: SQL values of each column kind,
polygons for writing, WKB decoding, the store CRS check, identifier quoting and DDL columns."""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from pipeline.core.errors import InputError, StoreError
from pipeline.core.values import is_missing, json_text, timestamp
from pipeline.store.schema import (
    CASE_CHANGE_COLUMNS,
    CASE_HOUSE_COLUMNS,
    CASE_LEDGER_COLUMNS,
    CASE_PARTY_COLUMNS,
    DOCUMENT,
    FLIGHT_CHANGE_COLUMNS,
    HEIGHT_COLUMNS,
    HOUSE,
    HOUSE_EVENT,
    MEDIA,
    MODEL,
    MODEL_EVENT,
    MODEL_VERSION_COLUMNS,
    TABLES,
    USER_GUARD_COLUMNS,
    USERS,
    Table,
)

_GEOMETRY_NAMES = ("Point LineString LinearRing Polygon MultiPoint MultiLineString MultiPolygon "
                   "GeometryCollection").split()


def q(name: str) -> str:
    """A quoted SQL identifier (the same in SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


# ------------------------------------------------------------------ values
def to_sql(kind: str, v: Any, default: Any = None) -> Any:
    """A frame cell as the SQL value of a column kind (JSON as text, dates as ISO text)."""
    if kind == "json":
        if not isinstance(v, (list, dict, tuple, set, np.ndarray)) and is_missing(v):
            v = default
        if v is None:
            return None
        if isinstance(v, str):
            try:
                json.loads(v)
                return v
            except ValueError:
                pass
        return json_text(v)
    if is_missing(v):
        return None
    if kind == "text":
        return str(v)
    if kind == "int":
        return int(v)
    if kind == "real":
        return float(v)
    if kind in ("date", "datetime"):
        ts = store_timestamp(v)
        return None if ts is None else ts.date().isoformat() if kind == "date" else ts.isoformat()
    raise ValueError(kind)


def store_timestamp(v: Any) -> pd.Timestamp | None:
    """``values.timestamp`` with the store's error."""
    try:
        return timestamp(v)
    except InputError as e:
        raise StoreError(str(e)) from None


def from_sql(kind: str, values: list, default: Any = None) -> Any:
    """A column read back: Int64, float64, datetime64[ns], Python lists/dicts, or str."""
    if kind == "int":
        return pd.array(values, dtype="Int64")
    if kind == "real":
        return np.array([np.nan if v is None else v for v in values], dtype="float64")
    if kind in ("date", "datetime"):
        return pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601").astype("datetime64[ns]")
    if kind == "json":
        s = pd.Series([None] * len(values), dtype=object)
        for i, v in enumerate(values):
            s.iat[i] = json.loads(v) if v is not None else \
                (json.loads(json.dumps(default)) if default is not None else None)
        return s
    return pd.Series(values, dtype="str")


def multipolygons(geoms: Sequence, table: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(row indices, MultiPolygons) of the rows holding a polygon; a non-polygon is refused."""
    arr = np.asarray(list(geoms), dtype=object)
    if not len(arr):
        return np.zeros(0, int), arr
    missing = np.array([g is None or (isinstance(g, float) and np.isnan(g)) for g in arr])
    arr = np.where(missing, None, arr)
    idx = np.flatnonzero(~missing & ~shapely.is_empty(arr))
    g = arr[idx]
    if not len(idx):
        return idx, g
    types = shapely.get_type_id(g)
    bad = ~np.isin(types, (3, 6))
    if bad.any():
        raise StoreError(f"table {table}: row {int(idx[bad][0])} has a {_GEOMETRY_NAMES[int(types[bad][0])]} "
                         f"geometry; only polygons are stored; repair or drop it first")
    poly = types == 3
    if poly.any():
        g = g.copy()
        g[poly] = shapely.multipolygons(g[poly], indices=np.arange(int(poly.sum())))
    return idx, g


def from_wkb(values: Sequence[bytes | None]) -> np.ndarray:
    """WKB → shapely array (None for NULL); one-part MultiPolygons come back as Polygons."""
    geoms = shapely.from_wkb(np.array([None if v is None else bytes(v) for v in values], dtype=object))
    single = (shapely.get_type_id(geoms) == 6) & (shapely.get_num_geometries(geoms) == 1)
    if single.any():
        geoms[single] = shapely.get_geometry(geoms[single], 0)
    return geoms


def projected_crs(crs: str) -> CRS:
    try:
        c = CRS.from_user_input(crs)
    except Exception:
        raise StoreError(f"store CRS '{crs}' is not a known CRS; set store.crs to e.g. EPSG:4547") from None
    unit = c.axis_info[0].unit_name if c.axis_info else ""
    if not c.is_projected or unit not in ("metre", "meter"):
        raise StoreError(f"store CRS '{crs}' is not projected in metres; set store.crs to e.g. "
                         f"EPSG:4547 (CGCS2000 / 3-degree Gauss-Kruger CM 114E)")
    return c


def check_bbox(bbox) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise StoreError(f"bbox {bbox!r} is not (minx, miny, maxx, maxy)") from None
    if x0 > x1 or y0 > y1:
        raise StoreError(f"bbox {bbox!r}: min exceeds max; give (minx, miny, maxx, maxy)")
    return x0, y0, x1, y1


def in_clause(name: str, value: str | Sequence[str] | None) -> tuple[str, list]:
    if value is None:
        return "", []
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    return f"{q(name)} IN ({', '.join('?' * len(values))})", values


def table_columns(table: Table, sql_type, identity: str) -> list[str]:
    """Column definitions of a table for CREATE TABLE: ``identity`` (the fid / event_id key),
    each column as ``sql_type(column)``, NOT NULL where required, and the natural key."""
    cols = [identity] if identity else []
    for c in table.columns:
        if c.name == "event_id":
            continue
        ref = " REFERENCES flight (flight_id)" if (table.name, c.name) == ("detection", "flight_id") else ""
        cols.append(f"{q(c.name)} {sql_type(c)}{' NOT NULL' if c.required else ''}{ref}")
    key = ", ".join(map(q, table.key))
    cols.append(f"PRIMARY KEY ({key})" if table.name == "case_counter" else f"UNIQUE ({key})")
    return cols


def add_user_guard_columns(store, sql_type) -> None:
    """Migration 3 of both backends: the account columns of sign-in lockout and logout."""
    for name in USER_GUARD_COLUMNS:
        store._x(f"ALTER TABLE {q(USERS.name)} ADD COLUMN {q(name)} {sql_type(USERS.column(name))}")


def add_columns(store, sql_type, table_name: str, columns) -> None:
    """Add ``columns`` (as the schema declares them) to an existing table."""
    table = TABLES[table_name]
    for name in columns:
        store._x(f"ALTER TABLE {q(table.name)} ADD COLUMN {q(name)} {sql_type(table.column(name))}")


def add_height_columns(store, sql_type) -> None:
    """Migration 9: the heights columns of flight, detection and cases (``schema.HEIGHT_COLUMNS``)."""
    for table, columns in HEIGHT_COLUMNS.items():
        add_columns(store, sql_type, table, columns)


def _case_columns_and_table(store, sql_type, create_table, columns, table) -> None:
    """Add ``columns`` (of schema cases) to cases and create ``table`` with its indexes
    (``create_table(table)`` is the backend's CREATE TABLE with its bookkeeping)."""
    add_columns(store, sql_type, "cases", columns)
    create_table(table)
    for i, idx in enumerate(table.indexes):
        store._x(f"CREATE INDEX {q(f'{table.name}_ix{i}')} ON {q(table.name)} ({', '.join(map(q, idx))})")


def add_house_register(store, sql_type, create_feature_table, create_table, append_only) -> None:
    """Migration 10 of both backends: the building register (house, a feature table; house_event,
    append-only) and the register number of a case's house."""
    add_columns(store, sql_type, "cases", CASE_HOUSE_COLUMNS)
    create_feature_table(HOUSE)
    create_table(HOUSE_EVENT)
    append_only(HOUSE_EVENT.name)
    for table in (HOUSE, HOUSE_EVENT):
        for i, idx in enumerate(table.indexes):
            store._x(f"CREATE INDEX {q(f'{table.name}_ix{i}')} ON {q(table.name)} ({', '.join(map(q, idx))})")


def add_documents(store, sql_type, create_table) -> None:
    """Migration 4 of both backends: the ledger columns of cases and the document table."""
    _case_columns_and_table(store, sql_type, create_table, CASE_LEDGER_COLUMNS, DOCUMENT)


def add_media(store, sql_type, create_table) -> None:
    """Migration 5 of both backends: the media table and the 当事人 columns of cases."""
    _case_columns_and_table(store, sql_type, create_table, CASE_PARTY_COLUMNS, MEDIA)


def add_change_columns(store, sql_type) -> None:
    """Migration 6 of both backends: a failed flight's Chinese error and its co-registration;
    a case's change confidence and evidence."""
    add_columns(store, sql_type, "flight", FLIGHT_CHANGE_COLUMNS)
    add_columns(store, sql_type, "cases", CASE_CHANGE_COLUMNS)


def add_model_registry(store, sql_type, create_table, append_only) -> None:
    """Migration 7 of both backends: the model registry (tables model, model_event; the second
    append-only through ``append_only(table_name)``) and the model version of detections and cases."""
    for name, columns in MODEL_VERSION_COLUMNS.items():
        add_columns(store, sql_type, name, columns)
    for table in (MODEL, MODEL_EVENT):
        create_table(table)
        for i, idx in enumerate(table.indexes):
            store._x(f"CREATE INDEX {q(f'{table.name}_ix{i}')} ON {q(table.name)} ({', '.join(map(q, idx))})")
    append_only(MODEL_EVENT.name)
