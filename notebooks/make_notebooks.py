"""Write notebooks/0*.ipynb from the cell sources below, outputs stripped.

Edit the cells here, then run ``.venv/bin/python notebooks/make_notebooks.py``; the
notebooks are committed without outputs (tests/system/test_notebooks.py runs each top to bottom).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# Every notebook starts with this: a work folder outside the repository (PATROL_NB_WORK
# overrides it) and the project's settings with the store inside that folder.
SETUP = '''\
import json
import os
import tempfile
from pathlib import Path

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML, Image, Markdown, display

from pipeline.core.config import load_settings

NOTEBOOK = "{name}"
WORK = Path(os.environ.get("PATROL_NB_WORK") or Path(tempfile.gettempdir()) / "lianwei-notebooks") / NOTEBOOK
WORK.mkdir(parents=True, exist_ok=True)
for old in WORK.glob("patrol.gpkg*"):          # a fresh store on every run
    old.unlink()
settings = load_settings(overrides={{"store.url": str(WORK / "patrol.gpkg")}})
plt.rcParams["figure.dpi"] = 80
print("work folder:", WORK)
print("store:", settings.store.url, "·", settings.store.crs)'''

DISTRICT = '''\
from pipeline.synth import generate_district

DISTRICT = WORK / "district_seed{seed}_{size}m"
if not (DISTRICT / "district.json").exists():      # generated once per work folder (~10 s)
    generate_district(DISTRICT, seed={seed}, size_m={size}, epochs=2, progress=False)
meta = json.loads((DISTRICT / "district.json").read_text(encoding="utf-8"))
VECTORS = DISTRICT / "district.gpkg"
truth_all = gpd.read_file(VECTORS, layer="truth")


def truth_detections(epoch: int) -> gpd.GeoDataFrame:
    """The truth layer of one epoch shaped like detect_ortho's output (stands in for the model)."""
    t = truth_all[truth_all["epoch"] == epoch]
    return t.assign(confidence=1.0, area_m2=t.geometry.area)[["class_name", "confidence", "area_m2", "geometry"]]


pd.DataFrame(meta["epochs"])[["epoch", "date", "ortho", "season"]]'''

INLINE_MAP = '''\
import base64
import html as _html


