"""Training with ultralytics (``patrol train``): the training config, a pretrained start from
another task's checkpoint, training and resuming it, shipping the weights (optimizer stripped, ONNX
beside). The datasets it trains on are built by ``pipeline.model.dataset``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.core.errors import ConfigError, InputError, ModelError
from pipeline.detection.detect import offline_ultralytics
from pipeline.model.active import file_hash
from pipeline.model.dataset import CLASSES

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = ROOT / "config" / "train.yaml"


# ---------------------------------------------------------------- training
def load_train_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """config/train.yaml as a dict, with ``overrides`` (None values ignored) applied on top."""
    import yaml
    path = Path(path or TRAIN_CONFIG)
    if not path.is_file():
        raise ConfigError(f"training config {path} not found; pass --train-config with a YAML file")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise ConfigError(f"training config {path} is not valid YAML; fix its syntax") from None
    for k, v in (overrides or {}).items():
        if v is not None:
            cfg[k] = v
    for key in ("model", "data", "imgsz", "epochs", "batch", "project", "name"):
        if key not in cfg:
            raise ConfigError(f"training config {path} lacks '{key}'; add it")
    return cfg


def _set_threads(n: int) -> None:
    import torch
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(int(n))


def transfer_pretrained(model, path: str | Path, nc: int | None = None) -> dict:
    """Initialise ``model`` (an ultralytics ``YOLO``; rebuilt for ``nc`` classes when given) from a
    detection checkpoint at ``path``.

    Every tensor whose name and shape match is copied (backbone, neck, box regression); the class
    and angle outputs, whose shapes differ, stay fresh. Returns what transferred (also written
    beside the run as ``pretrained.json``): file, sha256, tensors transferred of the model's total.
    """
    import torch
    from ultralytics.utils.torch_utils import intersect_dicts
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"pretrained weights {path.name} not found; pass the path of a detection checkpoint (.pt)")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception:
        raise ModelError(f"pretrained weights {path.name} cannot be read as a PyTorch checkpoint; "
                         f"pass an ultralytics .pt") from None
    source = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if source is None or not hasattr(source, "state_dict"):
        raise ModelError(f"pretrained weights {path.name} hold no model; pass an ultralytics detection checkpoint")
    theirs = source.float().state_dict()
    if nc is not None and nc != model.model.yaml.get("nc"):
        model.model = model.task_map[model.task]["model"](cfg=model.model.yaml, nc=nc, verbose=False)
    ours = model.model.state_dict()
    match = intersect_dicts(theirs, ours)
    if not match:
        raise ModelError(f"pretrained weights {path.name} share no layer with {model.model.yaml.get('yaml_file')}; "
                         f"pass a checkpoint of the same family")
    model.model.load_state_dict(match, strict=False)
    fresh = sorted({".".join(k.split(".")[:3]) for k in ours if k not in match})
    return {"file": str(path), "sha256": file_hash(path), "transferred": len(match), "total": len(ours),
            "fresh": fresh}


def train(config: str | Path | None = None, data: str | Path | None = None, epochs: int | None = None,
          resume: bool = False, weights: str | Path | None = None, name: str | None = None,
          hours: float | None = None, settings: dict | None = None,
          pretrained: str | Path | None = None) -> Path:
    """Train (or resume) with ultralytics; returns the run folder (weights/best.pt, results.csv).

    ``weights``: a model of ours to fine-tune; ``pretrained``: a detection checkpoint of another
    task (e.g. COCO YOLO11n) whose matching tensors initialise the model (``transfer_pretrained``).
    ``settings`` override keys of the training config (e.g. ``device``, ``batch``, ``workers``).
    """
    cfg = load_train_config(config, {"data": str(data) if data else None, "epochs": epochs,
                                     "weights": str(weights) if weights else None, "name": name,
                                     "time": hours, "pretrained": str(pretrained) if pretrained else None,
                                     **(settings or {})})
    if cfg.get("weights") and cfg.get("pretrained"):
        raise ConfigError("give either weights (fine-tune a model of ours) or pretrained (another task's start), not both")
    offline_ultralytics()
    _set_threads(int(cfg.get("threads", 2)))
    from ultralytics import YOLO
    run_dir = Path(cfg["project"]) / cfg["name"]
    if resume:
        last = run_dir / "weights" / "last.pt"
        if not last.is_file():
            raise ModelError(f"no checkpoint {last} to resume; start without --resume")
        YOLO(str(last)).train(resume=True)
        return run_dir
    data_yaml = Path(cfg["data"])
    if data_yaml.is_dir():
        data_yaml = data_yaml / "data.yaml"
    if not data_yaml.is_file():
        raise InputError(f"dataset {data_yaml} not found; build one with `patrol dataset build`")
    model = YOLO(str(cfg["model"]))
    seed_from: bool | str = False  # never fetch pretrained weights
    if cfg.get("weights"):
        w = Path(cfg["weights"])
        if not w.is_file():
            raise ModelError(f"weights {w} not found; fix 'weights' in the training config")
        model.load(str(w))
        seed_from = str(w)  # the trainer re-seeds the new model from this local file
    elif cfg.get("pretrained"):
        import yaml
        names = (yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}).get("names") or CLASSES
        transfer = transfer_pretrained(model, cfg["pretrained"], nc=len(names))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "pretrained.json").write_text(json.dumps(transfer, indent=1))
        print(f"pretrained start {Path(transfer['file']).name}: {transfer['transferred']} of "
              f"{transfer['total']} tensors transferred; fresh: {', '.join(transfer['fresh'])}")
        model.ckpt, seed_from = {"model": model.model}, True  # the trainer copies its model from this one
    cache = cfg.get("cache", False)
    device = str(cfg.get("device", "cpu"))
    args = dict(data=str(data_yaml), imgsz=int(cfg["imgsz"]), epochs=int(cfg["epochs"]),
                batch=int(cfg["batch"]), project=str(cfg["project"]), name=str(cfg["name"]),
                exist_ok=True, device=device, amp=device != "cpu", plots=False, pretrained=seed_from,
                workers=int(cfg.get("workers", 1)), cache=cache if cache in ("ram", "disk") else False,
                save_period=int(cfg.get("save_period", -1)), seed=int(cfg.get("seed", 0)),
                optimizer=cfg.get("optimizer", "auto"), lr0=float(cfg.get("lr0", 0.01)),
                lrf=float(cfg.get("lrf", 0.01)), cos_lr=bool(cfg.get("cos_lr", False)),
                warmup_epochs=float(cfg.get("warmup_epochs", 3)),
                close_mosaic=int(cfg.get("close_mosaic", 10)), patience=int(cfg.get("patience", 100)),
                verbose=True, val=True)
    if cfg.get("time"):
        args["time"] = float(cfg["time"])
    args.update(cfg.get("augment") or {})
    model.train(**args)
    return run_dir


# ---------------------------------------------------------------- shipping
def ship_model(best: str | Path, dest: str | Path, imgsz: int = 640, opset: int = 17) -> tuple[Path, Path]:
    """Copy trained weights to ``dest`` (.pt, optimizer stripped) and export ``dest`` .onnx next to it.

    The ONNX graph has a dynamic batch and image size (the detector runs it at processing.tile_px).
    """
    import shutil
    best, dest = Path(best), Path(dest)
    if not best.is_file():
        raise ModelError(f"weights {best} not found; train first or pass an existing .pt")
    offline_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import strip_optimizer
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp.pt")
    shutil.copyfile(best, tmp)
    strip_optimizer(str(tmp))
    tmp.replace(dest)
    exported = YOLO(str(dest)).export(format="onnx", imgsz=imgsz, opset=opset, dynamic=True,
                                      simplify=False, half=False, device="cpu", verbose=False)
    onnx_path = Path(exported)
    if onnx_path != dest.with_suffix(".onnx"):
        shutil.move(str(onnx_path), dest.with_suffix(".onnx"))
    return dest, dest.with_suffix(".onnx")
