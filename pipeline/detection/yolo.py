"""The YOLO model on the CPU: weights (``.pt`` or ``.onnx``) in, oriented boxes out; nothing is
downloaded (``offline_ultralytics``); task and ONNX input size are read from the weights."""
from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ModelError, one_line
from pipeline.detection.tuning import choose

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


class Detector:
    """A YOLO detector from ``.pt`` or exported ``.onnx`` weights, run on the CPU.

    ``.onnx`` weights run without torch or ultralytics (``OnnxYolo``: onnxruntime, its INT8 copy or
    OpenVINO, decoded and suppressed in numpy as ultralytics does); ``.pt`` weights run through
    ultralytics."""

    def __init__(self, model_path: str | Path, classes: Sequence[str], confidence: float = 0.25,
                 nms_iou: float = 0.5, imgsz: int = 640, batch_size: int = 8, threads: int = 0,
                 runtime: str = "fp32"):
        path = Path(model_path)
        if path.suffix.lower() not in (".pt", ".onnx"):
            raise ModelError(f"model {path} is neither .pt nor .onnx; set detector.model to YOLO weights")
        if not path.is_file():
            raise ModelError(f"model {path} not found; set detector.model (or --model) to the "
                             f"shipped models/lianwei-yolo11n.onnx or your own weights")
        self.path = path
        self.classes = list(classes)
        self.confidence = confidence
        self.nms_iou = nms_iou
        self.imgsz = imgsz
        self.batch_size = batch_size
        self.runtime = runtime
        self.threads = threads or default_threads()
        self.choice: Any = None                        # how runtime and threads were chosen (tuning.Choice)
        self.model: Any                                # OnnxYolo, or ultralytics' YOLO for a .pt
        if path.suffix.lower() == ".onnx":
            self.model = OnnxYolo(path, self.threads, runtime)
            self.task, names = self.model.task, self.model.names
            self._check_onnx_size(self.model.input_hw)
        else:                                          # .pt: torch, whatever detector.runtime says
            offline_ultralytics()
            from ultralytics import YOLO
            try:
                self.task, _ = model_task(path)
                self.model = YOLO(str(path), task=self.task)
                names = self.model.names
            except Exception as e:  # corrupt / truncated / not a YOLO checkpoint
                raise ModelError(f"model {path} cannot be loaded ({one_line(e, 120)}); "
                                 f"re-export or re-download the weights") from None
            if threads:
                import torch
                torch.set_num_threads(threads)
        if len(names) > len(classes):
            raise ModelError(f"model {path} has {len(names)} classes but detector.classes lists "
                             f"{len(classes)}; list every class in the model's index order")
        # set the model up now (weights, session, warm-up), not on the first tiles
        self.predict([np.zeros((imgsz, imgsz, 3), np.uint8)])

    @classmethod
    def from_settings(cls, settings, model_path: str | Path | None = None) -> "Detector":
        d, p = settings.detector, settings.processing
        path = model_path or settings.model_path
        choice = None
        if Path(path).suffix.lower() == ".onnx":
            choice = choose(path, p.tile_px, d.runtime, d.threads, OnnxYolo)
        det = cls(path, d.classes, d.confidence, d.nms_iou, imgsz=p.tile_px, batch_size=p.batch_size,
                  threads=choice.threads if choice else d.threads, runtime=choice.runtime if choice else "fp32")
        det.choice = choice
        return det

    def _check_onnx_size(self, hw: tuple) -> None:
        h, w = hw
        if isinstance(h, int) and isinstance(w, int) and (h, w) != (self.imgsz, self.imgsz):
            raise ModelError(f"model {self.path} takes {h}x{w} images but processing.tile_px is "
                             f"{self.imgsz}; set processing.tile_px={h} or export with dynamic=True")

    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Objects in each RGB uint8 image: (corners float (n,4,2) in pixels, confidence (n,), class (n,)).

        An oriented-box model (task obb) gives each roof's rotated rectangle; a plain detection
        model gives the four corners of its axis-aligned box."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i:i + self.batch_size]
            try:
                if isinstance(self.model, OnnxYolo):
                    out.extend(self.model.predict(batch, self.imgsz, self.confidence, self.nms_iou))
                else:
                    out.extend(self._predict_ultralytics(batch))
            except ModelError:
                raise
            except Exception as e:
                raise ModelError(f"model {self.path} failed on a batch ({one_line(e, 120)}); "
                                 f"check it is a YOLO detection model for {self.imgsz}px images") from None
        return out

    def _predict_ultralytics(self, batch):
        bgr = [np.ascontiguousarray(im[..., ::-1]) for im in batch]
        results = self.model.predict(bgr, imgsz=self.imgsz, conf=self.confidence, iou=self.nms_iou,
                                     agnostic_nms=True, device="cpu", half=False, max_det=MAX_DET,
                                     verbose=False, save=False)
        out = []
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


