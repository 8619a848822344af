"""Detection: georeferencing of boxes, seam merging, the YOLO plumbing (.pt / .onnx), outputs."""
from __future__ import annotations

import os
import socket

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import Transformer

from pipeline.cli import main
from pipeline.core.config import load_settings
from pipeline.core.errors import InputError, ModelError
from pipeline.detection.detect import (
    Detector,
    detect_ortho,
    merge_seams,
    quads_to_map,
    write_detections,
)
from pipeline.detection.tiling import iter_tiles

CLASSES = ["building", "steel_shed", "under_construction", "greenhouse"]
GSD, TILE, OVERLAP = 0.10, 128, 16


def settings(**extra):
    over = {"processing.tile_px": TILE, "processing.overlap_px": OVERLAP, "processing.gsd_m": GSD,
            "processing.batch_size": 4, "store.crs": "EPSG:4547"}
    over.update(extra)
    return load_settings(overrides=over)


def measured_box(channel: np.ndarray) -> np.ndarray:
    """Sub-pixel box (x0, y0, x1, y1) of a bright rectangle from its area-weighted edge pixels."""
    f = channel.astype(float) / 255
    rows, cols = np.nonzero(f > 0.99)
    mid_r, mid_c = int(np.median(rows)), int(np.median(cols))
    out = []
    for prof in (f[mid_r, :], f[:, mid_c]):
        size = prof.sum()
        centre = (prof * (np.arange(len(prof)) + 0.5)).sum() / size
        out.append((centre - size / 2, centre + size / 2))
    (x0, x1), (y0, y1) = out
    return np.array([[x0, y0, x1, y1]])


def xyxy_quads(xyxy):
    """Pixel boxes (n,4) as the detector's corner quads (n,4,2)."""
    xyxy = np.asarray(xyxy, float).reshape(-1, 4)
    return xyxy[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)


def boxes_to_map(tile, xyxy):
    """Map bounds (minx, miny, maxx, maxy) of pixel boxes through quads_to_map."""
    q = quads_to_map(tile, xyxy_quads(xyxy)).reshape(-1, 4, 2)
    return np.column_stack([q[..., 0].min(1), q[..., 1].min(1), q[..., 0].max(1), q[..., 1].max(1)])


def holds_whole(tile) -> bool:
    """The tile shows the painted rectangle whole (bright pixels, none on the tile's border)."""
    ch = tile.image[..., 0]
    return ch.max() == 255 and max(ch[0].max(), ch[-1].max(), ch[:, 0].max(), ch[:, -1].max()) == 0


def paint(h, w, r0, r1, c0, c1, colour=(255, 255, 255)):
    data = np.zeros((3, h, w), np.uint8)
    for k, v in enumerate(colour):
        data[k, r0:r1, c0:c1] = v
    return data


# ---------------------------------------------------------------- georeferencing
def test_a_box_at_known_pixels_lands_at_known_map_coordinates_projected(make_raster):
    # native 5 cm; a 3.0 x 2.0 m rectangle starting on an odd native pixel (half a 10 cm pixel)
    r0, r1, c0, c1 = 301, 341, 501, 561
    path = make_raster(width=800, height=700, crs="EPSG:4547", data=paint(700, 800, r0, r1, c0, c1))
    tile = next(t for t in iter_tiles(path, GSD, TILE, OVERLAP) if holds_whole(t))
    minx, miny, maxx, maxy = boxes_to_map(tile, measured_box(tile.image[..., 0]))[0]
    expected = (500000 + c0 * 0.05, 3400000 - r1 * 0.05, 500000 + c1 * 0.05, 3400000 - r0 * 0.05)
    assert np.abs(np.array([minx, miny, maxx, maxy]) - expected).max() < 0.1 * GSD
    # and a plain pixel box: tile pixel (col, row) top-left corner is transform * (col, row)
    (bx,) = boxes_to_map(tile, np.array([[10.0, 20.0, 30.0, 50.0]]))
    tc, tr = tile.index[1], tile.index[0]
    assert bx == pytest.approx([500000 + (tc + 10) * GSD, 3400000 - (tr + 50) * GSD,
                                500000 + (tc + 30) * GSD, 3400000 - (tr + 20) * GSD])


