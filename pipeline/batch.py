"""Nightly batch runs: every new flight through tile → detect → match → track, safely.

- **Which flights**: status ``uploaded``, plus ``processing`` ones whose claim is free (a run
  that was killed), or the flights given; oldest capture first.
- **Safe twice**: a flight is worked on only under ``store.claim_flight`` (a file lock beside
  the embedded store, an advisory lock in PostGIS). Its status is re-read once claimed, so a
  flight another run finished meanwhile is left alone. A second run takes the flights the
  first has not claimed, or says there is nothing left for it.
- **Resumable**: the tiles of a flight are detected in chunks; each finished chunk is saved
  as a checkpoint file (``<store>.checkpoints/<flight_id>.<key>/part-<first tile>.npz``, the
  key hashing the model file and every detection setting), written atomically. A re-run
  detects only the tiles without a checkpoint. Everything the flight writes to the store goes
  in ONE transaction (``pipeline.run.commit_flight``), after which its checkpoints are removed;
  a run killed at any point leaves no half-written flight.
- **Scale-out**: chunks are tasks for a Dask cluster (``--workers N`` starts a local one,
  ``--scheduler`` joins an existing one). A worker loads the model once (module cache) and
  returns plain arrays; the client process is the one writer of checkpoints and store.
- **Failures**: a flight that fails is recorded ``failed`` with a one-line error; the others
  go on. The summary (JSON + Markdown) counts flights, tiles, detections, new cases, failures.

Test/demo hook: ``truth=`` (CLI ``--truth-layer``) takes detections from a district's truth
layer instead of a model, through the same tiles, chunks, checkpoints and workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import ConfigError, InputError, ModelError, PatrolError

CHUNK_TILES = 16                       # tiles per task / checkpoint
PENDING = ("uploaded", "processing")


# ---------------------------------------------------------------- what a worker needs
@dataclass(frozen=True)
class DetectSpec:
    """Everything a worker needs to detect on tiles (picklable, no settings object)."""
    kind: str                           # "model" or "truth"
    gsd_m: float
    tile_px: int
    overlap_px: int
    stretch: tuple[float, float]
    classes: tuple[str, ...]
    model_path: str = ""
    confidence: float = 0.25
    nms_iou: float = 0.5
    batch_size: int = 8
    truth_path: str = ""
    truth_layer: str = "truth"

    @classmethod
    def from_settings(cls, settings, truth: str | Path | None = None) -> "DetectSpec":
        p, d = settings.processing, settings.detector
        common = dict(gsd_m=p.gsd_m, tile_px=p.tile_px, overlap_px=p.overlap_px,
                      stretch=tuple(p.stretch_percentiles), classes=tuple(d.classes))
        if truth is not None:
            path = Path(truth).expanduser().resolve()
            if not path.is_file():
                raise InputError(f"truth layer file {path} not found; pass a district.gpkg (test/demo use)")
            return cls("truth", truth_path=str(path), **common)
        model = Path(settings.model_path)
        if not model.is_file():
            raise ModelError(f"model {model} not found; set detector.model (or --set detector.model=PATH) "
                             f"to the shipped models/lianwei-yolo11n.onnx or your own weights")
        return cls("model", model_path=str(model.resolve()), confidence=d.confidence, nms_iou=d.nms_iou,
                   batch_size=p.batch_size, **common)

    @property
    def model_version(self) -> str:
        return "truth" if self.kind == "truth" else Path(self.model_path).name

    def key(self) -> str:
        """Checkpoint key: changes with the weights' content and every setting that changes boxes."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        src = Path(self.model_path or self.truth_path)
        st = src.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:12]


@dataclass
class Chunk:
    """A task: some planned tiles of one flight."""
    flight_id: str
    path: str
    indices: list[int]                  # plan indices of the tiles (ascending)
    windows: list                       # their TileWindows
    epoch: int | None = None            # truth mode: the district epoch of this flight
    extents: np.ndarray | None = None   # truth mode: (n_plan, 4) extents of every planned tile


# ---------------------------------------------------------------- worker side
_DETECTORS: dict[tuple, Any] = {}
_MODEL_LOCK = threading.RLock()       # a worker started with several threads shares one model, in turn


