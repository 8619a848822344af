"""The nightly run's summary: what happened to each flight, totals, JSON + Markdown."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError


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
    inference_threads: dict[str, int] = field(default_factory=dict)   # Dask worker -> its threads
    inference: dict[str, str] = field(default_factory=dict)           # worker -> runtime, threads, tiles/s
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
                 f"- store: {self.store}", f"- executor: {self.executor}; model: {self.model}"
                 + (f"; inference threads per worker: {', '.join(map(str, sorted(self.inference_threads.values())))}"
                    if self.inference_threads else ""),
                 f"- time: {self.seconds:.1f} s; flights done {t['flights_done']}, failed {t['flights_failed']}, "
                 f"skipped {t['flights_skipped']}",
                 f"- tiles {t['tiles']} ({t['tiles_reused']} reused from checkpoints), detections "
                 f"{t['detections']}, new cases {t['new_cases']}, area {t['area_km2']:.4f} km² "
                 f"({t['km2_per_hour']:.3f} km²/h)"]
        lines += [f"- inference ({who}): {how}" for who, how in sorted(self.inference.items())]
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
