"""Nightly throughput: km²/hour of `patrol nightly` in-process and on 1 and 2 Dask workers, one run.

    .venv/bin/python bench/nightly_scale.py                       # 300 m district, 2 flights, shipped model
    .venv/bin/python bench/nightly_scale.py --district /tmp/d     # reuse (or create there) the district
    .venv/bin/python bench/nightly_scale.py --model runs/x/best.pt --json out.json

A generated district (``pipeline.synth``, 5 cm native GSD, read at the processing GSD) is
registered once into a base store; each configuration then runs ``run_nightly`` on its own copy
of that store, one after the other on the same machine, so the figures are side by side:

- ``in-process``: no Dask, the model loaded once in this process;
- ``dask-1`` / ``dask-2``: a LocalCluster of 1 / 2 worker processes (threads_per_worker=1).

For each: wall seconds (cluster start and model loads included), km²/hour on that wall time,
the model load seconds per worker, worker seconds spent on tiles (raster reads + inference) and
on inference alone, and the single writer's store seconds (the per-flight transactions). Figures go to stdout (Markdown) and, with --json, to
a file. Not a timed test.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(district: Path, size_m: float, epochs: int, settings_over: dict) -> tuple[Path, object]:
    from pipeline.core.config import load_settings
    from pipeline.ingest.parcels import import_registry
    from pipeline.process.run import register_flight
    from pipeline.store import open_store
    from pipeline.synth import generate_district

    if not (district / "district.json").exists():
        print(f"generating a {size_m:g} m district with {epochs} epochs in {district} ...", flush=True)
        generate_district(district, seed=11, size_m=size_m, epochs=epochs)
    meta = json.loads((district / "district.json").read_text(encoding="utf-8"))
    base = district / "bench-base.gpkg"
    for p in district.glob("bench-base.gpkg*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    settings = load_settings(overrides={"store.url": str(base), **settings_over})
    with open_store(base, settings.store.crs) as store:
        import_registry(store, district / "district.gpkg", replace=True)
        for ep in meta["epochs"]:
            register_flight(store, district / ep["ortho"], settings)
    return base, settings


def run_one(name: str, base: Path, settings, work: Path, workers: int | None, chunk_tiles: int) -> dict:
    from pipeline.core.config import load_settings
    from pipeline.process.nightly import run_nightly
    from pipeline.store import open_store

    path = work / f"{name}.gpkg"
    shutil.copy(base, path)
    s = load_settings(overrides={"store.url": str(path), "detector.model": str(settings.model_path),
                                 "processing.tile_px": settings.processing.tile_px,
                                 "processing.overlap_px": settings.processing.overlap_px})
    with open_store(path, s.store.crs) as store:
        t0 = time.perf_counter()
        summary = run_nightly(store, s, workers=workers, chunk_tiles=chunk_tiles, echo=lambda line: None,
                              progress=False)
        wall = time.perf_counter() - t0
    t = summary.totals()
    if summary.failed:
        raise SystemExit(f"{name}: {summary.failed} flights failed: "
                         + "; ".join(f.note for f in summary.flights if f.status == "failed"))
    return {"config": name, "workers": workers or 0, "wall_s": round(wall, 2), "area_km2": t["area_km2"],
            "tiles": t["tiles"], "detections": t["detections"], "new_cases": t["new_cases"],
            "km2_per_hour": round(t["area_km2"] / (wall / 3600), 3),
            "model_load_s": [round(x, 2) for x in summary.model_load_s],
            "worker_tile_s": t["detect_s"], "worker_infer_s": t["infer_s"], "store_write_s": t["commit_s"],
            "tiles_per_s": round(t["tiles"] / wall, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--district", type=Path, help="district folder (created when empty; default: a temp dir)")
    ap.add_argument("--size-m", type=float, default=300.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", help="weights (default: detector.model of the settings)")
    ap.add_argument("--chunk-tiles", type=int, default=8)
    ap.add_argument("--configs", default="in-process,dask-1,dask-2")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from pipeline.core.config import load_settings
    over = {"detector.model": str(Path(args.model).resolve())} if args.model else {}
    model = load_settings(overrides=over).model_path
    if not model.is_file():
        raise SystemExit(f"no weights at {model}; pass --model PATH")
    tmp = Path(tempfile.mkdtemp(prefix="nightly-bench-"))
    district = args.district or tmp / "district"
    district.mkdir(parents=True, exist_ok=True)
    base, settings = prepare(district, args.size_m, args.epochs, over)
    rows = []
    for name in args.configs.split(","):
        workers = None if name == "in-process" else int(name.split("-")[1])
        print(f"running {name} ...", flush=True)
        rows.append(run_one(name, base, settings, tmp, workers, args.chunk_tiles))
    shutil.rmtree(tmp, ignore_errors=True)
    ref = rows[0]["km2_per_hour"] or 1e-9
    print(f"\nmodel {model.name}; district {args.size_m:g} m x {args.epochs} flights "
          f"({rows[0]['area_km2']:.4f} km², {rows[0]['tiles']} tiles of {settings.processing.tile_px} px at "
          f"{settings.processing.gsd_m} m); chunk {args.chunk_tiles} tiles\n")
    print("| config | wall s | km²/h | × in-process | tiles/s | model load s (per worker) | worker tile s "
          "| of which inference s | store write s | detections |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {r['wall_s']:.1f} | {r['km2_per_hour']:.3f} | {r['km2_per_hour'] / ref:.2f} | "
              f"{r['tiles_per_s']:.2f} | {', '.join(f'{x:.1f}' for x in r['model_load_s']) or '-'} | "
              f"{r['worker_tile_s']:.1f} | {r['worker_infer_s']:.1f} | {r['store_write_s']:.2f} | {r['detections']} |")
    if args.json:
        args.json.write_text(json.dumps({"model": str(model), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
