"""The server store: PostgreSQL + PostGIS through psycopg 3 and a psycopg_pool pool.

One database shared by the web service, the nightly run and GIS desktops (QGIS and
GeoServer read the tables directly: every geometry column is ``geometry(MultiPolygon,
<srid>)`` of the store CRS with a GiST index, every feature table has an integer ``fid``
primary key).

- Schema: versioned migrations in ``schema_version``, applied under an advisory lock, so
  ``migrate()`` is idempotent and safe when two processes call it at once.
- Writes: ``transaction()`` takes one pooled connection, BEGINs and waits (up to
  ``LOCK_TIMEOUT_S``) for the store-wide write advisory lock, exactly like the embedded
  store's BEGIN IMMEDIATE: writers run one after the other, readers are never blocked
  (MVCC). Nested blocks are savepoints. Case numbers come from the ``case_counter`` row,
  locked FOR UPDATE, inside that transaction: a rolled-back run gives its numbers back.
- Bulk loads (detections, parcels, zones, cases, evidence) go through COPY into a
  temporary staging table (geometries as hex EWKB), then one INSERT … ON CONFLICT.
- SQL is parameterised; identifiers are composed with ``psycopg.sql``.
- A connection found dead at the start of a transaction (or of a read) is replaced and
  the statement retried; one lost in the middle of a write fails with one StoreError
  line, and the server has rolled the whole transaction back.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg
import shapely
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout
from pyproj import CRS

from pipeline.errors import StoreError
from pipeline.store.base import FLIGHT_STATUSES, BBox, Claim, Store, When
from pipeline.store.gpkg import _bbox, _isnull, _projected_crs, _py, _series, _timestamp, _to_sql, iso_datetime
from pipeline.store.schema import COUNTED, TABLES, Table

WRITE_LOCK = 0x4C57_5752          # advisory lock keys ("LWWR", "LWMG")
MIGRATE_LOCK = 0x4C57_4D47
CLAIM_LOCK = 0x4C57_464C          # ("LWFL") first key of the two-key flight claim locks
LOCK_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10
ATTEMPTS = 3                      # tries of a transaction start / read on a dead connection
APPLICATION = "lianwei-patrol"
_PG_TYPE = {"text": "text", "int": "bigint", "real": "double precision", "date": "date",
            "datetime": "timestamp", "json": "jsonb"}
_FIRST_ORDER = {"case_event": "event_id", "case_counter": "prefix, year"}
# the pool logs a WARNING for each dead connection it replaces; without this handler an
# unconfigured CLI would print it next to (or instead of) our one-line error
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())


class ConnectionLost(StoreError):
    """The database connection broke (server restart, pg_terminate_backend, network)."""


def mask_url(url: str) -> str:
    """The URL with its password hidden (for messages and status)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _line(e: BaseException) -> str:
    diag = getattr(e, "diag", None)
    msg = (diag.message_primary if diag is not None and diag.message_primary else str(e)) or type(e).__name__
    return " ".join(msg.split())


# ------------------------------------------------------------------ geometries
def ewkb_hex(geoms: Sequence, srid: int, table: str = "") -> list[str | None]:
    """Shapely polygons → hex EWKB MultiPolygons with SRID (None for missing/empty)."""
    arr = np.asarray(list(geoms), dtype=object)
    out: list[str | None] = [None] * len(arr)
    if not len(arr):
        return out
    missing = np.array([g is None or (isinstance(g, float) and math.isnan(g)) for g in arr])
    arr = np.where(missing, None, arr)
    idx = np.flatnonzero(~missing & ~shapely.is_empty(arr))
    if not len(idx):
        return out
    g = arr[idx]
    types = shapely.get_type_id(g)
    bad = ~np.isin(types, (3, 6))
    if bad.any():
        name = ("Point LineString LinearRing Polygon MultiPoint MultiLineString MultiPolygon "
                "GeometryCollection").split()[int(types[bad][0])]
        raise StoreError(f"table {table}: row {int(idx[bad][0])} has a {name} geometry; "
                         f"only polygons are stored; repair or drop it first")
    poly = types == 3
    if poly.any():
        g = g.copy()
        g[poly] = shapely.multipolygons(g[poly], indices=np.arange(int(poly.sum())))
    hexes = shapely.to_wkb(shapely.set_srid(g, srid), hex=True, output_dimension=2,
                           byte_order=1, include_srid=True)
    for i, h in zip(idx, hexes):
        out[i] = h
    return out


