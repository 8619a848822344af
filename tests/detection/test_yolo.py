"""The numpy decoding of the ONNX runtimes: oriented corners and the two suppressions, checked
against what they must give by construction."""
from __future__ import annotations

import math

import numpy as np

from pipeline.detection.yolo import fast_nms_rotated, greedy_nms, probiou_matrix, xywhr_corners


def test_corners_of_an_oriented_box_keep_its_centre_size_and_angle():
    c = xywhr_corners(np.array([[50.0, 40.0, 20.0, 10.0, math.pi / 6]]))[0]
    assert np.allclose(c.mean(axis=0), [50, 40])
    sides = np.linalg.norm(np.roll(c, -1, axis=0) - c, axis=1)
    assert np.allclose(sorted(sides), [10, 10, 20, 20])
    edge = c[1] - c[2]                                          # a long side, along the box's angle
    assert math.isclose(math.atan2(edge[1], edge[0]) % math.pi, math.pi / 6, abs_tol=1e-9)


def test_probabilistic_iou_is_one_on_itself_and_falls_with_distance():
    boxes = np.array([[0, 0, 10, 10, 0.0], [0, 0, 10, 10, 0.0], [5, 0, 10, 10, 0.0], [40, 0, 10, 10, 0.0]])
    m = probiou_matrix(boxes)
    assert np.allclose(np.diag(m), 1, atol=1e-3) and np.allclose(m, m.T)
    assert m[0, 1] > 0.99 > m[0, 2] > m[0, 3] and m[0, 3] < 0.01


def test_fast_nms_keeps_the_best_of_overlapping_boxes_and_every_separate_one():
    boxes = np.array([[0, 0, 10, 10, 0.0], [1, 0, 10, 10, 0.0], [40, 0, 10, 10, 0.0]])
    keep = fast_nms_rotated(boxes, np.array([0.5, 0.9, 0.4]), iou=0.7)
    assert sorted(keep.tolist()) == [1, 2]
    assert len(fast_nms_rotated(boxes[:0], np.zeros(0), 0.7)) == 0


def test_greedy_nms_on_plain_boxes_as_torchvision():
    xyxy = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], float)
    keep = greedy_nms(xyxy, np.array([0.9, 0.8, 0.7, 0.95]), iou=0.5)
    assert keep.tolist() == [3, 2]