def load_detector(spec: DetectSpec):
    """The worker's detector for ``spec``: loaded once per process, then reused."""
    if spec.kind != "model":
        return None
    st = os.stat(spec.model_path)
    key = (spec.model_path, st.st_mtime_ns, spec.classes, spec.confidence, spec.nms_iou, spec.tile_px,
           spec.batch_size)
    with _MODEL_LOCK:
        return _DETECTORS[key] if key in _DETECTORS else _load(spec, key)


def _load(spec: DetectSpec, key: tuple):
    from pipeline.detect import Detector

    _DETECTORS.clear()
    t0 = time.perf_counter()
    det = Detector(spec.model_path, list(spec.classes), spec.confidence, spec.nms_iou,
                   imgsz=spec.tile_px, batch_size=spec.batch_size)
    det.load_s = time.perf_counter() - t0
    _DETECTORS[key] = det
    return det


def warm_worker(spec: DetectSpec) -> float:
    """Load the model on this worker now (Dask ``client.run``); the seconds it took (0 if cached)."""
    if spec.kind != "model":
        return 0.0
    before = list(_DETECTORS.values())
    det = load_detector(spec)
    return 0.0 if any(d is det for d in before) else float(det.load_s)


def _extent(w) -> tuple[float, float, float, float]:
    t = w.transform
    x0, y0 = t * (0, 0)
    x1, y1 = t * (w.width, w.height)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def run_chunk(spec: DetectSpec, chunk: Chunk) -> dict[str, Any]:
    """Detect on one chunk of tiles; plain arrays in the raster CRS (picklable, checkpointable)."""
    from pipeline.detect import _batched, _prefetch, tile_detections
    from pipeline.tiling import iter_tiles

    t0 = time.perf_counter()
    infer = 0.0
    det = load_detector(spec)
    index_of = {(w.row, w.col): i for i, w in zip(chunk.indices, chunk.windows)}
    tiles = iter_tiles(chunk.path, spec.gsd_m, spec.tile_px, spec.overlap_px, spec.stretch, windows=chunk.windows)
    bounds, confs, classes, tile_ids = [], [], [], []
    batch_size = spec.batch_size if det is None else det.batch_size
    for batch in _batched(_prefetch(tiles, depth=2 * batch_size), batch_size):
        if det is None:
            continue                                        # truth mode: the tiles are read, not used
        t1 = time.perf_counter()
        with _MODEL_LOCK:
            preds = det.predict([t.image for t in batch])
        infer += time.perf_counter() - t1
        for tile, (quads, conf, cls) in zip(batch, preds):
            b, c, k = tile_detections(tile, quads, conf, cls)
            bounds.append(b)
            confs.append(c)
            classes.append(k)
            tile_ids.append(np.full(len(c), index_of[tile.index], dtype=np.int64))
    out: dict[str, Any] = {"indices": np.asarray(chunk.indices, dtype=np.int64)}
    if det is None:
        out.update(_truth_chunk(spec, chunk))
    else:
        out["bounds"] = np.concatenate(bounds) if bounds else np.zeros((0, 8))
        out["conf"] = np.concatenate(confs) if confs else np.zeros(0)
        out["cls"] = np.concatenate(classes).astype(np.int64) if classes else np.zeros(0, np.int64)
        out["tile"] = np.concatenate(tile_ids) if tile_ids else np.zeros(0, np.int64)
    out["seconds"] = np.float64(time.perf_counter() - t0)
    out["infer_s"] = np.float64(infer)
    out["worker"] = np.str_(f"{os.uname().nodename}:{os.getpid()}")
    return out


