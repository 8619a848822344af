"""Detection throughput, memory and recall: this pipeline (.pt, .onnx) against SAHI, side by side.

    .venv/bin/python bench/detect_throughput.py --model models/lianwei-yolo11n.pt \
        --size-m 1000 --small-size-m 500

For each ortho size the script generates a synthetic district ortho (5 cm native GSD, one epoch,
`pipeline.synth.generate_district`, cached in --work) and runs every variant in its own
subprocess, so each peak RSS is that variant's alone:

  default  the product as configured (config/default.yaml: runtime and threads as measured on
        this machine, detection/tuning.py), the .onnx weights
  pt    `detect_ortho` with the .pt weights: streamed tiles resampled to processing.gsd_m, batches
  onnx  the same with the exported .onnx run by onnxruntime (``detector.runtime: fp32``)
  int8  the same with its statically quantised copy (``detector.runtime: int8``)
  openvino  the .onnx run by OpenVINO's CPU plugin (``detector.runtime: openvino``, the default)
  sahi  SAHI `get_sliced_prediction` with the same .pt weights on the whole image at its native
        resolution (640 px slices, the same overlap ratio and batch size)
  geodeep  GeoDeep (`geodeep.detect`, onnxruntime) with the same .onnx, given a static 640 px
        input, the angle row sliced off and GeoDeep's metadata (`geodeep_model`): its own tiling,
        resampling to the processing GSD and NMS; axis-aligned boxes (it knows no angle)

Reported per run: tiles (slices) per second, km² per hour (ortho extent / detection wall time,
model loading excluded, reading the raster included), flown km² per hour (the valid pixels'
footprint, on the detection time and on the whole process as a user waits for it: start-up,
imports and model load included), peak RSS, and precision / recall / F1 at
IoU 0.5 against the district's truth layer (classes of --classes), scored like `patrol
evaluate` (truth clipped to the valid footprint; compared as polygons for an oriented-box model,
as axis-aligned envelopes for a plain box model; SAHI's OBB predictions keep their rotation). Ratios against SAHI are
measured in the same run. Then the FP32 model alone (onnxruntime, 640 px batches of 8 textured
tiles, nothing read) at 1 and 2 threads, turned into flown km²/h over the valid area without
overlap (tiles/s × a tile's ground area), and each pipeline variant's flown km²/h with start-up
as a share of the model alone on 2 threads (issue 37's bar: ≥ 1.0). SAHI is not a project dependency: install it without its
opencv-python requirement, which would clash with ultralytics' opencv-python-headless
(`.venv/bin/pip install --no-deps sahi fire`); GeoDeep likewise (`.venv/bin/pip install --no-deps geodeep`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("default", "pt", "onnx", "int8", "openvino", "sahi", "geodeep")
#: settings a variant runs with, over the --set ones
VARIANT_SETTINGS = {"default": {}, "pt": {}, "onnx": {"detector.runtime": "fp32"}, "int8": {"detector.runtime": "int8"},
                    "openvino": {"detector.runtime": "openvino"}}


# ---------------------------------------------------------------- one variant (child process)
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_pipeline(ortho: Path, weights: Path, overrides: dict) -> dict:
    import numpy as np

    from pipeline.core.config import load_settings
    from pipeline.detection.detect import Detector, detect_ortho
    from pipeline.detection.tiling import open_raster, plan_windows

    s = load_settings(overrides=overrides)
    p = s.processing
    det = Detector.from_settings(s, weights)
    det.predict([np.zeros((p.tile_px, p.tile_px, 3), np.uint8)] * min(2, p.batch_size))  # load + warm up
    with open_raster(ortho) as src:
        tiles = len(plan_windows(src, p.gsd_m, p.tile_px, p.overlap_px))
    t0 = time.perf_counter()
    gdf = detect_ortho(ortho, s, detector=det, progress=False)
    return {"seconds": time.perf_counter() - t0, "tiles": tiles, "detections": gdf}


def run_sahi(ortho: Path, weights: Path, overrides: dict) -> dict:
    import geopandas as gpd
    import numpy as np
    import rasterio
    import shapely

    from pipeline.core.config import load_settings
    from pipeline.detection.detect import offline_ultralytics
    from pipeline.detection.tiling import rgb_bands

    offline_ultralytics()
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction
    from sahi.slicing import get_slice_bboxes

    s = load_settings(overrides=overrides)
    p, d = s.processing, s.detector
    model = AutoDetectionModel.from_pretrained(model_type="ultralytics", model_path=str(weights),
                                               confidence_threshold=d.confidence, device="cpu",
                                               image_size=p.tile_px)
    model.perform_inference(np.zeros((p.tile_px, p.tile_px, 3), np.uint8))  # load + warm up
    ratio = p.overlap_px / p.tile_px
    t0 = time.perf_counter()
    with rasterio.open(ortho) as src:  # SAHI works on the whole image in memory
        image = np.ascontiguousarray(np.moveaxis(src.read(rgb_bands(src)), 0, -1))
        transform, crs = src.transform, src.crs
    res = get_sliced_prediction(image, model, slice_height=p.tile_px, slice_width=p.tile_px,
                                overlap_height_ratio=ratio, overlap_width_ratio=ratio,
                                batch_size=p.batch_size, verbose=0)
    seconds = time.perf_counter() - t0
    tiles = len(get_slice_bboxes(image.shape[0], image.shape[1], p.tile_px, p.tile_px, False,
                                 ratio, ratio))
    preds = res.object_prediction_list
    pixel = [sahi_polygon(o) for o in preds]  # full-image pixel coordinates
    geoms = shapely.transform(np.array(pixel, dtype=object), lambda xy: np.column_stack(
        [transform.a * xy[:, 0] + transform.c, transform.e * xy[:, 1] + transform.f]))
    gdf = gpd.GeoDataFrame(
        {"class_name": [d.classes[o.category.id] for o in preds],
         "confidence": [float(o.score.value) for o in preds]},
        geometry=list(geoms), crs=crs).to_crs(s.store.crs)
    return {"seconds": seconds, "tiles": tiles, "detections": gdf}


def geodeep_model(onnx_path: Path, out: Path, s) -> Path:
    """Our ONNX as GeoDeep reads a YOLOv8-style detector: a static 640 px input (GeoDeep takes the
    tile size from it), the oriented-box head's last row (the angle) sliced off so that the rows are
    x, y, w, h and the class scores, and GeoDeep's metadata (det_type YOLO_v8, resolution = the
    processing GSD, overlap, confidence, IoU). Nothing else of the network changes."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(onnx_path))
    p, d = s.processing, s.detector
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for k, v in ((0, 1), (2, p.tile_px), (3, p.tile_px)):
        dims[k].ClearField("dim_param")
        dims[k].dim_value = v
    raw, nc = m.graph.output[0].name, len(d.classes)
    m.graph.initializer.extend([helper.make_tensor(n, TensorProto.INT64, [1], [v])
                                for n, v in (("gd_start", 0), ("gd_end", 4 + nc), ("gd_axis", 1))])
    m.graph.node.append(helper.make_node("Slice", [raw, "gd_start", "gd_end", "gd_axis"], ["geodeep_out"]))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("geodeep_out", TensorProto.FLOAT, [1, 4 + nc, None]))
    meta = {"model_type": "Detector", "det_type": "YOLO_v8", "resolution": p.gsd_m * 100,
            "class_names": {str(i): c for i, c in enumerate(d.classes)}, "det_conf": d.confidence,
            "det_iou_thresh": d.nms_iou, "tiles_overlap": 100 * p.overlap_px / p.tile_px}
    for k, v in meta.items():
        prop = m.metadata_props.add()
        prop.key, prop.value = k, json.dumps(v)
    onnx.save(m, str(out))
    return out


