"""What a flight's DSM adds to a flight: heights measured, flat boxes dropped, candidates found, 加层,
in seconds per flown km², beside the detection it follows.

    .venv/bin/python bench/heights_cost.py                          # 500 m district, 5 cm, shipped model
    .venv/bin/python bench/heights_cost.py --size-m 300 --json /tmp/heights_cost.json

A generated two-flight district (DSM at 0.25 m beside each ortho, the second flight georeferenced up
to ``--shift-m`` off) is detected once per flight with the shipped model; then both flights are
committed (matched, tracked, written) twice from the same detections, side by side in one run:
registered without their DSM, and with it (read, ground filtered out of it, every detection measured,
candidates found, the second flight's rise read on the first flight's DSM). The difference of the
second flight's commit is what heights cost; km² are that flight's footprint, as flown.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-m", type=float, default=500.0)
    ap.add_argument("--gsd", type=float, default=0.05)
    ap.add_argument("--shift-m", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import geopandas as gpd

    from pipeline.core.config import load_settings
    from pipeline.detection.detectors import ModelTileDetector
    from pipeline.process.run import commit_flight, detect_flight, register_flight
    from pipeline.store import open_store
    from pipeline.synth import generate_district

    work = Path(tempfile.mkdtemp(prefix="heights_cost_"))
    try:
        t0 = time.perf_counter()
        res = generate_district(work / "d", seed=a.seed, size_m=a.size_m, epochs=2, gsd_m=a.gsd,
                                shift_m=a.shift_m, progress=False)
        meta = json.loads(res.meta.read_text())
        print(f"district {a.size_m:g} m at {a.gsd} m (DSM 0.25 m) generated in {time.perf_counter() - t0:.0f} s")
        out: dict = {}
        for mode in ("without", "with"):
            url = work / f"{mode}.gpkg"
            s = load_settings(overrides={"store.url": str(url), "store.crs": meta["crs"]})
            det = ModelTileDetector(s)
            with open_store(str(url), meta["crs"]) as store:
                store.import_parcels(gpd.read_file(res.vectors, layer="parcels"))
                store.import_zones(gpd.read_file(res.vectors, layer="zones"))
                flights = [register_flight(store, res.out_dir / ep["ortho"], s,
                                           dsm=res.out_dir / ep["dsm"] if mode == "with" else None)
                           for ep in meta["epochs"]]
                if "dets" not in out:
                    t1 = time.perf_counter()
                    out["dets"] = [detect_flight(f, s, det, progress=False) for f in flights]
                    out["detect_s"] = (time.perf_counter() - t1) / 2
                commit_flight(store, flights[0], out["dets"][0], s, det.version, detector=det)
                t1 = time.perf_counter()
                r = commit_flight(store, flights[1], out["dets"][1], s, det.version, detector=det)
                out[f"commit_{mode}_s"] = time.perf_counter() - t1
                out[f"detections_{mode}"] = r.detections
                if mode == "with":
                    out["heights"] = r.heights
                    out["km2"] = store.get_flight(flights[1]["flight_id"])["footprint"].area / 1e6
        added = out["commit_with_s"] - out["commit_without_s"]
        km2 = out["km2"]
        report = {
            "flown_km2": round(km2, 4), "detect_s_per_flight": round(out["detect_s"], 1),
            "commit_without_s": round(out["commit_without_s"], 2), "commit_with_s": round(out["commit_with_s"], 2),
            "heights_added_s": round(added, 2), "heights_added_s_per_km2": round(added / km2, 1),
            "detect_s_per_km2": round(out["detect_s"] / km2, 1),
            "added_share_of_detection": round(added / out["detect_s"], 3),
            "detections_without": out["detections_without"], "detections_with": out["detections_with"],
            "heights": out["heights"],
        }
        for k, v in report.items():
            print(f"{k:28s} {v}")
        if a.json:
            a.json.write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