def _truth_chunk(spec: DetectSpec, chunk: Chunk) -> dict[str, Any]:
    """Truth rows of the flight's epoch owned by this chunk's tiles: a row belongs to the first
    planned tile (plan order) whose extent holds its centroid, so each row lands in one chunk."""
    import geopandas as gpd
    import shapely

    from pipeline.tiling import open_raster

    with open_raster(chunk.path) as src:
        crs = src.crs
    truth = gpd.read_file(spec.truth_path, layer=spec.truth_layer, where=f"epoch = {int(chunk.epoch)}")
    truth = truth.to_crs(crs)
    ext = np.asarray(chunk.extents, dtype=float)
    c = shapely.get_coordinates(truth.geometry.centroid.values)
    inside = ((c[:, None, 0] >= ext[None, :, 0]) & (c[:, None, 0] < ext[None, :, 2])
              & (c[:, None, 1] >= ext[None, :, 1]) & (c[:, None, 1] < ext[None, :, 3]))
    owner = np.where(inside.any(1), inside.argmax(1), -1)
    keep = np.isin(owner, chunk.indices)
    names = truth["class_name"].to_numpy()[keep]
    known = {n: i for i, n in enumerate(spec.classes)}
    return {"wkb": np.array([w.hex() for w in shapely.to_wkb(truth.geometry.values[keep])], dtype=str),
            "cls": np.array([known.get(n, -1) for n in names], dtype=np.int64),
            "conf": np.ones(int(keep.sum())), "tile": owner[keep].astype(np.int64),
            "row": np.flatnonzero(keep).astype(np.int64)}          # truth file order, whatever the chunks


# ---------------------------------------------------------------- checkpoints
def checkpoint_root(store, override: str | Path | None = None) -> Path:
    """``<store>.checkpoints`` beside an embedded store; for a server store ``override`` or
    ``./patrol-checkpoints``."""
    if override:
        return Path(override).expanduser()
    if getattr(store, "backend", "") == "gpkg":
        p = Path(store.url)
        return p.with_name(p.name + ".checkpoints")
    return Path("patrol-checkpoints")


def _safe(flight_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", flight_id)
    return name if name == flight_id else name + "-" + hashlib.sha1(flight_id.encode()).hexdigest()[:8]


class Checkpoint:
    """The finished chunks of one flight for one detection key."""

    def __init__(self, root: Path, flight_id: str, key: str):
        self.root = Path(root)
        self.flight_id = flight_id
        self.dir = self.root / f"{_safe(flight_id)}.{key}"

    def load(self, n_plan: int) -> dict[int, dict]:
        """Saved parts by first tile index; unreadable or foreign parts are dropped."""
        parts: dict[int, dict] = {}
        if not self.dir.is_dir():
            return parts
        for f in sorted(self.dir.glob("part-*.npz")):
            try:
                with np.load(f, allow_pickle=False) as z:
                    part = {k: z[k] for k in z.files}
            except (OSError, ValueError, KeyError):
                f.unlink(missing_ok=True)
                continue
            idx = part.get("indices")
            if idx is None or not len(idx) or idx.max() >= n_plan:
                f.unlink(missing_ok=True)
                continue
            parts[int(idx[0])] = part
        return parts

    def save(self, part: dict) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            first = int(part["indices"][0])
            tmp = self.dir / f".part-{first:07d}.{os.getpid()}.tmp.npz"
            np.savez(tmp, **part)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / f"part-{first:07d}.npz")
        except OSError as e:
            raise InputError(f"cannot write the checkpoint of flight {self.flight_id} in {self.dir} "
                             f"({e.strerror}); make that folder writable or pass --checkpoints DIR") from None

    def remove_all(self) -> None:
        """Every checkpoint of this flight, whatever its key."""
        for d in self.root.glob(f"{_safe(self.flight_id)}.*"):
            shutil.rmtree(d, ignore_errors=True)


