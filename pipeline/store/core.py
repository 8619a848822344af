"""The store's domain methods, once, in SQL both backends speak.

``SqlStore`` implements every table method of ``base.Store`` (frames in and out, flights,
detections, cases, case numbers, events, evidence, migrations' bookkeeping) on a handful of
dialect hooks each backend supplies: running a statement (``_x``, ``_rows``; ``?``
placeholders, ``"quoted"`` identifiers), the transaction and its lock, geometry encoding and
the column read for a geometry, the bounding-box filter, the bulk write and the DDL of each
migration.
"""
from __future__ import annotations

import abc
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from pipeline.errors import InputError, StoreError
from pipeline.store.base import FLIGHT_STATUSES, BBox, Store, When
from pipeline.store.schema import COUNTED, TABLES, Table
from pipeline.values import is_missing, iso_datetime, json_text, plain, timestamp

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


def check_bbox(bbox: BBox) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise StoreError(f"bbox {bbox!r} is not (minx, miny, maxx, maxy)") from None
    if x0 > x1 or y0 > y1:
        raise StoreError(f"bbox {bbox!r}: min exceeds max; give (minx, miny, maxx, maxy)")
    return x0, y0, x1, y1


def _in(name: str, value: str | Sequence[str] | None) -> tuple[str, list]:
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


