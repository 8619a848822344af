"""What the change check adds to a flight: co-registration and confirmation, seconds per km².

    .venv/bin/python bench/change_cost.py                          # 500 m district, 5 cm, shipped model
    .venv/bin/python bench/change_cost.py --size-m 300 --json /tmp/change_cost.json

A generated two-flight district (the second flight georeferenced up to ``--shift-m`` off, another
season) is detected once per flight with the shipped model; then the second flight is committed
(matched, tracked, written) twice from the same detections, side by side in one run: with
``change_check`` off, and on (co-registration on the first flight, every candidate looked at
again with the model). The difference is the check's cost; the co-registration alone is timed
apart. km² are the second flight's footprint, as flown.
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

    from pipeline.cases.change import coregister
    from pipeline.core.config import load_settings
    from pipeline.detection.detectors import ModelTileDetector
    from pipeline.process.run import commit_flight, detect_flight, register_flight
    from pipeline.store import open_store
    from pipeline.synth import generate_district

    work = Path(tempfile.mkdtemp(prefix="change_cost_"))
    try:
        t0 = time.perf_counter()
        res = generate_district(work / "d", seed=a.seed, size_m=a.size_m, epochs=2, gsd_m=a.gsd,
                                shift_m=a.shift_m, progress=False)
        meta = json.loads(res.meta.read_text())
        print(f"district {a.size_m:g} m at {a.gsd} m generated in {time.perf_counter() - t0:.0f} s; "
              f"second flight shifted {meta['epochs'][1]['shift_m']} m")
        out = {}
        for mode in ("off", "on"):
            url = work / f"{mode}.gpkg"
            s = load_settings(overrides={"store.url": str(url), "store.crs": meta["crs"],
                                         "change_check.coregister": mode == "on",
                                         "change_check.confirm": mode == "on"})
            det = ModelTileDetector(s)
            with open_store(str(url), meta["crs"]) as store:
                store.import_parcels(gpd.read_file(res.vectors, layer="parcels"))
                store.import_zones(gpd.read_file(res.vectors, layer="zones"))
                flights = [register_flight(store, p, s) for p in res.orthos]
                if "dets" not in out:
                    t1 = time.perf_counter()
                    out["dets"] = [detect_flight(f, s, det, progress=False) for f in flights]
                    out["detect_s"] = (time.perf_counter() - t1) / 2
                commit_flight(store, flights[0], out["dets"][0], s, det.version, detector=det)
                t1 = time.perf_counter()
                commit_flight(store, flights[1], out["dets"][1], s, det.version, detector=det)
                out[f"commit_{mode}_s"] = time.perf_counter() - t1
                if mode == "on":
                    f1, f0 = store.get_flight(flights[1]["flight_id"]), store.get_flight(flights[0]["flight_id"])
                    t1 = time.perf_counter()
                    reg = coregister(f1, f0, s)
                    out["coregister_s"] = time.perf_counter() - t1
                    out["shift_true"], out["shift_found"] = meta["epochs"][1]["shift_m"], [reg.dx, reg.dy]
                    out["km2"] = f1["footprint"].area / 1e6
                    out["candidates"] = int(store.cases()["change_confidence"].notna().sum())
        added = out["commit_on_s"] - out["commit_off_s"]
        km2 = out["km2"]
        report = {
            "flown_km2": round(km2, 4), "detect_s_per_flight": round(out["detect_s"], 1),
            "commit_off_s": round(out["commit_off_s"], 2), "commit_on_s": round(out["commit_on_s"], 2),
            "check_added_s": round(added, 2), "coregister_s": round(out["coregister_s"], 2),
            "confirm_s": round(added - out["coregister_s"], 2), "candidates_looked_at": out["candidates"],
            "added_s_per_km2": round(added / km2, 1), "coregister_s_per_km2": round(out["coregister_s"] / km2, 1),
            "detect_s_per_km2": round(out["detect_s"] / km2, 1),
            "shift_true_m": out["shift_true"], "shift_found_m": [round(v, 2) for v in out["shift_found"]],
        }
        for k, v in report.items():
            print(f"{k:24s} {v}")
        if a.json:
            a.json.write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