def finish_detections(spec: DetectSpec, parts: list[dict], raster_crs, store_crs: str, detector_settings):
    """Detections of a whole flight from its chunks' parts (in plan order): seam merge as in
    ``detect_ortho`` (model) or the owned truth rows (truth), in the store CRS."""
    import geopandas as gpd
    import shapely

    from pipeline.detect import boxes_to_detections, empty_detections

    parts = sorted(parts, key=lambda p: int(p["indices"][0]))
    if spec.kind == "model":
        return boxes_to_detections([p["bounds"] for p in parts], [p["conf"] for p in parts],
                                   [p["cls"] for p in parts], [p["tile"] for p in parts], raster_crs,
                                   spec.classes, detector_settings, store_crs, model=spec.model_path)
    wkb = np.concatenate([p["wkb"] for p in parts]) if parts else np.zeros(0, dtype=str)
    if not len(wkb):
        return empty_detections(store_crs)
    order = np.argsort(np.concatenate([p["row"] for p in parts]), kind="stable")
    wkb = wkb[order]
    cls = np.concatenate([p["cls"] for p in parts])[order]
    names = np.array([spec.classes[k] if k >= 0 else "building" for k in cls], dtype=object)
    geoms = shapely.from_wkb([bytes.fromhex(w) for w in wkb])
    gdf = gpd.GeoDataFrame({"class_name": names, "confidence": np.concatenate([p["conf"] for p in parts])[order]},
                           geometry=geoms, crs=raster_crs).to_crs(store_crs)
    gdf["area_m2"] = gdf.geometry.area
    return gdf[["class_name", "confidence", "area_m2", "geometry"]].reset_index(drop=True)


# ---------------------------------------------------------------- executors
class _Task:
    def __init__(self, fn, args):
        self.fn, self.args, self._out, self._err = fn, args, None, None

    def run(self):
        try:
            self._out = self.fn(*self.args)
        except Exception as e:          # re-raised by result(), like a Dask future
            self._err = e

    def result(self):
        if self._err is not None:
            raise self._err
        return self._out


class InlineExecutor:
    """Runs tasks in this process, one at a time, in submission order."""
    description = "in-process"
    nworkers = 1

    def __init__(self):
        self._queue: deque[_Task] = deque()

    def submit(self, fn, *args, priority: int = 0):
        t = _Task(fn, args)
        self._queue.append(t)
        return t

    def next_done(self):
        t = self._queue.popleft()
        t.run()
        return t

    def cancel(self, t) -> None:
        try:
            self._queue.remove(t)
        except ValueError:
            pass

    def warm(self, spec: DetectSpec) -> list[float]:
        return [warm_worker(spec)]

    def close(self) -> None:
        pass