def from_wkb(values: Sequence[bytes | None]) -> np.ndarray:
    """WKB → shapely array; one-part MultiPolygons come back as Polygons."""
    geoms = shapely.from_wkb(np.array([None if v is None else bytes(v) for v in values], dtype=object))
    single = (shapely.get_type_id(geoms) == 6) & (shapely.get_num_geometries(geoms) == 1)
    if single.any():
        geoms[single] = shapely.get_geometry(geoms[single], 0)
    return geoms


def _dates(values: list) -> pd.Series:
    return pd.to_datetime(pd.Series(values, dtype=object)).astype("datetime64[ns]")


def _pydt(v: Any) -> datetime | None:
    ts = _timestamp(v)
    return None if ts is None else ts.to_pydatetime()


# ------------------------------------------------------------------ the store
class PostgisStore(Store):
    """The PostGIS store at ``url`` (``postgresql://user[:password]@host[:port]/db``)."""

    backend = "postgis"

    @property
    def display_url(self) -> str:
        """The URL without its password."""
        return mask_url(self.url)

    def __init__(self, url: str, crs: str, case_prefix: str = "LW", pool_size: int = 4):
        self.url = str(url)
        self.crs = str(crs)
        self.case_prefix = case_prefix
        self._crs = _projected_crs(self.crs)
        code = self._crs.to_epsg()
        if not code:
            raise StoreError(f"store CRS '{crs}' has no EPSG code; PostGIS needs one, set store.crs "
                             f"to e.g. EPSG:4547")
        self.srid = int(code)
        self._local = threading.local()
        self._stage = itertools.count(1)
        kwargs = {"autocommit": True, "application_name": APPLICATION, "connect_timeout": CONNECT_TIMEOUT_S}
        try:
            with psycopg.connect(self.url, **kwargs) as con:      # a clear error now, not a pool timeout
                if self._version(con):
                    self._check_crs(con)
        except psycopg.Error as e:
            raise StoreError(f"store {self.display_url}: cannot connect ({_line(e)}); check the URL, "
                             f"that the server runs and that the role may log in") from None
        self._pool: ConnectionPool | None = ConnectionPool(
            self.url, kwargs=kwargs, min_size=1, max_size=max(1, pool_size), open=True,
            check=ConnectionPool.check_connection, name=f"patrol-{id(self):x}",
            timeout=LOCK_TIMEOUT_S)

    # ------------------------------------------------------------ plumbing
    def close(self) -> None:
        claims = getattr(self, "_claim_conn", None)
        if claims is not None:
            self._claim_conn = None
            with contextlib.suppress(psycopg.Error):
                claims.close()                 # the server frees every claim it held
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _state(self):
        st = self._local
        if not hasattr(st, "conn"):
            st.conn, st.depth = None, 0
        return st

    def _exec(self, conn: psycopg.Connection, query, params=None) -> psycopg.Cursor:
        """Run one statement; map server errors to one-line StoreErrors."""
        try:
            return conn.execute(query, params)
        except psycopg.errors.IntegrityError as e:
            raise StoreError(f"store {self.display_url}: {_line(e)}; the rows were not written") from None
        except psycopg.errors.LockNotAvailable:
            raise StoreError(f"store {self.display_url} is busy (another writer held it for "
                             f"{LOCK_TIMEOUT_S:.0f} s); try again later") from None
        except psycopg.errors.InsufficientPrivilege as e:
            raise StoreError(f"store {self.display_url}: {_line(e)}; this database role may not do "
                             f"that (see README, PostGIS deployment)") from None
        except psycopg.errors.RaiseException as e:
            raise StoreError(f"store {self.display_url}: {_line(e)}") from None
        except psycopg.OperationalError as e:
            if conn.broken or conn.closed or isinstance(e, psycopg.errors.AdminShutdown):
                raise self._lost(e) from None
            raise StoreError(f"store {self.display_url}: {_line(e)}") from e
        except psycopg.errors.UndefinedTable as e:
            raise StoreError(f"store {self.display_url}: {_line(e)}; create the tables with "
                             f"`patrol db init`") from None
        except psycopg.Error as e:
            raise StoreError(f"store {self.display_url}: {_line(e)}") from e

    def _lost(self, e: BaseException) -> ConnectionLost:
        what = "in the middle of a write; the server rolled the whole transaction back, nothing " \
               "of it was kept; run it again" if self._state().conn is not None else \
               f"{ATTEMPTS} times in a row; check that the server runs, then try again"
        return ConnectionLost(f"store {self.display_url}: the database connection was lost ({_line(e)}) {what}")

    def _getconn(self) -> psycopg.Connection:
        if self._pool is None:
            raise StoreError(f"store {self.display_url} is closed; open it again")
        try:
            return self._pool.getconn()
        except PoolTimeout:
            raise StoreError(f"store {self.display_url}: no database connection within "
                             f"{LOCK_TIMEOUT_S:.0f} s; check that the server runs") from None

    def _read(self, query, params=None) -> list[tuple]:
        """Rows of a query: on the transaction's connection inside one, else a pooled one,
        retried on a fresh connection when the pooled one turns out dead."""
        st = self._state()
        if st.conn is not None:
            return self._exec(st.conn, query, params).fetchall()
        for attempt in range(ATTEMPTS):
            conn = self._getconn()
            try:
                return self._exec(conn, query, params).fetchall()
            except ConnectionLost:
                if attempt == ATTEMPTS - 1:
                    raise
            finally:
                self._pool.putconn(conn)
        raise AssertionError("unreachable")

    def _x(self, query, params=None) -> psycopg.Cursor:
        conn = self._state().conn
        if conn is None:
            raise RuntimeError("PostgisStore._x outside a transaction")
        return self._exec(conn, query, params)

    def _begin(self) -> psycopg.Connection:
        """A pooled connection in a fresh transaction holding the write lock; a dead
        connection here is safe to replace (nothing was written yet)."""
        last: BaseException | None = None
        for _ in range(ATTEMPTS):
            conn = self._getconn()
            try:
                conn.execute("BEGIN")
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(LOCK_TIMEOUT_S * 1000)}ms",))
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                return conn
            except psycopg.errors.LockNotAvailable:
                self._release(conn, rollback=True)
                raise StoreError(f"store {self.display_url} is busy (another writer held it for "
                                 f"{LOCK_TIMEOUT_S:.0f} s); try again later") from None
            except psycopg.OperationalError as e:
                self._release(conn, rollback=True)
                if not (conn.broken or conn.closed or isinstance(e, psycopg.errors.AdminShutdown)):
                    raise StoreError(f"store {self.display_url}: {_line(e)}") from e
                last = e
        raise ConnectionLost(f"store {self.display_url}: the database connection was lost "
                             f"{ATTEMPTS} times at the start of a write ({_line(last)}); check "
                             f"that the server runs, then try again")

    def _release(self, conn: psycopg.Connection, rollback: bool) -> None:
        if rollback and not (conn.broken or conn.closed):
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        if self._pool is not None:
            self._pool.putconn(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        st = self._state()
        if st.conn is None:
            conn = self._begin()
            st.conn, st.depth = conn, 1
            ok = False
            try:
                yield
                try:
                    self._exec(conn, "COMMIT")
                except ConnectionLost as e:
                    raise ConnectionLost(f"store {self.display_url}: the database connection was "
                                         f"lost while committing ({e}); check with `patrol db "
                                         f"status` and run it again") from None
                ok = True
            finally:
                st.conn, st.depth = None, 0
                self._release(conn, rollback=not ok)
        else:
            name = sql.Identifier(f"sp_{st.depth}")
            self._x(sql.SQL("SAVEPOINT {}").format(name))
            st.depth += 1
            try:
                yield
            except BaseException:
                conn = st.conn
                if not (conn.broken or conn.closed):
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(name))
                        conn.execute(sql.SQL("RELEASE SAVEPOINT {}").format(name))
                raise
            else:
                self._x(sql.SQL("RELEASE SAVEPOINT {}").format(name))
            finally:
                st.depth -= 1

    # ------------------------------------------------------------ schema
    @staticmethod
    def _version(con) -> int:
        if con.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
            return 0
        return int(con.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])

    def _check_crs(self, con) -> None:
        row = con.execute("SELECT value FROM store_meta WHERE key = 'crs'").fetchone()
        if row and not CRS.from_user_input(row[0]).equals(self._crs, ignore_axis_order=True):
            raise StoreError(f"store {self.display_url} holds geometries in {row[0]}, settings say "
                             f"{self.crs}; set store.crs to {row[0]} or use another database")

    def migrate(self) -> int:
        with self.transaction():
            conn = self._state().conn
            self._x("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            self._ensure_postgis()
            current = self._version(conn)
            for version, description, step in MIGRATIONS:
                if version > current:
                    step(self)
                    self._x("INSERT INTO schema_version (version, applied_at, description) "
                            "VALUES (%s, %s, %s)", (version, datetime.now(), description))
            self._check_crs(conn)
            return self._version(conn)

    def _ensure_postgis(self) -> None:
        if self._x("SELECT 1 FROM pg_extension WHERE extname = 'postgis'").fetchone():
            return
        try:
            with self.transaction():
                self._x("CREATE EXTENSION IF NOT EXISTS postgis")
        except (StoreError, psycopg.Error) as e:
            raise StoreError(f"store {self.display_url}: the database has no postgis extension and "
                             f"this role cannot add it ({_line(e)}); as a superuser run CREATE "
                             f"EXTENSION postgis in that database") from None

    def status(self) -> dict[str, Any]:
        version = self._read("SELECT CASE WHEN to_regclass('schema_version') IS NULL THEN 0 ELSE 1 END")[0][0]
        if version:
            version = int(self._read("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0])
        counts = {}
        if version:
            q = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}, COUNT(*) FROM {}").format(sql.Literal(t), sql.Identifier(t)) for t in COUNTED)
            counts = {t: int(n) for t, n in self._read(q)}
        return {"backend": self.backend, "url": self.display_url, "crs": self.crs, "version": version,
                "latest_version": MIGRATIONS[-1][0], "counts": counts}

    # ------------------------------------------------------------ generic frame io
    def _frame(self, table: Table, where: Sequence[sql.Composable] = (), params: Sequence = (),
               order: str = "", bbox: BBox | None = None) -> gpd.GeoDataFrame | pd.DataFrame:
        names, geom = table.names, table.geometry
        cols = []
        for c in table.columns:
            ident = sql.Identifier(c.name)
            cols.append(sql.SQL("ST_AsBinary({})").format(ident) if c.kind == "geometry" else
                        sql.SQL("{}::text").format(ident) if c.kind == "json" else ident)
        clauses, params = list(where), list(params)
        if bbox is not None:
            clauses.append(sql.SQL("ST_Intersects({}, ST_MakeEnvelope(%s, %s, %s, %s, %s))")
                           .format(sql.Identifier(geom)))
            params += [*_bbox(bbox), self.srid]
        q = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(cols), sql.Identifier(table.name))
        if clauses:
            q += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(sql.SQL("({})").format(c) for c in clauses)
        q += sql.SQL(" ORDER BY ") + sql.SQL(order or _FIRST_ORDER.get(table.name, "fid"))
        rows = self._read(q, params)
        values = list(zip(*rows)) if rows else [[] for _ in names]
        data = {}
        for c, vals in zip(table.columns, values):
            if c.kind in ("date", "datetime"):
                data[c.name] = _dates(list(vals))
            elif c.kind != "geometry":
                data[c.name] = _series(c.kind, list(vals), c.default)
        if geom is None:
            return pd.DataFrame(data, columns=names)
        data[geom] = gpd.GeoSeries(from_wkb(values[names.index(geom)]), crs=self.crs)
        return gpd.GeoDataFrame(data, columns=names, geometry=geom, crs=self.crs)

    def _prepare(self, table: Table, frame: pd.DataFrame) -> tuple[list[str], list[tuple]]:
        """Columns of ``frame`` the table knows, and rows converted for COPY."""
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
                values.append(ewkb_hex(frame[name].values, self.srid, table.name))
            else:
                values.append([_to_sql(col.kind, v, col.default) for v in frame[name].tolist()])
            if col.required and any(v is None for v in values[-1]):
                raise StoreError(f"table {table.name}: column {name} is empty in some rows; "
                                 f"give every row a {name}")
        return cols, list(zip(*values)) if values else []

    def _copy(self, target: sql.Composable, cols: Sequence[str], rows: Iterable[tuple]) -> None:
        conn = self._state().conn
        q = sql.SQL("COPY {} ({}) FROM STDIN").format(target, sql.SQL(", ").join(map(sql.Identifier, cols)))
        try:
            with conn.cursor() as cur, cur.copy(q) as cp:
                for r in rows:
                    cp.write_row(r)
        except psycopg.OperationalError as e:
            if conn.broken or conn.closed or isinstance(e, psycopg.errors.AdminShutdown):
                raise self._lost(e) from None
            raise StoreError(f"store {self.display_url}: {_line(e)}; nothing of this write was kept") from None
        except psycopg.errors.DataError as e:
            raise StoreError(f"store {self.display_url}: {_line(e)}; nothing of this write was kept") from None

    def _upsert(self, table: Table, frame: pd.DataFrame, fill: Mapping[str, Any] | None = None,
                keep: Sequence[str] = ()) -> int:
        """COPY the frame into a staging table, then INSERT … ON CONFLICT (key) DO UPDATE of
        the frame's columns; ``fill`` gives values for new rows only (callables get the row
        index), ``keep`` columns keep their stored values."""
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
        allcols = cols + extra
        stage = sql.Identifier(f"_patrol_stage_{next(self._stage)}")
        t = sql.Identifier(table.name)

        def typ(name: str) -> sql.Composable:
            kind = table.column(name).kind
            return sql.SQL("geometry" if kind == "geometry" else _PG_TYPE[kind])

        sets = []
        for c in cols:
            if c in table.key:
                continue
            ci = sql.Identifier(c)
            sets.append(sql.SQL("{} = COALESCE({}.{}, EXCLUDED.{})").format(ci, t, ci, ci) if c in keep
                        else sql.SQL("{} = EXCLUDED.{}").format(ci, ci))
        idents = sql.SQL(", ").join(map(sql.Identifier, allcols))
        with self.transaction():
            self._x(sql.SQL("CREATE TEMP TABLE {} (_ord bigint, {}) ON COMMIT DROP").format(
                stage, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), typ(c)) for c in allcols)))
            self._copy(stage, ["_ord", *allcols], ((i, *r) for i, r in enumerate(rows)))
            self._x(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY _ord ON CONFLICT ({}) DO ")
                    .format(t, idents, idents, stage, sql.SQL(", ").join(map(sql.Identifier, table.key)))
                    + (sql.SQL("UPDATE SET ") + sql.SQL(", ").join(sets) if sets else sql.SQL("NOTHING")))
            self._x(sql.SQL("DROP TABLE {}").format(stage))
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

    def claim_flight(self, flight_id: str) -> Claim | None:
        """A session advisory lock (``pg_try_advisory_lock(CLAIM_LOCK, hash of the id)``) on a
        connection of its own, outside the pool: the server frees it when that connection
        ends, so a killed run frees its claims."""
        key = int.from_bytes(hashlib.blake2b(flight_id.encode(), digest_size=4).digest(), "big", signed=True)
        if not hasattr(self, "_claim_guard"):
            self._claim_guard, self._claimed = threading.Lock(), set()
        with self._claim_guard:
            if flight_id in self._claimed:     # session locks nest; a claim is exclusive
                return None
            conn = getattr(self, "_claim_conn", None)
            if conn is None or conn.closed or conn.broken:
                try:
                    conn = psycopg.connect(self.url, autocommit=True, application_name=APPLICATION + "-claims",
                                           connect_timeout=CONNECT_TIMEOUT_S)
                except psycopg.Error as e:
                    raise StoreError(f"store {self.display_url}: cannot connect ({_line(e)}); check "
                                     f"that the server runs") from None
                self._claim_conn, self._claimed = conn, set()
            got = self._exec(conn, "SELECT pg_try_advisory_lock(%s, %s)", (CLAIM_LOCK, key)).fetchone()[0]
            if not got:
                return None
            self._claimed.add(flight_id)

        def release() -> None:
            with self._claim_guard:
                self._claimed.discard(flight_id)
                if conn is self._claim_conn and not (conn.closed or conn.broken):
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (CLAIM_LOCK, key))
        return Claim(flight_id, release)

    def get_flight(self, flight_id: str) -> dict[str, Any] | None:
        gdf = self._frame(TABLES["flight"], [sql.SQL("flight_id = %s")], [flight_id])
        if not len(gdf):
            return None
        return {k: _py(v) for k, v in gdf.iloc[0].items()}

    def list_flights(self, status: str | Sequence[str] | None = None) -> gpd.GeoDataFrame:
        where, params = _in("status", status)
        return self._frame(TABLES["flight"], where, params, order="captured_at NULLS FIRST, flight_id")

    def set_flight_status(self, flight_id: str, status: str, error: str | None = None,
                          model_version: str | None = None) -> None:
        if status not in FLIGHT_STATUSES:
            raise StoreError(f"flight {flight_id}: unknown status '{status}'; "
                             f"use one of {', '.join(FLIGHT_STATUSES)}")
        processed = datetime.now() if status in ("done", "failed") else None
        with self.transaction():
            cur = self._x("UPDATE flight SET status = %s, error = %s, "
                          "model_version = COALESCE(%s, model_version), "
                          "processed_at = COALESCE(%s::timestamp, processed_at) WHERE flight_id = %s",
                          (status, error, model_version, processed, flight_id))
            if cur.rowcount == 0:
                raise StoreError(f"flight {flight_id} is not in the store; register it first")

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
            if not self._x("SELECT 1 FROM flight WHERE flight_id = %s", (flight_id,)).fetchone():
                raise StoreError(f"flight {flight_id} is not in the store; register it before "
                                 f"its detections")
            self._x("DELETE FROM detection WHERE flight_id = %s", (flight_id,))
            return self._upsert(TABLES["detection"], frame)

    def detections(self, flight_id: str | None = None, bbox: BBox | None = None) -> gpd.GeoDataFrame:
        where, params = ([sql.SQL("flight_id = %s")], [flight_id]) if flight_id is not None else ([], [])
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
            clauses += w
            params += p
        for name, value in (("town", town), ("village", village)):
            if value is not None:
                clauses.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
                params.append(value)
        when = sql.SQL("COALESCE(first_seen_at, created_at)")
        if since is not None:
            clauses.append(when + sql.SQL(" >= %s"))
            params.append(_pydt(since))
        if until is not None:
            clauses.append(when + sql.SQL(" < %s"))
            params.append(_pydt(until))
        return self._frame(TABLES["cases"], clauses, params, order="case_no", bbox=bbox)

    def save_cases(self, gdf: gpd.GeoDataFrame) -> int:
        table = TABLES["cases"]
        frame = gdf.copy()
        now = iso_datetime(datetime.now())
        if "updated_at" not in frame.columns:
            frame["updated_at"] = now
        fill: dict[str, Any] = {"case_uuid": lambda i: str(uuid.uuid4()), "created_at": now,
                                "status": "suspected"}
        for c in table.columns:
            if c.kind == "json":
                fill[c.name] = _to_sql("json", c.default)
        return self._upsert(table, frame, fill=fill, keep=("case_uuid", "created_at"))

    def allocate_case_numbers(self, year: int, n: int) -> list[str]:
        if n < 0:
            raise StoreError(f"allocate_case_numbers: n must be >= 0, got {n}")
        if n == 0:
            return []
        head = f"{self.case_prefix}{int(year)}-"
        key = (self.case_prefix, int(year))
        with self.transaction():
            self._x("INSERT INTO case_counter (prefix, year, last_seq) VALUES (%s, %s, 0) "
                    "ON CONFLICT (prefix, year) DO NOTHING", key)
            last = self._x("SELECT last_seq FROM case_counter WHERE prefix = %s AND year = %s "
                           "FOR UPDATE", key).fetchone()[0]
            used = self._x("SELECT MAX(substr(case_no, %(n)s + 1)::bigint) FROM cases "
                           "WHERE left(case_no, %(n)s) = %(head)s AND substr(case_no, %(n)s + 1) ~ '^[0-9]{1,18}$'",
                           {"n": len(head), "head": head}).fetchone()[0]
            start = max(int(last), int(used or 0)) + 1
            self._x("UPDATE case_counter SET last_seq = %s WHERE prefix = %s AND year = %s",
                    (start + n - 1, *key))
        return [f"{head}{s:06d}" for s in range(start, start + n)]

    # ------------------------------------------------------------ history and evidence
    def append_events(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[int]:
        table = TABLES["case_event"]
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
        if not records:
            return []
        cols = [c for c in table.names if c != "event_id"]
        now = datetime.now()
        values = []
        for r in records:
            if _isnull(r.get("case_no")):
                raise StoreError("append_events: an event has no case_no; give every event one")
            vals = [_pydt(r.get(c)) or now if c == "at" else _to_sql(table.column(c).kind, r.get(c))
                    for c in cols]
            values.append(vals)
        q = sql.SQL("INSERT INTO case_event ({}) VALUES ({}) RETURNING event_id").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder() * len(cols)))
        ids: list[int] = []
        with self.transaction():
            conn = self._state().conn
            try:
                with conn.cursor() as cur:
                    cur.executemany(q, values, returning=True)
                    while True:
                        ids.append(int(cur.fetchone()[0]))
                        if not cur.nextset():
                            break
            except psycopg.OperationalError as e:
                if conn.broken or conn.closed or isinstance(e, psycopg.errors.AdminShutdown):
                    raise self._lost(e) from None
                raise StoreError(f"store {self.display_url}: {_line(e)}") from e
        return ids

    def events(self, case_no: str | None = None) -> pd.DataFrame:
        where, params = ([sql.SQL("case_no = %s")], [case_no]) if case_no is not None else ([], [])
        return self._frame(TABLES["case_event"], where, params, order="event_id")

    def evidence(self, case_no: str | None = None) -> pd.DataFrame:
        where, params = ([sql.SQL("case_no = %s")], [case_no]) if case_no is not None else ([], [])
        return self._frame(TABLES["evidence"], where, params, order="captured_at NULLS FIRST, fid")


