"""Evaluation: detections against truth footprints (IoU, one-to-one) and YOLO metrics on held-out scenes.

`score` matches predicted polygons to truth polygons at an IoU threshold (default 0.5). Candidate
pairs come from an STRtree query; IoUs are computed for all candidates at once; pairs are then
taken greedily by decreasing IoU so each prediction and each truth is used at most once.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.core.errors import ConfigError, InputError, ModelError
from pipeline.detection.detect import Detector, detect_ortho, offline_ultralytics
from pipeline.ingest import valid_footprint
from pipeline.model.dataset import build_dataset, local_utm

CLASSES = ["building", "steel_shed", "under_construction", "greenhouse"]


def match_footprints(pred, truth, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches of two geometry arrays at IoU >= ``iou``: (pred index, truth index, IoU)."""
    import shapely
    pred = np.asarray(pred, dtype=object)
    truth = np.asarray(truth, dtype=object)
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    if len(pred) == 0 or len(truth) == 0:
        return empty
    tree = shapely.STRtree(truth)
    pi, ti = tree.query(pred, predicate="intersects")
    if len(pi) == 0:
        return empty
    inter = shapely.area(shapely.intersection(pred[pi], truth[ti]))
    union = shapely.area(pred[pi]) + shapely.area(truth[ti]) - inter
    ious = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    ok = ious >= iou
    pi, ti, ious = pi[ok], ti[ok], ious[ok]
    order = np.argsort(-ious, kind="stable")
    used_p: set[int] = set()
    used_t: set[int] = set()
    kept: list[int] = []
    for k in order:
        if pi[k] in used_p or ti[k] in used_t:
            continue
        used_p.add(pi[k])
        used_t.add(ti[k])
        kept.append(k)
    keep = np.asarray(kept, dtype=int)
    return pi[keep], ti[keep], ious[keep]


def _overlaps(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every intersecting (detection, footprint) pair and the area they share."""
    import shapely
    if not (len(pred) and len(truth)):
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    pi, ti = shapely.STRtree(truth).query(pred, predicate="intersects")
    return pi, ti, shapely.area(shapely.intersection(pred[pi], truth[ti]))


def _share_on(pred: np.ndarray, pi: np.ndarray, inter: np.ndarray) -> np.ndarray:
    """Each detection's area on footprints (the ``_overlaps`` pairs summed) over its own area."""
    import shapely
    on = np.zeros(len(pred))
    np.add.at(on, pi, inter)
    return on / np.maximum(shapely.area(pred), 1e-9) if len(pred) else on


def on_footprint_share(pred, truth) -> np.ndarray:
    """The share of each detection's area lying on truth footprints (summed over footprints);
    below one half it is "off footprints": an unmapped structure or a false alarm."""
    pred, truth = np.asarray(pred, dtype=object), np.asarray(truth, dtype=object)
    pi, _, inter = _overlaps(pred, truth)
    return _share_on(pred, pi, inter)


def coverage(pred, truth, share: float = 0.5) -> dict:
    """Figures that do not depend on how footprints were drawn (a house mapped as parts, a row as one).

    ``found``: truth footprints at least ``share`` covered by one detection; ``on_target``:
    detections lying at least ``share`` on truth footprints (summed over footprints); ``split``:
    footprints that two or more detections lie on (each at least ``share`` of it on that footprint:
    one house returned as several structures, so several cases), ``split_share`` of all footprints;
    ``merged``: footprints at least ``share`` covered by a detection that covers as much of another
    footprint too (adjoining houses returned as one structure, one case for several), ``merged_share``.
    """
    import shapely
    pred = np.asarray(pred, dtype=object)
    truth = np.asarray(truth, dtype=object)
    covered = np.zeros(len(truth))
    pieces = np.zeros(len(truth), int)
    spans = np.zeros(len(pred), int)
    merged = np.zeros(len(truth), bool)
    pi, ti, inter = _overlaps(pred, truth)
    if len(pi):
        of_truth = inter / np.maximum(shapely.area(truth[ti]), 1e-9)
        np.maximum.at(covered, ti, of_truth)
        np.add.at(pieces, ti, (inter / np.maximum(shapely.area(pred[pi]), 1e-9) >= share).astype(int))
        np.add.at(spans, pi, (of_truth >= share).astype(int))
        merged[ti[(of_truth >= share) & (spans[pi] >= 2)]] = True
    on = _share_on(pred, pi, inter)
    found, on_target, split = int((covered >= share).sum()), int((on >= share).sum()), int((pieces >= 2).sum())
    n_merged = int(merged.sum())
    return {"found_recall": round(found / len(truth), 4) if len(truth) else 0.0,
            "on_target_precision": round(on_target / len(pred), 4) if len(pred) else 0.0,
            "found": found, "on_target": on_target, "cover_share": share,
            "split": split, "split_share": round(split / len(truth), 4) if len(truth) else 0.0,
            "merged": n_merged, "merged_share": round(n_merged / len(truth), 4) if len(truth) else 0.0}


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4),
            "tp": int(tp), "fp": int(fp), "fn": int(fn)}


