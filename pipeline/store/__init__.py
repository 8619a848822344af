"""Persistent store: ``open_store(url, crs)`` picks the backend from the URL.

- a file path (``data/patrol.gpkg``, ``file:…``): the embedded GeoPackage store (``gpkg.py``);
- ``postgresql://…``: the PostGIS store (``postgis.py``, when present).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import StoreError
from pipeline.store.base import FLIGHT_STATUSES, BBox, Store
from pipeline.store.gpkg import GpkgStore
from pipeline.store.schema import CASE_COLUMNS, TABLES

__all__ = ["open_store", "Store", "BBox", "FLIGHT_STATUSES", "CASE_COLUMNS", "TABLES"]


def open_store(url: str | Path, crs: str, case_prefix: str = "LW", migrate: bool = True) -> Store:
    """Open (and by default create/upgrade) the store at ``url`` in the projected ``crs``.

    For a file the parent folders are created. A store already holding another CRS is
    refused with a StoreError.
    """
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        try:
            # lazy: loads psycopg only when used
            from pipeline.store.postgis import PostgisStore
        except ImportError:
            raise StoreError(f"store {text}: the PostGIS backend is not available in this "
                             f"version; use a .gpkg file path") from None
        store: Store = PostgisStore(text, crs, case_prefix=case_prefix)
    elif "://" in text:
        raise StoreError(f"store '{text}': unknown kind; use a .gpkg file or a postgresql:// URL")
    else:
        path = Path(text.removeprefix("file:")).expanduser()
        store = GpkgStore(path, crs, case_prefix=case_prefix)
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
