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
- SQL is parameterised; identifiers are quoted (``core.q``) or composed with ``psycopg.sql``.
  The table methods are ``base.Store``'s (``?`` placeholders, turned into ``%s`` here);
  this module supplies the PostgreSQL dialect, the pool and the PostGIS DDL.
- A connection found dead at the start of a transaction (or of a read) is replaced and
  the statement retried; one lost in the middle of a write fails with one StoreError
  line, and the server has rolled the whole transaction back.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
import shapely
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from pipeline.core.errors import StoreError, one_line
from pipeline.store.base import Claim, Store
from pipeline.store.core import (
    add_change_columns,
    add_columns,
    add_documents,
    add_height_columns,
    add_house_register,
    add_media,
    add_model_registry,
    add_user_guard_columns,
    from_wkb,
    multipolygons,
    projected_crs,
    q,
    table_columns,
)
from pipeline.store.schema import TABLES, USER_GUARD_COLUMNS, USERS, Table, as_created

WRITE_LOCK = 0x4C57_5752          # advisory lock keys ("LWWR", "LWMG")
MIGRATE_LOCK = 0x4C57_4D47
CLAIM_LOCK = 0x4C57_464C          # ("LWFL") first key of the two-key flight claim locks
LOCK_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10
ATTEMPTS = 5                      # tries of a transaction start / read on a dead connection
RETRY_S = 0.25                    # first wait between them, doubling (a server restart takes ~2 s)
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
    """The server's primary message of a database error, as one line."""
    diag = getattr(e, "diag", None)
    return one_line(diag.message_primary if diag is not None and diag.message_primary else e)