def test_a_box_at_known_pixels_lands_at_known_map_coordinates_geographic(make_raster):
    # EPSG:4490 at 30 N, 4.7e-7 degree pixels: the resampling ratio is not an integer
    lon0, lat0, res = 114.2, 30.0, 4.7e-7
    r0, r1, c0, c1 = 243, 287, 305, 371
    path = make_raster(width=640, height=520, res=res, crs="EPSG:4490", origin=(lon0, lat0),
                       data=paint(520, 640, r0, r1, c0, c1))
    tile = next(t for t in iter_tiles(path, GSD, TILE, OVERLAP) if holds_whole(t))
    box = measured_box(tile.image[..., 0])
    minx, miny, maxx, maxy = boxes_to_map(tile, box)[0]
    px, py = tile.transform.a, -tile.transform.e
    assert (tile.transform.c, tile.transform.f) == pytest.approx(
        (lon0 + tile.index[1] * px, lat0 - tile.index[0] * py), abs=1e-12)
    expected = np.array([lon0 + c0 * res, lat0 - r1 * res, lon0 + c1 * res, lat0 - r0 * res])
    err = np.abs(np.array([minx, miny, maxx, maxy]) - expected) / np.array([px, py, px, py])
    assert err.max() < 0.1, err


# ---------------------------------------------------------------- seam merging
def boxes(rows, crs="EPSG:4547"):
    """rows: (class_name, confidence, tile, minx, miny, maxx, maxy)."""
    cls, conf, tile, *b = zip(*rows)
    return gpd.GeoDataFrame({"class_name": cls, "confidence": conf, "tile": tile},
                            geometry=shapely.box(*[np.array(v, float) for v in b]), crs=crs)


def test_an_object_cut_by_a_seam_comes_back_as_one_with_the_best_confidence():
    gdf = boxes([("building", 0.6, 0, 0, 0, 12, 10), ("building", 0.9, 1, 8, 0, 20, 10),
                 ("building", 0.7, 2, 0, 6, 20, 14),  # a third tile below: one group of three
                 ("building", 0.8, 0, 50, 50, 60, 60)])  # elsewhere: untouched
    out = merge_seams(gdf, 0.3)
    assert len(out) == 2
    merged = out[out.confidence == 0.9].geometry.iloc[0]
    assert merged.bounds == (0, 0, 20, 14)
    assert out[out.confidence == 0.8].geometry.iloc[0].bounds == (50, 50, 60, 60)


def test_seam_merging_is_class_aware_and_needs_enough_overlap():
    gdf = boxes([("building", 0.6, 0, 0, 0, 12, 10), ("steel_shed", 0.9, 1, 8, 0, 20, 10),
                 ("greenhouse", 0.5, 0, 30, 0, 40, 10), ("greenhouse", 0.5, 1, 39.5, 0, 50, 10),
                 ("building", 0.4, 3, 100, 0, 110, 10), ("building", 0.3, 3, 105, 0, 115, 10)])
    out = merge_seams(gdf, 0.3)
    assert len(out) == 6  # other class; a 0.5 m sliver; two boxes of one tile (NMS decided)
    assert sorted(out.class_name) == sorted(gdf.class_name)
    # one roof seen by two tiles as two classes (IoU 0.33 above): kept apart below same_object_iou
    assert len(merge_seams(gdf, 0.3, same_object_iou=0.5)) == 6


def test_one_roof_seen_as_two_classes_by_two_tiles_is_one_detection():
    gdf = boxes([("steel_shed", 0.88, 0, 0, 0, 10, 8), ("building", 0.82, 1, 0.2, 0, 10, 8.2),
                 ("building", 0.7, 0, 30, 0, 40, 8)])
    assert len(merge_seams(gdf, 0.3)) == 3                       # class-aware: both kept
    out = merge_seams(gdf, 0.3, same_object_iou=0.5)
    assert len(out) == 2
    roof = out[out.geometry.intersects(shapely.box(0, 0, 10, 8))].iloc[0]
    assert roof["class_name"] == "steel_shed" and roof["confidence"] == 0.88   # the most confident stays


def bright_detector(conf_log):
    """A test double of Detector: boxes of bright connected components (red -> building,
    blue -> steel_shed), confidence growing with the box area."""
    import cv2

    class Bright:
        classes = CLASSES
        path = "bright-boxes"

        def predict(self, images):
            out = []
            for im in images:
                xyxy, conf, cls = [], [], []
                for k, ch in ((0, 0), (1, 2)):
                    _, _, stats, _ = cv2.connectedComponentsWithStats((im[..., ch] > 200).astype(np.uint8))
                    for x, y, w, h, a in stats[1:]:
                        xyxy.append([x, y, x + w, y + h])
                        conf.append(min(0.99, a / 5000))
                        cls.append(k)
                conf_log.extend(conf)
                out.append((xyxy_quads(xyxy), np.array(conf), np.array(cls, int)))
            return out

    return Bright()


def test_detect_ortho_merges_an_object_cut_by_a_seam(make_raster):
    # native 10 cm; tile 0 spans cols 0-128, tile 1 cols 112-240: a house at cols 90-150 straddles both
    h, w = 120, 240
    data = paint(h, w, 20, 70, 90, 150, colour=(255, 0, 0))
    data[2, 80:110, 100:140] = 255  # a blue shed below it, across the same seam
    data[0, 80:110, 100:140] = 0
    path = make_raster(width=w, height=h, res=0.10, crs="EPSG:4547", data=data)
    log = []
    gdf = detect_ortho(path, settings(), detector=bright_detector(log), progress=False)
    assert sorted(gdf.class_name) == ["building", "steel_shed"]
    house = gdf[gdf.class_name == "building"].iloc[0]
    assert house.geometry.bounds == pytest.approx((500009.0, 3399993.0, 500015.0, 3399998.0), abs=0.01)
    assert house.area_m2 == pytest.approx(30.0, abs=0.05)
    assert house.confidence == pytest.approx(max(c for c in log if c < 0.99))
    shed = gdf[gdf.class_name == "steel_shed"].iloc[0]
    assert shed.geometry.bounds == pytest.approx((500010.0, 3399989.0, 500014.0, 3399992.0), abs=0.01)
    assert list(gdf.columns) == ["class_name", "confidence", "area_m2", "geometry"]
    assert gdf.crs.to_epsg() == 4547


def test_detections_are_reprojected_to_the_store_crs_and_invalid_centres_dropped(make_raster):
    h, w = 100, 100
    data = paint(h, w, 10, 30, 10, 40, colour=(255, 0, 0))
    data[0, 60:90, 60:90] = 255  # a second house, on no-data pixels
    mask = np.ones((h, w), bool)
    mask[55:, 55:] = False
    path = make_raster(width=w, height=h, res=0.10, crs="EPSG:32650", data=data, mask=mask)
    gdf = detect_ortho(path, settings(), detector=bright_detector([]), progress=False)
    assert len(gdf) == 1 and gdf.crs.to_epsg() == 4547
    tr = Transformer.from_crs(32650, 4547, always_xy=True)
    x, y = tr.transform(500000 + 2.5, 3400000 - 2.0)  # the house centre in the raster CRS
    c = gdf.geometry.iloc[0].centroid
    assert (c.x, c.y) == pytest.approx((x, y), abs=0.01)
    assert gdf.area_m2.iloc[0] == pytest.approx(6.0, rel=0.01)


# ---------------------------------------------------------------- the YOLO plumbing
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """An untrained yolo11n (4 classes) as .pt and its ONNX export; builds offline from the yaml."""
    import torch

    from pipeline.detection.detect import offline_ultralytics
    offline_ultralytics()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    m = DetectionModel("yolo11n.yaml", nc=4, verbose=False)
    m.names = dict(enumerate(CLASSES))
    pt = d / "tiny.pt"
    torch.save({"model": m, "train_args": {}}, pt)
    onnx = YOLO(str(pt), task="detect").export(format="onnx", imgsz=TILE, dynamic=True,
                                                simplify=False, device="cpu")
    return pt, d / onnx.split("/")[-1]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network access in a test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_pt_and_onnx_give_the_same_boxes_offline_on_cpu(tiny_models, make_raster, no_network):
    pt, onnx = tiny_models
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (TILE, TILE, 3), dtype=np.uint8) for _ in range(3)]
    a = Detector(pt, CLASSES, confidence=0.001, imgsz=TILE, batch_size=2).predict(images)
    det = Detector(onnx, CLASSES, confidence=0.001, imgsz=TILE, batch_size=2)
    b = det.predict(images)
    session = det.model.session                      # onnxruntime, no torch on this path
    assert session.get_providers() == ["CPUExecutionProvider"]
    # no threads given: every core (at most 8); the tile reader works in GDAL, outside the GIL
    assert session.get_session_options().intra_op_num_threads == min(8, os.cpu_count())
    assert len(a) == len(b) == 3 and sum(len(x[0]) for x in a) > 0
    for (xa, ca, ka), (xb, cb, kb) in zip(a, b):
        assert len(xa) == len(xb)
        assert np.allclose(xa, xb, atol=0.5) and np.allclose(ca, cb, atol=1e-4)
        assert np.array_equal(ka, kb) and xa.shape[1] == 4