def run_geodeep(ortho: Path, weights: Path, overrides: dict) -> dict:
    """GeoDeep (``geodeep.detect``, onnxruntime) with our exported model (``geodeep_model``): its
    own tiling, resampling and NMS; axis-aligned boxes (it knows no angle)."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    import shapely
    from geodeep import detect
    from geodeep.slidingwindow import generate_for_size

    from pipeline.core.config import load_settings

    s = load_settings(overrides=overrides)
    model = geodeep_model(weights, Path(os.environ.get("TMPDIR", "/tmp")) / f"{weights.stem}.geodeep.onnx", s)
    with rasterio.open(ortho) as src:
        transform, crs = src.transform, src.crs
        res_cm = round(max(abs(transform.a), abs(transform.e)), 4) * 100
        scale = int(s.processing.gsd_m * 100 // res_cm) if res_cm < s.processing.gsd_m * 100 else 1
        tiles = len(generate_for_size(src.width, src.height, s.processing.tile_px * scale,
                                      s.processing.overlap_px / s.processing.tile_px, clip=False))
    t0 = time.perf_counter()
    boxes, scores, classes = detect(str(ortho), str(model), max_threads=os.cpu_count())
    seconds = time.perf_counter() - t0
    geoms = [shapely.box(transform.c + transform.a * x0, transform.f + transform.e * y1,
                         transform.c + transform.a * x1, transform.f + transform.e * y0) for x0, y0, x1, y1 in boxes]
    gdf = gpd.GeoDataFrame({"class_name": [s.detector.classes[int(c[0])] for c in classes] if len(geoms) else [],
                            "confidence": np.asarray(scores, float) if len(geoms) else []},
                           geometry=geoms, crs=crs).to_crs(s.store.crs)
    return {"seconds": seconds, "tiles": tiles, "detections": gdf}


def sahi_polygon(o):
    """A SAHI prediction as a polygon in image pixels: the oriented box of an OBB model (its
    segmentation points; after SAHI's merging, the minimum rotated rectangle around them), else
    the axis-aligned box."""
    import numpy as np
    import shapely

    seg = o.mask.segmentation if getattr(o, "mask", None) is not None else None
    pts = [np.asarray(p, float).reshape(-1, 2) for p in (seg or []) if len(p) >= 6]
    if pts:
        return shapely.MultiPoint(np.concatenate(pts)).minimum_rotated_rectangle
    return shapely.box(o.bbox.minx, o.bbox.miny, o.bbox.maxx, o.bbox.maxy)


def child(args) -> None:
    """Run one variant on one ortho; write its figures as JSON and its detections as GeoParquet."""
    overrides = json.loads(args.overrides)
    fn = {"sahi": run_sahi, "geodeep": run_geodeep}.get(args.variant, run_pipeline)
    out = fn(Path(args.ortho), Path(args.weights), overrides)
    out["detections"].to_parquet(args.result + ".parquet")
    out.pop("detections")
    out["peak_rss_mb"] = peak_rss_mb()
    Path(args.result).write_text(json.dumps(out))


# ---------------------------------------------------------------- orchestration (parent)
def district(work: Path, size_m: float, seed: int, gsd_m: float) -> tuple[Path, Path]:
    """Ortho (epoch 1) and vectors of a generated district, cached by size/seed/GSD. Generated in a
    process of its own: Linux carries a parent's peak RSS into the children it starts, so a district
    rendered here would show up as every variant's peak."""
    out = work / f"district_{int(size_m)}m_seed{seed}_{gsd_m:g}"
    ortho, vectors = out / "epoch_1.tif", out / "district.gpkg"
    if not (ortho.is_file() and vectors.is_file()):
        print(f"generating {size_m:g} m district (seed {seed}, {gsd_m:g} m GSD) in {out} ...", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline.cli", "synth", "--out", str(out), "--seed", str(seed),
                        "--size-m", str(size_m), "--epochs", "1", "--gsd", str(gsd_m)], cwd=ROOT, check=True)
        print(f"  generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return ortho, vectors


def extent_km2(ortho: Path) -> float:
    from pipeline.detection.tiling import ground_pixel_size, open_raster
    with open_raster(ortho) as src:
        gx, gy = ground_pixel_size(src)
        return src.width * gx * src.height * gy / 1e6


def flown_km2(ortho: Path) -> float:
    """The area of the ortho's valid pixels (what was flown), km²."""
    from pipeline.detection.tiling import open_raster
    from pipeline.ingest import valid_footprint
    with open_raster(ortho) as src:
        return float(valid_footprint(src, "EPSG:4547").area) / 1e6


def score_run(result: str, ortho: Path, vectors: Path, classes: list[str], envelope: bool) -> dict:
    """Scored like `patrol evaluate`: truth of epoch 1 clipped to the ortho's valid footprint and
    compared as polygons (oriented-box model) or as axis-aligned envelopes (plain box model), IoU 0.5."""
    import geopandas as gpd

    from pipeline.detection.tiling import open_raster
    from pipeline.ingest import valid_footprint
    from pipeline.model.evaluate import clip_truth, score

    pred = gpd.read_parquet(result + ".parquet")
    truth = gpd.read_file(vectors, layer="truth")
    if "epoch" in truth.columns:
        truth = truth[truth["epoch"] == 1]
    truth = truth.to_crs(pred.crs)
    with open_raster(ortho) as src:
        foot = valid_footprint(src, pred.crs.to_string())
    truth = clip_truth(truth, foot, 0.5)
    if envelope:
        truth = truth.set_geometry(truth.geometry.envelope)
    return score(pred, truth, classes, 0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "lianwei-yolo11n.pt",
                    help="YOLO .pt weights (the .onnx export is looked for beside it)")
    ap.add_argument("--onnx", type=Path, help="ONNX weights (default: --model with .onnx)")
    ap.add_argument("--size-m", type=float, default=1000.0, help="edge of the large ortho in metres")
    ap.add_argument("--small-size-m", type=float, default=500.0,
                    help="edge of the small ortho (memory must not grow with size); 0 to skip")
    ap.add_argument("--gsd", type=float, default=0.05, help="native GSD of the generated orthos (m)")
    ap.add_argument("--seed", type=int, default=7, help="district seed (not used in training)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of pt,onnx,sahi")
    ap.add_argument("--classes", default="building,steel_shed", help="classes scored for recall")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="settings override for every variant (repeatable)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "patrol-bench",
                    help="folder for the generated orthos and per-run results")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--ortho", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if bad := set(variants) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(bad)}; choose from {', '.join(VARIANTS)}")
    onnx = args.onnx or args.model.with_suffix(".onnx")
    weights = {"default": onnx, "pt": args.model, "sahi": args.model, "onnx": onnx, "int8": onnx.with_suffix(".int8.onnx"),
               "openvino": onnx, "geodeep": onnx}
    for v in variants:
        if not weights[v].is_file():
            ap.error(f"weights for {v} not found: {weights[v]} (train and export the model first)")
    if "sahi" in variants:
        try:
            import sahi  # noqa: F401
        except ImportError:
            ap.error("SAHI is not installed: .venv/bin/pip install --no-deps sahi fire")
    if "geodeep" in variants:
        try:
            import geodeep  # noqa: F401
        except ImportError:
            ap.error("GeoDeep is not installed: .venv/bin/pip install --no-deps geodeep")
    overrides = dict(s.split("=", 1) for s in args.sets)
    from pipeline.core.config import load_settings
    from pipeline.detection.detect import model_task
    oriented = model_task(args.model)[0] == "obb"  # truth as polygons for oriented boxes, else envelopes
    classes = [c for c in args.classes.split(",") if c]
    args.work.mkdir(parents=True, exist_ok=True)

    sizes = [args.size_m] + ([args.small_size_m] if args.small_size_m else [])
    rows = []
    for size in sorted(sizes):
        ortho, vectors = district(args.work, size, args.seed, args.gsd)
        km2 = extent_km2(ortho)
        flown = flown_km2(ortho)
        for v in variants:
            result = str(args.work / f"result_{int(size)}m_{v}.json")
            cmd = [sys.executable, __file__, "--child", "--variant", v, "--ortho", str(ortho),
                   "--weights", str(weights[v]), "--overrides", json.dumps({**overrides, **VARIANT_SETTINGS.get(v, {})}),
                   "--result", result]
            print(f"{v:>8} on {size:g} m ({km2:.2f} km²) ...", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT)
            process_s = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"  {v} failed (exit {proc.returncode})", flush=True)
                continue
            r = json.loads(Path(result).read_text())
            m = score_run(result, ortho, vectors, classes, envelope=not oriented)
            row = {"size_m": size, "km2": round(km2, 3), "variant": v, "tiles": r["tiles"],
                   "seconds": round(r["seconds"], 1), "tiles_per_s": round(r["tiles"] / r["seconds"], 2),
                   "km2_per_h": round(km2 / r["seconds"] * 3600, 2), "peak_rss_mb": round(r["peak_rss_mb"]),
                   "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
                   "n_pred": m["n_pred"], "n_truth": m["n_truth"], "flown_km2": round(flown, 3),
                   "flown_km2_per_h": round(flown / r["seconds"] * 3600, 2),
                   "flown_km2_per_h_with_startup": round(flown / process_s * 3600, 2),
                   "process_s": round(process_s, 1)}
            rows.append(row)
            print(f"  {row['seconds']} s, {row['km2_per_h']} km²/h, {row['peak_rss_mb']} MB, "
                  f"recall {row['recall']}", flush=True)

    print()
    print(f"model {args.model.name} ({'oriented boxes vs truth polygons' if oriented else 'boxes vs truth envelopes'}); "
          f"native GSD {args.gsd:g} m; classes scored: {', '.join(classes)}; IoU 0.5; {os.cpu_count()} CPUs")
    head = ["size_m", "km2", "variant", "tiles", "seconds", "tiles_per_s", "km2_per_h", "flown_km2",
            "flown_km2_per_h", "process_s", "flown_km2_per_h_with_startup", "peak_rss_mb", "precision", "recall", "f1"]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(" | ".join(str(r[h]) for h in head))
    print()
    for size in sorted(set(r["size_m"] for r in rows)):
        by = {r["variant"]: r for r in rows if r["size_m"] == size}
        if "sahi" in by:
            for v in ("pt", "onnx"):
                if v in by:
                    print(f"{size:g} m: {v} vs SAHI: {by[v]['km2_per_h'] / by['sahi']['km2_per_h']:.1f}x km²/h, "
                          f"recall {by[v]['recall']:.3f} vs {by['sahi']['recall']:.3f}, "
                          f"peak RSS {by[v]['peak_rss_mb']} vs {by['sahi']['peak_rss_mb']} MB")
    if len(sizes) > 1:
        for v in variants:
            rs = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["km2"])
            if len(rs) > 1:
                print(f"{v}: peak RSS {rs[0]['peak_rss_mb']} MB at {rs[0]['km2']} km² -> "
                      f"{rs[-1]['peak_rss_mb']} MB at {rs[-1]['km2']} km² "
                      f"({rs[-1]['peak_rss_mb'] / rs[0]['peak_rss_mb']:.2f}x for "
                      f"{rs[-1]['km2'] / rs[0]['km2']:.1f}x the area)")
    settings = load_settings(overrides=overrides)
    p = settings.processing
    tile_km2 = (p.tile_px * p.gsd_m) ** 2 / 1e6
    alone = {n: model_alone(onnx, p.tile_px, n) for n in (1, 2)}
    for n, tps in alone.items():
        print(f"FP32 model alone (onnxruntime, {n} thread{'s' if n > 1 else ''}): {tps:.2f} tiles/s = "
              f"{tps * tile_km2 * 3600:.1f} flown km²/h without overlap")
    for r in rows:
        if r["variant"] in VARIANT_SETTINGS:
            r["share_of_model_alone"] = round(r["flown_km2_per_h_with_startup"] / (alone[2] * tile_km2 * 3600), 3)
            print(f"{r['size_m']:g} m {r['variant']}: flown km²/h with start-up = {r['share_of_model_alone']:.2f} "
                  f"of the model alone on 2 threads")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def model_alone(onnx: Path, tile_px: int, threads: int, seconds: float = 8.0) -> float:
    """Tiles per second of the FP32 graph alone (onnxruntime), fed batches of 8 textured tiles."""
    import numpy as np

    from pipeline.detection.yolo import OnnxYolo

    rng = np.random.default_rng(0)
    tiles = [rng.integers(40, 220, (tile_px, tile_px, 3), dtype=np.uint8) for _ in range(8)]
    model = OnnxYolo(onnx, threads, "fp32")
    model.predict(tiles, tile_px, 0.25, 0.5)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.predict(tiles, tile_px, 0.25, 0.5)
        n += len(tiles)
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