# ------------------------------------------------------------------ the store
class SqlStore(Store):
    """Every table method on the dialect hooks below; see the module docstring."""

    crs: str
    _crs: CRS
    #: [(version, description, step(store))] of the backend's DDL
    MIGRATIONS: list[tuple[int, str, Any]] = []

    # ------------------------------------------------------------ dialect
    @abc.abstractmethod
    def _x(self, query: str, params: Sequence = ()) -> Any:
        """Run one statement inside the current transaction; a cursor."""

    @abc.abstractmethod
    def _rows(self, query: str, params: Sequence = ()) -> list[tuple]:
        """Rows of a query (inside a transaction on its connection, else any)."""

    @abc.abstractmethod
    def _encode(self, geoms: Sequence, table: Table) -> list:
        """Shapely polygons → the backend's geometry values (None for missing/empty)."""

    @abc.abstractmethod
    def _select_geometry(self, column: str) -> str:
        """The SELECT expression that reads a geometry column as WKB."""

    @abc.abstractmethod
    def _decode(self, values: Sequence) -> np.ndarray:
        """Read geometry values → shapely array."""

    @abc.abstractmethod
    def _bbox_clause(self, table: Table, bbox: tuple[float, float, float, float]) -> tuple[str, list]:
        """WHERE clause (and params) of rows whose geometry may intersect bbox."""

    @abc.abstractmethod
    def _write(self, table: Table, cols: list[str], rows: list[tuple], conflict: str) -> None:
        """Bulk INSERT of rows into cols with the ``ON CONFLICT …`` clause."""

    @abc.abstractmethod
    def _version(self) -> int:
        """Schema version in force (0 when none)."""

    def _migration_lock(self) -> None:
        """Taken inside migrate()'s transaction before the version is read (optional)."""

    def _stored_crs(self) -> str | None:
        rows = self._rows("SELECT value FROM store_meta WHERE key = 'crs'")
        return rows[0][0] if rows else None

    def _check_crs(self) -> None:
        stored = self._stored_crs()
        if stored and not CRS.from_user_input(stored).equals(self._crs, ignore_axis_order=True):
            raise StoreError(f"store {self.display_url} holds geometries in {stored}, settings say "
                             f"{self.crs}; set store.crs to {stored} or use another store")

    # ------------------------------------------------------------ schema
    def migrate(self) -> int:
        with self.transaction():
            self._migration_lock()
            current = self._version()
            for version, description, step in self.MIGRATIONS:
                if version > current:
                    step(self)
                    self._x("INSERT INTO schema_version (version, applied_at, description) VALUES (?, ?, ?)",
                            (version, iso_datetime(datetime.now()), description))
            self._check_crs()
            return self._version()

    def status(self) -> dict[str, Any]:
        version = self._version()
        counts = {t: int(self._rows(f"SELECT COUNT(*) FROM {q(t)}")[0][0]) for t in COUNTED} if version else {}
        return {"backend": self.backend, "url": self.display_url, "crs": self.crs, "version": version,
                "latest_version": self.MIGRATIONS[-1][0], "counts": counts}

    # ------------------------------------------------------------ generic frame io
    def _frame(self, table: Table, where: str = "", params: Sequence = (), order: str = "",
               bbox: BBox | None = None) -> gpd.GeoDataFrame | pd.DataFrame:
        names, geom = table.names, table.geometry
        clauses, params = ([where] if where else []), list(params)
        if bbox is not None:
            box = check_bbox(bbox)
            clause, extra = self._bbox_clause(table, box)
            clauses.append(clause)
            params += extra
        cols = [self._select_geometry(c.name) if c.kind == "geometry" else
                f"CAST({q(c.name)} AS TEXT)" if c.kind == "json" else q(c.name) for c in table.columns]
        query = f"SELECT {', '.join(cols)} FROM {q(table.name)}"
        if clauses:
            query += " WHERE " + " AND ".join(f"({c})" for c in clauses)
        query += f" ORDER BY {order or ('event_id' if table.name == 'case_event' else 'fid')}"
        rows = self._rows(query, params)
        values = list(zip(*rows)) if rows else [[] for _ in names]
        data = {c.name: from_sql(c.kind, list(v), c.default)
                for c, v in zip(table.columns, values) if c.kind != "geometry"}
        if geom is None:
            return pd.DataFrame(data, columns=names)
        data[geom] = gpd.GeoSeries(self._decode(values[names.index(geom)]), crs=self.crs)
        gdf = gpd.GeoDataFrame(data, columns=names, geometry=geom, crs=self.crs)
        if bbox is not None and len(gdf):
            gdf = gdf[shapely.intersects(gdf.geometry.values, shapely.box(*box))].reset_index(drop=True)
        return gdf

    def _prepare(self, table: Table, frame: pd.DataFrame) -> tuple[list[str], list[tuple]]:
        """Columns of ``frame`` the table knows, and rows converted for SQL."""
        geom = table.geometry
        if isinstance(frame, gpd.GeoDataFrame) and geom:
            if frame.geometry.name != geom:
                if geom in frame.columns:
                    frame = frame.drop(columns=[geom])
                frame = frame.rename_geometry(geom)
            if frame.crs is not None and not frame.crs.equals(self._crs):
                frame = frame.to_crs(self._crs)
        cols = [c for c in table.names if c in frame.columns]
        values = []
        for name in cols:
            col = table.column(name)
            if col.kind == "geometry":
                values.append(self._encode(frame[name].values, table))
            else:
                values.append([to_sql(col.kind, v, col.default) for v in frame[name].tolist()])
            if col.required and any(v is None for v in values[-1]):
                raise StoreError(f"table {table.name}: column {name} is empty in some rows; "
                                 f"give every row a {name}")
        return cols, list(zip(*values)) if values else []

    def _upsert(self, table: Table, frame: pd.DataFrame, fill: Mapping[str, Any] | None = None,
                keep: Sequence[str] = ()) -> int:
        """INSERT … ON CONFLICT (key) DO UPDATE of the frame's columns; ``fill`` gives values for
        new rows only (callables get the row index), ``keep`` columns keep their stored values."""
        cols, rows = self._prepare(table, frame)
        for k in table.key:
            if k not in cols:
                raise StoreError(f"table {table.name}: the frame has no {k} column; add one")
        if not rows:
            return 0
        keys = [tuple(r[cols.index(k)] for k in table.key) for r in rows]
        if len(set(keys)) != len(keys):
            seen, dup = set(), set()
            for k in keys:
                (dup if k in seen else seen).add(k)
            raise StoreError(f"table {table.name}: duplicate {'/'.join(table.key)} in the frame: "
                             f"{', '.join('/'.join(map(str, k)) for k in sorted(dup)[:5])}; make them unique")
        extra = [c for c in (fill or {}) if c not in cols]
        if extra:
            rows = [r + tuple(fill[c](i) if callable(fill[c]) else fill[c] for c in extra)
                    for i, r in enumerate(rows)]
        sets = [f"{q(c)} = COALESCE({q(table.name)}.{q(c)}, EXCLUDED.{q(c)})" if c in keep
                else f"{q(c)} = EXCLUDED.{q(c)}" for c in cols if c not in table.key]
        conflict = f"ON CONFLICT ({', '.join(map(q, table.key))}) DO " + \
            (f"UPDATE SET {', '.join(sets)}" if sets else "NOTHING")
        with self.transaction():
            self._write(table, cols + extra, rows, conflict)
        return len(rows)

    # ------------------------------------------------------------ flights
    def upsert_flight(self, flight: Mapping[str, Any]) -> None:
        table = TABLES["flight"]
        if not flight.get("flight_id"):
            raise StoreError("upsert_flight: the flight has no flight_id")
        if flight.get("status") is not None and flight["status"] not in FLIGHT_STATUSES:
            raise StoreError(f"flight {flight['flight_id']}: unknown status '{flight['status']}'; "
                             f"use one of {', '.join(FLIGHT_STATUSES)}")
        row = {k: v for k, v in flight.items() if k in table.names and k != "footprint"}
        frame = gpd.GeoDataFrame({k: [v] for k, v in row.items()},
                                 geometry=gpd.GeoSeries([flight.get("footprint")], crs=self.crs), crs=self.crs)
        frame = frame.rename_geometry("footprint")
        if "footprint" not in flight:
            frame = pd.DataFrame(frame.drop(columns="footprint"))
        self._upsert(table, frame, fill={"status": "uploaded"})

    def get_flight(self, flight_id: str) -> dict[str, Any] | None:
        gdf = self._frame(TABLES["flight"], "flight_id = ?", [flight_id])
        return {k: plain(v) for k, v in gdf.iloc[0].items()} if len(gdf) else None

    def list_flights(self, status: str | Sequence[str] | None = None) -> gpd.GeoDataFrame:
        where, params = _in("status", status)
        return self._frame(TABLES["flight"], where, params, order="captured_at NULLS FIRST, flight_id")

    def set_flight_status(self, flight_id: str, status: str, error: str | None = None,
                          model_version: str | None = None) -> None:
        if status not in FLIGHT_STATUSES:
            raise StoreError(f"flight {flight_id}: unknown status '{status}'; "
                             f"use one of {', '.join(FLIGHT_STATUSES)}")
        with self.transaction():
            if not self._rows("SELECT 1 FROM flight WHERE flight_id = ?", [flight_id]):
                raise StoreError(f"flight {flight_id} is not in the store; register it first")
            self._x("UPDATE flight SET status = ?, error = ?, model_version = COALESCE(?, model_version) "
                    "WHERE flight_id = ?", (status, error, model_version, flight_id))
            if status in ("done", "failed"):
                self._x("UPDATE flight SET processed_at = ? WHERE flight_id = ?",
                        (iso_datetime(datetime.now()), flight_id))

    # ------------------------------------------------------------ detections
    def replace_detections(self, flight_id: str, gdf: gpd.GeoDataFrame) -> int:
        if not isinstance(gdf, gpd.GeoDataFrame):
            raise StoreError(f"replace_detections({flight_id}): expected a GeoDataFrame")
        frame = gdf.copy()
        frame["flight_id"] = flight_id
        if "detection_id" not in frame.columns:
            frame["detection_id"] = [f"{flight_id}-{i:05d}" for i in range(len(frame))]
        if "area_m2" not in frame.columns and len(frame):
            frame["area_m2"] = frame.to_crs(self._crs).area if frame.crs else frame.area
        with self.transaction():
            if not self._rows("SELECT 1 FROM flight WHERE flight_id = ?", [flight_id]):
                raise StoreError(f"flight {flight_id} is not in the store; register it before "
                                 f"its detections")
            self._x("DELETE FROM detection WHERE flight_id = ?", [flight_id])
            return self._upsert(TABLES["detection"], frame)

    def detections(self, flight_id: str | None = None, bbox: BBox | None = None) -> gpd.GeoDataFrame:
        where, params = ("flight_id = ?", [flight_id]) if flight_id is not None else ("", [])
        return self._frame(TABLES["detection"], where, params, bbox=bbox)

    # ------------------------------------------------------------ cases
    def cases(self, bbox: BBox | None = None, status: str | Sequence[str] | None = None,
              category: str | Sequence[str] | None = None, town: str | None = None,
              village: str | None = None, since: When | None = None,
              until: When | None = None) -> gpd.GeoDataFrame:
        clauses, params = [], []
        for name, value in (("status", status), ("category", category)):
            w, p = _in(name, value)
            if w:
                clauses.append(w)
                params += p
        for name, value in (("town", town), ("village", village)):
            if value is not None:
                clauses.append(f"{q(name)} = ?")
                params.append(value)
        for value, op in ((since, ">="), (until, "<")):
            if value is not None:
                clauses.append(f"COALESCE(first_seen_at, created_at) {op} ?")
                params.append(to_sql("datetime", value))
        return self._frame(TABLES["cases"], " AND ".join(clauses), params, order="case_no", bbox=bbox)

    def save_cases(self, gdf: gpd.GeoDataFrame) -> int:
        table = TABLES["cases"]
        frame = gdf.copy()
        now = iso_datetime(datetime.now())
        if "updated_at" not in frame.columns:
            frame["updated_at"] = now
        fill: dict[str, Any] = {"case_uuid": lambda i: str(uuid.uuid4()), "created_at": now, "status": "suspected"}
        for c in table.columns:
            if c.kind == "json":
                fill[c.name] = to_sql("json", c.default)
        return self._upsert(table, frame, fill=fill, keep=("case_uuid", "created_at"))

    def allocate_case_numbers(self, year: int, n: int) -> list[str]:
        if n < 0:
            raise StoreError(f"allocate_case_numbers: n must be >= 0, got {n}")
        if n == 0:
            return []
        head = f"{self.case_prefix}{int(year)}-"
        key = (self.case_prefix, int(year))
        with self.transaction():      # writers hold the store's write lock: no one else counts now
            self._x("INSERT INTO case_counter (prefix, year, last_seq) VALUES (?, ?, 0) "
                    "ON CONFLICT (prefix, year) DO NOTHING", key)
            last = self._rows("SELECT last_seq FROM case_counter WHERE prefix = ? AND year = ?", key)[0][0]
            used = [int(s) for (no,) in self._rows("SELECT case_no FROM cases WHERE substr(case_no, 1, ?) = ?",
                                                   (len(head), head))
                    if re.fullmatch(r"[0-9]{1,18}", s := no[len(head):])]
            start = max(int(last), max(used, default=0)) + 1
            self._x("UPDATE case_counter SET last_seq = ? WHERE prefix = ? AND year = ?", (start + n - 1, *key))
        return [f"{head}{s:06d}" for s in range(start, start + n)]

    # ------------------------------------------------------------ history and evidence
    def append_events(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[int]:
        table = TABLES["case_event"]
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
        cols = [c for c in table.names if c != "event_id"]
        now = iso_datetime(datetime.now())
        insert = f"INSERT INTO case_event ({', '.join(map(q, cols))}) VALUES ({', '.join('?' * len(cols))}) " \
                 f"RETURNING event_id"
        ids = []
        with self.transaction():
            for r in records:
                if is_missing(r.get("case_no")):
                    raise StoreError("append_events: an event has no case_no; give every event one")
                vals = [to_sql(table.column(c).kind, r.get(c)) for c in cols]
                vals[cols.index("at")] = vals[cols.index("at")] or now
                ids.append(int(self._x(insert, vals).fetchone()[0]))
        return ids

    def events(self, case_no: str | None = None) -> pd.DataFrame:
        where, params = ("case_no = ?", [case_no]) if case_no is not None else ("", [])
        return self._frame(TABLES["case_event"], where, params, order="event_id")

    def evidence(self, case_no: str | None = None) -> pd.DataFrame:
        where, params = ("case_no = ?", [case_no]) if case_no is not None else ("", [])
        return self._frame(TABLES["evidence"], where, params, order="captured_at NULLS FIRST, fid")
