"""Nightly batch runs: every new flight through tile → detect → match → track, safely.

- **Which flights**: status ``uploaded``, plus ``processing`` ones whose claim is free (a run
  that was killed), or the flights given; oldest capture first.
- **Safe twice**: a flight is worked on only under ``store.claim_flight`` (a file lock beside
  the embedded store, an advisory lock in PostGIS). Its status is re-read once claimed, so a
  flight another run finished meanwhile is left alone. A second run takes the flights the
  first has not claimed, or says there is nothing left for it.
- **Resumable**: the tiles of a flight are detected in chunks; each finished chunk is saved
  as a checkpoint file (``<store>.checkpoints/<flight_id>.<key>/part-<first tile>.npz``, the
  key hashing the tile detector and the tiling), written atomically. A re-run
  detects only the tiles without a checkpoint. Everything the flight writes to the store goes
  in ONE transaction (``pipeline.process.engine.commit_flight``), after which its checkpoints are removed;
  a run killed at any point leaves no half-written flight.
- **Scale-out**: chunks are tasks for a Dask cluster (``--workers N`` starts a local one,
  ``--scheduler`` joins an existing one). A worker loads the model once (module cache) and
  returns plain arrays; the client process is the one writer of checkpoints and store.
- **Failures**: a flight that fails is recorded ``failed`` with a one-line error; the others
  go on. The summary (JSON + Markdown) counts flights, tiles, detections, new cases, failures.

The detection is the one processing path (``pipeline.detection.flightplan``: plan, chunks, finish) with
any tile detector (``pipeline.detection.detectors``); ``truth=`` (CLI ``--truth-layer``, tests and the
demo) is the truth-layer detector, through the same tiles, chunks, checkpoints and workers.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pipeline.core.errors import ConfigError, InputError, PatrolError, error_line
from pipeline.detection.flightplan import (
    CHUNK_TILES,
    Tiling,
    finish,
    plan_registered_flight,
    run_chunk,
)
from pipeline.process.checkpoints import Checkpoint, checkpoint_root, sweep
from pipeline.process.engine import commit_flight, fail_flight, flight_detector, start_flight
from pipeline.process.executors import DaskExecutor, InlineExecutor
from pipeline.process.summary import FlightOutcome, NightlySummary
from pipeline.report import write_reports

PENDING = ("uploaded", "processing")


@dataclass
class _Job:
    """A claimed flight being worked on."""
    flight: dict
    claim: Any
    outcome: FlightOutcome
    checkpoint: Checkpoint
    plan: Any = None                               # pipeline.detection.flightplan.FlightPlan
    parts: dict[int, dict] = field(default_factory=dict)
    pending: set = field(default_factory=set)
    t0: float = 0.0


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
                chunk_tiles: int = CHUNK_TILES, truth: str | Path | None = None, detector: Any = None,
                reports: str | Path | None = None, force: bool = False, echo: Callable[[str], None] = print,
                progress: bool = True) -> NightlySummary:
    """Process the pending flights (or ``flight_ids``) of ``store``; see the module docstring.
    ``detector``: a tile detector (default: the settings' model, or the truth layer of ``truth``).
    Returns the summary (not yet written); flights that failed are recorded on the flight."""
    if chunk_tiles < 1:
        raise ConfigError(f"--chunk-tiles {chunk_tiles} must be 1 or more")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers} must be 1 or more")
    settings, detector = flight_detector(store, settings, detector, truth)
    rules = settings.rules
    key = hashlib.sha256(f"{detector.key()}:{Tiling.from_settings(settings)}".encode()).hexdigest()[:12]
    root = checkpoint_root(store, checkpoints)
    started = datetime.now(timezone.utc).replace(microsecond=0)
    summary = NightlySummary(started_at=started.isoformat().replace("+00:00", "Z"), store=str(store.url),
                             executor="in-process", model=detector.version)
    t_start = time.perf_counter()
    candidates = select_flights(store, flight_ids)
    sweep(store, root)
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
            _commit(store, settings, detector, rules, job, reports, echo)
            jobs.pop(job.flight["flight_id"])

    try:
        summary.model_load_s = executor.warm(detector)
        summary.inference_threads = getattr(executor, "threads", {})
        summary.inference = {k: v for k, v in executor.inference(detector).items() if v}
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
                job = _start(store, settings, detector, row["flight_id"], claim, root, key, force, echo)
                if job is None:
                    continue
                summary.flights.append(job.outcome)
                if job.outcome.status:          # failed at once
                    continue
                jobs[job.flight["flight_id"]] = job
                done = {int(i) for p in job.parts.values() for i in p["indices"]}
                for chunk in job.plan.chunks(chunk_tiles, done):
                    fut = executor.submit(run_chunk, detector, chunk, priority=-order[row["flight_id"]])
                    job.pending.add(fut)
                    owner[fut] = (job, chunk.indices[0])
            drain()                             # after it, the first job (if any) awaits tasks
            if not jobs:
                continue
            fut = executor.next_done()
            popped = owner.pop(fut, None)
            if popped is None or fut not in popped[0].pending:      # cancelled after its flight failed
                continue
            job, first = popped
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
                     f"/{job.plan.n} tiles")
    finally:
        for job in jobs.values():               # interrupted: claims go, checkpoints stay
            job.claim.release()
        executor.close()
    if locked and not any(f.status in ("done", "failed") for f in summary.flights):
        summary.message = f"nothing left for this run: {locked} waiting flights are being processed by another run"
    summary.seconds = time.perf_counter() - t_start
    summary.finished_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return summary


def _start(store, settings, detector, flight_id, claim, root, key, force, echo) -> _Job:
    """Under the claim: re-read the flight, start it (``engine.start_flight``), plan its tiles, load its
    checkpoint."""
    flight = store.get_flight(flight_id)
    outcome = FlightOutcome(flight_id, path=str(flight["path"]), captured_at=str(flight["captured_at"] or ""))
    job = _Job(flight, claim, outcome, Checkpoint(root, flight_id, key), t0=time.perf_counter())
    if flight["status"] == "done" and not force:
        claim.release()
        echo(f"flight {flight_id}: already done, skipped")
        outcome.status, outcome.note = "skipped", "already done"
        return job
    try:
        start_flight(store, flight, settings, detector, force)
        job.plan = plan_registered_flight(flight, settings)
        job.parts = job.checkpoint.load(job.plan.n)
        reused = sum(len(p["indices"]) for p in job.parts.values())
        outcome.tiles, outcome.tiles_reused = job.plan.n, reused
        fp = flight.get("footprint")
        outcome.area_km2 = float(fp.area) / 1e6 if fp is not None else 0.0
        echo(f"flight {flight_id} ({Path(flight['path']).name}, {outcome.captured_at}): {job.plan.n} tiles"
             + (f", {reused} done in a checkpoint" if reused else ""))
    except Exception as e:
        _fail(store, job, e, echo)
    return job


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


def _commit(store, settings, detector, rules, job: _Job, reports, echo) -> None:
    fid = job.flight["flight_id"]
    o = job.outcome
    try:
        dets = finish(detector, job.plan, job.parts.values(), settings)
        t1 = time.perf_counter()
        res = commit_flight(store, job.flight, dets, settings, detector.version, rules=rules, detector=detector)
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
            write_reports(store, settings, Path(reports) / fid, flight_id=fid, progress=False)
        except Exception as e:                  # the flight is stored; a report can be redone
            o.note = f"report not written: {error_line(e)[:200]}"
            echo(f"flight {fid}: {o.note}")


def _fail(store, job: _Job, e: BaseException, echo) -> None:
    fid = job.flight["flight_id"]
    try:
        line = fail_flight(store, fid, e)
    except PatrolError as e2:                   # even the failure could not be recorded
        line = f"{error_line(e)} (not recorded: {error_line(e2)})"
    finally:
        job.claim.release()
    job.outcome.status, job.outcome.note = "failed", line
    job.outcome.seconds = time.perf_counter() - job.t0 if job.t0 else 0.0
    echo(f"flight {fid}: FAILED: {line}")
