"""Post-processing across tiles: one box per roof (seams merged, nested boxes dropped)."""
from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely

from pipeline.detection.postprocess import drop_nested, empty_detections, fuse_views, merge_seams


def frame(rows):
    """rows: (class, confidence, tile, (x0, y0, x1, y1))."""
    return gpd.GeoDataFrame({"class_name": [r[0] for r in rows], "confidence": [r[1] for r in rows],
                             "tile": [r[2] for r in rows]},
                            geometry=[shapely.box(*r[3]) for r in rows], crs="EPSG:4547")


def test_a_roof_cut_by_a_seam_becomes_one_box_around_both_halves_with_the_best_confidence():
    gdf = frame([("building", 0.6, 0, (0, 0, 10.5, 8)), ("building", 0.9, 1, (9.5, 0, 20, 8))])
    out = merge_seams(gdf, merge_iou=0.05)
    assert len(out) == 1
    assert out["confidence"].iloc[0] == 0.9
    assert abs(out.geometry.iloc[0].area - 160) < 1e-6        # the envelope of both halves: 20 x 8


def test_boxes_of_one_tile_are_never_merged_and_other_classes_only_when_the_same_roof():
    same_tile = frame([("building", 0.6, 0, (0, 0, 10, 8)), ("building", 0.9, 0, (5, 0, 15, 8))])
    assert len(merge_seams(same_tile, merge_iou=0.05)) == 2
    shed_on_house = frame([("building", 0.8, 0, (0, 0, 10, 10)), ("steel_shed", 0.7, 1, (0.2, 0, 10, 10))])
    assert len(merge_seams(shed_on_house, merge_iou=0.05)) == 2                  # classes apart
    out = merge_seams(shed_on_house, merge_iou=0.05, same_object_iou=0.7)        # one roof seen twice
    assert list(out["class_name"]) == ["building"]
    beside = frame([("building", 0.8, 0, (0, 0, 10, 10)), ("steel_shed", 0.7, 1, (8, 0, 18, 10))])
    assert len(merge_seams(beside, merge_iou=0.5, same_object_iou=0.7)) == 2


def test_a_box_inside_a_bigger_one_is_dropped_and_a_neighbour_is_kept():
    gdf = frame([("building", 0.8, 0, (0, 0, 20, 20)), ("steel_shed", 0.9, 0, (2, 2, 8, 8)),
                 ("building", 0.7, 0, (18, 0, 30, 10))])
    out = drop_nested(gdf, share=0.8)
    assert sorted(out.geometry.area.round().tolist()) == [120.0, 400.0]


def test_nothing_in_gives_nothing_out():
    empty = empty_detections("EPSG:4547")
    assert len(merge_seams(empty, 0.1)) == 0 and len(drop_nested(empty, 0.8)) == 0
    assert list(empty.columns) == ["class_name", "confidence", "area_m2", "geometry"]


def test_two_views_fused_keep_what_both_see_and_what_one_sees_surely():
    """detector.tta: a roof both views see keeps the mean of their confidences; one view's box alone
    is kept only when twice as sure as the threshold; another roof of the same tile stays apart."""
    sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    a = (np.stack([sq, sq + 30, sq + 60]), np.array([0.6, 0.95, 0.7]), np.array([0, 1, 0]))
    b = (np.stack([sq + 0.5, sq + 60.4]), np.array([0.5, 0.3]), np.array([0, 0]))
    quads, conf, cls = fuse_views([a, b], 0.5, 0.4)
    assert sorted(np.round(conf, 3)) == [0.475, 0.5, 0.55]        # (0.6+0.5)/2, 0.95/2, (0.7+0.3)/2
    assert len(quads) == 3 and sorted(cls.tolist()) == [0, 0, 1]
    quads, conf, cls = fuse_views([a, b], 0.5, 0.5)
    assert sorted(np.round(conf, 3)) == [0.5, 0.55]               # 0.95 seen alone: 0.475 < 0.5, gone
    assert fuse_views([], 0.5, 0.4)[0].shape == (0, 4, 2)