def score(pred, truth, classes: Sequence[str] | None = None, iou: float = 0.5) -> dict:
    """Precision/recall/F1 of detections against truth footprints (both GeoDataFrames).

    ``classes`` keeps only those classes (detections always; truth when it has `class_name`).
    The overall figures ignore the class (a footprint found is found); when the truth has
    `class_name`, ``per_class`` holds class-aware figures too.
    """
    if truth.crs is not None and pred.crs is not None and truth.crs != pred.crs:
        truth = truth.to_crs(pred.crs)
    truth = truth[truth.geometry.notna() & ~truth.geometry.is_empty]
    import shapely
    truth = truth.set_geometry(shapely.make_valid(truth.geometry.to_numpy()))
    has_cls = "class_name" in truth.columns
    if classes:
        pred = pred[pred["class_name"].isin(classes)]
        if has_cls:
            truth = truth[truth["class_name"].isin(classes)]
    pi, ti, _ = match_footprints(pred.geometry.to_numpy(), truth.geometry.to_numpy(), iou)
    tp = len(pi)
    out = _prf(tp, len(pred) - tp, len(truth) - tp)
    out["iou"] = iou
    out["n_pred"], out["n_truth"] = int(len(pred)), int(len(truth))
    out["coverage"] = coverage(pred.geometry.to_numpy(), truth.geometry.to_numpy())
    if has_cls:
        per = {}
        names = list(classes) if classes else sorted(set(truth["class_name"]) | set(pred["class_name"]))
        for c in names:
            p_c, t_c = pred[pred["class_name"] == c], truth[truth["class_name"] == c]
            if len(p_c) == 0 and len(t_c) == 0:
                continue
            a, _, _ = match_footprints(p_c.geometry.to_numpy(), t_c.geometry.to_numpy(), iou)
            per[c] = _prf(len(a), len(p_c) - len(a), len(t_c) - len(a))
        out["per_class"] = per
    else:
        out["per_class_detections"] = {str(k): int(v) for k, v in pred["class_name"].value_counts().items()}
    return out


def read_truth(path: str | Path, layer: str | None = None):
    """Truth footprints from any vector file (polygons only)."""
    import geopandas as gpd
    path = Path(path)
    if not path.is_file():
        raise InputError(f"truth file {path} not found; pass a GeoPackage, GeoJSON or shapefile")
    try:
        gdf = gpd.read_file(path, layer=layer) if layer else gpd.read_file(path)
    except Exception as e:
        if layer is None and path.suffix.lower() == ".gpkg":
            try:  # a district.gpkg: its truth layer
                gdf = gpd.read_file(path, layer="truth")
            except Exception:
                raise InputError(f"cannot read truth file {path} ({type(e).__name__}); check the format") from None
        else:
            raise InputError(f"cannot read truth file {path} ({type(e).__name__}); check the format") from None
    if gdf.crs is None:
        raise InputError(f"truth file {path} has no CRS; set one")
    import shapely
    gdf = gdf[gdf.geom_type.isin(["Polygon", "MultiPolygon"])]
    return gdf.set_geometry(shapely.make_valid(gdf.geometry.to_numpy()))  # OSM rings may self-touch


def clip_truth(gt, footprint, min_inside: float = 0.5):
    """Truth polygons cut to the imaged area; those mostly outside it are dropped."""
    import shapely
    geoms = gt.geometry.to_numpy()
    inside = shapely.intersection(geoms, footprint)
    frac = shapely.area(inside) / np.maximum(shapely.area(geoms), 1e-9)
    keep = frac >= min_inside
    out = gt[keep].copy()
    return out.set_geometry(gpd_series(inside[keep], gt.crs, out.index))


