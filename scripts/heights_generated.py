"""docs/HEIGHTS.md's table: generated districts flown without and with their DSM (the counting of
tests/detection/test_heights.py::fly), for several seeds and both detectors.

    .venv/bin/python scripts/heights_generated.py --seeds 3 5 7 11
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "detection")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 7, 11])
    a = ap.parse_args()
    import numpy as np
    from test_heights import _truth, fly

    from pipeline.detection.detectors import ModelTileDetector
    from pipeline.synth import generate_district

    print("| seed | detector | flat false (without → with) | found | eye's misses found by height | "
          "height error (median) | storeys exact | 加层 found | 加层 right |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for seed in a.seeds:
        work = Path(tempfile.mkdtemp(prefix="heights_"))
        generate_district(work / "d", seed=seed, size_m=200, epochs=3, gsd_m=0.1, shift_m=6.0, rotate_deg=0.2,
                          progress=False)
        for name, make in (("truth + flicker", _truth), ("shipped model", lambda s, o: ModelTileDetector(s))):
            w = fly(work / "d", work / f"{name[:5]}-without.gpkg", make, heights=False)
            h = fly(work / "d", work / f"{name[:5]}-with.gpkg", make, heights=True)
            print(f"| {seed} | {name} | {w['flat_false']} → {h['flat_false']} | {w['found']} → {h['found']} of "
                  f"{h['truth']} | {h['recovered']} of {h['missed']} | {np.median(h['height_err']):.2f} m | "
                  f"{sum(h['floors_ok'])} of {len(h['floors_ok'])} | {h['raised_found']} of {h['raised']} | "
                  f"{h['flagged_right']} of {h['flagged']} |", flush=True)


if __name__ == "__main__":
    main()