def default_threads() -> int:
    """Inference threads when none are set and nothing is measured (a .pt model): every core (at
    most 8); the tile reader's thread spends most of its time in GDAL, outside the GIL."""
    return min(8, max(1, os.cpu_count() or 1))


class OnnxYolo:
    """An exported YOLO graph (``detect`` or ``obb``) without torch: onnxruntime (``fp32``, ``int8``)
    or OpenVINO's CPU plugin (``openvino``) runs it; boxes are decoded and suppressed in numpy the
    way ultralytics' predictor does (best class, class-agnostic NMS; probabilistic IoU and fast NMS
    for oriented boxes), so both give the same boxes."""

    MAX_NMS = 30000  # candidates kept for NMS, as ultralytics

    def __init__(self, path: Path, threads: int, runtime: str = "fp32"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception:
            raise ModelError(f"model {path} is not a loadable ONNX model; re-export it "
                             f"(patrol train exports .onnx next to the .pt)") from None
        meta = session.get_modelmeta().custom_metadata_map
        self.task = meta.get("task", "detect")
        try:
            self.names = ast.literal_eval(meta.get("names", "{}"))
        except (ValueError, SyntaxError):
            raise ModelError(f"model {path} carries no readable class names; re-export it with "
                             f"ultralytics") from None
        self.input_name = session.get_inputs()[0].name
        self.input_hw = tuple(session.get_inputs()[0].shape[2:4])
        self.session = session
        self._run = lambda x: session.run(None, {self.input_name: x})[0]
        if runtime == "openvino":
            self.session = None                        # the graph runs in OpenVINO; the ORT copy goes
            self._run = _openvino_runner(path, threads)

    def predict(self, images: Sequence[np.ndarray], imgsz: int, conf: float, iou: float):
        x = np.zeros((len(images), 3, imgsz, imgsz), np.float32)
        for k, im in enumerate(images):             # RGB, 0-1; a smaller image is padded bottom-right
            h, w = min(im.shape[0], imgsz), min(im.shape[1], imgsz)
            x[k, :, :h, :w] = im[:h, :w].transpose(2, 0, 1)
        x /= 255.0
        y = np.asarray(self._run(x))
        return [self._decode(p.T, conf, iou, (imgsz, imgsz)) for p in y]

    def _decode(self, p: np.ndarray, conf: float, iou: float, hw: tuple[int, int]):
        """One image's raw rows (anchors × (xywh, class scores, [angle])) → corners, scores, classes."""
        nc = len(self.names) or p.shape[1] - 4
        scores = p[:, 4:4 + nc]
        best = scores.max(1)
        keep = best > conf
        p, scores, best = p[keep], scores[keep], best[keep]
        cls = scores.argmax(1)
        if len(best) > self.MAX_NMS:
            top = np.argsort(-best, kind="stable")[:self.MAX_NMS]
            p, best, cls = p[top], best[top], cls[top]
        if self.task == "obb":
            rboxes = np.concatenate([p[:, :4], p[:, -1:]], 1)
            pick = fast_nms_rotated(rboxes, best, iou)[:MAX_DET]
            quads = xywhr_corners(rboxes[pick]).astype(np.float64)  # in float32, as ultralytics
        else:
            xyxy = np.concatenate([p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2], 1)
            pick = greedy_nms(xyxy, best, iou)[:MAX_DET]
            b = xyxy[pick].astype(np.float64)
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, hw[1])
            b[:, [1, 3]] = b[:, [1, 3]].clip(0, hw[0])
            quads = b[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
        return quads, best[pick].astype(np.float64), cls[pick].astype(np.int64)


def _openvino_runner(path: Path, threads: int):
    """The ONNX graph compiled by OpenVINO for this CPU with ``threads`` inference threads, in FP32
    (on a CPU with AMX or AVX-512 BF16 the plugin would otherwise run in bfloat16 and move boxes)."""
    try:
        import openvino as ov
    except ImportError:
        raise ModelError("detector.runtime openvino needs the openvino package (pip install openvino); "
                         "or set detector.runtime: fp32", zh="识别运行时 openvino 未安装，请安装或改用 fp32") from None
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                              "INFERENCE_NUM_THREADS": int(threads),
                                                              "INFERENCE_PRECISION_HINT": "f32"})
    except Exception as e:
        raise ModelError(f"model {path.name} cannot be compiled by OpenVINO ({one_line(e, 120)}); "
                         f"set detector.runtime: fp32") from None
    output = compiled.output(0)
    return lambda x: compiled(x)[output]


