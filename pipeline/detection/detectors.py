"""Tile detectors: a chunk of planned tiles → boxes (``pipeline.detection.flightplan``). One interface,
two implementations: ``ModelTileDetector`` (the YOLO model, or any object with its ``predict`` /
``classes`` / ``path``; parts finished by ``pipeline.detection.postprocess``) and ``TruthTileDetector`` (a
generated district's truth layer, for tests and the demo). Both are picklable, so a Dask worker
gets the same object; the model loads once per process and the worker's threads share it.
"""
from __future__ import annotations

import abc
import copy
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import InputError, ModelError
from pipeline.detection.flightplan import chunk_tiles
from pipeline.detection.postprocess import (
    empty_detections,
    fuse_views,
    one_box_per_roof,
    tile_detections,
)
from pipeline.detection.tuning import Choice, choose
from pipeline.detection.yolo import Detector, OnnxYolo, default_threads

_MODELS: dict[tuple, Any] = {}
_MODEL_LOCK = threading.RLock()
_THREAD_BUDGET = [0]                   # inference threads this process may use (0: the default)


def set_thread_budget(threads: int) -> int:
    """The inference threads of this process when ``detector.threads`` is 0 (a Dask executor
    shares a machine's cores out among its workers)."""
    _THREAD_BUDGET[0] = int(threads)
    return _THREAD_BUDGET[0]


class TileDetector(abc.ABC):
    """Boxes of a chunk of tiles, and the flight's detections from every chunk's boxes."""

    #: recorded on the flight (``model_version``)
    version: str

    @abc.abstractmethod
    def key(self) -> str:
        """Checkpoint key: changes with anything that changes the boxes (weights, settings)."""

    @abc.abstractmethod
    def detect_chunk(self, chunk, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Plain arrays for one chunk (``pipeline.detection.flightplan.Chunk``); ``progress(n)`` after n tiles."""

    @abc.abstractmethod
    def finish(self, parts: list[dict], raster_crs, store_crs: str, detector_settings):
        """GeoDataFrame(class_name, confidence, area_m2, geometry) in the store CRS from the parts
        of every chunk of a flight, in plan order."""

    def warm(self) -> float:
        """Load what the detector needs in this process now; the seconds it took (0 if loaded)."""
        return 0.0

    def inference_text(self) -> str:
        """How the detector runs in this process, for the run summary ("" where nothing runs)."""
        return ""

    def at_confidence(self, confidence: float, flip: bool = False) -> "TileDetector":
        """The same detector keeping boxes down to ``confidence``, on mirrored tiles when ``flip``
        (the change check's second look: an independent look at the same place)."""
        return self


def _file_stamp(path: str | Path) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


class ModelTileDetector(TileDetector):
    """The YOLO model on tiles: the weights of ``settings`` (or ``model_path``), or a loaded
    ``predictor`` (in-process only)."""

    def __init__(self, settings, model_path: str | Path | None = None, predictor: Any = None):
        d, p = settings.detector, settings.processing
        self.classes = tuple(getattr(predictor, "classes", None) or d.classes)
        self.confidence, self.nms_iou = d.confidence, d.nms_iou
        self.tile_px, self.batch_size = p.tile_px, int(getattr(predictor, "batch_size", p.batch_size))
        self.threads = d.threads                   # 0: the default; an executor may share the cores out
        self.runtime = d.runtime
        path = Path(getattr(predictor, "path", None) or model_path or settings.model_path)
        if predictor is None and not path.is_file():
            raise ModelError(f"model {path.name} not found; set detector.model (or --model) to the "
                             f"shipped models/lianwei-yolo11n.onnx or your own weights")
        self.model_path = str(path.resolve()) if path.exists() else str(path)
        self.version = path.stem          # the registry names its weights <version>.onnx
        self._predictor = predictor
        self.flip = False                   # mirrored tiles (the change check's second look)
        self.tta = bool(getattr(d, "tta", False))   # each tile also mirrored, the two views fused

    def __getstate__(self) -> dict:        # a worker loads the weights of model_path itself
        return {**self.__dict__, "_predictor": None}

    def at_confidence(self, confidence: float, flip: bool = False) -> "ModelTileDetector":
        other = copy.copy(self)
        other.confidence, other.flip, other.tta = float(confidence), bool(flip), False
        if self._predictor is not None:                  # a loaded model: a copy that keeps more boxes
            other._predictor = copy.copy(self._predictor)
            other._predictor.confidence = float(confidence)
        return other

    def key(self) -> str:
        settings = [self.model_path, self.classes, self.confidence, self.nms_iou, self.tile_px, self.flip]
        if self.tta:
            settings.append("tta")
        if self.runtime != "fp32":                   # the same boxes up to float noise; keyed apart all the same
            settings.append(self.runtime)
        stamp = _file_stamp(self.model_path) if os.path.exists(self.model_path) else ""
        return hashlib.sha256(json.dumps([settings, stamp]).encode()).hexdigest()[:12]

    @property
    def predictor(self):
        """The model: given, or loaded once per process and reused."""
        if self._predictor is not None:
            return self._predictor
        threads = self.threads or _THREAD_BUDGET[0]
        key = (self.model_path, _file_stamp(self.model_path), self.classes, self.nms_iou,
               self.tile_px, self.batch_size, threads, self.runtime)
        with _MODEL_LOCK:
            if key not in _MODELS:
                _MODELS.clear()
                t0 = time.perf_counter()
                choice = self.runtime_choice(threads)
                model = Detector(self.model_path, list(self.classes), self.confidence, self.nms_iou,
                                 imgsz=self.tile_px, batch_size=self.batch_size, threads=choice.threads,
                                 runtime=choice.runtime)
                model.load_s = time.perf_counter() - t0
                model.choice = choice
                _MODELS[key] = model
            model = _MODELS[key]
        if model.confidence != self.confidence:          # the same weights, another threshold
            model = copy.copy(model)
            model.confidence = self.confidence
        return model

    def runtime_choice(self, threads: int) -> Choice:
        """The runtime and inference threads for this machine (``pipeline.detection.tuning``): as
        set, or measured where ``detector.runtime`` is auto or ``detector.threads`` 0."""
        if Path(self.model_path).suffix.lower() != ".onnx":
            return Choice("torch", threads or default_threads())
        return choose(self.model_path, self.tile_px, self.runtime, threads, OnnxYolo)

    def inference_text(self) -> str:
        """How the model runs in this process, for the run summary (loads it if needed)."""
        choice = getattr(self.predictor, "choice", None)
        return choice.text() if choice is not None else "a model given in-process"

    def warm(self) -> float:
        loaded = list(_MODELS.values())
        model = self.predictor
        if self._predictor is not None or any(getattr(m, "model", m) is getattr(model, "model", model) for m in loaded):
            return 0.0
        return float(model.load_s)

    def detect_chunk(self, chunk, progress=None) -> dict[str, Any]:
        model = self.predictor
        if self.tta:                            # each view keeps fainter boxes; the fusion decides
            model = copy.copy(model)
            model.confidence = self.confidence / 2
        index_of = {(w.row, w.col): i for i, w in zip(chunk.indices, chunk.windows)}
        bounds, confs, classes, tile_ids, infer = [], [], [], [], 0.0
        for batch in chunk_tiles(chunk, self.batch_size):
            t1 = time.perf_counter()
            images = [np.ascontiguousarray(tile.image[:, ::-1]) if self.flip else tile.image for tile in batch]
            with _MODEL_LOCK:
                preds = model.predict(images)
                mirrored = model.predict([np.ascontiguousarray(im[:, ::-1]) for im in images]) if self.tta else None
            infer += time.perf_counter() - t1
            for n, (tile, (quads, conf, cls)) in enumerate(zip(batch, preds)):
                if self.flip:                            # corners back onto the tile as it lies
                    quads = _unmirror(quads, tile.image.shape[1])
                if mirrored is not None:
                    mq, mc, mk = mirrored[n]
                    mq = _unmirror(mq, tile.image.shape[1]) if not self.flip else np.asarray(mq, dtype=float)
                    quads, conf, cls = fuse_views([(np.asarray(quads, float).reshape(-1, 4, 2), conf, cls),
                                                   (mq.reshape(-1, 4, 2), mc, mk)], self.nms_iou, self.confidence)
                b, c, k = tile_detections(tile, quads, conf, cls)
                bounds.append(b)
                confs.append(c)
                classes.append(k)
                tile_ids.append(np.full(len(c), index_of[tile.index], dtype=np.int64))
            if progress:
                progress(len(batch))
        return {"bounds": np.concatenate(bounds) if bounds else np.zeros((0, 8)),
                "conf": np.concatenate(confs) if confs else np.zeros(0),
                "cls": np.concatenate(classes).astype(np.int64) if classes else np.zeros(0, np.int64),
                "tile": np.concatenate(tile_ids) if tile_ids else np.zeros(0, np.int64),
                "infer_s": np.float64(infer)}

    def finish(self, parts, raster_crs, store_crs, detector_settings):
        """Map corners of every tile → polygons, one box per roof across tiles, best first."""
        import geopandas as gpd
        import shapely

        if sum(len(p["conf"]) for p in parts) == 0:
            return empty_detections(store_crs)
        cls = np.concatenate([p["cls"] for p in parts])
        if cls.max() >= len(self.classes):
            raise ModelError(f"model {Path(self.model_path).name} predicts class {cls.max()} but detector.classes "
                             f"lists {len(self.classes)}; list every class in the model's index order")
        corners = np.concatenate([p["bounds"] for p in parts]).reshape(-1, 4, 2)
        gdf = gpd.GeoDataFrame({"class_name": np.asarray(self.classes, dtype=object)[cls],
                                "confidence": np.concatenate([p["conf"] for p in parts]),
                                "tile": np.concatenate([p["tile"] for p in parts])},
                               geometry=shapely.polygons(corners), crs=raster_crs)
        gdf = one_box_per_roof(gdf, detector_settings).to_crs(store_crs)
        gdf["area_m2"] = gdf.geometry.area
        return gdf[["class_name", "confidence", "area_m2", "geometry"]].sort_values(
            "confidence", ascending=False, ignore_index=True)


def _unmirror(quads, width: int) -> np.ndarray:
    """Corners found on a left-right mirrored tile, back onto the tile as it lies."""
    quads = np.array(quads, dtype=float, copy=True)
    if quads.size:
        quads[..., 0] = width - quads[..., 0]
    return quads


class TruthTileDetector(TileDetector):
    """A generated district's truth layer as detections (tests and the demo): the structures of
    the epoch whose footprint was captured when the flight was (``footprints`` layer)."""

    version = "truth"

    def __init__(self, truth_path: str | Path, classes, layer: str = "truth", confidence: float = 1.0):
        path = Path(truth_path).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"truth layer file {path.name} not found; pass a generated district.gpkg "
                             f"(test/demo use)")
        self.truth_path, self.layer, self.classes = str(path), layer, tuple(classes)
        self.confidence = confidence

    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.truth_path, self.layer, self.classes, self.confidence,
                                          _file_stamp(self.truth_path)]).encode()).hexdigest()[:12]

    def epoch(self, captured_at) -> int:
        """The district epoch captured at ``captured_at``."""
        import pandas as pd

        fps = _layer(self.truth_path, _file_stamp(self.truth_path), "footprints", None)
        when = pd.Timestamp(captured_at) if captured_at is not None else None
        hit = fps[pd.to_datetime(fps["captured_at"]) == when] if when is not None else fps.iloc[:0]
        if not len(hit):
            raise InputError(f"{Path(self.truth_path).name} has no epoch captured at {when}; it is not "
                             f"this flight's district (the truth layer is for generated districts only)")
        return int(hit["epoch"].iloc[0])

    def detect_chunk(self, chunk, progress=None) -> dict[str, Any]:
        """The truth rows owned by the chunk's tiles; the tiles are read as the model would read
        them (and not used), so a damaged file fails as it would with the model."""
        import shapely

        # lazy: loads rasterio only when used
        from pipeline.detection.tiling import open_raster

        for batch in chunk_tiles(chunk, 8):
            if progress:
                progress(len(batch))
        with open_raster(chunk.path) as src:
            crs = src.crs
        epoch = self.epoch(chunk.captured_at)
        truth = _layer(self.truth_path, _file_stamp(self.truth_path), self.layer, epoch)
        fps = _layer(self.truth_path, _file_stamp(self.truth_path), "footprints", None)
        row = fps[fps["epoch"] == epoch]
        if len(truth) and "shift_x" in fps.columns and len(row):   # where the (mis-georeferenced) ortho shows it
            import geopandas as gpd
            import shapely.affinity
            r = row.iloc[0]
            rot = float(r["rotation_deg"]) if "rotation_deg" in fps.columns and "centre_x" in fps.columns else 0.0
            c = (float(r["centre_x"]), float(r["centre_y"])) if rot else None       # the district's centre
            moved = [shapely.affinity.translate(shapely.affinity.rotate(g, rot, origin=c) if rot else g,
                                                float(r["shift_x"]), float(r["shift_y"]))
                     for g in truth.geometry.values]
            truth = truth.set_geometry(gpd.GeoSeries(moved, crs=truth.crs, index=truth.index))
        truth = truth.to_crs(crs)
        ext = np.asarray(chunk.extents, dtype=float)
        c = shapely.get_coordinates(truth.geometry.centroid.values)
        inside = ((c[:, None, 0] >= ext[None, :, 0]) & (c[:, None, 0] < ext[None, :, 2])
                  & (c[:, None, 1] >= ext[None, :, 1]) & (c[:, None, 1] < ext[None, :, 3]))
        owner = np.where(inside.any(1), inside.argmax(1), -1)
        keep = np.isin(owner, chunk.indices)
        known = {n: i for i, n in enumerate(self.classes)}
        return {"wkb": np.array([w.hex() for w in shapely.to_wkb(truth.geometry.values[keep])], dtype=str),
                "cls": np.array([known.get(n, -1) for n in truth["class_name"].to_numpy()[keep]], dtype=np.int64),
                "conf": np.full(int(keep.sum()), self.confidence), "tile": owner[keep].astype(np.int64),
                "row": np.flatnonzero(keep).astype(np.int64)}          # truth file order, whatever the chunks

    def finish(self, parts, raster_crs, store_crs, detector_settings):
        import geopandas as gpd
        import shapely

        wkb = np.concatenate([p["wkb"] for p in parts]) if parts else np.zeros(0, dtype=str)
        if not len(wkb):
            return empty_detections(store_crs)
        order = np.argsort(np.concatenate([p["row"] for p in parts]), kind="stable")
        cls = np.concatenate([p["cls"] for p in parts])[order]
        names = np.array([self.classes[k] if k >= 0 else "building" for k in cls], dtype=object)
        geoms = shapely.from_wkb([bytes.fromhex(w) for w in wkb[order]])
        gdf = gpd.GeoDataFrame({"class_name": names, "confidence": np.concatenate([p["conf"] for p in parts])[order]},
                               geometry=geoms, crs=raster_crs).to_crs(store_crs)
        gdf["area_m2"] = gdf.geometry.area
        return gdf[["class_name", "confidence", "area_m2", "geometry"]].reset_index(drop=True)


@functools.lru_cache(maxsize=8)
def _layer(path: str, stamp: str, layer: str, epoch: int | None):
    """A layer of the truth file (one epoch's rows), read once per process and file version."""
    import geopandas as gpd
    return gpd.read_file(path, layer=layer, where=None if epoch is None else f"epoch = {int(epoch)}")


def tile_detector(settings, detector: Any = None, truth: str | Path | None = None) -> TileDetector:
    """The flight's tile detector: ``detector`` when it is one; the truth layer of ``truth``; the
    model around a loaded ``detector`` (a ``pipeline.detection.yolo.Detector`` or anything with its
    ``predict``); else the model of ``settings``."""
    if isinstance(detector, TileDetector):
        return detector
    if truth is not None:
        return TruthTileDetector(truth, settings.detector.classes)
    return ModelTileDetector(settings, predictor=detector)
