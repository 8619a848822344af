"""The store every backend is: the table methods once, in SQL both backends speak, on a few
dialect hooks each backend supplies (running a statement with ``?`` placeholders, the
transaction and its lock, geometry encoding, the bounding-box filter, the bulk write, the
migrations' DDL): ``gpkg.py`` (embedded SQLite/GeoPackage) and ``postgis.py`` (PostgreSQL).

Conventions shared by all backends (the contract suite in tests/system/test_store_contract.py
checks them):

- Geometries go in and come back in the store CRS (``store.crs``). A GeoDataFrame in
  another CRS is reprojected on write; one without a CRS is taken to be in the store CRS.
  Polygonal columns hold Polygon or MultiPolygon; a one-part MultiPolygon comes back as
  a Polygon.
- GeoDataFrames come back with every column of the table (``pipeline.store.schema``),
  in table order, geometry column named as in the table (``geometry``; ``footprint``
  for flights): text → pandas str dtype (missing = NaN),
  real → float64, integer → Int64, datetime/date → datetime64[ns] (naive; tz-aware
  input is converted to UTC then made naive), JSON → Python lists/dicts.
- Write methods that take a frame update only the columns the frame has (plus
  ``updated_at``), ignore columns the table does not know, and return a count.
- Every write method runs inside ``transaction()``; called inside an outer
  ``with store.transaction():`` it becomes part of it, so an exception anywhere in
  the outer block rolls back everything written in it.
- Bad arguments raise ``StoreError`` (one line).
"""
from __future__ import annotations

import abc
import contextlib
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from pipeline.core.errors import StoreError
from pipeline.core.values import is_missing, iso_datetime, plain
from pipeline.store.core import check_bbox, from_sql, in_clause, q, to_sql
from pipeline.store.schema import (
    COUNTED,
    DOCUMENT,
    DOCUMENT_VERSION,
    HOUSE,
    HOUSE_EVENT,
    HOUSE_VERSION,
    MEDIA,
    MEDIA_VERSION,
    MODEL,
    MODEL_EVENT,
    MODEL_VERSION,
    TABLES,
    USERS,
    Table,
)

BBox = tuple[float, float, float, float]      # minx, miny, maxx, maxy in the store CRS
When = str | date | datetime | pd.Timestamp

FLIGHT_STATUSES = ("uploaded", "processing", "done", "failed")


def _equal(**values: Any) -> tuple[str, list]:
    """The ``in_clause`` of each column given (None: no condition), joined with AND."""
    parts = [in_clause(k, v) for k, v in values.items() if v is not None]
    return " AND ".join(w for w, _ in parts), [p for _, ps in parts for p in ps]


