"""The change check on generated districts as hard as real ones, seed by seed, check on and off.

    .venv/bin/python scripts/change_generated.py --detector model --seeds 11 12 13 14 15 16
    .venv/bin/python scripts/change_generated.py --detector truth --seeds 11 12 13 --off

Each seed: a 200 m district at 10 cm, 3 flights, the later ones georeferenced up to 6 m off and
turned up to 0.2°, flown through register + process (``tests/cases/test_change.py::replay``, officer
actions between flights as the truth implies). ``truth``: the truth layer as the detector, with
flicker (the first flight misses a fifth of its structures, spurious boxes in every flight);
``model``: the shipped model. ``--off``: change_check.coregister and .confirm switched off.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", choices=["truth", "model"], default="model")
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15, 16])
    ap.add_argument("--off", action="store_true", help="switch the change check off")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "patrol-change")
    a = ap.parse_args()
    if a.off:
        os.environ["PATROL__CHANGE_CHECK__CONFIRM"] = "false"
        os.environ["PATROL__CHANGE_CHECK__COREGISTER"] = "false"
    from test_change import Flicker, _truth, replay

    from pipeline.detection.detectors import ModelTileDetector
    from pipeline.synth import generate_district

    tot = {"flagged": 0, "right": 0, "new": 0, "found": 0, "standing": 0, "err": []}
    for seed in a.seeds:
        out = a.work / f"seed{seed}"
        if not (out / "district.json").exists():
            generate_district(out, seed=seed, size_m=200, epochs=3, gsd_m=0.1, shift_m=6.0, rotate_deg=0.2,
                              progress=False)
        store = out / f"{a.detector}{'_off' if a.off else ''}.gpkg"
        store.unlink(missing_ok=True)
        det = (lambda s, o: Flicker(_truth(s, o), seed=seed)) if a.detector == "truth" else \
            (lambda s, o: ModelTileDetector(s))
        t = replay(out, store, det)
        for k in ("flagged", "right", "new", "found"):
            tot[k] += t[k]
        tot["standing"] += len(t["standing_flagged"])
        tot["err"] += t["shift_err"]
        print(f"seed {seed}: 新增 {t['right']}/{t['flagged']} right, {t['found']}/{t['new']} found, "
              f"{len(t['standing_flagged'])} flagged demolished while standing, "
              f"shift errors {[round(e, 2) for e in t['shift_err']]} m", flush=True)
    print(f"all: 新增 precision {tot['right']}/{tot['flagged']} = {tot['right'] / max(tot['flagged'], 1):.3f}, "
          f"recall {tot['found']}/{tot['new']} = {tot['found'] / max(tot['new'], 1):.3f}, "
          f"{tot['standing']} flagged demolished while standing, worst shift error {max(tot['err']):.2f} m")


if __name__ == "__main__":
    main()
