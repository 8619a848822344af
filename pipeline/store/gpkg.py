"""The embedded store: one SQLite file that is a GeoPackage (QGIS and GDAL open it directly).

Feature tables (flight, detection, parcel, zone, cases) carry a GeoPackage geometry column
(GP header + envelope + WKB, MULTIPOLYGON) with an R-tree spatial index kept by the
standard GeoPackage triggers; case_event and evidence are GeoPackage attribute tables.
Internal tables (store_meta, schema_version, case_counter) are not registered as layers.
WAL journal: readers never wait for the writer; writers take the lock at BEGIN IMMEDIATE
and wait up to ``busy_timeout`` for each other. The table methods are ``base.Store``'s;
this module supplies the SQLite dialect, the connection and the GeoPackage DDL.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS

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
    out: list[bytes | None] = [None] * len(geoms)
    idx, g = multipolygons(geoms, table)
    if not len(idx):
        return out
    wkb = shapely.to_wkb(g, byte_order=1, output_dimension=2)
    pack = struct.Struct("<2sBBi4d").pack
    for i, w, (x0, y0, x1, y1) in zip(idx, wkb, shapely.bounds(g)):
        out[i] = pack(b"GP", 0, 3, srs_id, x0, x1, y0, y1) + w
    return out


def _wkb_part(blob: bytes) -> bytes:
    flags = blob[3]
    return blob[8 + _ENVELOPE_BYTES[(flags >> 1) & 7]:]


def decode_geometries(blobs: Sequence[bytes | None]) -> np.ndarray:
    """GeoPackage binary → shapely array (None for NULL); one-part MultiPolygons → Polygon."""
    return from_wkb([None if b is None else _wkb_part(bytes(b)) for b in blobs])


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


# ------------------------------------------------------------------ the store
class GpkgStore(Store):
    """The embedded GeoPackage store at ``path``; see the module docstring."""

    backend = "gpkg"

    def __init__(self, path: str | Path, crs: str, case_prefix: str = "LW"):
        self.path = Path(path)
        self.url = str(self.path)
        self.crs = str(crs)
        self.case_prefix = case_prefix
        self._crs = projected_crs(self.crs)
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
            raise (self._os_problem(e) or StoreError(
                f"store {self.path.name} is not a usable GeoPackage/SQLite file ({e}); check store.url")) from None
        if mode.lower() != "wal":
            raise StoreError(f"store {self.path}: cannot switch to WAL journal (got {mode}); "
                             f"put the store on a local disk")
        if existed and tables and "store_meta" not in tables:
            self._con.close()
            raise StoreError(f"{self.path} is a GeoPackage/SQLite file but not a patrol store; "
                             f"point store.url at a new .gpkg file")
        if "store_meta" in tables:
            self._check_crs()

    # ------------------------------------------------------------ dialect
    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None  # type: ignore[assignment]

    def _x(self, sql: str, params: Sequence = ()) -> sqlite3.Cursor:
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
            raise self._os_problem(e) or StoreError(f"store {self.path.name}: {one_line(e)}") from None

    def _os_problem(self, e: BaseException) -> StoreError | None:
        """A store that cannot be written (read-only, full disk) as one line that keeps the ledger
        where it is (no advice to start a new file)."""
        text = str(e).lower()
        if "readonly" in text or "read-only" in text or "unable to open" in text and not os.access(
                self.path.parent, os.W_OK):
            return StoreError(f"store {self.path.name} cannot be written (read-only file or folder); give "
                              f"this account write access to it and its folder; nothing was changed")
        if "disk is full" in text or "disk i/o error" in text:
            return StoreError(f"store {self.path.name}: the disk is full; free some space (patrol gc) and "
                              f"run it again; nothing of this write was kept")
        return None

    def _many(self, sql: str, rows: list[tuple]) -> None:
        try:
            self._con.executemany(sql, rows)
        except sqlite3.IntegrityError as e:
            raise StoreError(f"store {self.path}: {e}; nothing of this write was kept") from None
        except sqlite3.OperationalError as e:
            raise self._os_problem(e) or StoreError(f"store {self.path.name}: {one_line(e)}") from None

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
                    if self._con.in_transaction:    # SQLite itself rolled back on a full disk
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
                    if self._con.in_transaction:
                        self._con.execute(f"ROLLBACK TO {name}")
                        self._con.execute(f"RELEASE {name}")
                    raise
                else:
                    self._x(f"RELEASE {name}")
                finally:
                    self._depth -= 1

    def _version(self) -> int:
        tables = {r[0] for r in self._rows("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables:
            return 0
        return int(self._rows("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0])

    def _stored_crs(self) -> str | None:
        tables = {r[0] for r in self._rows("SELECT name FROM sqlite_master WHERE type='table'")}
        return super()._stored_crs() if "store_meta" in tables else None

    def _encode(self, geoms: Sequence, table: Table) -> list:
        return encode_geometries(geoms, self.srs_id, table.name)

    def _select_geometry(self, column: str) -> str:
        return q(column)

    def _decode(self, values: Sequence) -> np.ndarray:
        return decode_geometries(values)

    def _bbox_clause(self, table: Table, bbox: tuple[float, float, float, float]) -> tuple[str, list]:
        x0, y0, x1, y1 = bbox
        return (f"fid IN (SELECT id FROM {q(f'rtree_{table.name}_{table.geometry}')} "
                f"WHERE minx <= ? AND maxx >= ? AND miny <= ? AND maxy >= ?)", [x1, x0, y1, y0])

    def _write(self, table: Table, cols: list[str], rows: list[tuple], conflict: str) -> None:
        self._many(f"INSERT INTO {q(table.name)} ({', '.join(map(q, cols))}) "
                   f"VALUES ({', '.join('?' * len(cols))}) {conflict}", rows)

    # ------------------------------------------------------------ flight claims
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


def _sql_type(c) -> str:
    return _SQL_TYPE[c.kind]


def _identity(table) -> str:
    return {"case_event": "event_id INTEGER PRIMARY KEY AUTOINCREMENT", "case_counter": ""}.get(
        table.name, "fid INTEGER PRIMARY KEY AUTOINCREMENT")


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
    for table in map(as_created, TABLES.values()):
        x(f"CREATE TABLE {q(table.name)} ({', '.join(table_columns(table, _sql_type, _identity(table)))})")
        for i, idx in enumerate(table.indexes):
            x(f"CREATE INDEX {table.name}_ix{i} ON {q(table.name)} ({', '.join(map(q, idx))})")
        if table.name in FEATURE_TABLES:
            _register_features(store, table)
        elif table.name in ATTRIBUTE_TABLES:
            x("INSERT INTO gpkg_contents (table_name, data_type, identifier, description) "
              "VALUES (?, 'attributes', ?, ?)", (table.name, table.name, table.description))
    for op in ("UPDATE", "DELETE"):
        x(f"CREATE TRIGGER case_event_no_{op.lower()} BEFORE {op} ON case_event BEGIN "
          f"SELECT RAISE(ABORT, 'case_event is append-only: history is never rewritten'); END")


def _migration_2(store: GpkgStore) -> None:
    """The web service's accounts (schema.USERS), a GeoPackage attribute table."""
    v2 = Table(USERS.name, tuple(c for c in USERS.columns if c.name not in USER_GUARD_COLUMNS), USERS.key)
    store._x(f"CREATE TABLE {q(USERS.name)} ({', '.join(table_columns(v2, _sql_type, _identity(USERS)))})")
    store._x("INSERT INTO gpkg_contents (table_name, data_type, identifier, description) "
             "VALUES (?, 'attributes', ?, ?)", (USERS.name, USERS.name, USERS.description))


