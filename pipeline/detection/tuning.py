"""Which runtime and how many inference threads suit this machine: a short measurement of the
model on a few tiles at start-up (``detector.runtime: auto``, ``detector.threads: 0``), kept in
the user's cache per machine and model so that later runs reuse it, and said in the run summary.

The runtimes measured give the same boxes (the FP32 graph in onnxruntime or OpenVINO); which one
is faster, and whether inference should take every core or leave one to the tile reader, depends
on the CPU (docs/SCALE.md)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: runtimes ``auto`` chooses among: the same FP32 graph, the same boxes
SAME_BOX_RUNTIMES = ("fp32", "openvino")
#: a runtime that loads slower is chosen only when it runs at least this much faster
LOAD_MARGIN = 0.05
SAMPLE_TILES = 2


@dataclass(frozen=True)
class Trial:
    runtime: str
    threads: int
    tile_s: float                      # seconds per tile, model alone (inference + decoding)


@dataclass(frozen=True)
class Choice:
    runtime: str
    threads: int
    tiles_per_s: float = 0.0           # 0: nothing to choose, nothing measured
    measured: str = ""                 # "now", "cached" or "" (set, not measured)
    trials: tuple[Trial, ...] = ()

    def text(self) -> str:
        """One line for the run summary."""
        base = f"{self.runtime}, {self.threads} inference thread{'s' if self.threads != 1 else ''}"
        if not self.measured:
            return base + " (as set)"
        others = "; ".join(f"{t.runtime}×{t.threads} {1 / t.tile_s:.1f}" for t in self.trials)
        when = "measured at start-up" if self.measured == "now" else "measured before on this machine"
        return f"{base}, {self.tiles_per_s:.1f} tiles/s ({when}: {others} tiles/s)"


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lianwei-patrol" / "inference.json"


def machine() -> str:
    """The CPU model and its core count (what the choice depends on)."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name or os.uname().machine} ×{os.cpu_count() or 1}"


def candidates(runtime: str, threads: int, cores: int | None = None) -> list[tuple[str, int]]:
    """(runtime, threads) pairs worth measuring: ``auto`` tries the same-box runtimes; threads 0
    tries every core and every core less one (the reader's)."""
    cores = cores or os.cpu_count() or 1
    runtimes = SAME_BOX_RUNTIMES if runtime == "auto" else (runtime,)
    counts = sorted({cores, max(1, cores - 1)}, reverse=True) if not threads else [threads]
    return [(r, n) for r in runtimes for n in counts]


def choose(model_path: str | Path, imgsz: int, runtime: str, threads: int, load: Callable[[Path, int, str], Any],
           cores: int | None = None, cache: Path | None = None) -> Choice:
    """The runtime and thread count to run ``model_path`` with on this machine; ``load(path,
    threads, runtime)`` gives a model with ``predict(images, imgsz, conf, iou)`` (``OnnxYolo``)."""
    cores = cores or os.cpu_count() or 1
    pairs = candidates(runtime, threads, cores)
    if len(pairs) == 1 or not Path(model_path).is_file():     # nothing to choose; a missing file fails on loading
        return Choice(*pairs[0])
    st = os.stat(model_path)
    key = hashlib.sha256(json.dumps([machine(), str(Path(model_path).resolve()), st.st_size, st.st_mtime_ns,
                                     imgsz, pairs]).encode()).hexdigest()[:16]
    cache = cache or cache_file()
    known = _read(cache)
    try:
        if key in known:
            return best_of(tuple(Trial(**t) for t in known[key]), "cached")
    except (TypeError, ValueError, ZeroDivisionError):    # a damaged cache entry: measure again
        pass
    trials = tuple(measure(load(Path(model_path), n, r), imgsz, r, n) for r, n in pairs)
    known[key] = [asdict(t) for t in trials]
    _write(cache, known)
    return best_of(trials, "now")


def measure(model: Any, imgsz: int, runtime: str, threads: int) -> Trial:
    """Seconds per tile of the model alone: warmed on one tile, then one batch of a few textured tiles."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (imgsz // 8, imgsz // 8, 3), dtype=np.uint8)
    tiles = [np.ascontiguousarray(np.roll(base.repeat(8, 0).repeat(8, 1), k * 37, axis=1))
             for k in range(SAMPLE_TILES)]
    model.predict(tiles[:1], imgsz, 0.25, 0.5)
    t0 = time.perf_counter()
    model.predict(tiles, imgsz, 0.25, 0.5)
    return Trial(runtime, threads, (time.perf_counter() - t0) / len(tiles))


def best_of(trials: tuple[Trial, ...], measured: str) -> Choice:
    """The fastest trial; fp32 over a runtime that is less than ``LOAD_MARGIN`` faster."""
    best = min(trials, key=lambda t: t.tile_s)
    quick_load = [t for t in trials if t.runtime == "fp32" and t.threads == best.threads]
    if best.runtime != "fp32" and quick_load and quick_load[0].tile_s <= best.tile_s * (1 + LOAD_MARGIN):
        best = quick_load[0]                       # OpenVINO compiles for ~0.5 s: only worth it when faster
    return Choice(best.runtime, best.threads, 1 / best.tile_s, measured, trials)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict) -> None:
    """Best effort: an unwritable cache only means measuring again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass
