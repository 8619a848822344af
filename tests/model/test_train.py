"""Training workflow: synthetic dataset build, real-flight import, footprint metrics, CLI JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import shapely.affinity
from shapely.geometry import box

from pipeline.model.dataset import CLASSES, build_dataset, chip_labels, import_labelled
from pipeline.model.evaluate import match_footprints, score


def read_labels(path: Path) -> np.ndarray:
    """YOLO-OBB rows: class x1 y1 x2 y2 x3 y3 x4 y4 (normalised corners)."""
    rows = [list(map(float, line.split())) for line in path.read_text().splitlines() if line.strip()]
    return np.array(rows).reshape(-1, 9)


def check_yolo_dir(root: Path, split: str) -> int:
    """Every chip has a label file with valid OBB rows (corners inside the chip)."""
    imgs = sorted((root / "images" / split).glob("*.jpg"))
    n = 0
    for img in imgs:
        lab = root / "labels" / split / (img.stem + ".txt")
        assert lab.is_file(), lab
        rows = read_labels(lab)
        if len(rows):
            assert set(rows[:, 0].astype(int)) <= set(range(len(CLASSES)))
            assert (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()
            for r in rows:
                quad = shapely.Polygon(r[1:].reshape(4, 2))
                # a rectangle, except where a corner was cut back to the chip edge
                assert quad.is_valid and quad.area > 0
        n += len(rows)
    return n


# ---------------------------------------------------------------- synthetic build
def test_dataset_build_splits_by_scene(tmp_path):
    out = tmp_path / "ds"
    res = build_dataset(out, scenes=2, val_scenes=1, seed=11, size_m=40.0, chip_px=160, progress=False)
    assert res["train_seeds"] == [11, 12] and res["val_seeds"] == [13]
    assert res["train"].chips > 0 and res["val"].chips > 0
    assert check_yolo_dir(out, "train") == res["train"].boxes > 0
    assert check_yolo_dir(out, "val") == res["val"].boxes
    scenes = {split: {p.name.split("_")[0] for p in (out / "images" / split).glob("*.jpg")}
              for split in ("train", "val")}
    assert scenes["train"] == {"syn0000011", "syn0000012"}
    assert scenes["val"] == {"syn0000013"}
    assert not scenes["train"] & scenes["val"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["synthetic"] == {"train": [11, 12], "val": [13]}
    data = (out / "data.yaml").read_text()
    assert "images/train" in data and "steel_shed" in data
    # the same seeds cannot be added again to the same dataset
    from pipeline.core.errors import ConfigError
    with pytest.raises(ConfigError):
        build_dataset(out, scenes=1, val_scenes=0, seed=12, size_m=40.0, chip_px=160, progress=False)


def test_coarse_scenes_are_rendered_coarse_and_resampled_to_the_processing_gsd(tmp_path):
    """`render_chips(coarse=…)` (`patrol dataset build --coarse`): a scene drawn at a 0.25 m native
    GSD comes out at 0.10 m like a coarse survey through the tiler: the same chip grid and objects
    as the scene drawn at 0.10 m, but blurred (far less fine detail)."""
    import cv2

    from pipeline.model.dataset import render_chips, write_data_yaml
    out = {}
    for name, coarse in (("sharp", None), ("coarse", (1.0, 0.25, 0.25))):
        d = tmp_path / name
        write_data_yaml(d)
        st = render_chips(21, d, "train", 64.0, 320, (0.10, 0.10), coarse=coarse)
        chips = sorted((d / "images" / "train").glob("*.jpg"))
        detail = np.mean([cv2.Laplacian(cv2.imread(str(c), cv2.IMREAD_GRAYSCALE), cv2.CV_64F).var() for c in chips])
        out[name] = (st.chips, st.boxes, [c.name for c in chips], detail)
    (n_s, boxes_s, names_s, detail_s), (n_c, boxes_c, names_c, detail_c) = out["sharp"], out["coarse"]
    assert n_s == n_c > 0 and names_s == names_c and boxes_c == boxes_s > 0
    assert detail_c < 0.5 * detail_s, (detail_c, detail_s)


# ---------------------------------------------------------------- real import
def _bright_rect_ortho(make_raster, name, crs, origin, res, rect_px, alpha_mask=None, res_y=None,
                       size=(200, 200)):
    w, h = size
    data = np.full((3, h, w), 60, np.uint8)
    c0, r0, c1, r1 = rect_px
    data[:, r0:r1, c0:c1] = 240
    return make_raster(name, width=w, height=h, res=res, res_y=res_y, crs=crs, origin=origin, data=data,
                       alpha=alpha_mask is not None, mask=alpha_mask)


def _rect_polygon(origin, res, res_y, rect_px):
    c0, r0, c1, r1 = rect_px
    x0, y0 = origin
    return box(x0 + c0 * res, y0 - r1 * res_y, x0 + c1 * res, y0 - r0 * res_y)


def _chip_box_pixels(out: Path, split: str = "train"):
    """(chip image, (x0, y0, x1, y1) pixel bounds of the oriented box) of every label."""
    import cv2
    found = []
    for lab in sorted((out / "labels" / split).glob("*.txt")):
        rows = read_labels(lab)
        img = cv2.imread(str(out / "images" / split / (lab.stem + ".jpg")))
        H, W = img.shape[:2]
        for r in rows:
            xy = r[1:].reshape(4, 2) * (W, H)
            found.append((img, (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max())))
    return found


def test_import_geographic_ortho(make_raster, tmp_path):
    import geopandas as gpd
    # ~0.1 m pixels at 30°N: 1e-6° lon ≈ 0.0964 m, 0.9e-6° lat ≈ 0.0998 m
    origin, rx, ry = (114.0, 30.0), 1.0e-6, 0.9e-6
    rect = (60, 50, 120, 90)  # 60 x 40 px ≈ 5.8 m x 4.0 m
    ortho = _bright_rect_ortho(make_raster, "geo.tif", "EPSG:4326", origin, rx, rect, res_y=ry)
    labels = tmp_path / "labels.geojson"
    gpd.GeoDataFrame({"class_name": ["steel_shed"]}, geometry=[_rect_polygon(origin, rx, ry, rect)],
                     crs="EPSG:4326").to_file(labels)
    out = tmp_path / "ds"
    st = import_labelled(ortho, labels, out, gsd_m=0.1, chip_px=256, split="train")
    assert st.chips >= 1 and st.boxes == 1 and st.per_class["steel_shed"] == 1
    (img, (x0, y0, x1, y1)), = _chip_box_pixels(out)
    # resampled to 0.1 m ground pixels: the box is the shed's ground size in decimetres
    assert abs((x1 - x0) - 57.8) < 3 and abs((y1 - y0) - 39.9) < 3
    inner = img[int(y0) + 3:int(y1) - 3, int(x0) + 3:int(x1) - 3]
    assert inner.mean() > 200  # the box sits on the bright roof
    assert img[:, :int(x0) - 4].mean() < 100


def test_import_web_mercator_rgba_skips_nodata(make_raster, tmp_path):
    import geopandas as gpd
    from pyproj import Transformer
    # EPSG:3857 at 60°N: map units are twice the ground metres (cos 60° = 0.5)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(25.0, 60.0)
    origin, res = (x, y), 0.2  # 0.2 map units = 0.1 m on the ground
    w, h = 600, 300
    alpha = np.ones((h, w), bool)
    alpha[:, 300:] = False  # right half missing (alpha 0)
    rect = (100, 100, 180, 160)  # 80 x 60 px = 8 m x 6 m on the ground
    ortho = _bright_rect_ortho(make_raster, "merc.tif", "EPSG:3857", origin, res, rect,
                               alpha_mask=alpha, size=(w, h))
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"note": ["a", "b"]},
                     geometry=[_rect_polygon(origin, res, res, rect),
                               _rect_polygon(origin, res, res, (400, 100, 480, 160))],  # in no-data
                     crs="EPSG:3857").to_crs("EPSG:4326").to_file(labels)
    out = tmp_path / "ds"
    st = import_labelled(ortho, labels, out, gsd_m=0.1, chip_px=256, split="val")
    assert st.footprints == 2
    # only chips over the valid half are written (300 px valid of 600 → about half the chips)
    names = [p.stem for p in (out / "images" / "val").glob("*.jpg")]
    assert names and all(int(n.rsplit("_c", 1)[1]) + 256 <= 300 + 64 for n in names)
    boxes = _chip_box_pixels(out, "val")
    assert len(boxes) >= 1
    for img, (x0, y0, x1, y1) in boxes:
        assert img[int(y0) + 3:int(y1) - 3, int(x0) + 3:int(x1) - 3].mean() > 200
    full = [b for _, b in boxes if b[2] - b[0] > 70]
    assert full, "the whole roof appears in some chip"
    x0, y0, x1, y1 = full[0]
    assert abs((x1 - x0) - 80) < 3 and abs((y1 - y0) - 60) < 3  # ground metres, not map units


def test_chip_labels_drop_slivers_and_keep_orientation():
    tilted = shapely.affinity.rotate(box(10, 10, 20, 14), 30, origin="centroid")
    polys = np.array([box(0, 0, 10, 10), box(31.8, 0, 41.8, 10), box(5, 20, 60, 30), tilted], dtype=object)
    rows = chip_labels(polys, np.array([0, 1, 3, 2]), (0.0, 0.0, 32.0, 32.0), gsd_m=0.1, chip_px=320)
    # the 0.2 m sliver of the second is dropped; the big third one (partly inside) is kept, clipped
    assert sorted(rows[:, 0].astype(int).tolist()) == [0, 2, 3]
    third = rows[rows[:, 0] == 3][0][1:].reshape(4, 2)
    assert abs(third[:, 0].max() - 1.0) < 1e-6 and abs(third[:, 0].min() - 5 / 32) < 1e-6
    # the tilted roof keeps its own rectangle (10 m x 4 m = 4000 px² at 0.1 m), not its 30° envelope
    quad = shapely.Polygon(rows[rows[:, 0] == 2][0][1:].reshape(4, 2) * 320)
    assert abs(quad.area - 4000) < 40


def test_import_rejects_bad_inputs(tmp_path, make_raster):
    from pipeline.core.errors import InputError
    ortho = make_raster("a.tif", width=64, height=64)
    with pytest.raises(InputError, match="not found"):
        import_labelled(ortho, tmp_path / "missing.geojson", tmp_path / "ds")


# ---------------------------------------------------------------- metrics
def test_match_is_one_to_one_at_iou():
    truth = np.array([box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)], dtype=object)
    pred = np.array([box(0, 0, 10, 9),      # IoU 0.9 with truth 0
                     box(0.5, 0, 10, 10),   # duplicate of truth 0: only one may match
                     box(20, 0, 26, 10),    # IoU 0.6 with truth 1
                     box(40, 0, 44, 10),    # IoU 0.4 with truth 2: no match
                     box(100, 0, 110, 10)], dtype=object)
    pi, ti, ious = match_footprints(pred, truth, 0.5)
    assert sorted(zip(pi.tolist(), ti.tolist())) == [(1, 0), (2, 1)] or \
        sorted(zip(pi.tolist(), ti.tolist())) == [(0, 0), (2, 1)]
    assert len(set(ti.tolist())) == len(ti)


def test_score_counts_and_classes():
    import geopandas as gpd
    truth = gpd.GeoDataFrame({"class_name": ["building", "building", "steel_shed", "greenhouse"]},
                             geometry=[box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10),
                                       box(60, 0, 70, 10)], crs="EPSG:32650")
    pred = gpd.GeoDataFrame({"class_name": ["building", "steel_shed", "steel_shed", "building"],
                             "confidence": [0.9, 0.8, 0.7, 0.6]},
                            geometry=[box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10),
                                      box(200, 0, 210, 10)], crs="EPSG:32650")
    m = score(pred, truth)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 1, 1)
    assert m["precision"] == 0.75 and m["recall"] == 0.75 and m["f1"] == 0.75
    assert m["per_class"]["building"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "tp": 1, "fp": 1, "fn": 1}
    assert m["per_class"]["steel_shed"]["tp"] == 1 and m["per_class"]["steel_shed"]["fp"] == 1
    assert m["per_class"]["greenhouse"]["fn"] == 1
    only = score(pred, truth, classes=["building"])
    assert (only["tp"], only["fp"], only["fn"]) == (1, 1, 1)  # building detections vs building truth
    # a truth file without classes: every detection may match any footprint
    m2 = score(pred, truth[["geometry"]].to_crs("EPSG:4326"))
    assert (m2["tp"], m2["fp"], m2["fn"]) == (3, 1, 1)


def test_coverage_counts_footprints_drawn_as_parts():
    """One detection over a house mapped as two parts finds both parts (IoU 0.5 finds neither)."""
    import geopandas as gpd
    truth = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10), box(10, 0, 20, 10), box(40, 0, 50, 10),
                                       box(60, 0, 70, 10)], crs="EPSG:32650")
    pred = gpd.GeoDataFrame({"class_name": ["building"] * 3, "confidence": [0.9] * 3},
                            geometry=[box(0, 0, 21, 10),      # over both parts
                                      box(40, 0, 44, 10),     # 40 % of the third footprint: not found
                                      box(100, 0, 110, 10)],  # on nothing
                            crs="EPSG:32650")
    m = score(pred, truth)
    assert m["tp"] == 0
    cov = m["coverage"]
    assert (cov["found"], cov["on_target"]) == (2, 2)
    assert cov["found_recall"] == 0.5 and cov["on_target_precision"] == round(2 / 3, 4)
    assert cov["split"] == 0


def test_a_house_returned_as_two_structures_counts_as_split():
    """An L-shaped house found as its two wings (two cases for one house) is a split footprint; a
    box over the whole house and a small shed beside it that touches the house are not."""
    import geopandas as gpd
    from shapely.geometry import Polygon
    ell = Polygon([(0, 0), (20, 0), (20, 8), (8, 8), (8, 18), (0, 18)])
    truth = gpd.GeoDataFrame(geometry=[ell, box(40, 0, 50, 10)], crs="EPSG:32650")
    wings = gpd.GeoDataFrame({"class_name": ["building"] * 2, "confidence": [0.9] * 2},
                             geometry=[box(0, 0, 20, 8), box(0, 8, 8, 18)], crs="EPSG:32650")
    whole = gpd.GeoDataFrame({"class_name": ["building"] * 3, "confidence": [0.9] * 3},
                             geometry=[box(0, 0, 20, 18), box(40, 0, 50, 10), box(19, 0, 23, 4)], crs="EPSG:32650")
    split = score(wings, truth)["coverage"]
    assert (split["split"], split["split_share"]) == (1, 0.5)
    assert score(whole, truth)["coverage"]["split"] == 0


def test_adjoining_houses_returned_as_one_structure_count_as_merged():
    """Three houses wall to wall found as one box (one case for three houses) are merged footprints,
    even though the box covers each of them; a box per house, or one box over a house and the
    corner of its neighbour, merge nothing."""
    import geopandas as gpd
    row = [box(0, 0, 6, 9), box(6, 0, 13, 9), box(13, 0, 18, 9)]
    truth = gpd.GeoDataFrame(geometry=row + [box(40, 0, 50, 10)], crs="EPSG:32650")

    def dets(geoms):
        return gpd.GeoDataFrame({"class_name": ["building"] * len(geoms), "confidence": [0.9] * len(geoms)},
                                geometry=geoms, crs="EPSG:32650")
    one_box = score(dets([box(0, 0, 18, 9), box(40, 0, 50, 10)]), truth)
    assert (one_box["coverage"]["merged"], one_box["coverage"]["merged_share"]) == (3, 0.75)
    assert one_box["coverage"]["found"] == 4 and one_box["tp"] == 1           # found, but not matched at IoU 0.5
    each = score(dets(row + [box(40, 0, 50, 10)]), truth)["coverage"]
    corner = score(dets([box(0, 0, 8, 9), box(40, 0, 50, 10)]), truth)["coverage"]
    assert each["merged"] == 0 and corner["merged"] == 0 and each["split"] == 0


# ---------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """A yolo11n with random weights (no detections above the threshold), built offline."""
    from pipeline.detection.detect import offline_ultralytics
    offline_ultralytics()
    from ultralytics import YOLO
    path = tmp_path_factory.mktemp("model") / "untrained.pt"
    from ultralytics.nn.tasks import DetectionModel
    yolo = YOLO("yolo11n.yaml")
    yolo.model = DetectionModel("yolo11n.yaml", nc=len(CLASSES), verbose=False)
    yolo.model.names = dict(enumerate(CLASSES))
    yolo.save(str(path))
    return path


def test_cli_evaluate_json(make_raster, tmp_path, untrained_model):
    import geopandas as gpd

    from pipeline.cli import main
    origin, res = (500000.0, 3400000.0), 0.1
    ortho = _bright_rect_ortho(make_raster, "utm.tif", "EPSG:32650", origin, res, (40, 40, 120, 100))
    truth = tmp_path / "truth.geojson"
    gpd.GeoDataFrame({"osm_id": [1, 2]}, geometry=[_rect_polygon(origin, res, res, (40, 40, 120, 100)),
                                                   _rect_polygon(origin, res, res, (150, 150, 190, 190))],
                     crs="EPSG:32650").to_crs("EPSG:4326").to_file(truth)
    out = tmp_path / "m.json"
    rep = tmp_path / "m.md"
    rc = main(["--set", "detector.confidence=0.99", "evaluate", "--ortho", str(ortho), "--truth", str(truth),
               "--model", str(untrained_model), "--json", str(out), "--report", str(rep)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert {"precision", "recall", "f1", "tp", "fp", "fn"} <= set(m)
    assert m["tp"] + m["fn"] == 2 and m["tp"] + m["fp"] == m["n_pred"]
    assert "| all (class-agnostic) |" in rep.read_text()
    assert main(["evaluate", "--ortho", str(ortho)]) == 2  # missing --truth: one-line error


@pytest.mark.slow
def test_training_from_a_pretrained_start_survives_being_stopped_and_resumes(tmp_path):
    """`patrol train --pretrained` from a detection checkpoint of another task (here an 80-class
    yolo11n with random weights, standing for the COCO file no test may need): backbone, neck and box
    outputs transfer, the class and angle outputs start fresh; killed after its first epoch, the run
    goes on with `--resume` and finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    import yaml
    from ultralytics.nn.tasks import DetectionModel

    from pipeline.model.dataset import build_dataset
    from pipeline.model.train import TRAIN_CONFIG

    start = tmp_path / "other-task.pt"
    torch.save({"model": DetectionModel("yolo11n.yaml", nc=80, verbose=False).half()}, start)
    build_dataset(tmp_path / "ds", scenes=4, val_scenes=1, seed=7_300_001, size_m=48, chip_px=160, progress=False)
    cfg = yaml.safe_load(TRAIN_CONFIG.read_text(encoding="utf-8"))
    cfg.update(project=str(tmp_path / "runs"), name="r", imgsz=160, batch=4, workers=0, cache=False, epochs=4,
               warmup_epochs=0, close_mosaic=0)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    patrol = [sys.executable, "-m", "pipeline.cli", "train", "--train-config", str(tmp_path / "train.yaml")]
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "runs" / "r"
    proc = subprocess.Popen([*patrol, "--data", str(tmp_path / "ds"), "--pretrained", str(start)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        # epoch0.pt is written after last.pt: the first epoch's checkpoint is complete
        while not (run / "weights" / "epoch0.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        proc.send_signal(signal.SIGKILL)                     # stopped hard after its first epoch
    finally:
        proc.wait(timeout=60)
    transfer = json.loads((run / "pretrained.json").read_text())
    assert (transfer["transferred"], transfer["total"]) == (448, 541)
    assert transfer["fresh"] == ["model.23.cv3", "model.23.cv4"] and len(transfer["sha256"]) == 64
    rows = (run / "results.csv").read_text().splitlines()[1:]
    assert 1 <= len(rows) < 4, rows
    done = subprocess.run([*patrol, "--resume", "--name", "r"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert [int(r.split(",")[0]) for r in (run / "results.csv").read_text().splitlines()[1:]] == [1, 2, 3, 4]
    assert torch.load(run / "weights" / "last.pt", weights_only=False)["epoch"] == -1      # finished
    bad = subprocess.run([*patrol, "--data", str(tmp_path / "ds"), "--pretrained", str(tmp_path / "none.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: pretrained weights none.pt")
