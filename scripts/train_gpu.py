"""Train the detector on one GPU machine within a time budget (how the shipped model was made).

Renders synthetic training scenes on every core (`pipeline.model.dataset.render_chips`), adds labelled
real chips built beforehand with `patrol dataset build --scenes 0 --real … --real-val …`
(--real-chips; train chips repeated --real-repeat times so the few real flights weigh in), and
trains with `pipeline.model.train.train` on CUDA. It needs numpy, opencv, shapely, geopandas, affine,
torch and ultralytics — not rasterio — so a bare GPU machine only needs a few wheels.

    python scripts/train_gpu.py --real-chips .gpu/real --out "$OUT" --minutes 6 \
        --weights models/lianwei-yolo11n.pt

The run folder's best.pt, last.pt, results.csv and a manifest (seeds, chips, timings) are copied
to --out. Ship them here with `patrol train --ship-only` or `pipeline.model.train.ship_model`.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _quiet_worker() -> None:
    import cv2
    cv2.setNumThreads(1)


def _render(job):
    from pipeline.model.dataset import render_chips
    seed, split, data, size_m, chip_px, coarse, terraces = job
    st = render_chips(seed, Path(data), split, size_m, chip_px, (0.08, 0.14),
                      coarse=(coarse, 0.15, 0.30) if coarse else None, terraces=terraces)
    return split, st.chips, st.boxes


def add_real(real: Path, data: Path, repeat: int) -> dict:
    """Copy the carried real chips into the dataset; train chips ``repeat`` times over."""
    n = {"train": 0, "val": 0}
    for split in ("train", "val"):
        for img in sorted((real / "images" / split).glob("*.jpg")):
            label = real / "labels" / split / f"{img.stem}.txt"
            for k in range(repeat if split == "train" else 1):
                shutil.copy(img, data / "images" / split / f"{img.stem}_k{k}.jpg")
                shutil.copy(label, data / "labels" / split / f"{img.stem}_k{k}.txt")
                n[split] += 1
    return n


def patch_ultralytics_for_offline_gpu() -> None:
    """No AMP self-check (it downloads a model) and no polars for reading results.csv."""
    import ultralytics.engine.trainer as trainer

    def read_results_csv(self):
        try:
            with open(self.csv, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            return {}
        return {k.strip(): [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}

    trainer.check_amp = lambda model: True
    trainer.BaseTrainer.read_results_csv = read_results_csv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-chips", type=Path, required=True, help="YOLO dataset of labelled real chips")
    ap.add_argument("--out", type=Path, required=True, help="where best.pt, last.pt and results go")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lianwei-gpu"))
    ap.add_argument("--scenes", type=int, default=1500)
    ap.add_argument("--val-scenes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=200_000, help="first training scene seed")
    ap.add_argument("--size-m", type=float, default=128.0)
    ap.add_argument("--chip-px", type=int, default=640)
    ap.add_argument("--coarse", type=float, default=0.0,
                    help="share of scenes rendered at 0.15-0.30 m and resampled to 0.10 m (coarse surveys)")
    ap.add_argument("--terraces", type=float, default=0.0,
                    help="share of village blocks built as rows of adjoining houses (one structure each)")
    ap.add_argument("--real-repeat", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    ap.add_argument("--weights", type=Path, help="initial weights (.pt)")
    ap.add_argument("--model", default="yolo11n-obb.yaml",
                    help="architecture, built from scratch (e.g. yolo11s-obb.yaml for the larger backbone)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    ap.add_argument("--device", default="0")
    a = ap.parse_args()

    from pipeline.model.dataset import scene_seeds, write_data_yaml
    from pipeline.model.train import train
    t0 = time.time()
    data = a.work / "data"
    shutil.rmtree(a.work, ignore_errors=True)
    write_data_yaml(data)
    real = add_real(a.real_chips, data, a.real_repeat)
    train_seeds, val_seeds = scene_seeds(a.seed, a.scenes, a.val_scenes)
    jobs = [(s, "train", str(data), a.size_m, a.chip_px, a.coarse, a.terraces) for s in train_seeds]
    jobs += [(s, "val", str(data), a.size_m, a.chip_px, a.coarse, a.terraces) for s in val_seeds]
    chips = {"train": 0, "val": 0}
    with Pool(os.cpu_count(), initializer=_quiet_worker) as pool:
        for split, n, _ in pool.imap_unordered(_render, jobs, chunksize=4):
            chips[split] += n
    t_render = time.time() - t0
    print(f"rendered {chips} synthetic chips and added {real} real chips in {t_render:.0f} s", flush=True)

    patch_ultralytics_for_offline_gpu()
    a.out.mkdir(parents=True, exist_ok=True)
    run = train(data=data, weights=a.weights, name="gpu", hours=a.minutes / 60, epochs=1000,
                settings={"model": a.model, "device": a.device, "imgsz": a.chip_px, "batch": a.batch,
                          "workers": a.workers, "threads": 8, "cache": "ram", "project": str(a.work / "runs"),
                          "save_period": -1, "patience": 1000})
    for name in ("weights/best.pt", "weights/last.pt", "results.csv", "args.yaml"):
        if (run / name).is_file():
            shutil.copy(run / name, a.out / Path(name).name)
    manifest = {"train_seeds": [train_seeds[0], train_seeds[-1]] if train_seeds else [],
                "val_seeds": [val_seeds[0], val_seeds[-1]] if val_seeds else [],
                "size_m": a.size_m, "chip_px": a.chip_px, "synthetic_chips": chips, "real_chips": real,
                "real_repeat": a.real_repeat, "terraces": a.terraces, "model": a.model,
                "render_s": round(t_render), "minutes": a.minutes,
                "total_s": round(time.time() - t0), "weights": str(a.weights) if a.weights else None}
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest), flush=True)


if __name__ == "__main__":
    main()
