"""Boxes to map polygons (tile pixel (col, row)'s top-left corner is ``tile.transform * (col, row)``,
as YOLO's corners: no half-pixel shift) and the post-processing across tiles or photo frames in
the raster CRS: seam duplicates merged (minimum rotated rectangle of the parts), nested boxes dropped."""
from __future__ import annotations

import numpy as np


def quads_to_map(tile, quads: np.ndarray) -> np.ndarray:
    """Pixel corners (n,4,2) of a tile -> map corners (n,8) in the raster CRS (pixel (col,row) is the
    top-left corner of that pixel, so no half-pixel shift)."""
    t = tile.transform
    x = t.a * quads[..., 0] + t.b * quads[..., 1] + t.c
    y = t.d * quads[..., 0] + t.e * quads[..., 1] + t.f
    return np.stack([x, y], axis=2).reshape(len(quads), 8)


def tile_detections(tile, quads: np.ndarray, conf: np.ndarray, cls: np.ndarray):
    """Keep objects whose centre is on valid pixels; corners clipped to the tile's data; map corners (n,8)."""
    import shapely

    if len(quads) == 0:
        return np.zeros((0, 8)), conf[:0], cls[:0]
    h, w = tile.valid.shape
    centre = quads.mean(axis=1)
    cx = np.clip(centre[:, 0].astype(int), 0, w - 1)
    cy = np.clip(centre[:, 1].astype(int), 0, h - 1)
    keep = tile.valid[cy, cx]
    rows, cols = np.nonzero(tile.valid.any(1))[0], np.nonzero(tile.valid.any(0))[0]
    quads = quads[keep]
    if len(quads):   # the part on the tile's data, as a (rotated) rectangle again
        data = shapely.box(0, 0, cols.max() + 1, rows.max() + 1)
        part = shapely.oriented_envelope(shapely.intersection(shapely.polygons(quads), data))
        ok = shapely.get_type_id(part) == 3
        quads = shapely.get_coordinates(shapely.get_exterior_ring(part[ok])).reshape(-1, 5, 2)[:, :4]
        conf, cls = conf[keep][ok], cls[keep][ok]
        return quads_to_map(tile, quads), conf, cls
    return np.zeros((0, 8)), conf[keep], cls[keep]