class Claim:
    """A held flight claim (``Store.claim_flight``): leaving the ``with`` block or
    ``release()`` frees it; releasing twice is harmless."""

    def __init__(self, flight_id: str, release):
        self.flight_id = flight_id
        self._release = release

    @property
    def held(self) -> bool:
        return self._release is not None

    def release(self) -> None:
        fn, self._release = self._release, None
        if fn is not None:
            fn()

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Store(abc.ABC):
    """Persistent tables of the pipeline: flights, detections, parcels, zones, cases,
    case events, evidence. Open one with ``pipeline.store.open_store(url, crs)``."""

    #: backend name: "gpkg" or "postgis"
    backend: str
    #: the store CRS as given to open_store (e.g. "EPSG:4547")
    crs: str
    #: case number prefix (settings.district.case_prefix)
    case_prefix: str
    #: where the store lives (file path or URL)
    url: str
    #: [(version, description, step(store))] of the backend's DDL
    MIGRATIONS: list[tuple[int, str, Any]] = []
    _crs: CRS

    @property
    def display_url(self) -> str:
        """The location as shown to users (a backend hides passwords)."""
        return self.url

    def migrate(self) -> int:
        """Create or upgrade the schema to the newest version (idempotent, safe when two
        processes call it at once). Returns the schema version now in force."""
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
        """``{"backend", "url", "crs", "version", "latest_version", "counts": {table: rows}}``."""
        version = self._version()
        since = {"document": DOCUMENT_VERSION, "media": MEDIA_VERSION, "model": MODEL_VERSION,
                 "model_event": MODEL_VERSION, "house": HOUSE_VERSION, "house_event": HOUSE_VERSION}
        tables = [t for t in COUNTED if version >= since.get(t, 1)]          # what this version has
        counts = {t: int(self._rows(f"SELECT COUNT(*) FROM {q(t)}")[0][0]) for t in tables} if version else {}
        return {"backend": self.backend, "url": self.display_url, "crs": self.crs, "version": version,
                "latest_version": self.MIGRATIONS[-1][0], "counts": counts}

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction. Nests: an inner block that fails is undone and the error
        propagates; if the outermost block fails, everything written in it is undone.
        The outermost block takes the write lock at its start (other writers wait up to
        the busy timeout), readers are never blocked."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection(s)."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def upsert_flight(self, flight: Mapping[str, Any]) -> None:
        """Insert or update one flight by ``flight_id`` (keys as in the Flight dict of
        ARCHITECTURE.md; ``footprint`` a shapely polygon in the store CRS). Keys absent
        from the mapping keep their stored value; a new flight defaults to status 'uploaded'."""
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
        """The flight as a dict (every column; captured_at/processed_at as datetime,
        footprint a shapely geometry or None), or None if unknown."""
        gdf = self._frame(TABLES["flight"], "flight_id = ?", [flight_id])
        return {k: plain(v) for k, v in gdf.iloc[0].items()} if len(gdf) else None

    def list_flights(self, status: str | Sequence[str] | None = None) -> gpd.GeoDataFrame:
        """Flights, oldest capture first; the geometry column is ``footprint``."""
        where, params = in_clause("status", status)
        return self._frame(TABLES["flight"], where, params, order="captured_at NULLS FIRST, flight_id")

    def set_flight_status(self, flight_id: str, status: str, error: str | None = None,
                          model_version: str | None = None, error_zh: str | None = None) -> None:
        """Set status (one of FLIGHT_STATUSES) and error (``error_zh``: the same in Chinese);
        'done'/'failed' stamp processed_at.
        An unknown flight or status raises StoreError."""
        if status not in FLIGHT_STATUSES:
            raise StoreError(f"flight {flight_id}: unknown status '{status}'; "
                             f"use one of {', '.join(FLIGHT_STATUSES)}")
        with self.transaction():
            if not self._rows("SELECT 1 FROM flight WHERE flight_id = ?", [flight_id]):
                raise StoreError(f"flight {flight_id} is not in the store; register it first")
            self._x("UPDATE flight SET status = ?, error = ?, error_zh = ?, "
                    "model_version = COALESCE(?, model_version) WHERE flight_id = ?",
                    (status, error, error_zh, model_version, flight_id))
            if status in ("done", "failed"):
                self._x("UPDATE flight SET processed_at = ? WHERE flight_id = ?",
                        (iso_datetime(datetime.now()), flight_id))

    @abc.abstractmethod
    def claim_flight(self, flight_id: str) -> Claim | None:
        """Try to take the exclusive processing claim on a flight without waiting: a context
        manager holding it (released on exit), or None when another process or store object
        holds it. The claim dies with its holder (a killed process frees it), so a run that
        finds a flight 'processing' with a free claim knows it was interrupted. It guards the
        work on a flight (the nightly run); writes still go through ``transaction()``."""

    def replace_detections(self, flight_id: str, gdf: gpd.GeoDataFrame) -> int:
        """Replace every detection of the flight with ``gdf`` (class_name, confidence,
        area_m2, geometry; optional detection_id, else ``{flight_id}-{n:05d}`` in row order).
        Idempotent: running it twice leaves one copy. The flight must exist."""
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
        """Detections of one flight (or all), optionally only those intersecting bbox."""
        where, params = ("flight_id = ?", [flight_id]) if flight_id is not None else ("", [])
        return self._frame(TABLES["detection"], where, params, bbox=bbox)

    def import_parcels(self, gdf: gpd.GeoDataFrame, replace: bool = False) -> int:
        """Upsert parcels by parcel_id (``replace=True`` first removes every parcel).
        Columns outside the table go to the JSON column ``attrs`` (e.g. 三调 BSM/TBBH/DLBM)."""
        table = TABLES["parcel"]
        frame = gdf.copy()
        extra = [c for c in frame.columns if c not in table.names and c != frame.geometry.name]
        if extra and "attrs" not in frame.columns:
            frame["attrs"] = [{k: plain(v) for k, v in zip(extra, vals)}
                              for vals in frame[extra].itertuples(index=False, name=None)]
        with self.transaction():
            if replace:
                self._x("DELETE FROM parcel")
            return self._upsert(table, frame)

    def parcels(self, bbox: BBox | None = None) -> gpd.GeoDataFrame:
        """Parcels, optionally only those intersecting bbox."""
        return self._frame(TABLES["parcel"], bbox=bbox)

    def import_zones(self, gdf: gpd.GeoDataFrame, replace: bool = False) -> int:
        """Upsert zones by zone_id (``replace=True`` first removes every zone)."""
        with self.transaction():
            if replace:
                self._x("DELETE FROM zone")
            return self._upsert(TABLES["zone"], gdf)

    def zones(self, bbox: BBox | None = None) -> gpd.GeoDataFrame:
        """Zones, optionally only those intersecting bbox."""
        return self._frame(TABLES["zone"], bbox=bbox)

    def cases(self, bbox: BBox | None = None, status: str | Sequence[str] | None = None,
              category: str | Sequence[str] | None = None, town: str | None = None,
              village: str | None = None, since: When | None = None,
              until: When | None = None) -> gpd.GeoDataFrame:
        """Cases with every column, ordered by case_no. ``since``/``until`` bound
        first_seen_at (created_at when first_seen_at is empty): since <= t < until."""
        clauses, params = [], []
        for name, value in (("status", status), ("category", category)):
            w, p = in_clause(name, value)
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
        """Upsert by case_no (required). Only the frame's columns are written; a new case
        gets a case_uuid and created_at when the frame has none; updated_at is stamped
        unless given."""
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
        """Reserve ``n`` new case numbers ``f"{case_prefix}{year}-{seq:06d}"``, sequential,
        never handed out twice, even by concurrent writer processes (runs inside the write
        transaction; numbers of a rolled-back transaction are reused)."""
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

    def append_events(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[int]:
        """Append case_event rows (case_no, at, actor, from_status, to_status, note);
        ``at`` defaults to now. Returns their event_ids. There is no update or delete:
        the backend refuses both."""
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
        """Events (event_id, case_no, at, actor, from_status, to_status, note) in order."""
        where, params = ("case_no = ?", [case_no]) if case_no is not None else ("", [])
        return self._frame(TABLES["case_event"], where, params, order="event_id")

    def add_evidence(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> int:
        """Upsert evidence rows (case_no, flight_id, role, chip_path, file_hash,
        captured_at, gsd_m) by (case_no, flight_id, role)."""
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame([dict(r) for r in rows])
        if not len(frame):
            return 0
        return self._upsert(TABLES["evidence"], frame)

    def evidence(self, case_no: str | None = None) -> pd.DataFrame:
        """Evidence rows of one case (or all), by captured_at."""
        where, params = ("case_no = ?", [case_no]) if case_no is not None else ("", [])
        return self._frame(TABLES["evidence"], where, params, order="captured_at NULLS FIRST, fid")

    def next_sequence(self, prefix: str, year: int) -> int:
        """The next number of the counter ``(prefix, year)`` (document numbers), never handed
        out twice, even by concurrent writers. Call it inside the transaction that stores
        what the number names, so a failure gives the number back."""
        key = (prefix, int(year))
        with self.transaction():
            self._x("INSERT INTO case_counter (prefix, year, last_seq) VALUES (?, ?, 0) "
                    "ON CONFLICT (prefix, year) DO NOTHING", key)
            seq = int(self._rows("SELECT last_seq FROM case_counter WHERE prefix = ? AND year = ?", key)[0][0]) + 1
            self._x("UPDATE case_counter SET last_seq = ? WHERE prefix = ? AND year = ?", (seq, *key))
        return seq

    def add_document(self, row: Mapping[str, Any]) -> None:
        """Record one numbered document (doc_no, kind, year, seq, case_no, issued_at, actor,
        fields, file_hash); a number is recorded once."""
        with self.transaction():
            if self._rows("SELECT 1 FROM document WHERE doc_no = ?", (row["doc_no"],)):
                raise StoreError(f"document {row['doc_no']} is already recorded; numbers are handed out once")
            self._upsert(DOCUMENT, pd.DataFrame([dict(row)]))

    def documents(self, case_no: str | None = None, kind: str | None = None,
                  doc_no: str | None = None) -> pd.DataFrame:
        """Documents (of one case, of one kind, one number), in the order they were issued."""
        where, params = _equal(case_no=case_no, kind=kind, doc_no=doc_no)
        return self._frame(DOCUMENT, where, params, order="issued_at, fid")

    def add_media(self, row: Mapping[str, Any]) -> None:
        """Record one photo or video of a case (schema.MEDIA)."""
        with self.transaction():
            self._upsert(MEDIA, pd.DataFrame([dict(row)]))

    def media(self, case_no: str | None = None, media_id: str | None = None) -> pd.DataFrame:
        """Media rows (of one case, or one), in the order they were uploaded."""
        where, params = _equal(case_no=case_no, media_id=media_id)
        return self._frame(MEDIA, where, params, order="uploaded_at, fid")

    def houses(self, bbox: BBox | None = None, house_no: str | None = None, town: str | None = None,
               village: str | None = None, status: str | Sequence[str] | None = None) -> gpd.GeoDataFrame:
        """The building register (schema.HOUSE), ordered by house_no."""
        where, params = _equal(house_no=house_no, town=town, village=village)
        w, p = in_clause("status", status)
        if w:
            where, params = " AND ".join(x for x in (where, w) if x), [*params, *p]
        return self._frame(HOUSE, where, params, order="house_no", bbox=bbox)

    def save_houses(self, gdf: gpd.GeoDataFrame) -> int:
        """Upsert register records by house_no; only the frame's columns are written; created_at
        is kept, updated_at stamped unless given."""
        frame = gdf.copy()
        now = iso_datetime(datetime.now())
        if "updated_at" not in frame.columns:
            frame["updated_at"] = now
        fill: dict[str, Any] = {"created_at": now, "status": "registered", "flights": to_sql("json", [])}
        return self._upsert(HOUSE, frame, fill=fill, keep=("created_at",))

    def append_house_events(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append register history rows (house_no, at, actor, from_status, to_status, note, facts);
        never updated or deleted."""
        records = [{"at": datetime.now(), **dict(r)} for r in rows]
        if records:
            cols, values = self._prepare(HOUSE_EVENT, pd.DataFrame(records))
            with self.transaction():           # a plain INSERT: an upsert would touch the history
                self._write(HOUSE_EVENT, cols, values, "")

    def house_events(self, house_no: str | None = None) -> pd.DataFrame:
        """The register's history (of one house), oldest first."""
        where, params = _equal(house_no=house_no)
        return self._frame(HOUSE_EVENT, where, params, order="at, fid")

    def models(self, version: str | None = None, state: str | None = None) -> pd.DataFrame:
        """Registered detector models (schema.MODEL), in the order they were registered."""
        where, params = _equal(version=version, state=state)
        return self._frame(MODEL, where, params)

    def save_model(self, row: Mapping[str, Any]) -> None:
        """Insert or update one model by version; keys absent keep their stored value."""
        if not row.get("version"):
            raise StoreError("save_model: the model has no version")
        with self.transaction():
            stored = self.models(version=row["version"])
            merged = {**(stored.iloc[0].to_dict() if len(stored) else {}), **dict(row)}
            self._upsert(MODEL, pd.DataFrame([merged]))

    def add_model_event(self, row: Mapping[str, Any]) -> None:
        """Append one row of the registry's history (version, action, actor, from_version, note,
        figures); ``at`` defaults to now. Never updated or deleted."""
        row = {"at": datetime.now(), **dict(row)}
        with self.transaction():
            self._upsert(MODEL_EVENT, pd.DataFrame([row]))

    def model_events(self, version: str | None = None) -> pd.DataFrame:
        """The registry's history (of one version), oldest first."""
        where, params = _equal(version=version)
        return self._frame(MODEL_EVENT, where, params)

    def users(self) -> pd.DataFrame:
        """Web service accounts (table ``users``: username, password_hash, role, towns
        (list), display_name, disabled (0/1), created_at, updated_at), by username."""
        return self._frame(USERS).sort_values("username").reset_index(drop=True)

    def get_user(self, username: str) -> dict[str, Any] | None:
        """One account as a dict, or None."""
        users = self.users()
        hit = users[users["username"] == username]
        return None if not len(hit) else hit.iloc[0].to_dict()

    def save_user(self, user: Mapping[str, Any]) -> None:
        """Insert or update one account by username; keys absent keep their stored value."""
        row = {k: v for k, v in dict(user).items() if k in USERS.names}
        if not row.get("username"):
            raise StoreError("save_user: the account has no username")
        now = datetime.now().replace(microsecond=0)
        with self.transaction():
            known = self.get_user(row["username"])
            row = {**(known or {"created_at": now}), **row, "updated_at": now}
            self._upsert(USERS, pd.DataFrame([row]))

    # ------------------------------------------------------------ backend dialect
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