class DaskExecutor:
    """Tasks on a Dask cluster: a LocalCluster of ``workers`` processes, or ``scheduler``'s."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None):
        try:
            from distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise ConfigError("--workers/--scheduler need dask distributed; pip install "
                              "'dask[distributed]'") from None
        self._cluster = None
        try:
            if scheduler:
                self.client = Client(scheduler, timeout="20s")
                self.description = f"Dask scheduler {scheduler}"
            else:
                self._cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                             dashboard_address=None, memory_limit=0)
                self.client = Client(self._cluster)
                self.description = f"local Dask cluster, {workers} worker processes"
        except OSError as e:
            raise ConfigError(f"cannot reach the Dask scheduler {scheduler or '(local)'} ({e}); check "
                              f"the address and that `dask scheduler` runs there") from None
        self.nworkers = max(1, sum(self.client.nthreads().values()))
        self._ac = as_completed()

    def submit(self, fn, *args, priority: int = 0):
        fut = self.client.submit(fn, *args, pure=False, priority=priority)
        self._ac.add(fut)
        return fut

    def next_done(self):
        return next(self._ac)

    def cancel(self, fut) -> None:
        fut.cancel()

    def warm(self, spec: DetectSpec) -> list[float]:
        if spec.kind != "model":
            return []
        try:
            return [float(v) for v in self.client.run(warm_worker, spec).values()]
        except PatrolError:
            raise
        except Exception as e:
            raise ModelError(f"the Dask workers cannot load model {spec.model_path} ({e}); every worker "
                             f"needs the same path and `pipeline` installed") from None

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


# ---------------------------------------------------------------- the run
@dataclass
class FlightOutcome:
    flight_id: str
    path: str = ""
    captured_at: str = ""
    status: str = ""                    # done, failed, skipped
    note: str = ""                      # skipped: why; failed: the one-line error
    tiles: int = 0
    tiles_reused: int = 0
    detections: int = 0
    findings: int = 0
    new_cases: int = 0
    events: int = 0
    area_km2: float = 0.0
    detect_s: float = 0.0               # worker seconds (tile reading + inference)
    infer_s: float = 0.0                # of which model inference
    commit_s: float = 0.0               # the one store transaction
    seconds: float = 0.0                # claimed → committed, wall


@dataclass
class NightlySummary:
    started_at: str
    store: str
    executor: str
    model: str
    finished_at: str = ""
    seconds: float = 0.0
    workers: int = 1
    model_load_s: list[float] = field(default_factory=list)
    flights: list[FlightOutcome] = field(default_factory=list)
    message: str = ""

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.flights)

    @property
    def failed(self) -> int:
        return self.count("failed")

    def totals(self) -> dict[str, Any]:
        done = [f for f in self.flights if f.status == "done"]
        area = sum(f.area_km2 for f in done)
        return {"flights_done": len(done), "flights_failed": self.failed, "flights_skipped": self.count("skipped"),
                "tiles": sum(f.tiles for f in done), "tiles_reused": sum(f.tiles_reused for f in done),
                "detections": sum(f.detections for f in done), "new_cases": sum(f.new_cases for f in done),
                "area_km2": round(area, 6),
                "km2_per_hour": round(area / (self.seconds / 3600), 4) if self.seconds > 0 else 0.0,
                "commit_s": round(sum(f.commit_s for f in done), 3),
                "detect_s": round(sum(f.detect_s for f in done), 3),
                "infer_s": round(sum(f.infer_s for f in done), 3)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["totals"] = self.totals()
        return d

    def markdown(self) -> str:
        t = self.totals()
        lines = [f"# Nightly run {self.started_at}", "",
                 f"- store: {self.store}", f"- executor: {self.executor}; model: {self.model}",
                 f"- time: {self.seconds:.1f} s; flights done {t['flights_done']}, failed {t['flights_failed']}, "
                 f"skipped {t['flights_skipped']}",
                 f"- tiles {t['tiles']} ({t['tiles_reused']} reused from checkpoints), detections "
                 f"{t['detections']}, new cases {t['new_cases']}, area {t['area_km2']:.4f} km² "
                 f"({t['km2_per_hour']:.3f} km²/h)"]
        if self.message:
            lines.append(f"- {self.message}")
        if self.flights:
            lines += ["", "| flight | captured | status | tiles (reused) | detections | new cases | s | note |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for f in self.flights:
                note = f.note.replace("|", "/")
                lines.append(f"| {f.flight_id} | {f.captured_at} | {f.status} | {f.tiles} ({f.tiles_reused}) | "
                             f"{f.detections} | {f.new_cases} | {f.seconds:.1f} | {note} |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            stem = "nightly-" + re.sub(r"[^0-9T]", "", self.started_at)[:15]
            if (out / f"{stem}.json").exists():         # two runs started in the same second
                stem += f"-{os.getpid()}"
            jp, mp = out / f"{stem}.json", out / f"{stem}.md"
            jp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2, default=str), encoding="utf-8")
            mp.write_text(self.markdown(), encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot write the run summary in {out} ({e.strerror}); pass a writable "
                             f"--summary DIR") from None
        return jp, mp


@dataclass
class _Job:
    """A claimed flight being worked on."""
    flight: dict
    claim: Any
    outcome: FlightOutcome
    checkpoint: Checkpoint
    plan: list = field(default_factory=list)
    plan_n: int = 0
    frames: list = field(default_factory=list)     # the rasters (an ortho, or one per photo)
    frame_of: list = field(default_factory=list)   # frame index of each planned tile
    epoch: int | None = None
    raster_crs: Any = None
    parts: dict[int, dict] = field(default_factory=dict)
    pending: set = field(default_factory=set)
    t0: float = 0.0


def _line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, PatrolError) else f"{type(e).__name__}: {text}"


def _truth_epoch(truth_path: str, flight_path: str) -> int:
    meta = Path(truth_path).with_name("district.json")
    name = Path(flight_path).name
    if meta.is_file():
        for ep in json.loads(meta.read_text(encoding="utf-8")).get("epochs", []):
            if Path(str(ep.get("ortho", ""))).name == name:
                return int(ep["epoch"])
    m = re.search(r"epoch_(\d+)", name)
    if not m:
        raise InputError(f"flight file {name} has no epoch in {meta}; the truth layer is for generated "
                         f"districts only (test/demo use)")
    return int(m.group(1))


def select_flights(store, flight_ids: list[str] | None = None):
    """Candidate flights, oldest capture first: the given ones (any status but unknown ids
    refused), else every uploaded or processing flight."""
    if flight_ids:
        flights = store.list_flights()
        missing = sorted(set(flight_ids) - set(flights["flight_id"]))
        if missing:
            raise InputError(f"flight {missing[0]} is not in the store {store.url}; list them with "
                             f"`patrol flights list`")
        return flights[flights["flight_id"].isin(flight_ids)]
    return store.list_flights(status=list(PENDING))


def run_nightly(store, settings, flight_ids: list[str] | None = None, *, workers: int | None = None,
                scheduler: str | None = None, checkpoints: str | Path | None = None,
                chunk_tiles: int = CHUNK_TILES, truth: str | Path | None = None,
                reports: str | Path | None = None, force: bool = False, echo: Callable[[str], None] = print,
                progress: bool = True) -> NightlySummary:
    """Process the pending flights (or ``flight_ids``) of ``store``; see the module docstring.
    Returns the summary (not yet written); flights that failed are recorded on the flight."""
    from pipeline.match import load_rules

    if chunk_tiles < 1:
        raise ConfigError(f"--chunk-tiles {chunk_tiles} must be 1 or more")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers} must be 1 or more")
    spec = DetectSpec.from_settings(settings, truth)
    rules = load_rules(settings.rules_path)
    key = spec.key()
    root = checkpoint_root(store, checkpoints)
    started = datetime.now(timezone.utc).replace(microsecond=0)
    summary = NightlySummary(started_at=started.isoformat().replace("+00:00", "Z"), store=str(store.url),
                             executor="in-process", model=spec.model_version)
    t_start = time.perf_counter()
    candidates = select_flights(store, flight_ids)
    _sweep(store, root)
    if not len(candidates):
        summary.message = "nothing to do: no flight is waiting (status uploaded)"
        summary.seconds = time.perf_counter() - t_start
        summary.finished_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return summary

    executor = DaskExecutor(workers, scheduler) if (scheduler or workers) else InlineExecutor()
    summary.executor, summary.workers = executor.description, executor.nworkers
    window = 0 if isinstance(executor, InlineExecutor) else 2 * executor.nworkers
    queue = [dict(r) for _, r in candidates.drop(columns="footprint").iterrows()]
    order = {r["flight_id"]: i for i, r in enumerate(queue)}
    jobs: dict[str, _Job] = {}
    owner: dict[Any, tuple[_Job, int]] = {}
    locked = 0

    def drain() -> None:
        """Commit finished flights in capture order (jobs is in claim order = capture order)."""
        while jobs:
            job = next(iter(jobs.values()))
            if job.pending:
                return
            _wait_for_earlier(store, job, set(jobs), echo)
            _commit(store, settings, spec, rules, job, reports, echo)
            jobs.pop(job.flight["flight_id"])

    try:
        summary.model_load_s = executor.warm(spec)
        while queue or jobs:
            while queue and (not jobs or sum(len(j.pending) for j in jobs.values()) < window):
                row = queue.pop(0)
                claim = store.claim_flight(row["flight_id"])
                if claim is None:
                    locked += 1
                    echo(f"flight {row['flight_id']}: taken by another run, left to it")
                    summary.flights.append(FlightOutcome(row["flight_id"], str(row["path"]), str(row["captured_at"]),
                                                         "skipped", "taken by another run"))
                    continue
                job = _start(store, spec, row["flight_id"], claim, root, key, chunk_tiles, force, echo)
                if job is None:
                    continue
                summary.flights.append(job.outcome)
                if job.outcome.status:          # failed at once
                    continue
                jobs[job.flight["flight_id"]] = job
                for chunk in _chunks(spec, job, chunk_tiles):
                    fut = executor.submit(run_chunk, spec, chunk, priority=-order[row["flight_id"]])
                    job.pending.add(fut)
                    owner[fut] = (job, chunk.indices[0])
            drain()                             # after it, the first job (if any) awaits tasks
            if not jobs:
                continue
            fut = executor.next_done()
            job, first = owner.pop(fut, (None, None))
            if job is None or fut not in job.pending:      # cancelled after its flight failed
                continue
            job.pending.discard(fut)
            try:
                part = fut.result()
                job.checkpoint.save(part)
            except Exception as e:
                for other in job.pending:
                    executor.cancel(other)
                    owner.pop(other, None)
                job.pending.clear()
                _fail(store, job, e, echo)
                jobs.pop(job.flight["flight_id"])
                continue
            job.parts[first] = part
            job.outcome.detect_s += float(part["seconds"])
            job.outcome.infer_s += float(part["infer_s"])
            if progress:
                echo(f"flight {job.flight['flight_id']}: {sum(len(p['indices']) for p in job.parts.values())}"
                     f"/{job.plan_n} tiles")
    finally:
        for job in jobs.values():               # interrupted: claims go, checkpoints stay
            job.claim.release()
        executor.close()
    if locked and not any(f.status in ("done", "failed") for f in summary.flights):
        summary.message = f"nothing left for this run: {locked} waiting flights are being processed by another run"
    summary.seconds = time.perf_counter() - t_start
    summary.finished_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return summary


def _sweep(store, root: Path) -> None:
    """Remove checkpoints left by a run killed between its commit and its clean-up."""
    if not root.is_dir():
        return
    for d in root.iterdir():
        fid = d.name.split(".", 1)[0]
        flight = store.get_flight(fid) if d.is_dir() else None
        if flight is not None and flight["status"] == "done":
            claim = store.claim_flight(fid)
            if claim is not None:
                with claim:
                    Checkpoint(root, fid, "").remove_all()


def _start(store, spec, flight_id, claim, root, key, chunk_tiles, force, echo) -> _Job | None:
    """Under the claim: re-read the flight, ingest checks, plan its tiles, load its checkpoint."""
    from pipeline.ingest import file_id, flight_frames
    from pipeline.tiling import open_raster, plan_windows

    flight = store.get_flight(flight_id)
    outcome = FlightOutcome(flight_id, path=str(flight["path"]), captured_at=str(flight["captured_at"] or ""))
    if flight["status"] == "done" and not force:
        claim.release()
        echo(f"flight {flight_id}: already done, skipped")
        outcome.status, outcome.note = "skipped", "already done"
        job = _Job(flight, claim, outcome, Checkpoint(root, flight_id, key))
        return job
    job = _Job(flight, claim, outcome, Checkpoint(root, flight_id, key), t0=time.perf_counter())
    try:
        with store.transaction():
            store.set_flight_status(flight_id, "processing")
        path = Path(flight["path"])
        if not path.exists():
            raise InputError(f"flight {flight_id}: its file {path} is gone; restore it or register the "
                             f"flight again")
        if flight.get("source") == "ortho" and path.is_file() and file_id(path) != flight_id:
            raise InputError(f"flight {flight_id}: {path} changed since it was registered (content hash "
                             f"differs); register the new file with `patrol ingest`")
        plan, job.frames, job.frame_of = [], [str(f) for f in flight_frames(flight)], []
        for k, frame in enumerate(job.frames):   # a photo flight: every frame's tiles, one plan
            with open_raster(frame) as src:
                if job.raster_crs is None:
                    job.raster_crs = src.crs
                elif src.crs != job.raster_crs:
                    raise InputError(f"flight {flight_id}: frame {Path(frame).name} is in {src.crs}, the "
                                     f"first in {job.raster_crs}; register the photos again with `patrol ingest`")
                frame_plan = plan_windows(src, spec.gsd_m, spec.tile_px, spec.overlap_px)
            plan += frame_plan
            job.frame_of += [k] * len(frame_plan)
        job.plan = plan
        job.plan_n = len(plan)
        job.epoch = _truth_epoch(spec.truth_path, str(path)) if spec.kind == "truth" else None
        job.parts = job.checkpoint.load(len(plan))
        reused = sum(len(p["indices"]) for p in job.parts.values())
        outcome.tiles, outcome.tiles_reused = len(plan), reused
        fp = flight.get("footprint")
        outcome.area_km2 = float(fp.area) / 1e6 if fp is not None else 0.0
        echo(f"flight {flight_id} ({path.name}, {outcome.captured_at}): {len(plan)} tiles"
             + (f", {reused} done in a checkpoint" if reused else ""))
    except Exception as e:
        _fail(store, job, e, echo)
    return job


def _chunks(spec: DetectSpec, job: _Job, chunk_tiles: int) -> list[Chunk]:
    done = set()
    for p in job.parts.values():
        done.update(int(i) for i in p["indices"])
    todo = [i for i in range(job.plan_n) if i not in done]
    extents = np.array([_extent(w) for w in job.plan]) if spec.kind == "truth" else None
    out = []
    for f, frame in enumerate(job.frames):           # a chunk reads one frame
        mine = [i for i in todo if job.frame_of[i] == f]
        for k in range(0, len(mine), chunk_tiles):
            idx = mine[k:k + chunk_tiles]
            out.append(Chunk(job.flight["flight_id"], frame, idx, [job.plan[i] for i in idx],
                             epoch=job.epoch, extents=extents))
    return out


def _wait_for_earlier(store, job: _Job, ours: set[str], echo, poll_s: float = 0.5) -> None:
    """Cases are tracked in capture order: before committing, wait while another run holds an
    earlier-captured flight that overlaps this one (its claim frees when it ends or dies)."""
    import shapely

    fid, t, fp = job.flight["flight_id"], job.flight["captured_at"], job.flight.get("footprint")
    said = False
    while True:
        flights = store.list_flights(status=list(PENDING))
        busy = []
        for _, f in flights.iterrows():
            if f["flight_id"] in ours or f["captured_at"] is None or t is None or not f["captured_at"] < t:
                continue
            if fp is not None and f["footprint"] is not None and not shapely.intersects(fp, f["footprint"]):
                continue
            claim = store.claim_flight(f["flight_id"])
            if claim is None:
                busy.append(f["flight_id"])
            else:
                claim.release()
        if not busy:
            return
        if not said:
            echo(f"flight {fid}: waiting for the earlier flight {busy[0]} (another run is processing it)")
            said = True
        time.sleep(poll_s)


def _commit(store, settings, spec, rules, job: _Job, reports, echo) -> None:
    from pipeline.run import commit_flight

    fid = job.flight["flight_id"]
    o = job.outcome
    try:
        dets = finish_detections(spec, list(job.parts.values()), job.raster_crs, settings.store.crs,
                                 settings.detector)
        t1 = time.perf_counter()
        res = commit_flight(store, job.flight, dets, settings, spec.model_version, rules=rules)
        o.commit_s = time.perf_counter() - t1
    except Exception as e:
        _fail(store, job, e, echo)
        return
    job.checkpoint.remove_all()
    job.claim.release()
    o.status = "done"
    o.detections, o.findings, o.new_cases, o.events = res.detections, res.findings, res.new_cases, res.events
    o.seconds = time.perf_counter() - job.t0
    echo(f"flight {fid}: done, {o.detections} detections, {o.findings} findings, {o.new_cases} new cases "
         f"({o.seconds:.1f} s)")
    if reports:
        try:
            from pipeline.report import write_reports
            write_reports(store, settings, Path(reports) / fid, flight_id=fid, progress=False)
        except Exception as e:                  # the flight is stored; a report can be redone
            o.note = f"report not written: {_line(e)[:200]}"
            echo(f"flight {fid}: {o.note}")


def _fail(store, job: _Job, e: BaseException, echo) -> None:
    from pipeline.run import fail_flight

    fid = job.flight["flight_id"]
    try:
        line = fail_flight(store, fid, e)
    except PatrolError as e2:                   # even the failure could not be recorded
        line = f"{_line(e)} (not recorded: {_line(e2)})"
    finally:
        job.claim.release()
    job.outcome.status, job.outcome.note = "failed", line
    job.outcome.seconds = time.perf_counter() - job.t0 if job.t0 else 0.0
    echo(f"flight {fid}: FAILED: {line}")