def gpd_series(geoms, crs, index):
    import geopandas as gpd
    return gpd.GeoSeries(geoms, crs=crs, index=index)


def detect_against_truth(ortho: str | Path, truth: str | Path, settings, model: str | Path | None = None,
                         truth_layer: str | None = None, epoch: int | None = None, min_inside: float = 0.5,
                         progress: bool = True, part: Sequence[float] | None = None):
    """(detections, truth clipped to the valid footprint, that footprint), in the ortho's local UTM.
    With ``part`` (left, top, right, bottom fractions of the raster) only that part counts: the
    footprint is cut to it, truth is clipped to it and detections whose centre lies outside go."""
    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import open_raster, part_polygon
    ortho = Path(ortho)
    if not ortho.is_file():
        raise InputError(f"ortho {ortho} not found; pass an existing GeoTIFF")
    gt = read_truth(truth, truth_layer)
    if epoch is not None and "epoch" in gt.columns:
        gt = gt[gt["epoch"] == epoch]
    with open_raster(ortho) as src:
        crs = local_utm(src.crs, src.bounds)
        foot = valid_footprint(src, crs.to_string())
        if part is not None:
            foot = foot.intersection(part_polygon(src, part, crs))
    gt = clip_truth(gt.to_crs(crs), foot, min_inside)
    det = Detector.from_settings(settings, model) if model else None
    pred = detect_ortho(ortho, settings, store_crs=crs.to_string(), detector=det, progress=progress)
    if part is not None:
        pred = pred[pred.geometry.centroid.within(foot)].reset_index(drop=True)
    return pred, gt, foot


def evaluate_ortho(ortho: str | Path, truth: str | Path, settings, classes: Sequence[str] | None = None,
                   model: str | Path | None = None, iou: float = 0.5, truth_layer: str | None = None,
                   epoch: int | None = None, envelope: bool = False, min_inside: float = 0.5,
                   progress: bool = True, part: Sequence[float] | None = None) -> dict:
    """Detect on an ortho (any CRS, RGB/RGBA) and score against a footprint file, in local metres
    (only its ``part``, fractions left, top, right, bottom, when given).

    Truth is clipped to the ortho's valid-data footprint (footprints less than ``min_inside``
    inside are dropped). Detections (oriented boxes) are compared with the footprint polygons;
    with ``envelope`` (for a model of axis-aligned boxes) with their axis-aligned envelopes.
    """

    pred, gt, foot = detect_against_truth(ortho, truth, settings, model, truth_layer, epoch, min_inside, progress,
                                          part)
    if envelope:
        gt = gt.set_geometry(gt.geometry.envelope)
    out = score(pred, gt, classes, iou)
    kept = pred[pred["class_name"].isin(classes)] if classes else pred
    out["by_size"] = size_split(kept, gt, iou)
    out["valid_ha"] = round(float(foot.area) / 1e4, 3)
    out["false_per_ha"] = round(out["fp"] / out["valid_ha"], 2) if out["valid_ha"] else None
    out["off"] = out["n_pred"] - out["coverage"]["on_target"]      # less than half on any footprint
    out["off_per_ha"] = round(out["off"] / out["valid_ha"], 2) if out["valid_ha"] else None
    out["truth_geometry"] = "envelope" if envelope else "polygon"
    out["ortho"] = str(ortho)
    out["truth"] = str(truth)
    out["model"] = str(model or settings.model_path)
    out["gsd_m"] = settings.processing.gsd_m
    out["tile_px"] = settings.processing.tile_px
    return out


#: footprint size classes of the suite table (m²)
SIZE_BINS = ((0.0, 30.0, "< 30 m²"), (30.0, 150.0, "30–150 m²"), (150.0, float("inf"), "> 150 m²"))
#: the manifest of the real-imagery suite shipped with the repository
DEFAULT_SUITE = Path(__file__).resolve().parents[2] / "config" / "realdata_suite.yaml"


def size_split(pred, truth, iou: float = 0.5) -> dict:
    """Recall by the footprint's size and precision by the detection's size (SIZE_BINS)."""
    import shapely
    pg, tg = pred.geometry.to_numpy(), truth.geometry.to_numpy()
    pi, ti, _ = match_footprints(pg, tg, iou)
    pa, ta = shapely.area(pg) if len(pg) else np.zeros(0), shapely.area(tg) if len(tg) else np.zeros(0)
    hit_t, hit_p = np.zeros(len(tg), bool), np.zeros(len(pg), bool)
    hit_t[ti], hit_p[pi] = True, True
    out = {}
    for lo, hi, name in SIZE_BINS:
        t, p = (ta >= lo) & (ta < hi), (pa >= lo) & (pa < hi)
        out[name] = {"footprints": int(t.sum()), "recall": round(float(hit_t[t].mean()), 4) if t.any() else None,
                     "detections": int(p.sum()), "precision": round(float(hit_p[p].mean()), 4) if p.any() else None}
    return out


