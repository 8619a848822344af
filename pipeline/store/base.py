"""The store interface every backend implements (``core.SqlStore`` holds the table methods once).

Conventions shared by all backends (the contract suite in tests/test_store_contract.py
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
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import geopandas as gpd
import pandas as pd

BBox = tuple[float, float, float, float]      # minx, miny, maxx, maxy in the store CRS
When = str | date | datetime | pd.Timestamp

FLIGHT_STATUSES = ("uploaded", "processing", "done", "failed")


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

    @property
    def display_url(self) -> str:
        """The location as shown to users (a backend hides passwords)."""
        return self.url

    # ------------------------------------------------------------ lifecycle
    @abc.abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema to the newest version (idempotent, safe when two
        processes call it at once). Returns the schema version now in force."""

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """``{"backend", "url", "crs", "version", "latest_version", "counts": {table: rows}}``."""

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

    # ------------------------------------------------------------ flights
    @abc.abstractmethod
    def upsert_flight(self, flight: Mapping[str, Any]) -> None:
        """Insert or update one flight by ``flight_id`` (keys as in the Flight dict of
        ARCHITECTURE.md; ``footprint`` a shapely polygon in the store CRS). Keys absent
        from the mapping keep their stored value; a new flight defaults to status 'uploaded'."""

    @abc.abstractmethod
    def get_flight(self, flight_id: str) -> dict[str, Any] | None:
        """The flight as a dict (every column; captured_at/processed_at as datetime,
        footprint a shapely geometry or None), or None if unknown."""

    @abc.abstractmethod
    def list_flights(self, status: str | Sequence[str] | None = None) -> gpd.GeoDataFrame:
        """Flights, oldest capture first; the geometry column is ``footprint``."""

    @abc.abstractmethod
    def set_flight_status(self, flight_id: str, status: str, error: str | None = None,
                          model_version: str | None = None) -> None:
        """Set status (one of FLIGHT_STATUSES) and error; 'done'/'failed' stamp processed_at.
        An unknown flight or status raises StoreError."""

    @abc.abstractmethod
    def claim_flight(self, flight_id: str) -> Claim | None:
        """Try to take the exclusive processing claim on a flight without waiting: a context
        manager holding it (released on exit), or None when another process or store object
        holds it. The claim dies with its holder (a killed process frees it), so a run that
        finds a flight 'processing' with a free claim knows it was interrupted. It guards the
        work on a flight (the nightly run); writes still go through ``transaction()``."""

    # ------------------------------------------------------------ detections
    @abc.abstractmethod
    def replace_detections(self, flight_id: str, gdf: gpd.GeoDataFrame) -> int:
        """Replace every detection of the flight with ``gdf`` (class_name, confidence,
        area_m2, geometry; optional detection_id, else ``{flight_id}-{n:05d}`` in row order).
        Idempotent: running it twice leaves one copy. The flight must exist."""

    @abc.abstractmethod
    def detections(self, flight_id: str | None = None, bbox: BBox | None = None) -> gpd.GeoDataFrame:
        """Detections of one flight (or all), optionally only those intersecting bbox."""

    # ------------------------------------------------------------ registry
    # Concrete on top of the backends' generic ``_frame`` / ``_upsert`` / ``_x``.
    def import_parcels(self, gdf: gpd.GeoDataFrame, replace: bool = False) -> int:
        """Upsert parcels by parcel_id (``replace=True`` first removes every parcel).
        Columns outside the table go to the JSON column ``attrs`` (e.g. 三调 BSM/TBBH/DLBM)."""
        from pipeline.store.schema import TABLES
        from pipeline.values import plain
        table = TABLES["parcel"]
        frame = gdf.copy()
        extra = [c for c in frame.columns if c not in table.names and c != frame.geometry.name]
        if extra and "attrs" not in frame.columns:
            frame["attrs"] = [{k: plain(v) for k, v in zip(extra, vals)}
                              for vals in frame[extra].itertuples(index=False, name=None)]
        with self.transaction():
            if replace:
                self._x("DELETE FROM parcel")  # type: ignore[attr-defined]
            return self._upsert(table, frame)  # type: ignore[attr-defined]

    def parcels(self, bbox: BBox | None = None) -> gpd.GeoDataFrame:
        """Parcels, optionally only those intersecting bbox."""
        from pipeline.store.schema import TABLES
        return self._frame(TABLES["parcel"], bbox=bbox)  # type: ignore[attr-defined]

    def import_zones(self, gdf: gpd.GeoDataFrame, replace: bool = False) -> int:
        """Upsert zones by zone_id (``replace=True`` first removes every zone)."""
        from pipeline.store.schema import TABLES
        with self.transaction():
            if replace:
                self._x("DELETE FROM zone")  # type: ignore[attr-defined]
            return self._upsert(TABLES["zone"], gdf)  # type: ignore[attr-defined]

    def zones(self, bbox: BBox | None = None) -> gpd.GeoDataFrame:
        """Zones, optionally only those intersecting bbox."""
        from pipeline.store.schema import TABLES
        return self._frame(TABLES["zone"], bbox=bbox)  # type: ignore[attr-defined]

    # ------------------------------------------------------------ cases
    @abc.abstractmethod
    def cases(self, bbox: BBox | None = None, status: str | Sequence[str] | None = None,
              category: str | Sequence[str] | None = None, town: str | None = None,
              village: str | None = None, since: When | None = None,
              until: When | None = None) -> gpd.GeoDataFrame:
        """Cases with every column, ordered by case_no. ``since``/``until`` bound
        first_seen_at (created_at when first_seen_at is empty): since <= t < until."""

    @abc.abstractmethod
    def save_cases(self, gdf: gpd.GeoDataFrame) -> int:
        """Upsert by case_no (required). Only the frame's columns are written; a new case
        gets a case_uuid and created_at when the frame has none; updated_at is stamped
        unless given."""

    @abc.abstractmethod
    def allocate_case_numbers(self, year: int, n: int) -> list[str]:
        """Reserve ``n`` new case numbers ``f"{case_prefix}{year}-{seq:06d}"``, sequential,
        never handed out twice, even by concurrent writer processes (runs inside the write
        transaction; numbers of a rolled-back transaction are reused)."""

    # ------------------------------------------------------------ history and evidence
    @abc.abstractmethod
    def append_events(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[int]:
        """Append case_event rows (case_no, at, actor, from_status, to_status, note);
        ``at`` defaults to now. Returns their event_ids. There is no update or delete:
        the backend refuses both."""

    @abc.abstractmethod
    def events(self, case_no: str | None = None) -> pd.DataFrame:
        """Events (event_id, case_no, at, actor, from_status, to_status, note) in order."""

    def add_evidence(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> int:
        """Upsert evidence rows (case_no, flight_id, role, chip_path, file_hash,
        captured_at, gsd_m) by (case_no, flight_id, role)."""
        from pipeline.store.schema import TABLES
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame([dict(r) for r in rows])
        if not len(frame):
            return 0
        return self._upsert(TABLES["evidence"], frame)  # type: ignore[attr-defined]

    @abc.abstractmethod
    def evidence(self, case_no: str | None = None) -> pd.DataFrame:
        """Evidence rows of one case (or all), by captured_at."""

    # ------------------------------------------------------------ web service accounts
    # Concrete on top of the backends' generic ``_frame(table)`` / ``_upsert(table, frame)``.
    def users(self) -> pd.DataFrame:
        """Web service accounts (table ``users``: username, password_hash, role, towns
        (list), display_name, disabled (0/1), created_at, updated_at), by username."""
        from pipeline.store.schema import USERS
        return self._frame(USERS).sort_values("username").reset_index(drop=True)

    def get_user(self, username: str) -> dict[str, Any] | None:
        """One account as a dict, or None."""
        users = self.users()
        hit = users[users["username"] == username]
        return None if not len(hit) else hit.iloc[0].to_dict()

    def save_user(self, user: Mapping[str, Any]) -> None:
        """Insert or update one account by username; keys absent keep their stored value."""
        from pipeline.store.schema import USERS
        row = {k: v for k, v in dict(user).items() if k in USERS.names}
        if not row.get("username"):
            from pipeline.errors import StoreError
            raise StoreError("save_user: the account has no username")
        now = datetime.now().replace(microsecond=0)
        with self.transaction():
            known = self.get_user(row["username"])
            row = {**(known or {"created_at": now}), **row, "updated_at": now}
            self._upsert(USERS, pd.DataFrame([row]))  # type: ignore[attr-defined]
