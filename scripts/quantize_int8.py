"""The INT8 runtime of the shipped detector: static QDQ quantisation (onnxruntime) of the FP32
ONNX model, calibrated on processing-GSD tiles of a generated district and of real imagery that no
evaluation uses. Writes ``<model>.int8.onnx`` beside the FP32 file, with its metadata (task,
classes) copied, so ``detector.runtime: int8`` picks it up.

    .venv/bin/python scripts/quantize_int8.py --real ../shared/realdata/banepa/predict_mosaic.tif
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def calibration_tiles(orthos: list[Path], settings, per_ortho: int) -> list[np.ndarray]:
    from pipeline.detection.tiling import iter_tiles
    p = settings.processing
    out = []
    for path in orthos:
        tiles = [t.image for t in iter_tiles(path, p.gsd_m, p.tile_px, p.overlap_px, tuple(p.stretch_percentiles))]
        step = max(1, len(tiles) // per_ortho)
        out += tiles[::step][:per_ortho]
    return out


def quantize(fp32: Path, out: Path, tiles: list[np.ndarray], method: str = "minmax", keep_first: int = 0,
             keep_head: tuple[str, ...] = ()) -> Path:
    """``method``: how activation ranges are calibrated (minmax, percentile, entropy);
    ``keep_first``: the first convolutions left in FP32 (the image's own range); ``keep_head``:
    head branches left in FP32 as well (cv2 boxes, cv3 class scores, cv4 angles)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({name: np.ascontiguousarray(t.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0}
                           for t in tiles)

        def get_next(self):
            return next(self.it, None)

    # the head's decoding (box distributions, angles, the concat of pixel boxes with 0-1 scores)
    # stays FP32: one INT8 scale cannot hold both ranges; its convolutions are quantised
    graph = onnx.load(str(fp32)).graph
    head = max((n.name.split("/")[1] for n in graph.node if n.name.startswith("/model.")),
               key=lambda m: int(m.split(".")[1]))
    keep = [n.name for n in graph.node if f"/{head}/" in n.name and not any(k in n.name for k in ("/cv2", "/cv3", "/cv4"))]
    keep += [n.name for n in graph.node if n.op_type == "Conv"][:keep_first]
    keep += [n.name for n in graph.node if f"/{head}/" in n.name and any(f"/{k}" in n.name for k in keep_head)]
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        with contextlib.chdir(tmp):              # onnxruntime leaves its temporary files in the cwd
            quantize_static(str(pre), str(Path(out).resolve()), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep, calibrate_method=calibrate,
                            extra_options={"CalibPercentile": 99.99} if method == "percentile" else {})
    model, src = onnx.load(str(out)), onnx.load(str(fp32))
    del model.metadata_props[:]
    model.metadata_props.extend(src.metadata_props)          # task, names, imgsz: as the FP32 model
    onnx.save(model, str(out))
    return out


def main() -> None:
    from pipeline.core.config import load_settings
    from pipeline.synth import generate_district

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", nargs="*", default=[], help="real orthos for calibration (never an evaluation crop)")
    ap.add_argument("--model", default=None, help="FP32 ONNX model (default: detector.model)")
    ap.add_argument("--per-ortho", type=int, default=32, help="calibration tiles taken from each ortho")
    ap.add_argument("--method", choices=("minmax", "percentile", "entropy"), default="minmax",
                    help="calibration of the activation ranges")
    ap.add_argument("--keep-first", type=int, default=0, help="first convolutions left in FP32")
    ap.add_argument("--keep-head", default="", help="head branches left in FP32, comma list of cv2,cv3,cv4")
    ap.add_argument("--out", type=Path, help="output (default: <model>.int8.onnx beside the FP32 model)")
    a = ap.parse_args()
    settings = load_settings()
    fp32 = Path(a.model) if a.model else settings.model_path
    with tempfile.TemporaryDirectory() as tmp:
        district = generate_district(Path(tmp) / "d", seed=424_242, size_m=200.0, epochs=2, progress=False)
        tiles = calibration_tiles([*district.orthos, *map(Path, a.real)], settings, a.per_ortho)
    out = quantize(fp32, a.out or fp32.with_suffix(".int8.onnx"), tiles, a.method, a.keep_first,
                   tuple(k for k in a.keep_head.split(",") if k))
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB) from {len(tiles)} calibration tiles")


if __name__ == "__main__":
    main()