def _append_only(store: GpkgStore, table_name: str) -> None:
    for op in ("UPDATE", "DELETE"):
        store._x(f"CREATE TRIGGER {table_name}_no_{op.lower()} BEFORE {op} ON {q(table_name)} BEGIN "
                 f"SELECT RAISE(ABORT, '{table_name} is append-only: history is never rewritten'); END")


def _register_features(store: GpkgStore, table: Table) -> None:
    """A created table with a geometry column made a GeoPackage feature table with its R-tree."""
    x, g = store._x, table.geometry
    x("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id) "
      "VALUES (?, 'features', ?, ?, ?)", (table.name, table.name, table.description, store.srs_id))
    x("INSERT INTO gpkg_geometry_columns VALUES (?, ?, 'MULTIPOLYGON', ?, 0, 0)", (table.name, g, store.srs_id))
    for sql in _rtree_sql(table.name, g):
        x(sql)
    x("INSERT INTO gpkg_extensions VALUES (?, ?, 'gpkg_rtree_index', "
      "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')", (table.name, g))


def _feature_table(store: GpkgStore, table: Table) -> None:
    store._x(f"CREATE TABLE {q(table.name)} ({', '.join(table_columns(table, _sql_type, _identity(table)))})")
    _register_features(store, table)


def _attribute_table(store: GpkgStore, table: Table) -> None:
    store._x(f"CREATE TABLE {q(table.name)} ({', '.join(table_columns(table, _sql_type, _identity(table)))})")
    store._x("INSERT INTO gpkg_contents (table_name, data_type, identifier, description) "
             "VALUES (?, 'attributes', ?, ?)", (table.name, table.name, table.description))


MIGRATIONS: list[tuple[int, str, Any]] = [
    (1, "GeoPackage core, flight, detection, parcel, zone, cases, case_event, evidence", _migration_1),
    (2, "users: web service accounts", _migration_2),
    (3, "users: failed sign-ins, lockout, server-side logout", lambda s: add_user_guard_columns(s, _sql_type)),
    (4, "cases: floors, floor area, unit, remark; document: numbered enforcement documents",
     lambda s: add_documents(s, _sql_type, lambda t: _attribute_table(s, t))),
    (5, "media: on-site photos and videos of a case; cases: id number, address",
     lambda s: add_media(s, _sql_type, lambda t: _attribute_table(s, t))),
    (6, "flight: Chinese error, co-registration; cases: change confidence and evidence", lambda s: add_change_columns(s, _sql_type)),
    (7, "model, model_event: the model registry; detection, cases: model version",
     lambda s: add_model_registry(s, _sql_type, lambda t: _attribute_table(s, t), lambda t: _append_only(s, t))),
    (8, "flight: why it was processed outside the model's GSD range (forced)",
     lambda s: add_columns(s, _sql_type, "flight", ("forced",))),
    (9, "flight: DSM and DTM; detection, cases: height and storeys; detection: source",
     lambda s: add_height_columns(s, _sql_type)),
    (10, "house, house_event: the building register (自建房台账); cases: house number",
     lambda s: add_house_register(s, _sql_type, lambda t: _feature_table(s, t), lambda t: _attribute_table(s, t),
                                  lambda t: _append_only(s, t))),
]
GpkgStore.MIGRATIONS = MIGRATIONS