def test_patrol_detect_writes_a_geopackage(tiny_models, make_raster, tmp_path, no_network, capsys):
    _, onnx = tiny_models
    path = make_raster(width=300, height=200, crs="EPSG:32650", data=paint(200, 300, 50, 90, 60, 120))
    out = tmp_path / "det.gpkg"
    args = ["--set", f"processing.tile_px={TILE}", "--set", f"processing.overlap_px={OVERLAP}",
            "--set", "detector.confidence=0.001"]
    assert main([*args, "detect", str(path), "--out", str(out), "--model", str(onnx)]) == 0
    assert pyogrio.list_layers(out)[:, 0].tolist() == ["detections"]
    gdf = gpd.read_file(out, layer="detections")
    assert len(gdf) > 0 and gdf.crs.to_epsg() == 4547
    assert set(gdf.class_name) <= set(CLASSES) and (gdf.confidence >= 0.001).all()
    assert np.allclose(gdf.area_m2, gdf.geometry.area, rtol=1e-6)
    # the same command with missing weights: one line, exit 2
    capsys.readouterr()
    assert main([*args, "detect", str(path), "--out", str(out), "--model", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model") and "not found" in err and "\n" not in err


def test_unusable_weights_raise_model_errors(tmp_path, tiny_models):
    for name in ("broken.pt", "broken.onnx"):
        p = tmp_path / name
        p.write_bytes(b"\x00garbage" * 100)
        with pytest.raises(ModelError, match="cannot be loaded|not a loadable") as e:
            Detector(p, CLASSES)
        assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="not found"):
        Detector(tmp_path / "missing.pt", CLASSES)
    with pytest.raises(ModelError, match="neither"):
        Detector(tmp_path / "weights.bin", CLASSES)
    _, onnx = tiny_models
    with pytest.raises(ModelError, match="4 classes"):
        Detector(onnx, CLASSES[:2], imgsz=TILE)


def test_write_detections_geopackage_and_geoparquet(tmp_path):
    gdf = boxes([("building", 0.6, 0, 0, 0, 12, 10)]).drop(columns="tile")
    gdf["area_m2"] = gdf.area
    for name in ("d.gpkg", "d.parquet"):
        p = write_detections(gdf, tmp_path / name)
        back = gpd.read_file(p, layer="detections") if name.endswith("gpkg") else gpd.read_parquet(p)
        assert back.geometry.iloc[0].equals(gdf.geometry.iloc[0]) and back.crs.to_epsg() == 4547
    write_detections(gdf.iloc[:0], tmp_path / "d.gpkg")  # no detections: an empty layer
    assert pyogrio.list_layers(tmp_path / "d.gpkg").tolist() == [["detections", "Polygon"]]
    assert len(gpd.read_file(tmp_path / "d.gpkg", layer="detections")) == 0
    with pytest.raises(InputError, match="must end in"):
        write_detections(gdf, tmp_path / "d.csv")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="cannot write"):
        write_detections(gdf, tmp_path / "a_file" / "d.gpkg")


def test_a_box_nested_in_a_bigger_roof_is_dropped():
    from pipeline.detection.detect import drop_nested
    gdf = boxes([("building", 0.8, 0, 0, 0, 10, 10),
                 ("steel_shed", 0.9, 0, 2, 2, 6, 6),        # wholly inside the roof: a piece of it
                 ("steel_shed", 0.7, 0, 8, 0, 14, 4),       # a third inside: a neighbour, kept
                 ("building", 0.6, 0, 30, 0, 40, 10)])
    out = drop_nested(gdf, 0.8)
    assert sorted(out.confidence) == [0.6, 0.7, 0.8]
    assert len(drop_nested(gdf, 1.0)) == 3                 # 1.0: only boxes wholly inside go
    assert len(drop_nested(gdf.iloc[[1, 3]], 0.8)) == 2    # nothing bigger around it: kept
