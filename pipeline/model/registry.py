"""The model registry (``patrol model list|compare|promote|rollback``): detector weights under
``models.dir``, one store row per version (table ``model``), one active model, and every
registration, comparison, promotion, refusal and rollback on record (``model_event``).

The active model is the registered one in state ``active``; while none was ever promoted it is
the configured ``detector.model``. A weights file whose sha256 no longer matches its row is
refused. ``promote`` compares the candidate with the active model on the frozen evaluation set
(``pipeline.model.review_data.evaluation_set``) and refuses it when it loses more than
``models.promote_margin`` of recall or precision on any part; two promotions at once cannot
both win (the active model is checked again inside the write transaction).
"""
from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.core.errors import ModelError
from pipeline.core.values import plain
from pipeline.model.active import active_model, file_hash, get_model, verified_path
from pipeline.model.train import ship_model, train

STATES = ("candidate", "active", "retired")
METRICS = ("recall", "precision")


def _weights_dir(settings) -> Path:
    folder = Path(settings.models.dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create the model folder {folder} ({e.strerror}); set models.dir") from None
    return folder


def register(store, settings, pt: str | Path, onnx: str | Path, *, parent: str | None, data: dict,
             actor: str, note: str = "") -> dict:
    """Copy trained weights (``pt`` and its ``onnx``) into ``models.dir`` as a new candidate
    version ``m<seq>-<sha8>`` with its parent and training data summary; the row."""
    pt, onnx = Path(pt), Path(onnx)
    for f in (pt, onnx):
        if not f.is_file():
            raise ModelError(f"weights {f.name} not found; train first (`patrol train --from-reviews`)")
    digest = file_hash(onnx)
    folder = _weights_dir(settings)
    with store.transaction():
        version = f"m{store.next_sequence('MODEL', 0):03d}-{digest[:8]}"
        dest_pt, dest_onnx = folder / f"{version}.pt", folder / f"{version}.onnx"
        shutil.copyfile(pt, dest_pt)
        shutil.copyfile(onnx, dest_onnx)
        row = {"version": version, "path": str(dest_onnx.resolve()), "file_hash": digest,
               "pt_path": str(dest_pt.resolve()), "parent": parent, "state": "candidate", "data": data,
               "metrics": {}, "created_at": datetime.now(), "created_by": actor, "note": note}
        store.save_model(row)
        store.add_model_event({"version": version, "action": "registered", "actor": actor, "from_version": parent,
                               "note": note, "figures": {"data": data}})
    return row


def _register_configured(store, settings, row: dict, actor: str) -> None:
    """Record the configured model as a registered version (so a rollback can return to it)."""
    path = Path(row["path"])
    if not path.is_file():
        raise ModelError(f"the configured model {path.name} is not there; set detector.model")
    store.save_model({"version": row["version"], "path": str(path.resolve()), "file_hash": file_hash(path),
                      "pt_path": str(path.with_suffix(".pt").resolve()), "parent": None, "state": "active",
                      "data": {}, "metrics": {}, "created_at": datetime.now(), "created_by": actor,
                      "promoted_at": datetime.now(), "promoted_by": actor, "note": "detector.model"})
    store.add_model_event({"version": row["version"], "action": "registered", "actor": actor,
                           "note": "the configured detector.model, active until a promotion"})


def compare(store, settings, candidate: str, *, actor: str = "system", progress: bool = False) -> dict:
    """Candidate and active model side by side on the frozen evaluation set: ``{"candidate",
    "active", "parts": {part: {"candidate": {recall, precision, …}, "active": {…}}}, "margin",
    "losses": [(part, metric, loss)], "passes"}``; recorded on the candidate and in the history."""
    # lazy: loads geopandas, shapely only when used
    from pipeline.model.review_data import evaluate_model

    cand = get_model(store, candidate)
    verified_path(cand)
    act = active_model(store, settings)
    if act["version"] == candidate:
        raise ModelError(f"model {candidate} is the active model; compare another candidate")
    parts_c = evaluate_model(store, settings, Path(cand["path"]), progress=progress)
    if not parts_c:
        raise ModelError("the evaluation set is empty: no reviewed flight is held out and models.eval_generated and "
                         "models.eval_suite are unset; build a dataset (`patrol dataset from-reviews`) or set them",
                         zh="评测集为空，无法比较模型")
    parts_a = evaluate_model(store, settings, verified_path(act), progress=progress)
    margin = float(settings.models.promote_margin)
    parts, losses = {}, []
    for part in parts_c:
        c, a = parts_c[part], parts_a.get(part, {})
        parts[part] = {"candidate": c, "active": a}
        for m in METRICS:
            if c.get(m) is None or a.get(m) is None:
                continue
            loss = round(float(a[m]) - float(c[m]), 4)
            if loss > margin:
                losses.append([part, m, loss])
    result = {"candidate": candidate, "active": act["version"], "parts": parts, "margin": margin,
              "losses": losses, "passes": not losses, "at": datetime.now().isoformat(timespec="seconds")}
    with store.transaction():
        store.save_model({"version": candidate, "metrics": {**(cand.get("metrics") or {}), "comparison": result}})
        store.add_model_event({"version": candidate, "action": "compared", "actor": actor,
                               "from_version": act["version"], "figures": result,
                               "note": "passes the gate" if not losses else "loses " + _losses_text(losses)})
    return result


def _losses_text(losses) -> str:
    return "; ".join(f"{m} {loss:+.3f} on {part}".replace("+", "−", 1) for part, m, loss in losses)


def promote(store, settings, candidate: str, *, actor: str, expected_active: str | None = None,
            progress: bool = False) -> dict:
    """Make ``candidate`` the active model when its comparison with the current active model
    passes the gate (compared now when there is none against that model); refusals are recorded
    and raised as ModelError. ``expected_active``: the active version the caller saw (the admin
    page's); the promotion is refused when another one is active by the time it is written, so two
    promotions at once cannot both win. Returns the comparison."""
    cand = get_model(store, candidate)
    verified_path(cand)
    act = active_model(store, settings)
    if expected_active and act["version"] != expected_active:
        raise ModelError(f"model {candidate} is not promoted: {act['version']} was promoted meanwhile; compare "
                         f"again (`patrol model compare {candidate}`)",
                         zh=f"模型 {candidate} 未启用：期间已有其他模型启用，请重新评测")
    if act["version"] == candidate:
        raise ModelError(f"model {candidate} is already the active model")
    result = (cand.get("metrics") or {}).get("comparison") or {}
    if result.get("active") != act["version"]:
        result = compare(store, settings, candidate, actor=actor, progress=progress)
    if not result["passes"]:
        store.add_model_event({"version": candidate, "action": "refused", "actor": actor,
                               "from_version": act["version"], "figures": result,
                               "note": "loses " + _losses_text(result["losses"])})
        raise ModelError(f"model {candidate} is not promoted: against {act['version']} it loses "
                         f"{_losses_text(result['losses'])} (margin {result['margin']:g}); keep reviewing and "
                         f"train again", zh=f"模型 {candidate} 在评测集上不如当前模型，未启用")
    with store.transaction():             # the write lock: a second promotion waits here, then sees ours
        now_active = active_model(store, settings)
        if now_active["version"] != act["version"]:
            raise ModelError(f"model {candidate} is not promoted: {now_active['version']} was promoted meanwhile; "
                             f"compare again (`patrol model compare {candidate}`)",
                             zh=f"模型 {candidate} 未启用：期间已有其他模型启用，请重新评测")
        if not now_active["registered"]:
            _register_configured(store, settings, now_active, actor)
        store.save_model({"version": act["version"], "state": "retired"})
        store.save_model({"version": candidate, "state": "active", "promoted_at": datetime.now(),
                          "promoted_by": actor})
        store.add_model_event({"version": candidate, "action": "promoted", "actor": actor,
                               "from_version": act["version"], "figures": result})
    return result


def rollback(store, settings, *, actor: str) -> dict:
    """Return to the model that was active before the current one; the row now active."""
    events = store.model_events()
    current = active_model(store, settings)
    came = events[(events["action"] == "promoted") & (events["version"] == current["version"])]
    if not current["registered"] or not len(came):
        raise ModelError(f"nothing to roll back: {current['version']} was not made active by a promotion",
                         zh="没有可回退的模型")
    last = came.iloc[-1]
    target = get_model(store, last["from_version"])
    verified_path(target)
    with store.transaction():
        if active_model(store, settings)["version"] != current["version"]:
            raise ModelError("the active model changed meanwhile; look at `patrol model list` and try again")
        store.save_model({"version": current["version"], "state": "retired"})
        store.save_model({"version": target["version"], "state": "active", "promoted_at": datetime.now(),
                          "promoted_by": actor})
        store.add_model_event({"version": target["version"], "action": "rolled_back", "actor": actor,
                               "from_version": current["version"], "note": f"back from {current['version']}"})
    return get_model(store, target["version"])


def listing(store, settings) -> list[dict[str, Any]]:
    """Every registered model (and the configured one while none is active), newest last, with
    its comparison's figures."""
    rows = [{k: plain(v) for k, v in r.items()} for r in store.models().to_dict("records")]
    act = active_model(store, settings)
    if not act["registered"]:
        rows.insert(0, act)
    return rows


def train_candidate(store, settings, data_dir: str | Path, *, actor: str, epochs: int | None = None,
                    device: str | None = None) -> dict:
    """Fine-tune the active model on a dataset of ``patrol dataset from-reviews`` (its .pt, SGD at
    ``models.fine_tune_lr``, ``models.chip_px`` chips, on the CPU unless ``device``) and register the
    result as a candidate whose parent is the active model; the row."""
    import json
    import tempfile

    data_dir = Path(data_dir)
    summary_path = data_dir / "summary.json"
    if not summary_path.is_file():
        raise ModelError(f"{data_dir} holds no summary.json; build it with `patrol dataset from-reviews --out "
                         f"{data_dir}`")
    act = active_model(store, settings)
    verified_path(act)
    pt = Path(str(act.get("pt_path") or Path(act["path"]).with_suffix(".pt")))
    if not pt.is_file():
        raise ModelError(f"the active model {act['version']} has no .pt beside it to fine-tune from; ship it with "
                         f"`patrol train --ship`")
    epochs = int(epochs or settings.models.fine_tune_epochs)
    runs = _weights_dir(settings) / "runs"
    name = f"from-reviews-{datetime.now():%Y%m%d-%H%M%S}"
    started = datetime.now()
    run = train(data=data_dir / "data.yaml", epochs=epochs, weights=pt, name=name,
                settings={"imgsz": settings.models.chip_px, "project": str(runs), "lr0": settings.models.fine_tune_lr,
                          "optimizer": "SGD", "warmup_epochs": 0, "close_mosaic": 0, "save_period": -1,
                          "workers": 0, "patience": 1000, "device": device or "cpu"})
    with tempfile.TemporaryDirectory(dir=runs) as tmp:
        shipped_pt, onnx = ship_model(run / "weights" / "last.pt", Path(tmp) / "candidate.pt",
                                      imgsz=settings.processing.tile_px)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        data = {k: summary.get(k) for k in ("chips", "boxes", "positives", "negatives", "excluded_detections",
                                            "chip_px", "gsd_m", "built_at")}
        data.update({"flights": [f["flight_id"] for f in summary.get("flights", [])], "dataset": str(data_dir),
                     "epochs": epochs, "device": device or "cpu", "lr0": settings.models.fine_tune_lr,
                     "train_s": round((datetime.now() - started).total_seconds(), 1), "parent": act["version"]})
        return register(store, settings, shipped_pt, onnx, parent=act["version"], data=data, actor=actor,
                        note=f"fine-tuned on {summary.get('positives')} reviewed positives, "
                             f"{summary.get('negatives')} false positives")
