"""One round of the review loop measured: a flight run with the active model, officers' verdicts
played from known footprints (``pipeline.model.review_replay.review_from_truth``: matches confirmed, poor
outlines redrawn, false positives closed as 误报, misses drawn by hand), ``patrol dataset
from-reviews`` → ``patrol train --from-reviews`` → ``patrol model compare`` → ``promote``, then
the shipped and the fine-tuned model scored on a later flight nobody reviewed.

Real imagery (Kampala: the area kept out of the shipped model's training; c0 reviewed, c1 never
seen by either model):

    .venv/bin/python scripts/review_loop.py \
        --reviewed ../shared/realdata/kampala/mosaic_z20_c0.tif --later ../shared/realdata/kampala/mosaic_z20_c1.tif \
        --truth ../shared/realdata/kampala/osm_buildings.geojson --crs EPSG:32636 --out /tmp/loop_kampala

Generated (a red-soil county in autumn, the test's look): ``--generated`` instead of the paths.
Prints one JSON object: the verdicts, the dataset, the training time, the gate (the frozen
evaluation set: the held-out part of the reviewed flight and the configured generated district,
``models.eval_generated``) and the later flight's recall / precision / F1 for both models.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RED_AUTUMN = {"white_balance": (1.4, 0.9, 0.6), "saturation": 1.8, "season": "autumn"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reviewed", type=Path, help="ortho of the flight the officers review")
    ap.add_argument("--later", type=Path, help="ortho of the later flight (scored, never reviewed)")
    ap.add_argument("--truth", type=Path, help="footprints covering both orthos (any vector file)")
    ap.add_argument("--later-truth", type=Path, help="footprints of the later flight (default: --truth)")
    ap.add_argument("--generated", action="store_true", help="generated red-autumn districts instead")
    ap.add_argument("--crs", default=None, help="store CRS in metres near the imagery (e.g. EPSG:32636)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    import geopandas as gpd

    from pipeline.core.config import load_settings
    from pipeline.model.evaluate import evaluate_ortho
    from pipeline.model.registry import compare, promote, train_candidate
    from pipeline.model.review_data import dataset_from_reviews
    from pipeline.model.review_replay import review_from_truth
    from pipeline.process.run import process_flight, register_flight
    from pipeline.store import open_store

    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    if a.generated:
        from pipeline.synth import generate_district
        first = generate_district(a.out / "week1", seed=41, size_m=240, epochs=1, look=RED_AUTUMN, progress=False)
        later = generate_district(a.out / "week4", seed=42, size_m=160, epochs=1, look=RED_AUTUMN, progress=False)
        reviewed, later_ortho = first.out_dir / "epoch_1.tif", later.out_dir / "epoch_1.tif"
        truth, truth_layer = gpd.read_file(first.vectors, layer="truth"), "truth"
        later_truth = later.vectors
    else:
        if not (a.reviewed and a.later and a.truth):
            ap.error("give --reviewed, --later and --truth (or --generated)")
        reviewed, later_ortho, truth_layer = a.reviewed, a.later, None
        truth = gpd.read_file(a.truth)
        later_truth = a.later_truth or a.truth
    over = {"store.url": str(a.out / "s.gpkg"), "media.dir": str(a.out / "media"), "models.dir": str(a.out / "models"),
            "models.fine_tune_epochs": a.epochs}
    if a.crs:
        over["store.crs"] = a.crs
    s = load_settings(overrides=over)
    store = open_store(s.store.url, s.store.crs)
    report: dict = {"reviewed": str(reviewed), "later": str(later_ortho), "epochs": a.epochs}
    flight = register_flight(store, reviewed, s, team="loop")
    process_flight(store, flight["flight_id"], s, progress=False)
    report["verdicts"] = review_from_truth(store, s, flight["flight_id"], truth)
    summary = dataset_from_reviews(store, s, a.out / "ds")
    report["dataset"] = {k: summary[k] for k in ("chips", "boxes", "positives", "negatives", "excluded_detections")}
    t0 = time.perf_counter()
    cand = train_candidate(store, s, a.out / "ds", actor="loop")
    report["train_s"] = round(time.perf_counter() - t0, 1)
    gate = compare(store, s, cand["version"], actor="loop")
    report["gate"] = {"passes": gate["passes"], "parts": gate["parts"]}
    if gate["passes"]:
        promote(store, s, cand["version"], actor="loop")
    report["later_flight"] = {}
    for name, model in (("shipped", s.model_path), ("fine-tuned", Path(cand["path"]))):
        m = evaluate_ortho(later_ortho, later_truth, s, model=model, truth_layer=truth_layer,
                           epoch=1 if a.generated else None, progress=False)
        report["later_flight"][name] = {k: m[k] for k in ("tp", "fp", "fn", "recall", "precision", "f1")
                                        if k in m}
    store.close()
    print(json.dumps(report, ensure_ascii=False, indent=1, default=str))


if __name__ == "__main__":
    main()
