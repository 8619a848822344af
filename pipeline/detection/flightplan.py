"""The one processing path of a flight: plan → chunks of tiles → detect each chunk → finish.

``plan_flight`` plans tile windows over the valid pixels of every frame (an ortho, or each
photo); chunks read one frame; ``run_chunk`` (the Dask task) detects one with a tile detector
(``pipeline.detection.detectors``); ``finish`` merges the parts (seams, one box per roof, store CRS).
``detect_plan`` runs it in this process (``patrol run``, ``patrol detect``); ``pipeline.process``
adds claims, checkpoints and an executor (``patrol nightly``). Both give the same detections.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import InputError
from pipeline.ingest import file_id, flight_frames

CHUNK_TILES = 16                       # tiles per task / checkpoint


@dataclass(frozen=True)
class Tiling:
    """How tiles are cut and read (``settings.processing``)."""
    gsd_m: float
    tile_px: int
    overlap_px: int
    stretch: tuple[float, float]

    @classmethod
    def from_settings(cls, settings) -> "Tiling":
        p = settings.processing
        return cls(p.gsd_m, p.tile_px, p.overlap_px, tuple(p.stretch_percentiles))


@dataclass
class Chunk:
    """A task: some planned tiles of one frame of a flight (picklable)."""
    flight_id: str
    path: str                           # the frame (raster) its tiles are read from
    captured_at: Any
    tiling: Tiling
    indices: list[int]                  # plan indices of the tiles (ascending)
    windows: list                       # their TileWindows
    extents: np.ndarray                 # (n_plan, 4) extents of every planned tile, raster CRS


@dataclass
class FlightPlan:
    """Every planned tile of a flight, over all its frames, in one index space."""
    flight_id: str
    captured_at: Any
    tiling: Tiling
    frames: list[str]
    windows: list = field(default_factory=list)
    frame_of: list[int] = field(default_factory=list)   # frame index of each planned tile
    raster_crs: Any = None

    @property
    def n(self) -> int:
        return len(self.windows)

    def chunks(self, chunk_tiles: int | None = None, done: Iterable[int] = ()) -> list[Chunk]:
        """The tiles not in ``done``, cut into chunks of ``chunk_tiles`` (all of a frame when None)."""
        done = set(done)
        extents = np.array([window_extent(w) for w in self.windows]).reshape(-1, 4)
        out = []
        for f, frame in enumerate(self.frames):
            mine = [i for i in range(self.n) if self.frame_of[i] == f and i not in done]
            step = chunk_tiles or max(len(mine), 1)
            for k in range(0, len(mine), step):
                idx = mine[k:k + step]
                out.append(Chunk(self.flight_id, frame, self.captured_at, self.tiling, idx,
                                 [self.windows[i] for i in idx], extents))
        return out


def window_extent(w) -> tuple[float, float, float, float]:
    """A tile window's extent (minx, miny, maxx, maxy) in the raster's CRS."""
    t = w.transform
    x0, y0 = t * (0, 0)
    x1, y1 = t * (w.width, w.height)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def plan_flight(frames: Sequence[str | Path], tiling: Tiling, flight_id: str = "",
                captured_at: Any = None) -> FlightPlan:
    """Plan the tiles of every frame (one ortho, or each photo of a flight); the frames must
    share one CRS."""
    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import open_raster, plan_windows

    plan = FlightPlan(flight_id, captured_at, tiling, [str(f) for f in frames])
    for k, frame in enumerate(plan.frames):
        with open_raster(frame) as src:
            if plan.raster_crs is None:
                plan.raster_crs = src.crs
            elif src.crs != plan.raster_crs:
                raise InputError(f"flight {flight_id}: frame {Path(frame).name} is in {src.crs}, the "
                                 f"first in {plan.raster_crs}; register the photos again with `patrol ingest`",
                         zh=f"航线 {flight_id} 的照片 {Path(frame).name} 坐标系与其他照片不同，请重新登记该批照片")
            windows = plan_windows(src, tiling.gsd_m, tiling.tile_px, tiling.overlap_px)
        plan.windows += windows
        plan.frame_of += [k] * len(windows)
    return plan


def plan_registered_flight(flight: dict, settings) -> FlightPlan:
    """The plan of a stored flight, after checking its files are still the ones registered."""
    fid, path = flight["flight_id"], Path(flight["path"])
    if not path.exists():
        raise InputError(f"flight {fid}: its file {path.name} is gone; restore it or register the "
                         f"flight again",
                         zh=f"航线 {fid} 的文件 {path.name} 已不存在，请恢复该文件或重新登记航线")
    if flight.get("source") == "ortho" and path.is_file() and file_id(path) != fid:
        raise InputError(f"flight {fid}: {path.name} changed since it was registered (content hash "
                         f"differs); register the new file with `patrol ingest`")
    return plan_flight(flight_frames(flight), Tiling.from_settings(settings), fid, flight.get("captured_at"))


def chunk_tiles(chunk: Chunk, batch_size: int) -> Iterator[list]:
    """The chunk's tiles, read ahead in a thread, in batches of ``batch_size``."""
    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import iter_tiles

    t = chunk.tiling
    tiles = iter_tiles(chunk.path, t.gsd_m, t.tile_px, t.overlap_px, t.stretch, windows=chunk.windows)
    return batched(prefetch(tiles, depth=2 * batch_size), batch_size)


def run_chunk(detector, chunk: Chunk, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Detect one chunk: the detector's plain arrays (picklable, checkpointable) plus the
    chunk's plan indices, its seconds and the worker that ran it. The Dask task."""
    t0 = time.perf_counter()
    part = detector.detect_chunk(chunk, progress)
    part["indices"] = np.asarray(chunk.indices, dtype=np.int64)
    part["seconds"] = np.float64(time.perf_counter() - t0)
    part.setdefault("infer_s", np.float64(0.0))
    part["worker"] = np.str_(f"{os.uname().nodename}:{os.getpid()}")
    return part


def finish(detector, plan: FlightPlan, parts: Iterable[dict], settings, store_crs: str | None = None):
    """Detections of the whole flight from its chunks' parts (any order), in the store CRS."""
    parts = sorted(parts, key=lambda p: int(p["indices"][0]))
    return detector.finish(parts, plan.raster_crs, store_crs or settings.store.crs, settings.detector)


def detect_plan(detector, plan: FlightPlan, settings, store_crs: str | None = None, progress: bool = True):
    """The plan detected in this process, chunk after chunk, then finished."""
    from tqdm import tqdm

    name = Path(plan.frames[0]).name if len(plan.frames) == 1 else f"{len(plan.frames)} frames"
    bar = tqdm(total=plan.n, unit="tile", desc=f"detect {name}", disable=not progress)
    try:
        parts = [run_chunk(detector, chunk, bar.update) for chunk in plan.chunks()]
        bar.update(plan.n - bar.n)          # windows that held no valid pixel once read
    finally:
        bar.close()
    return finish(detector, plan, parts, settings, store_crs)


# ---------------------------------------------------------------- reading ahead
def prefetch(items: Iterable, depth: int) -> Iterator:
    """Produce ``items`` in a background thread (GDAL reads release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for it in items:
                while not stop.is_set():
                    try:
                        q.put(it, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    try:
        while True:
            it = q.get()
            if it is end:
                return
            if isinstance(it, BaseException):
                raise it
            yield it
    finally:
        stop.set()


def batched(it: Iterable, n: int) -> Iterator[list]:
    """Lists of ``n`` items (the last may be shorter)."""
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
