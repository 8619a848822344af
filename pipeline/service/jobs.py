"""Processing flights from the web service: one background thread, one flight at a time.

An admin's "process now" queues the flight here; everything else stays 'uploaded' for the
nightly run (`patrol nightly`). The thread opens its own store connection and calls
``pipeline.process.run.process_flight`` (which marks the flight processing → done, or failed with
the reason). The detector is injectable (``create_app(..., detector=)``: a tile detector of
``pipeline.detection.detectors``, e.g. a generated district's truth layer via ``patrol serve --truth-layer``).
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from pipeline.core.errors import PatrolError

log = logging.getLogger("pipeline.service")


class Processor:
    """A queue of flight ids and the one thread that processes them in order."""

    def __init__(self, settings, detector: Any = None):
        self.settings, self.detector = settings, detector
        self._q: queue.Queue[str | None] = queue.Queue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.current: str | None = None

    def submit(self, flight_id: str) -> bool:
        """Queue a flight; False when it is queued or running already."""
        with self._lock:
            if flight_id in self._queued or flight_id == self.current:
                return False
            self._queued.add(flight_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="patrol-processor", daemon=True)
                self._thread.start()
        self._q.put(flight_id)
        return True

    def state(self, flight_id: str) -> str | None:
        with self._lock:
            if flight_id == self.current:
                return "running"
            return "queued" if flight_id in self._queued else None

    def idle(self) -> bool:
        with self._lock:
            return not self._queued and self.current is None

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            fid = self._q.get()
            if fid is None:
                return
            with self._lock:
                self._queued.discard(fid)
                self.current = fid
            try:
                self.process(fid)
            finally:
                with self._lock:
                    self.current = None

    def process(self, flight_id: str) -> None:
        # lazy: loads geopandas, pandas, shapely only when used
        from pipeline.process.run import process_flight

        # lazy: loads geopandas, pandas, shapely only when used
        from pipeline.store import open_store

        s = self.settings
        try:
            store = open_store(s.store.url, s.store.crs, case_prefix=s.district.case_prefix)
        except PatrolError as e:
            log.error("processing %s: %s", flight_id, e)
            return
        claim = None
        try:
            flight = store.get_flight(flight_id)
            if flight is None:
                return
            claim = store.claim_flight(flight_id)
            if claim is None:                       # the nightly run holds it
                log.warning("flight %s is being processed elsewhere; not started", flight_id)
                return
            with claim:
                process_flight(store, flight_id, s, detector=self.detector, force=True, progress=False)
        except PatrolError as e:                    # process_flight marked it failed already
            self._fail(store, flight_id, e)
        except Exception as e:                      # a bug or a broken file: keep the reason
            log.exception("processing %s failed", flight_id)
            self._fail(store, flight_id, e)
        finally:
            store.close()

    @staticmethod
    def _fail(store, flight_id: str, error: BaseException) -> None:
        # lazy: loads geopandas, pandas, shapely only when used
        from pipeline.process.engine import fail_flight
        try:
            f = store.get_flight(flight_id)
            if f is not None and f["status"] != "failed":
                fail_flight(store, flight_id, error)
        except PatrolError:
            log.exception("could not mark %s failed", flight_id)