# ---------------------------------------------------------------- seam merging
def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes given edges (i, j): numpy union-find."""
    labels = np.arange(n)
    if len(i) == 0:
        return labels
    while True:
        m = np.minimum(labels[i], labels[j])
        new = labels.copy()
        np.minimum.at(new, i, m)
        np.minimum.at(new, j, m)
        new = new[new]  # pointer jumping
        while not np.array_equal(new, new[new]):
            new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


def merge_seams(gdf, merge_iou: float, tile_column: str = "tile", same_object_iou: float | None = None):
    """Merge same-class objects from different tiles that overlap (IoU or intersection over the smaller
    area >= merge_iou) into one footprint: the minimum rotated rectangle around the group, with its
    best confidence.

    With ``same_object_iou``, boxes of different classes from different tiles whose IoU reaches it
    are one roof seen twice (the model's class-agnostic NMS would have kept one inside a tile):
    they merge too, and the most confident class stays. Rows without a ``tile_column`` are all
    treated as coming from different tiles.
    """
    import geopandas as gpd
    import shapely

    if len(gdf) < 2:
        return gdf.reset_index(drop=True)
    geoms = gdf.geometry.values
    tree = shapely.STRtree(geoms)
    i, j = tree.query(geoms, predicate="intersects")
    cls = gdf["class_name"].to_numpy()
    same = cls[i] == cls[j]
    sel = (i < j) & (same | (same_object_iou is not None))
    if tile_column in gdf.columns:
        tiles = gdf[tile_column].to_numpy()
        sel &= tiles[i] != tiles[j]
    i, j, same = i[sel], j[sel], same[sel]
    if len(i):
        inter = shapely.area(shapely.intersection(geoms[i], geoms[j]))
        area = shapely.area(geoms)
        ai, aj = area[i], area[j]
        iou = inter / np.maximum(ai + aj - inter, 1e-12)
        ios = inter / np.maximum(np.minimum(ai, aj), 1e-12)
        ok = np.maximum(iou, ios) >= merge_iou
        if same_object_iou is not None:         # other classes: only the same roof seen twice
            ok = np.where(same, ok, iou >= same_object_iou)
        i, j = i[ok], j[ok]
    if len(i) == 0:
        return gdf.reset_index(drop=True)
    labels = _components(len(gdf), i, j)
    _, group = np.unique(labels, return_inverse=True)
    conf = gdf["confidence"].to_numpy()
    order = np.lexsort((-conf, group))  # best confidence first within each group
    first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
    out = gdf.iloc[first].copy()
    # each group becomes the minimum rotated rectangle around all its parts (for axis-aligned
    # boxes along a seam that is their envelope)
    by_group = np.argsort(group, kind="stable")
    merged = shapely.oriented_envelope(shapely.multipolygons(geoms[by_group], indices=group[by_group]))
    sizes = np.bincount(group)
    out_geom = np.where(sizes[group[first]] == 1, geoms[first], merged[group[first]])
    out = gpd.GeoDataFrame(out.drop(columns=out.geometry.name), geometry=list(out_geom), crs=gdf.crs)
    return out.reset_index(drop=True)


def drop_nested(gdf, share: float):
    """Drop boxes lying at least ``share`` of their area inside a bigger box (any class).

    The model was never taught nested boxes (a roof is one box), so a small box inside a bigger
    one is a piece of that roof read as another structure (a roof section as a steel shed).
    """
    import shapely

    if len(gdf) < 2:
        return gdf.reset_index(drop=True)
    geoms = gdf.geometry.values
    area = shapely.area(geoms)
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    sel = (i != j) & (area[j] > area[i])
    i, j = i[sel], j[sel]
    inside = shapely.area(shapely.intersection(geoms[i], geoms[j])) >= share * area[i] - 1e-9
    drop = np.zeros(len(gdf), bool)
    drop[i[inside]] = True
    return gdf[~drop].reset_index(drop=True)


def one_box_per_roof(gdf, detector_settings, tile_column: str = "tile"):
    """The detector's post-processing across tiles (or photo frames): seam duplicates merged
    (``merge_seams``: ``merge_iou``, other classes at ``nms_iou``), nested boxes dropped
    (``drop_nested``: ``nested_share``); the tile column is removed."""
    d = detector_settings
    gdf = merge_seams(gdf, d.merge_iou, tile_column, same_object_iou=d.nms_iou).drop(columns=tile_column)
    return drop_nested(gdf, d.nested_share)


def empty_detections(crs):
    import geopandas as gpd
    return gpd.GeoDataFrame({"class_name": np.array([], dtype=object),
                             "confidence": np.array([], dtype=float),
                             "area_m2": np.array([], dtype=float)},
                            geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def fuse_views(views: list[tuple[np.ndarray, np.ndarray, np.ndarray]], iou: float, confidence: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test-time views of one tile fused (``detector.tta``): boxes of the views that overlap at IoU
    ``iou`` are one roof; it keeps its most confident box and class, with the mean confidence over
    all views (a view that missed it counts 0); kept when that mean reaches ``confidence``. A box
    one view alone sees must be twice as sure; one both see keeps its level."""
    import shapely

    quads = np.concatenate([v[0] for v in views]) if views else np.zeros((0, 4, 2))
    if not len(quads):
        return np.zeros((0, 4, 2)), np.zeros(0), np.zeros(0, np.int64)
    conf = np.concatenate([v[1] for v in views]).astype(float)
    cls = np.concatenate([v[2] for v in views])
    view = np.concatenate([np.full(len(v[1]), k) for k, v in enumerate(views)])
    polys = shapely.polygons(quads)
    area = shapely.area(polys)
    order = np.argsort(-conf)
    taken = np.zeros(len(conf), bool)
    keep, fused = [], []
    tree = shapely.STRtree(polys)
    for i in order:
        if taken[i]:
            continue
        near = tree.query(polys[i], predicate="intersects")
        near = near[~taken[near]]
        inter = shapely.area(shapely.intersection(polys[near], polys[i]))
        same = near[inter / (area[near] + area[i] - inter) >= iou]
        taken[same] = True
        best: dict[int, float] = {}
        for j in same:                      # the best box of each view in the cluster
            best[view[j]] = max(best.get(view[j], 0.0), conf[j])
        keep.append(i)
        fused.append(sum(best.values()) / len(views))
    keep_a, fused_a = np.array(keep), np.array(fused)
    ok = fused_a >= confidence
    return quads[keep_a[ok]], fused_a[ok], cls[keep_a[ok]]
