"""The embedded store: one SQLite file that is a GeoPackage (QGIS and GDAL open it directly).

Feature tables (flight, detection, parcel, zone, cases) carry a GeoPackage geometry column
(GP header + envelope + WKB, MULTIPOLYGON) with an R-tree spatial index kept by the
standard GeoPackage triggers; case_event and evidence are GeoPackage attribute tables.
Internal tables (store_meta, schema_version, case_counter) are not registered as layers.
WAL journal: readers never wait for the writer; writers take the lock at BEGIN IMMEDIATE
and wait up to ``busy_timeout`` for each other.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import struct
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from pipeline.errors import StoreError
from pipeline.store.base import FLIGHT_STATUSES, BBox, Claim, Store, When
from pipeline.store.schema import COUNTED, TABLES, Table

APPLICATION_ID = 0x47504B47          # "GPKG"
USER_VERSION = 10200                 # GeoPackage 1.2
BUSY_TIMEOUT_S = 30.0
_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}
_SQL_TYPE = {"text": "TEXT", "int": "INTEGER", "real": "DOUBLE", "date": "DATE",
             "datetime": "TEXT", "json": "TEXT", "geometry": "MULTIPOLYGON"}
FEATURE_TABLES = ("flight", "detection", "parcel", "zone", "cases")
ATTRIBUTE_TABLES = ("case_event", "evidence")


# ------------------------------------------------------------------ GeoPackage geometry blobs
def encode_geometries(geoms: Sequence, srs_id: int, table: str = "") -> list[bytes | None]:
    """Shapely polygons → GeoPackage binary (little-endian, xy envelope, MultiPolygon WKB)."""
    arr = np.asarray(list(geoms), dtype=object)
    out: list[bytes | None] = [None] * len(arr)
    if not len(arr):
        return out
    missing = np.array([g is None or (isinstance(g, float) and math.isnan(g)) for g in arr])
    arr = np.where(missing, None, arr)
    keep = ~missing & ~shapely.is_empty(arr)
    idx = np.flatnonzero(keep)
    if not len(idx):
        return out
    g = arr[idx]
    types = shapely.get_type_id(g)
    bad = ~np.isin(types, (3, 6))
    if bad.any():
        kind = shapely.get_type_id(g[bad][0])
        name = ("Point LineString LinearRing Polygon MultiPoint MultiLineString MultiPolygon "
                "GeometryCollection").split()[kind]
        raise StoreError(f"table {table}: row {int(idx[bad][0])} has a {name} geometry; "
                         f"only polygons are stored; repair or drop it first")
    poly = types == 3
    if poly.any():
        g = g.copy()
        g[poly] = shapely.multipolygons(g[poly], indices=np.arange(int(poly.sum())))
    wkb = shapely.to_wkb(g, byte_order=1, output_dimension=2)
    bounds = shapely.bounds(g)
    pack = struct.Struct("<2sBBi4d").pack
    for i, w, (x0, y0, x1, y1) in zip(idx, wkb, bounds):
        out[i] = pack(b"GP", 0, 3, srs_id, x0, x1, y0, y1) + w
    return out


def _wkb_part(blob: bytes) -> bytes:
    flags = blob[3]
    return blob[8 + _ENVELOPE_BYTES[(flags >> 1) & 7]:]


def decode_geometries(blobs: Sequence[bytes | None]) -> np.ndarray:
    """GeoPackage binary → shapely array (None for NULL); one-part MultiPolygons → Polygon."""
    wkbs = [None if b is None else _wkb_part(bytes(b)) for b in blobs]
    geoms = shapely.from_wkb(np.array(wkbs, dtype=object)) if wkbs else np.array([], dtype=object)
    single = (shapely.get_type_id(geoms) == 6) & (shapely.get_num_geometries(geoms) == 1)
    if single.any():
        geoms[single] = shapely.get_geometry(geoms[single], 0)
    return geoms


def _envelope(blob: bytes | None) -> tuple[float, float, float, float] | None:
    """(minx, maxx, miny, maxy) of a GeoPackage blob, or None when NULL or empty."""
    if blob is None or blob[3] & 0x10:
        return None
    if (blob[3] >> 1) & 7:
        return struct.unpack_from("<4d" if blob[3] & 1 else ">4d", blob, 8)
    g = shapely.from_wkb(_wkb_part(blob))
    if g.is_empty:
        return None
    x0, y0, x1, y1 = g.bounds
    return x0, x1, y0, y1


def _st(i: int):
    def f(blob):
        env = _envelope(blob)
        return None if env is None else env[i]
    return f


def _st_is_empty(blob) -> int | None:
    if blob is None:
        return None
    return int(_envelope(blob) is None)


# ------------------------------------------------------------------ value conversion
def _isnull(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, np.floating) and bool(np.isnan(v))


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (datetime, date, pd.Timestamp)):
        return v.isoformat()
    if isinstance(v, (set, tuple)):
        return list(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def _timestamp(v: Any) -> pd.Timestamp | None:
    if _isnull(v):
        return None
    try:
        ts = pd.Timestamp(v)
    except (ValueError, TypeError):
        raise StoreError(f"'{v}' is not a date/time; use ISO 8601 like 2026-03-01T10:00:00") from None
    if ts is pd.NaT:
        return None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def iso_datetime(v: Any) -> str | None:
    ts = _timestamp(v)
    return None if ts is None else ts.isoformat()


def _to_sql(kind: str, v: Any, default: Any = None) -> Any:
    if kind == "json":
        if _isnull(v) if not isinstance(v, (list, dict, tuple, set, np.ndarray)) else False:
            v = default
        if v is None:
            return None
        if isinstance(v, str):
            try:
                json.loads(v)
                return v
            except ValueError:
                pass
        return json.dumps(v, ensure_ascii=False, default=_json_default)
    if _isnull(v):
        return None
    if kind == "text":
        return str(v)
    if kind == "int":
        return int(v)
    if kind == "real":
        return float(v)
    if kind == "datetime":
        return iso_datetime(v)
    if kind == "date":
        ts = _timestamp(v)
        return None if ts is None else ts.date().isoformat()
    raise ValueError(kind)


def _series(kind: str, values: list, default: Any = None) -> Any:
    if kind == "int":
        return pd.array(values, dtype="Int64")
    if kind == "real":
        return np.array([np.nan if v is None else v for v in values], dtype="float64")
    if kind in ("date", "datetime"):
        return pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601").astype("datetime64[ns]")
    if kind == "json":
        out = [json.loads(v) if v is not None else
               (json.loads(json.dumps(default)) if default is not None else None) for v in values]
        s = pd.Series([None] * len(out), dtype=object)
        for i, v in enumerate(out):
            s.iat[i] = v
        return s
    return pd.Series(values, dtype="str")


def _py(v: Any) -> Any:
    """A frame cell as a plain Python value (for dicts)."""
    if isinstance(v, pd.Timestamp):
        return None if v is pd.NaT else v.to_pydatetime()
    if _isnull(v) if not isinstance(v, (list, dict)) else False:
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ------------------------------------------------------------------ the store
class GpkgStore(Store):
    """The embedded GeoPackage store at ``path``; see the module docstring."""

    backend = "gpkg"

    def __init__(self, path: str | Path, crs: str, case_prefix: str = "LW"):
        self.path = Path(path)
        self.url = str(self.path)
        self.crs = str(crs)
        self.case_prefix = case_prefix
        self._crs = _projected_crs(self.crs)
        code = self._crs.to_epsg()
        self.srs_id = int(code) if code else 100000
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"store {self.path}: cannot create its folder ({e.strerror}); "
                             f"pick a writable location") from None
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self._con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                        check_same_thread=False)
            for i, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
                self._con.create_function(name, 1, _st(i), deterministic=True)
            self._con.create_function("ST_IsEmpty", 1, _st_is_empty, deterministic=True)
            self._con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._con.execute("PRAGMA foreign_keys = ON")
            tables = {r[0] for r in self._con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            mode = self._con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._con.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"store {self.path} is not a usable GeoPackage/SQLite file ({e}); "
                             f"point store.url at a new .gpkg file") from None
        if mode.lower() != "wal":
            raise StoreError(f"store {self.path}: cannot switch to WAL journal (got {mode}); "
                             f"put the store on a local disk")
        if existed and tables and "store_meta" not in tables:
            self._con.close()
            raise StoreError(f"{self.path} is a GeoPackage/SQLite file but not a patrol store; "
                             f"point store.url at a new .gpkg file")
        if "store_meta" in tables:
            self._check_crs()

    # ------------------------------------------------------------ plumbing
    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None  # type: ignore[assignment]

    def _x(self, sql: str, params: Sequence | Mapping = ()) -> sqlite3.Cursor:
        if self._con is None:
            raise StoreError(f"store {self.path} is closed; open it again")
        try:
            return self._con.execute(sql, params)
        except sqlite3.IntegrityError as e:
            raise StoreError(f"store {self.path}: {e}; the rows were not written") from None
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise StoreError(f"store {self.path} is busy (another writer held it for "
                                 f"{BUSY_TIMEOUT_S:.0f} s); try again later") from None
            raise

    def _many(self, sql: str, rows: list[tuple]) -> None:
        try:
            self._con.executemany(sql, rows)
        except sqlite3.IntegrityError as e:
            raise StoreError(f"store {self.path}: {e}; nothing of this write was kept") from None

    def _rows(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._x(sql, params).fetchall()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._x("BEGIN IMMEDIATE")
                self._depth = 1
                try:
                    yield
                except BaseException:
                    self._con.execute("ROLLBACK")
                    raise
                else:
                    try:
                        self._x("COMMIT")
                    except BaseException:
                        if self._con.in_transaction:
                            self._con.execute("ROLLBACK")
                        raise
                finally:
                    self._depth = 0
            else:
                name = f"sp_{self._depth}"
                self._x(f"SAVEPOINT {name}")
                self._depth += 1
                try:
                    yield
                except BaseException:
                    self._con.execute(f"ROLLBACK TO {name}")
                    self._con.execute(f"RELEASE {name}")
                    raise
                else:
                    self._x(f"RELEASE {name}")
                finally:
                    self._depth -= 1

    def _check_crs(self) -> None:
        row = self._con.execute("SELECT value FROM store_meta WHERE key = 'crs'").fetchone()
        if row and not CRS.from_user_input(row[0]).equals(self._crs, ignore_axis_order=True):
            raise StoreError(f"store {self.path} holds geometries in {row[0]}, settings say "
                             f"{self.crs}; set store.crs to {row[0]} or use another store file")

    # ------------------------------------------------------------ schema
    def _version(self) -> int:
        tables = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables:
            return 0
        return int(self._con.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])

    def migrate(self) -> int:
        with self.transaction():
            current = self._version()
            for version, description, step in MIGRATIONS:
                if version > current:
                    step(self)
                    self._x("INSERT INTO schema_version (version, applied_at, description) "
                            "VALUES (?, ?, ?)", (version, iso_datetime(datetime.now()), description))
            self._check_crs()
        return self._version()

    def status(self) -> dict[str, Any]:
        with self._lock:
            counts = {t: int(self._x(f"SELECT COUNT(*) FROM {_q(t)}").fetchone()[0])
                      for t in COUNTED} if self._version() else {}
            return {"backend": self.backend, "url": self.url, "crs": self.crs,
                    "version": self._version(), "latest_version": MIGRATIONS[-1][0],
                    "counts": counts}

    # ------------------------------------------------------------ generic frame io
    def _frame(self, table: Table, where: str = "", params: Sequence = (), order: str = "",
               bbox: BBox | None = None) -> gpd.GeoDataFrame | pd.DataFrame:
        names = table.names
        geom = table.geometry
        clauses = [where] if where else []
        params = list(params)
        if bbox is not None:
            x0, y0, x1, y1 = _bbox(bbox)
            clauses.append(f"fid IN (SELECT id FROM {_q(f'rtree_{table.name}_{geom}')} "
                           f"WHERE minx <= ? AND maxx >= ? AND miny <= ? AND maxy >= ?)")
            params += [x1, x0, y1, y0]
        sql = f"SELECT {', '.join(_q(n) for n in names)} FROM {_q(table.name)}"
        if clauses:
            sql += " WHERE " + " AND ".join(f"({c})" for c in clauses)
        sql += f" ORDER BY {order or 'fid'}"
        rows = self._rows(sql, params)
        cols = list(zip(*rows)) if rows else [[] for _ in names]
        data = {}
        for c, values in zip(table.columns, cols):
            if c.kind != "geometry":
                data[c.name] = _series(c.kind, list(values), c.default)
        if geom is None:
            return pd.DataFrame(data, columns=names)
        geoms = decode_geometries(cols[names.index(geom)])
        data[geom] = gpd.GeoSeries(geoms, crs=self.crs)
        gdf = gpd.GeoDataFrame(data, columns=names, geometry=geom, crs=self.crs)
        if bbox is not None and len(gdf):
            gdf = gdf[shapely.intersects(gdf.geometry.values, shapely.box(*_bbox(bbox)))]
            gdf = gdf.reset_index(drop=True)
        return gdf

    def _prepare(self, table: Table, frame: pd.DataFrame) -> tuple[list[str], list[tuple]]:
        """Columns of ``frame`` the table knows, and rows converted for SQL."""
        frame = self._in_crs(frame, table)
        cols = [c for c in table.names if c in frame.columns]
        values = []
        for name in cols:
            col = table.column(name)
            if col.kind == "geometry":
                values.append(encode_geometries(frame[name].values, self.srs_id, table.name))
            else:
                values.append([_to_sql(col.kind, v, col.default) for v in frame[name].tolist()])
        for name, vals in zip(cols, values):
            if table.column(name).required and any(v is None for v in vals):
                raise StoreError(f"table {table.name}: column {name} is empty in some rows; "
                                 f"give every row a {name}")
        return cols, list(zip(*values)) if values else []

    def _in_crs(self, frame: pd.DataFrame, table: Table) -> pd.DataFrame:
        geom = table.geometry
        if isinstance(frame, gpd.GeoDataFrame) and geom:
            if frame.geometry.name != geom:
                if geom in frame.columns and frame.geometry.name != geom:
                    frame = frame.drop(columns=[geom])
                frame = frame.rename_geometry(geom)
            if frame.crs is not None and not frame.crs.equals(self._crs):
                frame = frame.to_crs(self._crs)
        return frame

    def _upsert(self, table: Table, frame: pd.DataFrame, fill: Mapping[str, Any] | None = None,
                keep: Sequence[str] = ()) -> int:
        """INSERT … ON CONFLICT(key) DO UPDATE of the frame's columns; ``fill`` gives values
        for new rows only (callables get the row index), ``keep`` columns keep stored values."""
        cols, rows = self._prepare(table, frame)
        for k in table.key:
            if k not in cols:
                raise StoreError(f"table {table.name}: the frame has no {k} column; add one")
        if not rows:
            return 0
        extra = [c for c in (fill or {}) if c not in cols]
        if extra:
            add = []
            for i in range(len(rows)):
                add.append(tuple(fill[c](i) if callable(fill[c]) else fill[c] for c in extra))
            rows = [r + a for r, a in zip(rows, add)]
        allcols = cols + extra
        sets = []
        for c in cols:
            if c in table.key:
                continue
            if c in keep:
                sets.append(f"{_q(c)} = COALESCE({_q(table.name)}.{_q(c)}, excluded.{_q(c)})")
            else:
                sets.append(f"{_q(c)} = excluded.{_q(c)}")
        sql = (f"INSERT INTO {_q(table.name)} ({', '.join(map(_q, allcols))}) "
               f"VALUES ({', '.join('?' * len(allcols))}) "
               f"ON CONFLICT ({', '.join(map(_q, table.key))}) DO "
               + (f"UPDATE SET {', '.join(sets)}" if sets else "NOTHING"))
        keys = [tuple(r[cols.index(k)] for k in table.key) for r in rows]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
            raise StoreError(f"table {table.name}: duplicate {'/'.join(table.key)} in the frame: "
                             f"{', '.join('/'.join(map(str, k)) for k in dup)}; make them unique")
        with self.transaction():
            self._many(sql, rows)
        return len(rows)

    # ------------------------------------------------------------ flights
    def upsert_flight(self, flight: Mapping[str, Any]) -> None:
        table = TABLES["flight"]
        if not flight.get("flight_id"):
            raise StoreError("upsert_flight: the flight has no flight_id")
        if flight.get("status") is not None and flight["status"] not in FLIGHT_STATUSES:
            raise StoreError(f"flight {flight['flight_id']}: unknown status '{flight['status']}'; "
                             f"use one of {', '.join(FLIGHT_STATUSES)}")
        row = {k: v for k, v in flight.items() if k in table.names}
        foot = row.pop("footprint", None) if "footprint" in row else None
        frame = gpd.GeoDataFrame({k: [v] for k, v in row.items()},
                                 geometry=gpd.GeoSeries([foot], crs=self.crs), crs=self.crs)
        frame = frame.rename_geometry("footprint")
        if "footprint" not in flight:
            frame = pd.DataFrame(frame.drop(columns="footprint"))
        self._upsert(table, frame, fill={"status": "uploaded"})

    def claim_flight(self, flight_id: str) -> Claim | None:
        """An exclusive ``flock`` on ``<store>.locks/<flight_id>.lock`` (the file stays; the
        kernel drops the lock when its holder exits, however it exits)."""
        import fcntl

        folder = self.path.with_name(self.path.name + ".locks")
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", flight_id)
        if name != flight_id:
            name += "-" + hashlib.sha1(flight_id.encode()).hexdigest()[:8]
        try:
            folder.mkdir(exist_ok=True)
            fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o664)
        except OSError as e:
            raise StoreError(f"store {self.path}: cannot create the lock file of flight {flight_id} "
                             f"in {folder} ({e.strerror}); make the store's folder writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

        def release() -> None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return Claim(flight_id, release)

    def get_flight(self, flight_id: str) -> dict[str, Any] | None:
        gdf = self._frame(TABLES["flight"], "flight_id = ?", [flight_id])
        if not len(gdf):
            return None
        return {k: _py(v) for k, v in gdf.iloc[0].items()}

    def list_flights(self, status: str | Sequence[str] | None = None) -> gpd.GeoDataFrame:
        where, params = _in("status", status)
        return self._frame(TABLES["flight"], where, params, order="captured_at, flight_id")

    def set_flight_status(self, flight_id: str, status: str, error: str | None = None,
                          model_version: str | None = None) -> None:
        if status not in FLIGHT_STATUSES:
            raise StoreError(f"flight {flight_id}: unknown status '{status}'; "
                             f"use one of {', '.join(FLIGHT_STATUSES)}")
        processed = iso_datetime(datetime.now()) if status in ("done", "failed") else None
        with self.transaction():
            cur = self._x("UPDATE flight SET status = ?, error = ?, "
                          "model_version = COALESCE(?, model_version), "
                          "processed_at = COALESCE(?, processed_at) WHERE flight_id = ?",
                          (status, error, model_version, processed, flight_id))
            if cur.rowcount == 0:
                raise StoreError(f"flight {flight_id} is not in the store; register it first")

    # ------------------------------------------------------------ detections
    def replace_detections(self, flight_id: str, gdf: gpd.GeoDataFrame) -> int:
        table = TABLES["detection"]
        frame = gdf.copy()
        if not isinstance(frame, gpd.GeoDataFrame):
            raise StoreError(f"replace_detections({flight_id}): expected a GeoDataFrame")
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
            return self._upsert(table, frame)

    def detections(self, flight_id: str | None = None, bbox: BBox | None = None) -> gpd.GeoDataFrame:
        where, params = ("flight_id = ?", [flight_id]) if flight_id is not None else ("", [])
        return self._frame(TABLES["detection"], where, params, bbox=bbox)

    # ------------------------------------------------------------ registry: in base.Store

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
                clauses.append(f"{name} = ?")
                params.append(value)
        when = "COALESCE(first_seen_at, created_at)"
        if since is not None:
            clauses.append(f"{when} >= ?")
            params.append(iso_datetime(since))
        if until is not None:
            clauses.append(f"{when} < ?")
            params.append(iso_datetime(until))
        return self._frame(TABLES["cases"], " AND ".join(clauses), params, order="case_no", bbox=bbox)

    def save_cases(self, gdf: gpd.GeoDataFrame) -> int:
        table = TABLES["cases"]
        frame = gdf.copy()
        now = iso_datetime(datetime.now())
        if "updated_at" not in frame.columns:
            frame["updated_at"] = now
        fill = {"case_uuid": lambda i: str(uuid.uuid4()), "created_at": now, "status": "suspected"}
        for c in table.columns:
            if c.kind == "json":
                fill[c.name] = json.dumps(c.default)
        return self._upsert(table, frame, fill=fill, keep=("case_uuid", "created_at"))

    def allocate_case_numbers(self, year: int, n: int) -> list[str]:
        if n < 0:
            raise StoreError(f"allocate_case_numbers: n must be >= 0, got {n}")
        if n == 0:
            return []
        head = f"{self.case_prefix}{int(year)}-"
        with self.transaction():
            last = self._x("SELECT last_seq FROM case_counter WHERE prefix = ? AND year = ?",
                           (self.case_prefix, int(year))).fetchone()
            used = self._x("SELECT MAX(CAST(substr(case_no, ?) AS INTEGER)) FROM cases "
                           "WHERE substr(case_no, 1, ?) = ?",
                           (len(head) + 1, len(head), head)).fetchone()[0]
            start = max(last[0] if last else 0, used or 0) + 1
            self._x("INSERT INTO case_counter (prefix, year, last_seq) VALUES (?, ?, ?) "
                    "ON CONFLICT (prefix, year) DO UPDATE SET last_seq = excluded.last_seq",
                    (self.case_prefix, int(year), start + n - 1))
        return [f"{head}{s:06d}" for s in range(start, start + n)]

    # ------------------------------------------------------------ history and evidence
    def append_events(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[int]:
        table = TABLES["case_event"]
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
        cols = [c for c in table.names if c != "event_id"]
        now = iso_datetime(datetime.now())
        ids = []
        with self.transaction():
            for r in records:
                if _isnull(r.get("case_no")):
                    raise StoreError("append_events: an event has no case_no; give every event one")
                vals = [_to_sql(table.column(c).kind, r.get(c)) for c in cols]
                vals[cols.index("at")] = vals[cols.index("at")] or now
                cur = self._x(f"INSERT INTO case_event ({', '.join(cols)}) VALUES "
                              f"({', '.join('?' * len(cols))})", vals)
                ids.append(int(cur.lastrowid))
        return ids

    def events(self, case_no: str | None = None) -> pd.DataFrame:
        where, params = ("case_no = ?", [case_no]) if case_no is not None else ("", [])
        return self._frame(TABLES["case_event"], where, params, order="event_id")

    def evidence(self, case_no: str | None = None) -> pd.DataFrame:
        where, params = ("case_no = ?", [case_no]) if case_no is not None else ("", [])
        return self._frame(TABLES["evidence"], where, params, order="captured_at, fid")


# ------------------------------------------------------------------ helpers
def _projected_crs(crs: str) -> CRS:
    try:
        c = CRS.from_user_input(crs)
    except Exception:
        raise StoreError(f"store CRS '{crs}' is not a known CRS; set store.crs to e.g. EPSG:4547") from None
    unit = c.axis_info[0].unit_name if c.axis_info else ""
    if not c.is_projected or unit not in ("metre", "meter"):
        raise StoreError(f"store CRS '{crs}' is not projected in metres; set store.crs to e.g. "
                         f"EPSG:4547 (CGCS2000 / 3-degree Gauss-Kruger CM 114E)")
    return c


def _bbox(bbox: BBox) -> tuple[float, float, float, float]:
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
    values = [value] if isinstance(value, str) else list(value)
    return f"{name} IN ({', '.join('?' * len(values))})", values


# ------------------------------------------------------------------ migrations
def _srs_rows(store: GpkgStore) -> list[tuple]:
    wgs = CRS.from_epsg(4326)
    rows = [("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate reference system"),
            ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
            ("WGS 84 geodetic", 4326, "EPSG", 4326, wgs.to_wkt("WKT1_GDAL"),
             "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid")]
    c = store._crs
    code = c.to_epsg()
    if store.srs_id != 4326:
        rows.append((c.name, store.srs_id, "EPSG" if code else "NONE", int(code or store.srs_id),
                     c.to_wkt("WKT1_GDAL") or c.to_wkt(), "store CRS"))
    return rows


def _rtree_sql(t: str, c: str) -> list[str]:
    r = f"rtree_{t}_{c}"
    env = f"NEW.fid, ST_MinX(NEW.{c}), ST_MaxX(NEW.{c}), ST_MinY(NEW.{c}), ST_MaxY(NEW.{c})"
    return [
        f"CREATE VIRTUAL TABLE {r} USING rtree(id, minx, maxx, miny, maxy)",
        f"CREATE TRIGGER {r}_insert AFTER INSERT ON {t} WHEN (new.{c} NOT NULL AND NOT "
        f"ST_IsEmpty(NEW.{c})) BEGIN INSERT OR REPLACE INTO {r} VALUES ({env}); END",
        # update6/update7 of GeoPackage 1.4: an UPDATE of the R-tree row, not INSERT OR
        # REPLACE, so an UPSERT (INSERT … ON CONFLICT DO UPDATE) of the table works
        f"CREATE TRIGGER {r}_update6 AFTER UPDATE OF {c} ON {t} WHEN OLD.fid = NEW.fid AND "
        f"(NEW.{c} NOTNULL AND NOT ST_IsEmpty(NEW.{c})) AND (OLD.{c} NOTNULL AND NOT "
        f"ST_IsEmpty(OLD.{c})) BEGIN UPDATE {r} SET minx = ST_MinX(NEW.{c}), "
        f"maxx = ST_MaxX(NEW.{c}), miny = ST_MinY(NEW.{c}), maxy = ST_MaxY(NEW.{c}) "
        f"WHERE id = NEW.fid; END",
        f"CREATE TRIGGER {r}_update7 AFTER UPDATE OF {c} ON {t} WHEN OLD.fid = NEW.fid AND "
        f"(NEW.{c} NOTNULL AND NOT ST_IsEmpty(NEW.{c})) AND (OLD.{c} ISNULL OR "
        f"ST_IsEmpty(OLD.{c})) BEGIN INSERT INTO {r} VALUES ({env}); END",
        f"CREATE TRIGGER {r}_update2 AFTER UPDATE OF {c} ON {t} WHEN OLD.fid = NEW.fid AND "
        f"(NEW.{c} ISNULL OR ST_IsEmpty(NEW.{c})) BEGIN DELETE FROM {r} WHERE id = OLD.fid; END",
        f"CREATE TRIGGER {r}_update5 AFTER UPDATE ON {t} WHEN OLD.fid != NEW.fid AND "
        f"(NEW.{c} NOTNULL AND NOT ST_IsEmpty(NEW.{c})) BEGIN DELETE FROM {r} WHERE id = OLD.fid; "
        f"INSERT OR REPLACE INTO {r} VALUES ({env}); END",
        f"CREATE TRIGGER {r}_update4 AFTER UPDATE ON {t} WHEN OLD.fid != NEW.fid AND "
        f"(NEW.{c} ISNULL OR ST_IsEmpty(NEW.{c})) BEGIN DELETE FROM {r} WHERE id IN "
        f"(OLD.fid, NEW.fid); END",
        f"CREATE TRIGGER {r}_delete AFTER DELETE ON {t} WHEN old.{c} NOT NULL BEGIN "
        f"DELETE FROM {r} WHERE id = OLD.fid; END",
    ]


def _migration_1(store: GpkgStore) -> None:
    """GeoPackage core tables, every patrol table, R-trees, append-only case_event."""
    x = store._x
    x(f"PRAGMA application_id = {APPLICATION_ID}")
    x(f"PRAGMA user_version = {USER_VERSION}")
    x("""CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (srs_name TEXT NOT NULL,
         srs_id INTEGER NOT NULL PRIMARY KEY, organization TEXT NOT NULL,
         organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT)""")
    x("""CREATE TABLE IF NOT EXISTS gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY,
         data_type TEXT NOT NULL, identifier TEXT UNIQUE, description TEXT DEFAULT '',
         last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
         min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
         CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id))""")
    x("""CREATE TABLE IF NOT EXISTS gpkg_geometry_columns (table_name TEXT NOT NULL,
         column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL,
         z TINYINT NOT NULL, m TINYINT NOT NULL,
         CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
         CONSTRAINT uk_gc_table_name UNIQUE (table_name),
         CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
         CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id))""")
    x("""CREATE TABLE IF NOT EXISTS gpkg_extensions (table_name TEXT, column_name TEXT,
         extension_name TEXT NOT NULL, definition TEXT NOT NULL, scope TEXT NOT NULL,
         CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name))""")
    store._many("INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", _srs_rows(store))
    x("CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT)")
    store._many("INSERT INTO store_meta VALUES (?, ?)",
                [("crs", store.crs), ("srs_id", str(store.srs_id)), ("created_by", "lianwei-patrol")])
    x("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT, "
      "description TEXT)")
    for table in TABLES.values():
        cols = []
        if table.name == "case_event":
            cols.append("event_id INTEGER PRIMARY KEY AUTOINCREMENT")
        elif table.name != "case_counter":
            cols.append("fid INTEGER PRIMARY KEY AUTOINCREMENT")
        for c in table.columns:
            if c.name == "event_id":
                continue
            null = " NOT NULL" if c.required else ""
            ref = " REFERENCES flight (flight_id)" if (table.name, c.name) == ("detection", "flight_id") else ""
            cols.append(f"{_q(c.name)} {_SQL_TYPE[c.kind]}{null}{ref}")
        cols.append(f"UNIQUE ({', '.join(map(_q, table.key))})")
        x(f"CREATE TABLE {_q(table.name)} ({', '.join(cols)})")
        for i, idx in enumerate(table.indexes):
            x(f"CREATE INDEX {table.name}_ix{i} ON {_q(table.name)} ({', '.join(map(_q, idx))})")
        if table.name in FEATURE_TABLES:
            g = table.geometry
            x("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id) "
              "VALUES (?, 'features', ?, ?, ?)", (table.name, table.name, table.description, store.srs_id))
            x("INSERT INTO gpkg_geometry_columns VALUES (?, ?, 'MULTIPOLYGON', ?, 0, 0)",
              (table.name, g, store.srs_id))
            for sql in _rtree_sql(table.name, g):
                x(sql)
            x("INSERT INTO gpkg_extensions VALUES (?, ?, 'gpkg_rtree_index', "
              "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')", (table.name, g))
        elif table.name in ATTRIBUTE_TABLES:
            x("INSERT INTO gpkg_contents (table_name, data_type, identifier, description) "
              "VALUES (?, 'attributes', ?, ?)", (table.name, table.name, table.description))
    for op in ("UPDATE", "DELETE"):
        x(f"CREATE TRIGGER case_event_no_{op.lower()} BEFORE {op} ON case_event BEGIN "
          f"SELECT RAISE(ABORT, 'case_event is append-only: history is never rewritten'); END")


def _migration_2(store: GpkgStore) -> None:
    """The web service's accounts (schema.USERS), a GeoPackage attribute table."""
    from pipeline.store.schema import USERS
    cols = ["fid INTEGER PRIMARY KEY AUTOINCREMENT"]
    cols += [f"{_q(c.name)} {_SQL_TYPE[c.kind]}{' NOT NULL' if c.required else ''}" for c in USERS.columns]
    cols.append(f"UNIQUE ({', '.join(map(_q, USERS.key))})")
    store._x(f"CREATE TABLE {_q(USERS.name)} ({', '.join(cols)})")
    store._x("INSERT INTO gpkg_contents (table_name, data_type, identifier, description) "
             "VALUES (?, 'attributes', ?, ?)", (USERS.name, USERS.name, USERS.description))


MIGRATIONS: list[tuple[int, str, Any]] = [
    (1, "GeoPackage core, flight, detection, parcel, zone, cases, case_event, evidence", _migration_1),
    (2, "users: web service accounts", _migration_2),
]