# ------------------------------------------------------------------ geometries
def ewkb_hex(geoms: Sequence, srid: int, table: str = "") -> list[str | None]:
    """Shapely polygons → hex EWKB MultiPolygons with SRID (None for missing/empty)."""
    out: list[str | None] = [None] * len(geoms)
    idx, g = multipolygons(geoms, table)
    if len(idx):
        hexes = shapely.to_wkb(shapely.set_srid(g, srid), hex=True, output_dimension=2, byte_order=1,
                               include_srid=True)
        for i, h in zip(idx, hexes):
            out[i] = h
    return out


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
        self._crs = projected_crs(self.crs)
        code = self._crs.to_epsg()
        if not code:
            raise StoreError(f"store CRS '{crs}' has no EPSG code; PostGIS needs one, set store.crs "
                             f"to e.g. EPSG:4547")
        self.srid = int(code)
        self._local = threading.local()
        self._stage = itertools.count(1)
        kwargs = {"autocommit": True, "application_name": APPLICATION, "connect_timeout": CONNECT_TIMEOUT_S}
        try:
            with psycopg.connect(self.url, **kwargs):      # a clear error now, not a pool timeout
                pass
        except psycopg.Error as e:
            raise StoreError(f"store {self.display_url}: cannot connect ({_line(e)}); check the URL, "
                             f"that the server runs and that the role may log in") from None
        self._pool: ConnectionPool | None = ConnectionPool(
            self.url, kwargs=kwargs, min_size=1, max_size=max(1, pool_size), open=True,
            check=ConnectionPool.check_connection, name=f"patrol-{id(self):x}",
            timeout=LOCK_TIMEOUT_S)
        try:
            if self._version():
                self._check_crs()
        except BaseException:
            self.close()
            raise

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
        """Run one statement (``?`` placeholders in a str query); map server errors to one-line
        StoreErrors."""
        if isinstance(query, str):
            query = query.replace("%", "%%").replace("?", "%s")
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

    def _rows(self, query, params=None) -> list[tuple]:
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
                time.sleep(RETRY_S * 2 ** attempt)
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
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(RETRY_S * 2 ** (attempt - 1))
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

    # ------------------------------------------------------------ dialect
    def _version(self) -> int:
        if self._rows("SELECT to_regclass('schema_version')")[0][0] is None:
            return 0
        return int(self._rows("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0])

    def _migration_lock(self) -> None:
        self._x("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))
        self._ensure_postgis()

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

    def _encode(self, geoms: Sequence, table: Table) -> list:
        return ewkb_hex(geoms, self.srid, table.name)

    def _select_geometry(self, column: str) -> str:
        return f"ST_AsBinary({q(column)})"

    def _decode(self, values: Sequence) -> np.ndarray:
        return from_wkb(values)

    def _bbox_clause(self, table: Table, bbox: tuple[float, float, float, float]) -> tuple[str, list]:
        return f"ST_Intersects({q(table.geometry)}, ST_MakeEnvelope(?, ?, ?, ?, ?))", [*bbox, self.srid]

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

    def _write(self, table: Table, cols: list[str], rows: list[tuple], conflict: str) -> None:
        """COPY the rows into a staging table, then one INSERT … SELECT … ON CONFLICT."""
        stage = f"_patrol_stage_{next(self._stage)}"
        types = {c.name: "geometry" if c.kind == "geometry" else _PG_TYPE[c.kind] for c in table.columns}
        self._x(f"CREATE TEMP TABLE {q(stage)} (_ord bigint, "
                f"{', '.join(f'{q(c)} {types[c]}' for c in cols)}) ON COMMIT DROP")
        self._copy(sql.Identifier(stage), ["_ord", *cols], ((i, *r) for i, r in enumerate(rows)))
        names = ", ".join(map(q, cols))
        self._x(f"INSERT INTO {q(table.name)} ({names}) SELECT {names} FROM {q(stage)} ORDER BY _ord {conflict}")
        self._x(f"DROP TABLE {q(stage)}")

    # ------------------------------------------------------------ flight claims
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
            got = self._exec(conn, "SELECT pg_try_advisory_lock(?, ?)", (CLAIM_LOCK, key)).fetchone()[0]
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


# ------------------------------------------------------------------ migrations
def _create_table(store: PostgisStore, table: Table) -> None:
    def typ(c) -> str:
        return f"geometry(MultiPolygon, {int(store.srid)})" if c.kind == "geometry" else _PG_TYPE[c.kind]
    identity = {"case_event": "event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "case_counter": ""}.get(
        table.name, "fid bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    store._x(f"CREATE TABLE {q(table.name)} ({', '.join(table_columns(table, typ, identity))})")
    store._x(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(table.name), sql.Literal(table.description)))


def _feature_table(store: PostgisStore, table: Table) -> None:
    _create_table(store, table)
    store._x(f"CREATE INDEX {q(f'{table.name}_{table.geometry}_gix')} ON {q(table.name)} "
             f"USING gist ({q(table.geometry)})")


def _append_only(store: PostgisStore, table_name: str) -> None:
    store._x(f"CREATE FUNCTION {table_name}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             f"RAISE EXCEPTION '{table_name} is append-only: history is never rewritten'; END $$")
    store._x(f"CREATE TRIGGER {table_name}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {q(table_name)} "
             f"FOR EACH STATEMENT EXECUTE FUNCTION {table_name}_append_only()")


def _migration_1(store: PostgisStore) -> None:
    """Every patrol table, typed geometry columns with GiST indexes, append-only case_event."""
    x = store._x
    x("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
      "applied_at timestamp NOT NULL, description text)")
    x("CREATE TABLE store_meta (key text PRIMARY KEY, value text)")
    x("INSERT INTO store_meta VALUES ('crs', ?), ('srid', ?), ('created_by', 'lianwei-patrol')",
      (store.crs, str(store.srid)))
    for table in map(as_created, TABLES.values()):
        _create_table(store, table)
        for i, idx in enumerate(table.indexes):
            x(f"CREATE INDEX {q(f'{table.name}_ix{i}')} ON {q(table.name)} ({', '.join(map(q, idx))})")
        if table.geometry:
            x(f"CREATE INDEX {q(f'{table.name}_{table.geometry}_gix')} ON {q(table.name)} "
              f"USING gist ({q(table.geometry)})")
    x("""CREATE FUNCTION case_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'case_event is append-only: history is never rewritten'; END $$""")
    x("CREATE TRIGGER case_event_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON case_event "
      "FOR EACH STATEMENT EXECUTE FUNCTION case_event_append_only()")


def _migration_2(store: PostgisStore) -> None:
    """The web service's accounts (schema.USERS)."""
    _create_table(store, Table(USERS.name, tuple(c for c in USERS.columns if c.name not in USER_GUARD_COLUMNS),
                               USERS.key, USERS.description))


MIGRATIONS: list[tuple[int, str, Any]] = [
    (1, "flight, detection, parcel, zone, cases, case_event, evidence, case_counter; GiST indexes",
     _migration_1),
    (2, "users: web service accounts", _migration_2),
    (3, "users: failed sign-ins, lockout, server-side logout",
     lambda s: add_user_guard_columns(s, lambda c: _PG_TYPE[c.kind])),
    (4, "cases: floors, floor area, unit, remark; document: numbered enforcement documents",
     lambda s: add_documents(s, lambda c: _PG_TYPE[c.kind], lambda t: _create_table(s, t))),
    (5, "media: on-site photos and videos of a case; cases: id number, address",
     lambda s: add_media(s, lambda c: _PG_TYPE[c.kind], lambda t: _create_table(s, t))),
    (6, "flight: Chinese error, co-registration; cases: change confidence and evidence", lambda s: add_change_columns(s, lambda c: _PG_TYPE[c.kind])),
    (7, "model, model_event: the model registry; detection, cases: model version",
     lambda s: add_model_registry(s, lambda c: _PG_TYPE[c.kind], lambda t: _create_table(s, t),
                                  lambda t: _append_only(s, t))),
    (8, "flight: why it was processed outside the model's GSD range (forced)",
     lambda s: add_columns(s, lambda c: _PG_TYPE[c.kind], "flight", ("forced",))),
    (9, "flight: DSM and DTM; detection, cases: height and storeys; detection: source",
     lambda s: add_height_columns(s, lambda c: _PG_TYPE[c.kind])),
    (10, "house, house_event: the building register (自建房台账); cases: house number",
     lambda s: add_house_register(s, lambda c: _PG_TYPE[c.kind], lambda t: _feature_table(s, t),
                                  lambda t: _create_table(s, t), lambda t: _append_only(s, t))),
]
PostgisStore.MIGRATIONS = MIGRATIONS
