"""The shipped detector on a small held-out generated scene (seed never used in training)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("PATROL_TEST_MODEL", ROOT / "models" / "lianwei-yolo11n.onnx"))
# Training used scene seeds 1-128 and 200000-201239 (models/lianwei-yolo11n.MODEL_CARD.md); these are far away.
HELD_OUT_SEEDS = (7_000_001, 7_000_002)

pytestmark = pytest.mark.skipif(not MODEL.is_file(),
                                reason=f"shipped model {MODEL} is absent (train and ship it first)")


def write_scene(scene, path: Path) -> Path:
    import rasterio
    h, w = scene.valid.shape
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                           crs=scene.crs, transform=scene.transform, tiled=True, blockxsize=256,
                           blockysize=256) as dst:
            dst.write(scene.rgb.transpose(2, 0, 1))
            dst.write_mask(scene.valid.astype(np.uint8) * 255)
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from pipeline.synth import Randomisation, render_scene
    out = []
    for seed in HELD_OUT_SEEDS:
        # the demo district's look, flown at 5 cm: the pipeline resamples to the 10 cm processing GSD
        scene = render_scene(seed, size_m=128.0, gsd_m=0.05, randomisation=Randomisation(nodata_edges=False))
        out.append((write_scene(scene, tmp_path_factory.mktemp("scene") / f"scene_{seed}.tif"), scene.truth))
    return out


@pytest.fixture(scope="module")
def measured(scenes):
    """Recall: buildings and steel sheds matched one-to-one at IoU 0.5 by a detection (any class;
    class mix-ups are a separate matter). False detections: detections that match no structure."""
    from pipeline.core.config import load_settings
    from pipeline.detection.detect import detect_ortho
    from pipeline.model.evaluate import score
    settings = load_settings(overrides={"detector.model": str(MODEL)})
    keep = ["building", "steel_shed"]
    tp = fn = fp = n_pred = 0
    for path, truth in scenes:  # scored one scene at a time (the scenes share coordinates)
        pred = detect_ortho(path, settings, store_crs=truth.crs.to_string(), progress=False)
        found = score(pred, truth[truth["class_name"].isin(keep)][["geometry"]], iou=0.5)
        real = score(pred, truth[["geometry"]], iou=0.5)
        tp, fn = tp + found["tp"], fn + found["fn"]
        fp, n_pred = fp + real["fp"], n_pred + len(pred)
    assert tp + fn >= 15, "the held-out scenes hold enough buildings and sheds to measure"
    return tp, fn, fp, n_pred


def test_finds_buildings_and_steel_sheds(measured):
    tp, fn, _, _ = measured
    recall = tp / (tp + fn)
    assert recall >= 0.90, f"recall {recall:.3f} (found {tp}, missed {fn})"


def test_false_detections_at_most_ten_percent(measured):
    _, _, fp, n_pred = measured
    false_share = fp / max(n_pred, 1)
    assert false_share <= 0.10, f"false detections {false_share:.3f} ({fp} of {n_pred})"


def test_the_int8_runtime_finds_what_fp32_finds_on_held_out_scenes(scenes):
    """`detector.runtime: int8` (the quantised copy beside the model) on the same held-out scenes:
    the same recall and false-detection bars as FP32."""
    from pipeline.core.config import load_settings
    from pipeline.detection.detect import detect_ortho
    from pipeline.model.evaluate import score
    settings = load_settings(overrides={"detector.model": str(MODEL), "detector.runtime": "int8"})
    if not settings.model_path.is_file():
        pytest.skip(f"{settings.model_path.name} not made (scripts/quantize_int8.py)")
    tp = fn = fp = n_pred = 0
    for path, truth in scenes:
        pred = detect_ortho(path, settings, store_crs=truth.crs.to_string(), progress=False)
        found = score(pred, truth[truth["class_name"].isin(["building", "steel_shed"])][["geometry"]], iou=0.5)
        fp, n_pred = fp + score(pred, truth[["geometry"]], iou=0.5)["fp"], n_pred + len(pred)
        tp, fn = tp + found["tp"], fn + found["fn"]
    assert tp / (tp + fn) >= 0.90 and fp / max(n_pred, 1) <= 0.10, (tp, fn, fp, n_pred)


def test_the_openvino_runtime_gives_the_boxes_onnxruntime_gives(scenes):
    """`detector.runtime: openvino` runs the same ONNX graph as `fp32` (the default, auto, picks the
    faster of the two on each machine): on the held-out
    scenes every box of one has its twin in the other, confidences within 0.01: nearly all at
    IoU ≥ 0.99, and a box joined across a tile seam at IoU ≥ 0.8 (float noise can move a piece
    across the merge's threshold: one box of 28, IoU 0.85, on an AMX Xeon)."""
    import shapely

    from pipeline.core.config import load_settings
    from pipeline.detection.detect import detect_ortho
    assert load_settings().detector.runtime == "auto"
    runs = {rt: load_settings(overrides={"detector.model": str(MODEL), "detector.runtime": rt})
            for rt in ("fp32", "openvino")}
    for path, truth in scenes:
        a, b = (detect_ortho(path, s, store_crs=truth.crs.to_string(), progress=False) for s in runs.values())
        assert len(a) == len(b) and len(a) > 10, (len(a), len(b))
        ga, gb = np.asarray(a.geometry.values), np.asarray(b.geometry.values)
        ia, ib = shapely.STRtree(gb).query(ga, predicate="intersects")
        inter = shapely.area(shapely.intersection(ga[ia], gb[ib]))
        iou = inter / (shapely.area(ga[ia]) + shapely.area(gb[ib]) - inter)
        best = pd.DataFrame({"a": ia, "b": ib, "iou": iou}).sort_values("iou").groupby("a").last()
        assert len(best) == len(a) and (best["iou"] >= 0.8).all(), best["iou"].min()
        assert (best["iou"] >= 0.99).mean() >= 0.95, best["iou"].describe()
        conf = np.abs(a["confidence"].to_numpy()[best.index] - b["confidence"].to_numpy()[best["b"]])
        assert conf.max() <= 0.01, conf.max()


def test_the_torch_free_onnx_path_gives_the_boxes_ultralytics_gives(scenes):
    """ONNX weights run without torch (pipeline.detection.yolo.OnnxYolo: numpy decoding, probabilistic-IoU
    fast NMS); ultralytics' own predictor on the same graph and tiles gives the same oriented boxes,
    confidences and classes."""
    import rasterio

    from pipeline.detection.yolo import MAX_DET, Detector, offline_ultralytics
    offline_ultralytics()
    from ultralytics import YOLO
    with rasterio.open(scenes[0][0]) as src:
        rgb = src.read([1, 2, 3]).transpose(1, 2, 0)[::2, ::2]  # 5 cm → the model's 10 cm
    tiles = [np.ascontiguousarray(rgb[r:r + 640, c:c + 640]) for r in (0, 640) for c in (0, 640)]
    for conf in (0.4, 0.05):
        ours = Detector(MODEL, ["building", "steel_shed", "under_construction", "greenhouse"],
                        confidence=conf, nms_iou=0.5, runtime="fp32").predict(tiles)
        theirs = YOLO(str(MODEL), task="obb").predict([t[..., ::-1] for t in tiles], imgsz=640, conf=conf,
                                                      iou=0.5, agnostic_nms=True, device="cpu",
                                                      max_det=MAX_DET, verbose=False)
        assert sum(len(q) for q, _, _ in ours) > 20
        for (quads, c, k), r in zip(ours, theirs):
            assert len(quads) == len(r.obb), (conf, len(quads), len(r.obb))
            assert np.allclose(quads, r.obb.xyxyxyxy.numpy(), atol=0.05)
            assert np.allclose(c, r.obb.conf.numpy(), atol=1e-5)
            assert np.array_equal(k, r.obb.cls.numpy().astype(int))


def test_the_real_imagery_suite_scores_every_evaluation_crop(scenes, tmp_path):
    """`patrol evaluate --suite DIR` (pipeline.model.evaluate.evaluate_suite) on a folder laid out like
    ../shared/realdata: only the manifest's eval crops unless asked, the same figures as scoring the
    crop alone, the size split adding up, one clear line for a missing file."""
    import shutil

    from pipeline.core.config import load_settings
    from pipeline.core.errors import InputError
    from pipeline.model.evaluate import evaluate_ortho, evaluate_suite, suite_markdown
    suite = tmp_path / "realdata"
    for area, (path, truth) in zip(("north", "south"), scenes):
        (suite / area).mkdir(parents=True)
        shutil.copy(path, suite / area / "ortho.tif")
        truth.to_file(suite / area / "footprints.geojson", driver="GeoJSON")
    manifest = tmp_path / "suite.yaml"
    manifest.write_text("areas:\n  north: {truth: north/footprints.geojson, crops: {ortho.tif: eval}}\n"
                        "  south: {truth: south/footprints.geojson, crops: {ortho.tif: train}}\n")
    settings = load_settings(overrides={"detector.model": str(MODEL)})
    res = evaluate_suite(suite, settings, manifest)
    assert [(r["area"], r["role"]) for r in res["crops"]] == [("north", "eval")]
    alone = evaluate_ortho(suite / "north" / "ortho.tif", suite / "north" / "footprints.geojson", settings,
                           progress=False)
    row = res["crops"][0]
    assert (row["tp"], row["fp"], row["fn"]) == (alone["tp"], alone["fp"], alone["fn"]) and row["recall"] > 0.8
    assert sum(b["footprints"] for b in row["by_size"].values()) == row["n_truth"]
    assert sum(b["detections"] for b in row["by_size"].values()) == row["n_pred"]
    assert row["false_per_ha"] == round(row["fp"] / row["valid_ha"], 2)
    assert row["off"] == row["n_pred"] - alone["coverage"]["on_target"] and 0 <= row["off"] <= row["fp"]
    both = evaluate_suite(suite, settings, manifest, roles=("eval", "train"))
    assert [a["area"] for a in both["areas"]] == ["north", "south"]
    text = suite_markdown(both)
    assert "| north | eval |" in text and "| south | train |" in text and "R < 30 m² (n)" in text
    north = both["areas"][0]
    assert f"| {north['off_per_ha']} ({north['off']}) |" in text
    assert row["merged"] == alone["coverage"]["merged"] and 0 <= row["merged"] <= row["n_truth"]
    assert f"| {north['merged_share']:.3f} ({north['merged']}) |" in text
    (suite / "south" / "ortho.tif").unlink()
    with pytest.raises(InputError, match="lacks south/ortho.tif"):
        evaluate_suite(suite, settings, manifest, roles=("eval", "train"))


def test_a_split_crop_is_scored_on_its_evaluation_part_and_never_chipped_there(scenes, tmp_path, capsys):
    """A crop split in the manifest (`{eval: [left, top, right, bottom]}`): the suite scores only
    that part (truth and detections inside it); `patrol dataset build --suite` chips the rest and no
    chip comes within 20 m of the part; a part that is not four ordered fractions is one line."""
    import shutil

    import rasterio

    from pipeline.cli import main
    from pipeline.core.config import load_settings
    from pipeline.core.errors import InputError
    from pipeline.detection.tiling import part_polygon
    from pipeline.model.evaluate import evaluate_ortho, evaluate_suite, read_suite
    path, truth = scenes[0]
    suite = tmp_path / "realdata"
    (suite / "town").mkdir(parents=True)
    shutil.copy(path, suite / "town" / "ortho.tif")
    truth.to_file(suite / "town" / "footprints.geojson", driver="GeoJSON")
    manifest = tmp_path / "suite.yaml"
    manifest.write_text("areas:\n  town: {truth: town/footprints.geojson, crops: {ortho.tif: {eval: [0.5, 0, 1, 1]}}}\n")
    assert [(c["role"], c["part"], c["holdout"]) for c in read_suite(manifest)] == [
        ("eval", [0.5, 0.0, 1.0, 1.0], None), ("train", None, [0.5, 0.0, 1.0, 1.0])]
    settings = load_settings(overrides={"detector.model": str(MODEL)})
    res = evaluate_suite(suite, settings, manifest, roles=("eval", "train"))
    (row,) = res["crops"]                       # the training part is not scored
    whole = evaluate_ortho(suite / "town" / "ortho.tif", suite / "town" / "footprints.geojson", settings,
                           progress=False)
    assert row["role"] == "eval" and "[0.5–1 × 0–1]" in row["crop"]
    assert 0 < row["n_truth"] < whole["n_truth"] and 0 < row["n_pred"] < whole["n_pred"]
    assert row["valid_ha"] == pytest.approx(whole["valid_ha"] / 2, rel=0.05)
    with rasterio.open(suite / "town" / "ortho.tif") as src:
        east = part_polygon(src, [0.5, 0, 1, 1])
    inside = truth[truth.geometry.centroid.within(east)]
    assert abs(len(inside) - row["n_truth"]) <= 3           # footprints across the cut: half in or out

    out = tmp_path / "ds"
    assert main(["dataset", "build", "--out", str(out), "--scenes", "0", "--val-scenes", "0", "--chip-px", "256",
                 "--suite", str(suite), "--manifest", str(manifest)]) == 0
    chips = sorted((out / "images" / "train").glob("*.jpg"))
    assert chips, "the western half gives chips"
    # stems end _c{col}: the chip's left edge in 0.10 m pixels from the crop's west edge (a local
    # UTM grid; the scene is 128 m, north up): every chip ends 20 m short of the part at 64 m
    right_edges = [int(chip.stem.rsplit("_c", 1)[1]) * 0.10 + 25.6 for chip in chips]
    assert max(right_edges) <= 64 - 20 + 1.0, right_edges
    import json
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["real"][0]["holdout"] == [0.5, 0.0, 1.0, 1.0]
    capsys.readouterr()
    manifest.write_text("areas:\n  town: {truth: town/footprints.geojson, crops: {ortho.tif: {eval: [0.6, 0, 0.2, 1]}}}\n")
    with pytest.raises(InputError, match="not left, top, right, bottom fractions"):
        evaluate_suite(suite, settings, manifest)


def coverage_on_houses(tmp_path, first_seed: int, look: dict, which) -> tuple[int, int, int, int]:
    """(found, split, merged, houses) of the shipped model over three held-out generated scenes of 128 m
    at 5 cm (palettes china, global, mixed; seeds from ``first_seed``) drawn with the ``look``
    settings of `Randomisation`, counted on the truth rows ``which(scene)`` picks."""
    from pipeline.core.config import load_settings
    from pipeline.detection.detect import detect_ortho
    from pipeline.model.evaluate import coverage
    from pipeline.synth import Randomisation, render_scene
    settings = load_settings(overrides={"detector.model": str(MODEL)})
    found = split = merged = n = 0
    for seed, palette in zip(range(first_seed, first_seed + 3), ("china", "global", "mixed")):
        scene = render_scene(seed, size_m=128.0, gsd_m=0.05,
                             randomisation=Randomisation(palette=palette, nodata_edges=False, **look))
        houses = scene.truth[which(scene)]
        pred = detect_ortho(write_scene(scene, tmp_path / f"h_{seed}.tif"), settings,
                            store_crs=scene.truth.crs.to_string(), progress=False)
        cov = coverage(pred.geometry.to_numpy(), houses.geometry.to_numpy())
        found, split, merged, n = found + cov["found"], split + cov["split"], merged + cov["merged"], n + len(houses)
    return found, split, merged, n


@pytest.mark.xfail(strict=True, reason="issue 16 open: the shipped model finds all 48 L / T-plan houses of these "
                   "scenes but returns 23 of them as two boxes (2026-12-07 CPU fine-tunes with L / T houses "
                   "split 0-1 of 48 but put adjoining houses under one box, the test below; none shipped, model card)")
def test_one_l_or_t_plan_house_gives_one_detection(tmp_path):
    """Held-out generated scenes where every house that has room gets a second wing at right angles
    (`Randomisation.l_houses`): each such house is found (at least half covered by one detection)
    and at most 5 % of them come back as two or more detections (two cases for one house)."""
    found, split, _, n = coverage_on_houses(tmp_path, 7_000_101, {"l_houses": 1.0},
                                            lambda scene: scene.truth.structure_id.isin(
                                                {st.sid for st in scene.layout.structures if len(st.parts) == 2}))
    assert n >= 30, n
    assert found / n >= 0.9 and split / n <= 0.05, f"{n} L/T houses: found {found}, split {split}"


@pytest.mark.xfail(strict=True, reason="issue 16 open: the shipped model puts 44 of 173 houses of these terraced "
                   "blocks under one box over several (25 %); a CPU fine-tune with terraced blocks brought it to "
                   "4 but split L / T-plan houses again (26 of 48): not shipped, model card")
def test_adjoining_houses_give_one_detection_each(tmp_path):
    """Held-out generated scenes whose village blocks are rows of adjoining houses, half of them in
    their neighbour's roofing (`Randomisation.terraces`): each house is found (at least half
    covered by one detection) and at most 5 % of them lie under a detection that covers another
    house as well (several houses, one case) — the converse of the L / T rule above."""
    found, _, merged, n = coverage_on_houses(tmp_path, 8_000_101, {"terraces": 1.0},
                                             lambda scene: scene.truth.class_name == "building")
    assert n >= 100, n
    assert found / n >= 0.9 and merged / n <= 0.05, f"{n} adjoining houses: found {found}, merged {merged}"