def read_suite(manifest: str | Path = DEFAULT_SUITE) -> list[dict]:
    """The suite's crops: area, ortho and truth paths (relative to the suite folder), role, and
    ``part``: None for a whole crop, or the (left, top, right, bottom) fractions of the crop held
    out for evaluation (``CROP: {eval: [l, t, r, b]}``); the rest of that crop is a ``train`` entry
    whose ``holdout`` is that part."""
    import yaml
    path = Path(manifest)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out = []
        for area, spec in (data.get("areas") or {}).items():
            for crop, role in spec["crops"].items():
                base = {"area": area, "ortho": str(Path(area) / crop), "truth": spec["truth"]}
                if isinstance(role, dict):
                    part = [float(f) for f in role["eval"]]
                    if len(part) != 4:
                        raise TypeError("part")
                    out += [{**base, "role": "eval", "part": part, "holdout": None},
                            {**base, "role": "train", "part": None, "holdout": part}]
                elif role in ("eval", "train"):
                    out.append({**base, "role": role, "part": None, "holdout": None})
                else:
                    raise TypeError("role")
        return out
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        raise InputError(f"suite manifest {path.name} cannot be read (areas: AREA: {{truth: FILE, crops: "
                         f"{{CROP: eval|train|{{eval: [left, top, right, bottom]}}}}}}); fix it or pass "
                         f"another with --manifest") from None


def evaluate_suite(suite_dir: str | Path, settings, manifest: str | Path = DEFAULT_SUITE,
                   roles: Sequence[str] = ("eval",), model: str | Path | None = None, iou: float = 0.5,
                   progress: bool = False) -> dict:
    """Every crop of the suite in ``roles``: strict P/R/F1, coverage, false detections per
    hectare and the size split, one row per crop and one per area (its crops summed)."""
    suite = Path(suite_dir)
    crops = [c for c in read_suite(manifest) if c["role"] in roles]
    if not crops:
        raise InputError(f"the suite manifest has no crop in roles {', '.join(roles)}; pass --roles eval,train")
    missing_files = [f for c in crops for f in (c["ortho"], c["truth"]) if not (suite / f).is_file()]
    if missing_files:
        raise InputError(f"{suite.name} lacks {missing_files[0]} (and {len(missing_files) - 1} more files) that the "
                         f"suite manifest names; pass the folder laid out like ../shared/realdata")
    rows = []
    for c in crops:
        if c["role"] == "train" and c["holdout"] is not None:
            continue                          # a crop's training part: not scored (its figures say nothing)
        m = evaluate_ortho(suite / c["ortho"], suite / c["truth"], settings, model=model, iou=iou, progress=progress,
                           part=c["part"])
        crop = Path(c["ortho"]).name + (" [{:g}–{:g} × {:g}–{:g}]".format(c["part"][0], c["part"][2], c["part"][1],
                                                                      c["part"][3]) if c["part"] else "")
        rows.append({"area": c["area"], "crop": crop, "role": c["role"],
                     **{k: m[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn", "n_pred", "n_truth",
                                          "valid_ha", "false_per_ha", "off", "off_per_ha", "by_size")},
                     "found_recall": m["coverage"]["found_recall"],
                     "on_target_precision": m["coverage"]["on_target_precision"],
                     **{k: m["coverage"][k] for k in ("split", "split_share", "merged", "merged_share")}})
    areas = []
    for area in dict.fromkeys(r["area"] for r in rows):
        rs = [r for r in rows if r["area"] == area]
        tp, fp, fn, off = (sum(r[k] for r in rs) for k in ("tp", "fp", "fn", "off"))
        ha = sum(r["valid_ha"] for r in rs)
        found = sum(r["found_recall"] * r["n_truth"] for r in rs)
        n_truth, split, merged = (sum(r[k] for r in rs) for k in ("n_truth", "split", "merged"))
        areas.append({"area": area, "role": "/".join(sorted({r["role"] for r in rs})), **_prf(tp, fp, fn),
                      "n_truth": n_truth, "valid_ha": round(ha, 2),
                      "false_per_ha": round(fp / ha, 2) if ha else None,
                      "off": off, "off_per_ha": round(off / ha, 2) if ha else None,
                      "found_recall": round(found / max(n_truth, 1), 4),
                      "split": split, "split_share": round(split / max(n_truth, 1), 4),
                      "merged": merged, "merged_share": round(merged / max(n_truth, 1), 4)})
    return {"model": str(model or settings.model_path), "runtime": settings.detector.runtime, "iou": iou,
            "gsd_m": settings.processing.gsd_m, "suite": suite.name, "crops": rows, "areas": areas}


