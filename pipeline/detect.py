"""Detection: YOLO over batches of tiles, boxes to map polygons, seam merging.

Pixel convention: the top-left corner of tile pixel (col, row) is ``tile.transform * (col, row)``;
YOLO's box corners use the same continuous pixel coordinates, so there is no half-pixel shift.
The shipped model predicts oriented boxes (a tilted roof gets a tight rotated rectangle, so its
area is honest for the over-approval rule); a plain box model works too. Corners are mapped to
the raster CRS, duplicates across tile seams are merged there (the minimum rotated rectangle
around the parts), then the result is reprojected to the store CRS.
"""
from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from pipeline.errors import ConfigError, InputError, ModelError

COLUMNS = ["class_name", "confidence", "area_m2"]
MAX_DET = 300  # per tile


def offline_ultralytics() -> None:
    """Keep ultralytics off the network: no hub, no downloads, no auto-installs, quiet."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics.utils import SETTINGS
    try:
        if SETTINGS.get("sync", False):
            SETTINGS.update({"sync": False})
    except Exception:  # read-only settings file: the env vars already keep it offline
        pass


# ---------------------------------------------------------------- the model
class Detector:
    """A YOLO detector from ``.pt`` or exported ``.onnx`` weights, run on the CPU."""

    def __init__(self, model_path: str | Path, classes: Sequence[str], confidence: float = 0.25,
                 nms_iou: float = 0.5, imgsz: int = 640, batch_size: int = 8):
        path = Path(model_path)
        if path.suffix.lower() not in (".pt", ".onnx"):
            raise ModelError(f"model {path} is neither .pt nor .onnx; set detector.model to YOLO weights")
        if not path.is_file():
            raise ModelError(f"model {path} not found; set detector.model (or --model) to the "
                             f"shipped models/lianwei-yolo11n.onnx or your own weights")
        offline_ultralytics()
        from ultralytics import YOLO
        try:
            self.task, self._onnx_input = model_task(path)
            self.model = YOLO(str(path), task=self.task)
            names = self.model.names  # loads the ONNX session's metadata too
        except Exception as e:  # corrupt / truncated / not a YOLO checkpoint
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"model {path} cannot be loaded ({why[:120]}); "
                             f"re-export or re-download the weights") from None
        if len(names) > len(classes):
            raise ModelError(f"model {path} has {len(names)} classes but detector.classes lists "
                             f"{len(classes)}; list every class in the model's index order")
        self.path = path
        self.classes = list(classes)
        self.confidence = confidence
        self.nms_iou = nms_iou
        self.imgsz = imgsz
        self.batch_size = batch_size
        if path.suffix.lower() == ".onnx":
            self._check_onnx_size()
        # set the predictor up now (weights, ONNX session, warm-up), not on the first tiles
        self.predict([np.zeros((imgsz, imgsz, 3), np.uint8)])
        if path.suffix.lower() == ".onnx":
            self._limit_onnx_threads()

    def _limit_onnx_threads(self) -> None:
        """Give onnxruntime the threads ultralytics gives torch (cpu_count - 1, at most 8): one core
        stays free for reading and decoding the next tiles, and the inference does not fight it."""
        import onnxruntime as ort
        from ultralytics.utils import NUM_THREADS

        backend = getattr(getattr(getattr(self.model, "predictor", None), "model", None), "backend", None)
        if getattr(backend, "session", None) is None:
            return
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = NUM_THREADS
        opts.inter_op_num_threads = 1
        backend.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    @classmethod
    def from_settings(cls, settings, model_path: str | Path | None = None) -> "Detector":
        d, p = settings.detector, settings.processing
        return cls(model_path or settings.model_path, d.classes, d.confidence, d.nms_iou,
                   imgsz=p.tile_px, batch_size=p.batch_size)

    def _check_onnx_size(self) -> None:
        h, w = self._onnx_input
        if isinstance(h, int) and isinstance(w, int) and (h, w) != (self.imgsz, self.imgsz):
            raise ModelError(f"model {self.path} takes {h}x{w} images but processing.tile_px is "
                             f"{self.imgsz}; set processing.tile_px={h} or export with dynamic=True")

    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Objects in each RGB uint8 image: (corners float (n,4,2) in pixels, confidence (n,), class (n,)).

        An oriented-box model (task obb) gives each roof's rotated rectangle; a plain detection
        model gives the four corners of its axis-aligned box."""
        out = []
        for i in range(0, len(images), self.batch_size):
            bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images[i:i + self.batch_size]]
            try:
                results = self.model.predict(bgr, imgsz=self.imgsz, conf=self.confidence,
                                             iou=self.nms_iou, agnostic_nms=True, device="cpu", half=False,
                                             max_det=MAX_DET, verbose=False, save=False)
            except Exception as e:
                raise ModelError(f"model {self.path} failed on a batch "
                                 f"({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__}); "
                                 f"check it is a YOLO detection model for {self.imgsz}px images") from None
            for r in results:
                if getattr(r, "obb", None) is not None:
                    b = r.obb
                    quads = b.xyxyxyxy.cpu().numpy().astype(np.float64).reshape(-1, 4, 2)
                else:
                    b = r.boxes
                    xyxy = b.xyxy.cpu().numpy().astype(np.float64)
                    quads = xyxy[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
                out.append((quads, b.conf.cpu().numpy().astype(np.float64),
                            b.cls.cpu().numpy().astype(np.int64)))
        return out


def model_task(path: str | Path) -> tuple[str, tuple]:
    """('obb' or 'detect', ONNX input (h, w) or ()) read from the weights themselves."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnxruntime as ort
        try:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception:
            raise ModelError(f"model {path} is not a loadable ONNX model; re-export it "
                             f"(patrol train exports .onnx next to the .pt)") from None
        shape = sess.get_inputs()[0].shape
        return sess.get_modelmeta().custom_metadata_map.get("task", "detect"), (shape[2], shape[3])
    import torch
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception:
        raise ModelError(f"model {path} cannot be loaded; re-export or re-train the weights") from None
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    task = getattr(model, "task", None) or ((ckpt.get("train_args") or {}) if isinstance(ckpt, dict) else {}).get("task")
    return task or "detect", ()


# ---------------------------------------------------------------- boxes to map
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


# ---------------------------------------------------------------- the stage
def _prefetch(items: Iterable, depth: int) -> Iterator:
    """Produce ``items`` in a background thread (GDAL reads release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for it in items:
                while not stop.is_set():
                    try:
                        q.put(it, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    try:
        while True:
            it = q.get()
            if it is end:
                return
            if isinstance(it, BaseException):
                raise it
            yield it
    finally:
        stop.set()


def _batched(it: Iterable, n: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def empty_detections(crs):
    import geopandas as gpd
    return gpd.GeoDataFrame({"class_name": np.array([], dtype=object),
                             "confidence": np.array([], dtype=float),
                             "area_m2": np.array([], dtype=float)},
                            geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def detect_ortho(path: str | Path, settings, store_crs: str | None = None, detector: Detector | None = None,
                 progress: bool = True):
    """Detect structures on an ortho: GeoDataFrame(class_name, confidence, area_m2, geometry) in
    the store CRS, seam duplicates merged."""
    from pyproj import CRS
    from tqdm import tqdm

    from pipeline.tiling import iter_tiles, open_raster, plan_windows

    store_crs = store_crs or settings.store.crs
    if not CRS.from_user_input(store_crs).is_projected:
        raise ConfigError(f"store.crs {store_crs} is not a projected CRS in metres; set a projected one "
                          f"(e.g. EPSG:4547)")
    p = settings.processing
    detector = detector or Detector.from_settings(settings)
    with open_raster(path) as src:
        raster_crs = src.crs
        plan = plan_windows(src, p.gsd_m, p.tile_px, p.overlap_px)
    bounds, confs, classes, tiles = [], [], [], []
    tile_iter = iter_tiles(path, p.gsd_m, p.tile_px, p.overlap_px, tuple(p.stretch_percentiles), windows=plan)
    bar = tqdm(total=len(plan), unit="tile", desc=f"detect {Path(path).name}", disable=not progress)
    n_done = 0
    try:
        for batch in _batched(_prefetch(tile_iter, depth=2 * p.batch_size), p.batch_size):
            for k, (tile, (quads, conf, cls)) in enumerate(zip(batch, detector.predict([t.image for t in batch]))):
                b, c, k_cls = tile_detections(tile, quads, conf, cls)
                bounds.append(b)
                confs.append(c)
                classes.append(k_cls)
                tiles.append(np.full(len(c), n_done + k))
            n_done += len(batch)
            bar.update(len(batch))
        bar.update(len(plan) - bar.n)  # windows that held no valid pixel once read
    finally:
        bar.close()
    return boxes_to_detections(bounds, confs, classes, tiles, raster_crs, detector.classes, settings.detector,
                               store_crs, model=detector.path)


def boxes_to_detections(bounds: Sequence[np.ndarray], confs: Sequence[np.ndarray], classes: Sequence[np.ndarray],
                        tiles: Sequence[np.ndarray], raster_crs, class_names: Sequence[str], detector_settings,
                        store_crs, model=None):
    """Per-tile map boxes (raster CRS; lists of arrays in tile order, ``tiles`` = a tile id per box)
    -> detections in the store CRS, seam duplicates merged, best confidence first. Shared by
    ``detect_ortho`` and the nightly runner's tile checkpoints (``pipeline.batch``)."""
    import geopandas as gpd
    import shapely

    if not len(bounds) or sum(len(c) for c in confs) == 0:
        return empty_detections(store_crs)
    b = np.concatenate([np.asarray(x, dtype=np.float64) for x in bounds if len(x)])
    if b.shape[1] == 4:     # map bounds (minx, miny, maxx, maxy) -> corners
        b = b[:, [0, 1, 2, 1, 2, 3, 0, 3]]
    cls = np.concatenate(classes)
    if cls.max() >= len(class_names):
        raise ModelError(f"model {model} predicts class {cls.max()} but detector.classes lists "
                         f"{len(class_names)}; list every class in the model's index order")
    names = np.asarray(class_names, dtype=object)[cls]
    gdf = gpd.GeoDataFrame({"class_name": names, "confidence": np.concatenate(confs),
                            "tile": np.concatenate(tiles)},
                           geometry=shapely.polygons(b.reshape(-1, 4, 2)), crs=raster_crs)
    gdf = one_box_per_roof(gdf, detector_settings).to_crs(store_crs)
    gdf["area_m2"] = gdf.geometry.area
    gdf = gdf[["class_name", "confidence", "area_m2", "geometry"]]
    return gdf.sort_values("confidence", ascending=False, ignore_index=True)


def write_detections(gdf, path: str | Path) -> Path:
    """Write detections as GeoPackage (layer ``detections``) or GeoParquet, by file extension."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".gpkg", ".parquet", ".geoparquet"):
        raise InputError(f"output {path} must end in .gpkg or .parquet; pick one of those")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if ext == ".gpkg":  # replaces the layer, keeps any other layer of an existing GeoPackage
            extra = {"geometry_type": "Polygon"} if len(gdf) == 0 else {}
            gdf.to_file(path, layer="detections", driver="GPKG", **extra)
        else:
            gdf.to_parquet(path)
    except Exception as e:  # unwritable folder, a file that is not a GeoPackage, a full disk
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot write {path} ({why}); check the folder is writable") from None
    return path