def xywhr_corners(r: np.ndarray) -> np.ndarray:
    """(n, 5) centre, size, angle (radians) → (n, 4, 2) corners, in ultralytics' order."""
    ctr, w, h, a = r[:, None, :2], r[:, 2:3], r[:, 3:4], r[:, 4:5]
    cos, sin = np.cos(a), np.sin(a)
    v1 = np.concatenate([w / 2 * cos, w / 2 * sin], 1)[:, None]
    v2 = np.concatenate([-h / 2 * sin, h / 2 * cos], 1)[:, None]
    return np.concatenate([ctr + v1 + v2, ctr + v1 - v2, ctr - v1 - v2, ctr - v1 + v2], 1)


def probiou_matrix(b: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Probabilistic IoU (Gaussian Hellinger) of every pair of (n, 5) oriented boxes, as ultralytics'
    ``batch_probiou``."""
    x, y = b[:, 0:1], b[:, 1:2]
    a0, b0, r = b[:, 2:3] ** 2 / 12, b[:, 3:4] ** 2 / 12, b[:, 4:5]
    cos, sin = np.cos(r), np.sin(r)
    a = a0 * cos ** 2 + b0 * sin ** 2
    bb = a0 * sin ** 2 + b0 * cos ** 2
    c = (a0 - b0) * cos * sin
    A, B, C = a + a.T, bb + bb.T, c + c.T
    dx, dy = x - x.T, y - y.T
    denom = A * B - C ** 2 + eps
    t1 = (A * dy ** 2 + B * dx ** 2) / denom * 0.25
    t2 = (C * (-dx) * dy) / denom * 0.5
    det1 = np.clip(a * bb - c ** 2, 0, None)
    t3 = np.log((A * B - C ** 2) / (4 * np.sqrt(det1 * det1.T) + eps) + eps) * 0.5
    bd = np.clip(t1 + t2 + t3, eps, 100.0)
    return 1 - np.sqrt(1.0 - np.exp(-bd) + eps)


def fast_nms_rotated(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by ultralytics' fast NMS on oriented boxes, best first: a box goes when any
    better box overlaps it by more than ``iou`` (probabilistic IoU)."""
    order = np.argsort(-scores, kind="stable")
    if not len(order):
        return order
    ious = np.triu(probiou_matrix(boxes[order]), k=1)
    return order[(ious > iou).sum(0) <= 0]


def greedy_nms(xyxy: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS on axis-aligned boxes, best first (torchvision's ``nms``)."""
    order = np.argsort(-scores, kind="stable")
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(xyxy[i, 2], xyxy[rest, 2]) - np.maximum(xyxy[i, 0], xyxy[rest, 0]), 0, None)
        h = np.clip(np.minimum(xyxy[i, 3], xyxy[rest, 3]) - np.maximum(xyxy[i, 1], xyxy[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    return np.asarray(keep, dtype=np.int64)


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