def suite_markdown(result: dict, command: str = "") -> str:
    """The suite's table in Markdown (areas, then crops with their size split)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Detector on real imagery", "", f"Generated {now}" + (f" by `{command}`" if command else "") + ".",
             f"Model `{Path(result['model']).name}` ({result['runtime']}), processing GSD {result['gsd_m']} m, "
             f"IoU {result['iou']}. Role `eval`: never trained on; `train`: trained on (not a measure of "
             f"generalisation).", "",
             "| area | role | precision | recall | F1 | TP | FP | FN | footprints found | false / ha | "
             "off footprints / ha (n) | split (n) | merged (n) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for a in result["areas"]:
        lines.append(f"| {a['area']} | {a['role']} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
                     f"{a['tp']} | {a['fp']} | {a['fn']} | {a['found_recall']:.3f} | {a['false_per_ha']} | "
                     f"{a['off_per_ha']} ({a['off']}) | {a['split_share']:.3f} ({a['split']}) | "
                     f"{a['merged_share']:.3f} ({a['merged']}) |")
    lines += ["", "`false`: detections matching no footprint at IoU 0.5 (many lie on real roofs: one box over a house "
              "mapped in parts, or a loose outline); `off footprints`: detections less than half on any footprint "
              "(an unmapped structure or a false alarm: look at them). `split`: footprints that two or more "
              "detections lie on (one house, several cases); `merged`: footprints under a detection that covers "
              "another footprint as well (several houses, one case; or one house mapped in parts).", "",
              "| crop | role | P | R | found | on footprints | false / ha | "
              + " | ".join(f"R {n} (n)" for _, _, n in SIZE_BINS) + " | "
              + " | ".join(f"P {n} (n)" for _, _, n in SIZE_BINS) + " |",
              "| " + " | ".join("---" for _ in range(7 + 2 * len(SIZE_BINS))) + " |"]
    for r in result["crops"]:
        def cell(v, n):
            return f"{'—' if v is None else f'{v:.2f}'} ({n})"
        rec = " | ".join(cell(r["by_size"][n]["recall"], r["by_size"][n]["footprints"]) for _, _, n in SIZE_BINS)
        pre = " | ".join(cell(r["by_size"][n]["precision"], r["by_size"][n]["detections"]) for _, _, n in SIZE_BINS)
        lines.append(f"| {r['area']}/{r['crop']} | {r['role']} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['found_recall']:.3f} | {r['on_target_precision']:.3f} | {r['false_per_ha']} | {rec} | {pre} |")
    return "\n".join(lines) + "\n"


def write_json(metrics: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def _row(name: str, m: dict) -> str:
    return (f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
            f"{m['tp']} | {m['fp']} | {m['fn']} |")


def report_markdown(metrics: dict, title: str = "Detector evaluation") -> str:
    """A Markdown report of `score`/`evaluate_ortho`/`evaluate_scenes` figures."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {title}", "", f"Generated {now}.", ""]
    for k in ("ortho", "truth", "model", "scenes", "seed", "gsd_m", "tile_px", "iou", "truth_geometry"):
        if k in metrics:
            lines.append(f"- {k}: `{metrics[k]}`")
    lines.append("")
    if "mAP50" in metrics:
        lines += ["## YOLO metrics on held-out generated scenes", "",
                  f"- chips: {metrics.get('chips')}, objects: {metrics.get('objects')}",
                  f"- mAP50: {metrics['mAP50']:.3f}", f"- mAP50-95: {metrics['mAP50-95']:.3f}", "",
                  "| class | precision | recall | mAP50 | mAP50-95 |", "| --- | --- | --- | --- | --- |"]
        for c, m in metrics.get("per_class_yolo", {}).items():
            lines.append(f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['mAP50']:.3f} | "
                         f"{m['mAP50-95']:.3f} |")
        lines.append("")
    if "tp" in metrics:
        lines += ["## Footprints matched at IoU {:.2f} (one-to-one)".format(metrics.get("iou", 0.5)), "",
                  "| scope | precision | recall | F1 | TP | FP | FN |", "| --- | --- | --- | --- | --- | --- | --- |",
                  _row("all (class-agnostic)", metrics)]
        for c, m in metrics.get("per_class", {}).items():
            lines.append(_row(c, m))
        lines.append("")
        if "coverage" in metrics:
            cov = metrics["coverage"]
            lines += [f"Drawn-independent: {cov['found']} of {metrics['n_truth']} footprints "
                      f"({cov['found_recall']:.3f}) are at least half covered by one detection; "
                      f"{cov['on_target']} of {metrics['n_pred']} detections ({cov['on_target_precision']:.3f}) "
                      "lie at least half on footprints.", ""]
        if "per_class_detections" in metrics:
            lines.append("Truth has no classes; detections by class: " + ", ".join(
                f"{k} {v}" for k, v in metrics["per_class_detections"].items()))
            lines.append("")
    return "\n".join(lines)


