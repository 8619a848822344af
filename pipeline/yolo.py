"""The YOLO model on the CPU: weights (``.pt`` or ``.onnx``) in, oriented boxes out; nothing is
downloaded (``offline_ultralytics``); task and ONNX input size are read from the weights."""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from pipeline.errors import ModelError, one_line

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
    """A YOLO detector from ``.pt`` or exported ``.onnx`` weights, run on the CPU."""

    def __init__(self, model_path: str | Path, classes: Sequence[str], confidence: float = 0.25,
                 nms_iou: float = 0.5, imgsz: int = 640, batch_size: int = 8, threads: int = 0,
                 runtime: str = "fp32"):
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
            raise ModelError(f"model {path} cannot be loaded ({one_line(e, 120)}); "
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
        from ultralytics.utils import NUM_THREADS
        self.threads = threads or NUM_THREADS
        self.runtime = runtime
        if path.suffix.lower() == ".onnx":
            self._limit_onnx_threads()
            if runtime == "openvino":
                self._use_openvino()
        elif threads:
            import torch
            torch.set_num_threads(threads)

    def _limit_onnx_threads(self) -> None:
        """Give onnxruntime ``threads`` (by default what ultralytics gives torch, cpu_count - 1, at
        most 8): one core stays free for reading and decoding the next tiles."""
        import onnxruntime as ort

        backend = getattr(getattr(getattr(self.model, "predictor", None), "model", None), "backend", None)
        if getattr(backend, "session", None) is None:
            return
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        backend.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    def _use_openvino(self) -> None:
        """Run the same ONNX graph with OpenVINO's CPU plugin (``detector.runtime: openvino``): it
        takes ultralytics' onnxruntime session's place, inputs and outputs unchanged."""
        backend = getattr(getattr(getattr(self.model, "predictor", None), "model", None), "backend", None)
        if getattr(backend, "session", None) is None:
            raise ModelError(f"detector.runtime openvino needs an ONNX model; {self.path.name} is not one")
        backend.session = OpenVINOSession(self.path, self.threads, backend.session)

    @classmethod
    def from_settings(cls, settings, model_path: str | Path | None = None) -> "Detector":
        d, p = settings.detector, settings.processing
        return cls(model_path or settings.model_path, d.classes, d.confidence, d.nms_iou,
                   imgsz=p.tile_px, batch_size=p.batch_size, runtime=d.runtime)

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
                raise ModelError(f"model {self.path} failed on a batch ({one_line(e, 120)}); "
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


class OpenVINOSession:
    """The face of an onnxruntime session (``get_inputs``, ``get_outputs``, ``run``) over the same
    ONNX graph compiled by OpenVINO for this CPU, with ``threads`` inference threads."""

    def __init__(self, path: Path, threads: int, session):
        try:
            import openvino as ov
        except ImportError:
            raise ModelError("detector.runtime openvino needs the openvino package (pip install openvino); "
                             "or set detector.runtime: fp32", zh="识别运行时 openvino 未安装，请安装或改用 fp32") from None
        self._inputs, self._outputs = session.get_inputs(), session.get_outputs()
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                                       "INFERENCE_NUM_THREADS": int(threads)})
        except Exception as e:
            raise ModelError(f"model {path.name} cannot be compiled by OpenVINO ({one_line(e, 120)}); "
                             f"set detector.runtime: fp32") from None

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, output_names, feed: dict):
        out = self.compiled(next(iter(feed.values())))
        return [out[self.compiled.output(name)] for name in output_names]


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