# ------------------------------------------------------------------ helpers
def _in(name: str, value: str | Sequence[str] | None) -> tuple[list[sql.Composable], list]:
    if value is None:
        return [], []
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    return [sql.SQL("{} = ANY(%s)").format(sql.Identifier(name))], [values]


# ------------------------------------------------------------------ migrations
def _migration_1(store: PostgisStore) -> None:
    """Every patrol table, typed geometry columns with GiST indexes, append-only case_event."""
    x, I, L = store._x, sql.Identifier, sql.Literal
    x("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
      "applied_at timestamp NOT NULL, description text)")
    x("CREATE TABLE store_meta (key text PRIMARY KEY, value text)")
    x("INSERT INTO store_meta VALUES ('crs', %s), ('srid', %s), ('created_by', 'lianwei-patrol')",
      (store.crs, str(store.srid)))
    for table in TABLES.values():
        cols: list[sql.Composable] = []
        if table.name == "case_event":
            cols.append(sql.SQL("event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"))
        elif table.name != "case_counter":
            cols.append(sql.SQL("fid bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"))
        for c in table.columns:
            if c.name == "event_id":
                continue
            typ = sql.SQL("geometry(MultiPolygon, {})").format(L(store.srid)) if c.kind == "geometry" \
                else sql.SQL(_PG_TYPE[c.kind])
            null = sql.SQL(" NOT NULL" if c.required else "")
            ref = sql.SQL(" REFERENCES flight (flight_id)" if (table.name, c.name) == ("detection", "flight_id") else "")
            cols.append(sql.SQL("{} {}{}{}").format(I(c.name), typ, null, ref))
        key = sql.SQL(", ").join(map(I, table.key))
        cols.append(sql.SQL("PRIMARY KEY ({})" if table.name == "case_counter" else "UNIQUE ({})").format(key))
        x(sql.SQL("CREATE TABLE {} ({})").format(I(table.name), sql.SQL(", ").join(cols)))
        x(sql.SQL("COMMENT ON TABLE {} IS {}").format(I(table.name), L(table.description)))
        for i, idx in enumerate(table.indexes):
            x(sql.SQL("CREATE INDEX {} ON {} ({})").format(
                I(f"{table.name}_ix{i}"), I(table.name), sql.SQL(", ").join(map(I, idx))))
        if table.geometry:
            x(sql.SQL("CREATE INDEX {} ON {} USING gist ({})").format(
                I(f"{table.name}_{table.geometry}_gix"), I(table.name), I(table.geometry)))
    x("""CREATE FUNCTION case_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'case_event is append-only: history is never rewritten'; END $$""")
    x("CREATE TRIGGER case_event_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON case_event "
      "FOR EACH STATEMENT EXECUTE FUNCTION case_event_append_only()")


def _migration_2(store: PostgisStore) -> None:
    """The web service's accounts (schema.USERS)."""
    from pipeline.store.schema import USERS
    I = sql.Identifier
    cols: list[sql.Composable] = [sql.SQL("fid bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")]
    cols += [sql.SQL("{} {}{}").format(I(c.name), sql.SQL(_PG_TYPE[c.kind]), sql.SQL(" NOT NULL" if c.required else ""))
             for c in USERS.columns]
    cols.append(sql.SQL("UNIQUE ({})").format(sql.SQL(", ").join(map(I, USERS.key))))
    store._x(sql.SQL("CREATE TABLE {} ({})").format(I(USERS.name), sql.SQL(", ").join(cols)))
    store._x(sql.SQL("COMMENT ON TABLE {} IS {}").format(I(USERS.name), sql.Literal(USERS.description)))


MIGRATIONS: list[tuple[int, str, Any]] = [
    (1, "flight, detection, parcel, zone, cases, case_event, evidence, case_counter; GiST indexes",
     _migration_1),
    (2, "users: web service accounts", _migration_2),
]