def show_map(page: Path, height: int = 560):
    """Show a map written by pipeline.report.map.build_map inline: its scripts and styles are
    already inlined; the orthophoto and chip PNGs beside the page become data URIs."""
    text = page.read_text(encoding="utf-8")
    for png in page.parent.rglob("*.png"):
        rel = png.relative_to(page.parent).as_posix()
        if rel in text:
            text = text.replace(rel, "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode())
    return HTML(f'<div><iframe srcdoc="{_html.escape(text)}" style="width:100%;height:{height}px;border:0"></iframe></div>')'''


def nb01() -> list:
    return [
        new_markdown_cell("""\
# 01 · Walkthrough: from a generated district to cases and the map

The whole pipeline through the Python API, one stage at a time, on a small generated district
(120 m × 120 m, two flights months apart, 5 cm GSD):

```
flight ──tiling──> tiles ──detect──> detections ──match──> findings ──track──> cases ──report──> map
```

Detections here come from the district's **truth layer** (what was really built), so the rules,
tracking and reports are shown apart from the detector; `notebooks/03_model_evaluation.ipynb`
measures the detector. Set `DETECTIONS = "model"` below to run the shipped detector
(`models/lianwei-yolo11n.onnx`) instead. Runs in well under a minute on a laptop CPU."""),
        new_code_cell(SETUP.format(name="01_walkthrough")),
        new_code_cell('''\
DETECTIONS = "truth"    # or "model": the detector at settings.model_path
if DETECTIONS == "model" and not settings.model_path.is_file():
    print(f"no weights at {settings.model_path}; using the truth layer")
    DETECTIONS = "truth"
print("detections from:", DETECTIONS)'''),
        new_markdown_cell("""\
## 1 · The district (`pipeline.synth.generate_district`)
One GeoTIFF per flight (`epoch_N.tif`, EPSG:4547, internal no-data mask outside the flight's
footprint) and `district.gpkg` with parcels, zones and the truth layer."""),
        new_code_cell(DISTRICT.format(seed=7, size=120)),
        new_code_cell('''\
import rasterio

fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, ep in zip(axes, meta["epochs"]):
    with rasterio.open(DISTRICT / ep["ortho"]) as src:
        img = src.read(out_shape=(3, src.height // 4, src.width // 4))      # from the overviews
        extent = (src.bounds.left, src.bounds.right, src.bounds.bottom, src.bounds.top)
        print(ep["ortho"], src.crs, f"{src.res[0]:.2f} m GSD", src.width, "x", src.height, "px")
    ax.imshow(np.moveaxis(img, 0, -1), extent=extent)
    ax.set_title(f"epoch {ep['epoch']} · {ep['date'][:10]}")
plt.tight_layout()'''),
        new_markdown_cell("""\
## 2 · Tiles (`pipeline.detection.tiling.iter_tiles`)
The tiler streams windows over valid pixels only, resampled to the detector's GSD
(`processing.gsd_m`), `processing.tile_px` square with `processing.overlap_px` overlap.
Each tile carries its affine transform, so a box in tile pixels maps back to the ground."""),
        new_code_cell('''\
from pipeline.detection.tiling import iter_tiles

p = settings.processing
ORTHO_1 = DISTRICT / meta["epochs"][0]["ortho"]
tiles = list(iter_tiles(ORTHO_1, p.gsd_m, p.tile_px, p.overlap_px, tuple(p.stretch_percentiles)))
print(f"{len(tiles)} tiles of {p.tile_px} px at {p.gsd_m} m ({p.tile_px * p.gsd_m:.0f} m on the ground)")
tile = max(tiles, key=lambda t: t.valid.mean())
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
axes[0].imshow(tile.image)
axes[0].set_title(f"tile at grid {tile.index}")
axes[1].imshow(tile.valid, cmap="gray")
axes[1].set_title("valid pixels (black: no-data / padding)")
plt.tight_layout()'''),
        new_markdown_cell("""\
## 3 · Detections (`pipeline.detection.detect.detect_ortho`)
A GeoDataFrame of `class_name`, `confidence`, `area_m2` and a polygon in the store CRS, seam
duplicates merged. Below they are drawn back onto the tile: map coordinates → tile pixels
through the inverse of the tile's transform."""),
        new_code_cell('''\
import shapely
from pipeline.report.common import CLASS_COLOURS

if DETECTIONS == "model":
    from pipeline.detection.detect import Detector, detect_ortho
    detector = Detector.from_settings(settings)
    dets_1 = detect_ortho(ORTHO_1, settings, detector=detector, progress=False)
else:
    detector = None
    dets_1 = truth_detections(1)
print(len(dets_1), "detections;", dets_1["class_name"].value_counts().to_dict())
centres = shapely.centroid(dets_1.geometry.to_numpy())
tile = max(tiles, key=lambda t: shapely.contains_xy(shapely.box(*(t.transform * (0, p.tile_px)), *(t.transform * (p.tile_px, 0))),
                                                       shapely.get_x(centres), shapely.get_y(centres)).sum())


def to_pixels(geom, transform):
    inv = ~transform
    return shapely.transform(geom, lambda xy: np.column_stack(inv * (xy[:, 0], xy[:, 1])))


fig, ax = plt.subplots(figsize=(7, 7))
ax.imshow(tile.image)
for cls, g in zip(dets_1["class_name"], dets_1.geometry):
    px = to_pixels(g, tile.transform)
    for part in getattr(px, "geoms", [px]):
        x, y = part.exterior.xy
        ax.plot(x, y, color=CLASS_COLOURS.get(cls, "red"), lw=1.5)
ax.set_xlim(0, p.tile_px)
ax.set_ylim(p.tile_px, 0)
ax.legend(handles=[plt.Line2D([], [], color=c, label=k) for k, c in CLASS_COLOURS.items()], loc="lower right")
ax.set_title("detections on the tile")
dets_1.head()'''),
        new_markdown_cell("""\
## 4 · Parcels and zones (`pipeline.ingest.parcels`)
`read_parcels` / `read_zones` check and reproject the registry files (docs/DATA.md); the
store keeps them. Parcels are registered homesteads (宅基地) with their approved area;
zones are restricted land: basic farmland 永久基本农田, farmland 耕地, ecological red line 生态保护红线."""),
        new_code_cell('''\
from pipeline.ingest.parcels import read_parcels, read_zones
from pipeline.report.common import ZONE_COLOURS

parcels = read_parcels(VECTORS, store_crs=settings.store.crs)
zones = read_zones(VECTORS, store_crs=settings.store.crs)
print(len(parcels), "parcels,", len(zones), "zones:", zones["kind"].value_counts().to_dict())

with rasterio.open(ORTHO_1) as src:
    img = src.read(out_shape=(3, src.height // 4, src.width // 4))
    extent = (src.bounds.left, src.bounds.right, src.bounds.bottom, src.bounds.top)
fig, ax = plt.subplots(figsize=(8, 8))
ax.imshow(np.moveaxis(img, 0, -1), extent=extent)
for kind, grp in zones.groupby("kind"):
    grp.plot(ax=ax, color=ZONE_COLOURS.get(kind, "grey"), alpha=0.35, edgecolor="none")
parcels.boundary.plot(ax=ax, color="#00e5ff", lw=1)
dets_1.boundary.plot(ax=ax, color=[CLASS_COLOURS.get(c, "red") for c in dets_1["class_name"]], lw=1)
handles = [plt.Rectangle((0, 0), 1, 1, color=ZONE_COLOURS.get(k, "grey"), alpha=0.5, label=k) for k in sorted(zones["kind"].unique())]
handles.append(plt.Line2D([], [], color="#00e5ff", label="parcel"))
ax.legend(handles=handles, loc="lower right")
ax.set_title("zones (filled), parcels (cyan), detections")
parcels.drop(columns="geometry").head()'''),
        new_markdown_cell("""\
## 5 · Findings with their reasons (`pipeline.cases.match.find_violations`)
Every detection that breaks a rule of `config/rules.yaml`, with the rule ids, the numbers
that fired them (`reasons`), its parcel, the zone overlaps, category and priority."""),
        new_code_cell('''\
from pipeline.cases.match import find_violations
from pipeline.core.rules import load_rules

rules = load_rules(settings.rules_path)
findings = find_violations(dets_1, parcels, zones, rules)
print(len(findings), "findings of", len(dets_1), "detections:", findings["category"].value_counts().to_dict())
view = findings.assign(
    reasons_text=findings["reasons"].map(lambda r: "；".join(v["text"] for v in r.values() if isinstance(v, dict))))
view = view.sort_values("priority", ascending=False)
view[["class_name", "area_m2", "category", "rules", "priority", "priority_level", "parcel_id", "owner", "reasons_text"]].head(12)'''),
        new_code_cell('''\
# the full reasons of the top finding: each rule with the numbers behind it
print(json.dumps(view["reasons"].iloc[0], ensure_ascii=False, indent=2))'''),
        new_markdown_cell("""\
## 6 · Flights → cases (`pipeline.process.run.register_flight`, `process_flight`)
`process_flight` runs detect → match → track for one registered flight and writes detections,
cases and their events in one store transaction. Between the two flights a simulated officer
works the cases as a field check against the truth would (`pipeline.cli.demo.officer_actions_from_truth`):
illegal ones are verified and ordered, lawful ones dismissed. The second flight then finds new
builds (新建), sees ordered structures again, or sees them gone (demolition seen)."""),
        new_code_cell('''\
from pipeline.cli.demo import officer_actions_from_truth
from pipeline.detection.detectors import TruthTileDetector
from pipeline.process.run import process_flight, register_flight
from pipeline.store import open_store

store = open_store(settings.store.url, settings.store.crs, case_prefix=settings.district.case_prefix)
store.migrate()
with store.transaction():
    store.import_parcels(parcels, replace=True)
    store.import_zones(zones, replace=True)
# the model, or the truth layer through the same tiles (a stand-in when no weights are shipped)
tiles = detector if DETECTIONS == "model" else TruthTileDetector(VECTORS, settings.detector.classes)
for ep in meta["epochs"]:
    flight = register_flight(store, DISTRICT / ep["ortho"], settings, team="巡查一队")
    res = process_flight(store, flight["flight_id"], settings, detector=tiles, progress=False)
    print(f"epoch {ep['epoch']}: flight {res.flight_id}: {res.detections} detections, "
          f"{res.findings} findings, {res.new_cases} new cases, {res.events} events")
    acted = officer_actions_from_truth(store, truth_all[truth_all["epoch"] == ep["epoch"]], rules)
    print("   simulated officer:", acted or "nothing to do")'''),
        new_markdown_cell("""\
## 7 · The case table (台账) (`pipeline.report.lists.case_table`)
One row per case with display labels (Chinese by default, `report.language`); the same
table goes to xlsx / csv / GeoJSON / KML with `patrol cases export`."""),
        new_code_cell('''\
from pipeline.report.lists import case_table

cases = store.cases()
print(len(cases), "cases:", cases["status"].value_counts().to_dict())
case_table(cases, settings.report.language, rules, store.crs).iloc[:, :16].head(15)'''),
        new_code_cell('''\
# the append-only history of one case
store.events(cases["case_no"].iloc[0])'''),
        new_markdown_cell("""\
## 8 · The map (`pipeline.report.map.build_map`)
The offline folium map: every script and style is inlined (no CDN), the orthophoto is a PNG
beside the page. Layers: orthophotos per flight, footprints, zones, parcels, detections by
class, cases by category coloured by status, with popups holding the reasons."""),
        new_code_cell(INLINE_MAP),
        new_code_cell('''\
from pipeline.report.map import build_map

page = build_map(store, settings, WORK / "map" / "map_district.html", rules=rules)
print("written:", page)
show_map(page)'''),
        new_code_cell('''\
store.close()'''),
    ]


def nb02() -> list:
    return [
        new_markdown_cell("""\
# 02 · Review in Python: filter, look, decide, export

What an officer (执法人员) does on the review page, done in Python: filter the cases, look at
the before/after chips (前时相/后时相), move cases through the lifecycle with notes, then export
the case list and the campaign statistics. A small generated district (120 m, two flights)
stands in for a night's processing; its truth layer stands in for the detector."""),
        new_code_cell(SETUP.format(name="02_review")),
        new_code_cell(DISTRICT.format(seed=11, size=120)),
        new_code_cell('''\
# the nightly run, in short: registry in, both flights processed (see 01_walkthrough)
from pipeline.detection.detectors import TruthTileDetector
from pipeline.ingest.parcels import import_registry
from pipeline.core.rules import load_rules
from pipeline.process.run import process_flight, register_flight
from pipeline.store import open_store

rules = load_rules(settings.rules_path)
truth = TruthTileDetector(VECTORS, settings.detector.classes)
store = open_store(settings.store.url, settings.store.crs, case_prefix=settings.district.case_prefix)
import_registry(store, VECTORS, replace=True)
for ep in meta["epochs"]:
    flight = register_flight(store, DISTRICT / ep["ortho"], settings, team="巡查一队")
    res = process_flight(store, flight["flight_id"], settings, detector=truth, progress=False)
    print(f"epoch {ep['epoch']}: {res.new_cases} new cases")
flights = store.list_flights()
flights[["flight_id", "captured_at", "team", "status", "model_version"]]'''),
        new_markdown_cell("""\
## 1 · Filter the cases
`store.cases(status=…, category=…, town=…, village=…, since=…, until=…)` filters in the store;
anything else (flags, area, farmland overlap) is plain pandas on the GeoDataFrame."""),
        new_code_cell('''\
cases = store.cases(status="suspected")
print(len(cases), "suspected cases;", cases["category"].value_counts().to_dict())
print("by village:", cases.groupby(["town", "village"]).size().to_dict())
cols = ["case_no", "category", "stock", "detector_class", "area_m2", "village", "owner", "flags",
        "basic_farmland_m2", "first_seen_at", "last_seen_at"]
cases[cols].head(10)'''),
        new_code_cell('''\
# new builds (新建) found by the second flight, and anything on basic farmland (占永农), largest first
new = cases[cases["stock"] == "new_build"]
on_bf = cases[cases["basic_farmland_m2"].fillna(0) > 0]
print(len(new), "new builds;", len(on_bf), "on basic farmland")
land_use = store.cases(status="suspected", category="illegal_land_use").sort_values("area_m2", ascending=False)
land_use[cols].head(5)'''),
        new_markdown_cell("""\
## 2 · Before / after chips (`pipeline.report.evidence.make_chips`)
One chip per case and per flight covering it, the case outlined; recorded as evidence
(case, flight, role before/after, file hash, capture time, GSD) in the store."""),
        new_code_cell('''\
from pipeline.report.evidence import make_chips

evidence = make_chips(store, cases, flights, WORK / "review", settings.report.chip_margin_m, progress=False)
print(len(evidence), "chips;", evidence["role"].value_counts().to_dict())
pairs = evidence.groupby("case_no").filter(lambda g: set(g["role"]) == {"before", "after"})
shown = (new if len(new) else cases)["case_no"]
shown = [c for c in shown if c in set(pairs["case_no"])][:3] or list(evidence["case_no"].unique()[:3])
fig, axes = plt.subplots(len(shown), 2, figsize=(8, 4 * len(shown)), squeeze=False)
for row, case_no in zip(axes, shown):
    ev = evidence[evidence["case_no"] == case_no].sort_values("captured_at")
    for ax, (_, r) in zip(row, ev.iterrows()):
        ax.imshow(plt.imread(r["chip_path"]))
        ax.set_title(f"{case_no} · {r['role']} · {str(r['captured_at'])[:10]}")
    for ax in row:
        ax.axis("off")
plt.tight_layout()'''),
        new_markdown_cell("""\
## 3 · Decide: change statuses with notes (`pipeline.cases.casework.change_status`)
Every change is checked against the lifecycle table of `config/rules.yaml` and written with a
case_event (who, when, from, to, note) in one transaction; history is append-only.
`stopped` and `filed` may be skipped (they are `optional` in the table)."""),
        new_code_cell('''\
from pipeline.core.errors import TransitionError
from pipeline.cases.casework import assign_case, change_status

lc = rules.lifecycle
first, *rest = list(cases.sort_values("area_m2", ascending=False)["case_no"])
assign_case(store, first, "李执法", actor="王科长")
change_status(store, first, "verified", "李执法", "现场核查：未批先建，确认违法", lc)
change_status(store, first, "ordered", "李执法", "下达限期拆除通知书", lc,
              order_no="责改字〔2025〕第018号")      # deadline: lifecycle.order_deadline_days later
if rest:
    change_status(store, rest[0], "lawful", "李执法", "已补办手续，合法", lc)
if len(rest) > 1:
    change_status(store, rest[1], "false_positive", "李执法", "现场为临时堆放物，误报", lc)
try:                                   # not allowed by the table: one clear line, nothing written
    change_status(store, first, "closed", "李执法", "直接销号", lc)
except TransitionError as e:
    print("refused:", e)
store.cases()[lambda d: d["case_no"].isin([first, *rest[:2]])][["case_no", "status", "assignee", "order_no", "deadline"]]'''),
        new_code_cell('''\
store.events(first)[["at", "actor", "from_status", "to_status", "note"]]'''),
        new_markdown_cell("""\
## 4 · Export the list and the statistics
`export_cases` writes xlsx (with chip thumbnails), csv (UTF-8 with BOM for Excel), GeoJSON,
KML/KMZ (Google Earth, 奥维互动地图) or GeoPackage (QGIS). `campaign_stats` gives the figures
reported upward: found, verified, ordered, demolished, closed, 整改率 and 销号率, by village and month."""),
        new_code_cell('''\
from pipeline.report.lists import export_cases

out = WORK / "export"
ordered = store.cases(status=["verified", "ordered"])
paths = [export_cases(store.cases(), out / "cases_all.xlsx", lang="zh", rules=rules, evidence=evidence, crs=store.crs),
         export_cases(ordered, out / "cases_ordered.csv", lang="zh", rules=rules, crs=store.crs),
         export_cases(store.cases(), out / "cases_all.kml", lang="zh", rules=rules, crs=store.crs)]
for path in paths:
    print(path.name, path.stat().st_size, "bytes")
pd.read_csv(out / "cases_ordered.csv", encoding="utf-8-sig").iloc[:, :10]'''),
        new_code_cell('''\
from pipeline.report.stats import campaign_stats, stats_markdown, write_stats_png

st = campaign_stats(store, rules)
display(Markdown(stats_markdown(st, settings.report.language, settings.district.name)))
png = write_stats_png(st, out / "stats.png", settings.report.language)
Image(filename=str(png))'''),
        new_code_cell('''\
store.close()'''),
    ]


def nb03() -> list:
    return [
        new_markdown_cell("""\
# 03 · Model evaluation on held-out scenes

The shipped detector (`detector.model`, default `models/lianwei-yolo11n.onnx`) on a generated
district it has never seen (seed ≥ 1 000 000; training used render_scene seeds 1–128):
per-class precision–recall curves, the confusion matrix, a gallery of false positives and
misses, and recall by flight GSD and by structure size. Detections are matched one-to-one to
the truth footprints at IoU ≥ 0.5 (`pipeline.model.evaluate.match_footprints`). The district is
small so that the notebook runs in under a minute: its figures show the method and the kind of
errors, not numbers to quote (the model card's come from `patrol evaluate`).

For the YOLO metrics (mAP50, mAP50-95 on rendered chips) run
`patrol evaluate --scenes 20 --report eval.md`; on a real flight with footprints,
`patrol evaluate --ortho FLIGHT.tif --truth FOOTPRINTS.gpkg`."""),
        new_code_cell(SETUP.format(name="03_model_evaluation")),
        new_code_cell('''\
from pipeline.detection.detect import Detector, detect_ortho
from pipeline.core.errors import ModelError
from pipeline.model.evaluate import clip_truth, match_footprints, report_markdown, score

MODEL = settings.model_path
if not MODEL.is_file():
    raise ModelError(f"no detector weights at {MODEL}; train and ship a model (patrol train --ship) "
                     f"or set PATROL__DETECTOR__MODEL to .pt/.onnx weights")
CONF = settings.detector.confidence                 # the operating point of the nightly run
low = load_settings(overrides={"store.url": settings.store.url, "detector.model": str(MODEL),
                               "detector.confidence": 0.05})   # low threshold: the whole PR curve
detector = Detector.from_settings(low)
CLASSES = list(settings.detector.classes)
print("model:", MODEL.name, "· classes:", CLASSES, "· operating confidence:", CONF)'''),
        new_code_cell('''\
from pipeline.synth import generate_district

SEED, SIZE = 1_000_005, 108        # 108 m: 2 x 2 tiles of 640 px at 0.10 m; 13 structures of all four classes
GSDS = [0.05, 0.10, 0.20]          # flight GSDs to compare; the tiler resamples each to processing.gsd_m
runs = {}
for gsd in GSDS:
    d = WORK / f"heldout_{SEED}_{SIZE}m_{gsd:.2f}"
    if not (d / "district.json").exists():
        generate_district(d, seed=SEED, size_m=SIZE, epochs=1, gsd_m=gsd, progress=False)
    foot = gpd.read_file(d / "district.gpkg", layer="footprints").geometry.iloc[0]
    truth = clip_truth(gpd.read_file(d / "district.gpkg", layer="truth"), foot)
    pred = detect_ortho(d / "epoch_1.tif", low, detector=detector, progress=False)
    runs[gsd] = {"dir": d, "truth": truth.reset_index(drop=True), "pred": pred}
    print(f"GSD {gsd:.2f} m: {len(truth)} true structures, {len(pred)} detections at confidence >= 0.05")
main = runs[GSDS[0]]
truth, pred = main["truth"], main["pred"]'''),
        new_markdown_cell("""\
## 1 · Figures at the operating confidence (`pipeline.model.evaluate.score`)"""),
        new_code_cell('''\
metrics = score(pred[pred["confidence"] >= CONF], truth, iou=0.5)
display(Markdown(report_markdown(metrics, f"{MODEL.name} on held-out district seed {SEED}")))'''),
        new_markdown_cell("""\
## 2 · Precision–recall per class
Each class's detections, best confidence first, matched to that class's truth at IoU ≥ 0.5;
AP is the area under the interpolated curve (all points)."""),
        new_code_cell('''\
def pr_curve(p: gpd.GeoDataFrame, t: gpd.GeoDataFrame, iou: float = 0.5):
    p = p.sort_values("confidence", ascending=False)
    pi, _, _ = match_footprints(p.geometry.to_numpy(), t.geometry.to_numpy(), iou)
    hit = np.zeros(len(p), bool)
    hit[pi] = True
    tp = np.cumsum(hit)
    precision = tp / np.arange(1, len(p) + 1)
    recall = tp / max(len(t), 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(p) else precision
    ap = float(np.sum(np.diff(np.concatenate([[0], recall])) * envelope)) if len(p) else 0.0
    return recall, precision, p["confidence"].to_numpy(), ap


fig, ax = plt.subplots(figsize=(6, 5))
for cls in CLASSES:
    t_c, p_c = truth[truth["class_name"] == cls], pred[pred["class_name"] == cls]
    if not len(t_c):
        continue
    r, pr, conf, ap = pr_curve(p_c, t_c)
    line, = ax.plot(r, pr, label=f"{cls} (n={len(t_c)}, AP50 {ap:.2f})")
    at = np.flatnonzero(conf >= CONF)
    if len(at):
        ax.plot(r[at[-1]], pr[at[-1]], "o", color=line.get_color())
ax.set_xlabel("recall")
ax.set_ylabel("precision")
ax.set_xlim(0, 1.02)
ax.set_ylim(0, 1.02)
ax.set_title(f"PR at IoU 0.5 (dots: confidence {CONF})")
ax.legend(loc="lower left", fontsize=8)
plt.tight_layout()'''),
        new_markdown_cell("""\
## 3 · Confusion matrix
Footprints matched regardless of class (IoU ≥ 0.5, operating confidence); rows are the true
class, columns the predicted one. `missed`: a true structure no detection matched;
`background`: a detection that matched no structure (false positive)."""),
        new_code_cell('''\
op = pred[pred["confidence"] >= CONF].reset_index(drop=True)
pi, ti, _ = match_footprints(op.geometry.to_numpy(), truth.geometry.to_numpy(), 0.5)
rows = list(truth["class_name"].iloc[ti]) + list(truth["class_name"].drop(index=ti)) + ["background"] * (len(op) - len(pi))
cols = list(op["class_name"].iloc[pi]) + ["missed"] * (len(truth) - len(ti)) + list(op["class_name"].drop(index=pi))
cm = pd.crosstab(pd.Categorical(rows, CLASSES + ["background"]), pd.Categorical(cols, CLASSES + ["missed"]),
                 rownames=["true"], colnames=["predicted"], dropna=False)
fig, ax = plt.subplots(figsize=(6, 5))
ax.imshow(cm.to_numpy(), cmap="Blues")
ax.set_xticks(range(cm.shape[1]), cm.columns, rotation=30, ha="right")
ax.set_yticks(range(cm.shape[0]), cm.index)
for (i, j), v in np.ndenumerate(cm.to_numpy()):
    ax.text(j, i, v, ha="center", va="center", color="black")
ax.set_title("confusion matrix (counts)")
cm'''),
        new_markdown_cell("""\
## 4 · Gallery: false positives and misses
Chips cut from the held-out orthophoto with `pipeline.report.evidence.cut_chip` (the same
cutter as the evidence sheets): the structure in question outlined red, the others in yellow."""),
        new_code_cell('''\
import rasterio
from pipeline.report.evidence import cut_chip

false_pos = op.drop(index=pi).sort_values("confidence", ascending=False).head(4)
misses = truth.drop(index=ti).assign(area=lambda d: d.geometry.area).sort_values("area", ascending=False).head(4)
items = [("false positive", f"{r.class_name} {r.confidence:.2f}", r.geometry, truth.geometry) for r in false_pos.itertuples()]
items += [("miss", f"{r.class_name} {r.area:.0f} m²", r.geometry, op.geometry) for r in misses.itertuples()]
gallery = WORK / "gallery"
if items:
    rows = -(-len(items) // 4)
    fig, axes = plt.subplots(rows, 4, figsize=(12, 3.5 * rows), squeeze=False)
    with rasterio.open(main["dir"] / "epoch_1.tif") as src:
        for k, (ax, (kind, what, geom, others)) in enumerate(zip(axes.ravel(), items)):
            png = gallery / f"{k:02d}.png"
            context = list(others[others.intersects(geom.buffer(8))])
            cut_chip(src, geom, settings.store.crs, png, margin_m=6, outline=geom, context=context)
            ax.imshow(plt.imread(png))
            ax.set_title(f"{kind}\\n{what}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    plt.tight_layout()
print(len(op) - len(pi), "false positives,", len(truth) - len(ti), "misses at confidence", CONF)'''),
        new_markdown_cell("""\
## 5 · Recall by GSD and by structure size
The same district flown at several GSDs (the tiler resamples each to `processing.gsd_m`, so
coarser flights are upsampled and lose detail), and recall by true footprint area."""),
        new_code_cell('''\
by_gsd = []
for gsd, run in runs.items():
    m = score(run["pred"][run["pred"]["confidence"] >= CONF], run["truth"], iou=0.5)
    by_gsd.append({"flight GSD (m)": gsd, "recall": m["recall"], "precision": m["precision"], "F1": m["f1"],
                   "truth": m["n_truth"], "detections": m["n_pred"]})
by_gsd = pd.DataFrame(by_gsd)

area = truth.geometry.area.to_numpy()
found = np.zeros(len(truth), bool)
found[ti] = True
bins = [0, 30, 60, 90, 120, np.inf]
size = pd.cut(area, bins, labels=["<30", "30-60", "60-90", "90-120", ">=120"], right=False)
by_size = pd.DataFrame({"size (m²)": size, "found": found}).groupby("size (m²)", observed=False)["found"].agg(["mean", "size"])
by_size.columns = ["recall", "structures"]

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].plot(by_gsd["flight GSD (m)"], by_gsd["recall"], "o-", label="recall")
axes[0].plot(by_gsd["flight GSD (m)"], by_gsd["precision"], "s--", label="precision")
axes[0].set_xlabel("flight GSD (m)")
axes[0].set_ylim(0, 1.02)
axes[0].legend()
axes[0].set_title("by GSD")
axes[1].bar(by_size.index.astype(str), by_size["recall"].fillna(0))
for k, n in enumerate(by_size["structures"]):
    axes[1].text(k, 0.02, f"n={n}", ha="center")
axes[1].set_ylim(0, 1.02)
axes[1].set_xlabel("true footprint area (m²)")
axes[1].set_title(f"recall by size (flight GSD {GSDS[0]} m)")
plt.tight_layout()
display(by_gsd)
by_size'''),
    ]


NOTEBOOKS = {"01_walkthrough.ipynb": nb01, "02_review.ipynb": nb02, "03_model_evaluation.ipynb": nb03}


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=NOTEBOOKS[name]())
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"     # stable ids: no churn in diffs
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
                   "language_info": {"name": "python"}}
    return nb


def main() -> None:
    for name in NOTEBOOKS:
        nb = build(name)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