def write_report(metrics: dict, path: str | Path, title: str = "Detector evaluation") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_markdown(metrics, title), encoding="utf-8")
    return path


def evaluate_scenes(model: str | Path, scenes: int = 10, seed: int = 1_000_000, size_m: float = 96.0,
                    chip_px: int = 320, gsd_range: tuple[float, float] = (0.08, 0.14),
                    work_dir: str | Path | None = None, exclude_data: str | Path | None = None,
                    conf: float = 0.001, progress: bool = True, l_houses: bool = True) -> dict:
    """mAP50, mAP50-95 and per-class P/R (ultralytics val) on freshly rendered held-out scenes
    (``l_houses`` False: without L / T-plan houses, the scenes of the 2026-11-26 figures).

    Scene seeds are ``seed … seed+scenes-1``; with ``exclude_data`` (a dataset folder with a
    manifest.json) any seed that was used for training or validation there is refused.
    """
    import tempfile

    model = Path(model)
    if not model.is_file():
        raise ModelError(f"model {model} not found; pass --model with .pt or .onnx weights")
    seeds = set(range(seed, seed + scenes))
    if exclude_data:
        mf = Path(exclude_data) / "manifest.json"
        if mf.is_file():
            m = json.loads(mf.read_text())
            clash = seeds & (set(m["synthetic"]["train"]) | set(m["synthetic"]["val"]))
            if clash:
                raise ConfigError(f"seeds {sorted(clash)[:3]}… were used in {exclude_data}; pick another --seed")
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="patrol-eval-")
        work_dir = tmp.name
    work_dir = Path(work_dir)
    try:
        build_dataset(work_dir, scenes=0, val_scenes=scenes, seed=seed, size_m=size_m, chip_px=chip_px,
                      gsd_range=gsd_range, progress=progress, l_houses=l_houses)
        offline_ultralytics()
        from ultralytics import YOLO
        yolo = YOLO(str(model))
        r = yolo.val(data=str(work_dir / "data.yaml"), split="val", imgsz=chip_px, batch=8, device="cpu",
                     plots=False, conf=conf, iou=0.6, verbose=False, workers=0,
                     project=str(work_dir / "val"), name="run", exist_ok=True)
        names = r.names
        per = {}
        for k, ci in enumerate(r.box.ap_class_index):
            per[names[int(ci)]] = {"precision": float(r.box.p[k]), "recall": float(r.box.r[k]),
                                   "mAP50": float(r.box.ap50[k]), "mAP50-95": float(r.box.ap[k])}
        n_chips = len(list((work_dir / "images" / "val").glob("*.jpg")))
        n_obj = sum(len(p.read_text().splitlines()) for p in (work_dir / "labels" / "val").glob("*.txt"))
        return {"model": str(model), "scenes": scenes, "seed": seed, "l_houses": l_houses, "chips": n_chips,
                "objects": n_obj,
                "mAP50": float(r.box.map50), "mAP50-95": float(r.box.map),
                "precision": float(r.box.mp), "recall": float(r.box.mr), "per_class_yolo": per}
    finally:
        if tmp is not None:
            tmp.cleanup()
