"""The active model, at the bottom of the model package: which weights the processing path
detects with (``active_settings``), their sha256 checked (``verified_path``). The processing path
(``pipeline.process``) imports this module only, never training, evaluation or review code.

The active model is the registered one in state ``active``; while none was ever promoted it is
the configured ``detector.model``. A weights file whose sha256 no longer matches its row is refused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.core.errors import ModelError
from pipeline.core.values import is_missing, plain


def file_hash(path: str | Path) -> str:
    """sha256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def first_row(frame) -> dict | None:
    return {k: plain(v) for k, v in frame.iloc[0].items()} if len(frame) else None


def get_model(store, version: str) -> dict:
    """One registered model, or ModelError naming the registered ones."""
    row = first_row(store.models(version=version))
    if row is None:
        known = ", ".join(store.models()["version"].tolist()) or "none"
        raise ModelError(f"model {version} is not registered (registered: {known}); see `patrol model list`",
                         zh=f"模型 {version} 未登记")
    return row


def active_model(store, settings) -> dict:
    """The active model's row; the configured ``detector.model`` (not stored, ``registered`` False)
    while none was ever promoted."""
    row = first_row(store.models(state="active"))
    if row is not None:
        return {**row, "registered": True}
    path = settings.model_path
    return {"version": path.stem, "path": str(path), "pt_path": str(path.with_suffix(".pt")), "parent": None,
            "state": "active", "data": {}, "metrics": {}, "registered": False, "note": "detector.model"}


def verified_path(row: dict) -> Path:
    """The weights file of a model row after checking it is there and unchanged."""
    path = Path(str(row["path"]))
    if not path.is_file():
        raise ModelError(f"model {row['version']}: weights {path.name} are missing from the registry; restore "
                         f"the file or roll back (`patrol model rollback`)", zh=f"模型 {row['version']} 的权重文件缺失")
    if row.get("file_hash") and not is_missing(row.get("file_hash")) and file_hash(path) != row["file_hash"]:
        raise ModelError(f"model {row['version']}: {path.name} no longer matches its registered sha256; the file was "
                         f"changed or damaged — restore it or roll back (`patrol model rollback`)",
                         zh=f"模型 {row['version']} 的权重文件与登记的校验值不符，已拒绝使用")
    return path


def active_settings(store, settings):
    """``settings`` with ``detector.model`` set to the active registered model (hash checked);
    unchanged while the registry has no active model."""
    row = active_model(store, settings)
    if not row["registered"]:
        return settings
    path = verified_path(row)
    detector = settings.detector.model_copy(update={"model": path, "runtime": settings.detector.runtime
                                                    if settings.detector.runtime != "int8" else "auto"})
    return settings.model_copy(update={"detector": detector})
