"""The officers' verdicts teach the eye (issue 20): the model registry (register, compare,
promote with its gate, rollback, hash check, one winner of two promotions at once) and a
bureau's first weeks on flights whose look the training scenes did not show."""
from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import geopandas as gpd
import pytest

from pipeline.cli import main
from pipeline.core.config import load_settings
from pipeline.core.errors import ModelError
from pipeline.store import open_store

#: a county of red soil in autumn: strong warm cast, saturated (the shipped model's recall drops to ~0.6)
RED_AUTUMN = {"white_balance": (1.4, 0.9, 0.6), "saturation": 1.8, "season": "autumn"}


def _settings(tmp_path, **over):
    base = {"store.url": str(tmp_path / "s.gpkg"), "media.dir": str(tmp_path / "media"),
            "models.dir": str(tmp_path / "models"), "models.eval_generated": [901],
            "models.eval_generated_size_m": 60}
    return load_settings(overrides={**base, **over})


def _copy_of_shipped(settings, tmp_path, name: str) -> tuple[Path, Path]:
    """The shipped weights under another name (a candidate as good as the active model)."""
    pt, onnx = tmp_path / f"{name}.pt", tmp_path / f"{name}.onnx"
    shutil.copyfile(settings.model_path.with_suffix(".pt"), pt)
    shutil.copyfile(settings.model_path, onnx)
    return pt, onnx


def _register_copy(store, settings, tmp_path, name: str) -> dict:
    from pipeline.model.registry import active_model, register
    pt, onnx = _copy_of_shipped(settings, tmp_path, name)
    return register(store, settings, pt, onnx, parent=active_model(store, settings)["version"],
                    data={"note": "copy"}, actor="admin")


def test_promote_and_rollback_are_recorded_and_a_changed_file_is_refused(tmp_path, capsys):
    from pipeline.model.active import active_model, active_settings
    from pipeline.model.registry import promote, rollback
    s = _settings(tmp_path)
    store = open_store(s.store.url, s.store.crs)
    configured = active_model(store, s)["version"]
    cand = _register_copy(store, s, tmp_path, "cand")
    assert cand["state"] == "candidate" and Path(cand["path"]).parent == tmp_path / "models"
    result = promote(store, s, cand["version"], actor="admin")
    assert result["passes"] and set(result["parts"]) == {"generated"}
    assert active_model(store, s)["version"] == cand["version"]
    assert Path(str(active_settings(store, s).detector.model)) == Path(cand["path"])
    back = rollback(store, s, actor="admin")
    assert back["version"] == configured and active_model(store, s)["version"] == configured
    ev = store.model_events()
    assert list(ev["action"]) == ["registered", "compared", "registered", "promoted", "rolled_back"]
    assert set(ev["actor"]) == {"admin"}
    assert store.models(version=cand["version"])["state"].iloc[0] == "retired"
    # promoted again, then its file is changed: refused with one line, for runs and for promotion
    promote(store, s, cand["version"], actor="admin")
    with open(cand["path"], "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="no longer matches its registered sha256") as e:
        active_settings(store, s)
    assert "\n" not in str(e.value)
    store.close()
    assert main(["--store", s.store.url, "--set", f"models.dir={tmp_path / 'models'}", "model", "promote",
                 cand["version"]]) == 2
    err = capsys.readouterr().err.strip()
    assert "no longer matches its registered sha256" in err and len(err.splitlines()) == 1


def test_the_gate_needs_an_evaluation_set(tmp_path):
    from pipeline.model.registry import promote
    s = _settings(tmp_path, **{"models.eval_generated": []})
    store = open_store(s.store.url, s.store.crs)
    cand = _register_copy(store, s, tmp_path, "cand")
    with pytest.raises(ModelError, match="evaluation set is empty"):
        promote(store, s, cand["version"], actor="admin")
    assert store.models(version=cand["version"])["state"].iloc[0] == "candidate"


def _promote_in_process(url, overrides, version, expected, barrier, out):
    from pipeline.model.registry import promote
    s = load_settings(overrides=overrides)
    store = open_store(url, s.store.crs)
    barrier.wait()
    try:
        promote(store, s, version, actor=f"admin-{version}", expected_active=expected)
        out.put((version, "won"))
    except ModelError as e:
        out.put((version, str(e)))
    finally:
        store.close()


def test_two_promotions_at_once_cannot_both_win(tmp_path):
    from pipeline.model.registry import active_model, compare
    s = _settings(tmp_path)
    store = open_store(s.store.url, s.store.crs)
    first = _register_copy(store, s, tmp_path, "a")
    second = _register_copy(store, s, tmp_path, "b")
    configured = active_model(store, s)["version"]
    for c in (first, second):                      # both compared against the same active model
        assert compare(store, s, c["version"], actor="admin")["passes"]
    store.close()
    overrides = {"store.url": s.store.url, "models.dir": str(tmp_path / "models"), "models.eval_generated": [901],
                 "models.eval_generated_size_m": 60}
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_promote_in_process, args=(s.store.url, overrides, c["version"], configured,
                                                           barrier, out)) for c in (first, second)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = dict(out.get(timeout=5) for _ in procs)
    won = [v for v, r in results.items() if r == "won"]
    assert len(won) == 1, results
    lost = next(r for v, r in results.items() if v not in won)
    assert "promoted meanwhile" in lost
    store = open_store(s.store.url, s.store.crs)
    assert active_model(store, s)["version"] == won[0]
    assert list(store.model_events()["action"]).count("promoted") == 1


def _cli(patrol, store_url, models_dir, *args, extra=()):
    r = patrol("--store", store_url, "--set", f"models.dir={models_dir}", *extra, *args)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.slow
def test_a_bureaus_first_weeks_teach_the_eye_and_a_worse_candidate_is_refused(tmp_path, capsys, patrol):
    """Flight 1 of a red-soil county in autumn runs with the shipped model; officers' verdicts (from
    the truth: false positives closed as 误报, outlines redrawn, missed structures drawn) become
    training chips; the fine-tuned candidate passes the gate and is promoted; on a later flight of
    another place with the same look it finds more and raises fewer false alarms than the shipped
    model. A candidate taught that nothing is a structure is refused by promote."""
    from pipeline.model.evaluate import evaluate_ortho
    from pipeline.model.review_replay import review_from_truth
    from pipeline.process.run import process_flight, register_flight
    from pipeline.synth import generate_district

    first = generate_district(tmp_path / "week1", seed=41, size_m=240, epochs=1, look=RED_AUTUMN, progress=False)
    later = generate_district(tmp_path / "week4", seed=42, size_m=160, epochs=1, look=RED_AUTUMN, progress=False)
    models = tmp_path / "models"
    s = _settings(tmp_path, **{"models.eval_generated": [], "models.fine_tune_epochs": 15})
    store = open_store(s.store.url, s.store.crs)
    flight = register_flight(store, first.out_dir / "epoch_1.tif", s, team="一中队")
    process_flight(store, flight["flight_id"], s, progress=False)
    shipped = s.model_path.stem
    assert set(store.detections(flight["flight_id"])["model_version"]) == {shipped}
    truth = gpd.read_file(first.vectors, layer="truth")
    counts = review_from_truth(store, s, flight["flight_id"], truth)
    assert counts["false_positive"] and counts["drawn"] and counts["confirmed"], counts
    manual = store.cases()[store.cases()["source"] == "manual"]
    assert len(manual) == counts["drawn"]
    store.close()

    out = _cli(patrol, s.store.url, models, "dataset", "from-reviews", "--out", str(tmp_path / "ds"))
    assert "evaluation flights (never trained on)" in out
    extra = ("--set", "models.fine_tune_epochs=15", "--set", "models.eval_generated=[]")
    out = _cli(patrol, s.store.url, models, "train", "--from-reviews", str(tmp_path / "ds"), extra=extra)
    good = out.split("candidate ", 1)[1].split()[0]
    out = _cli(patrol, s.store.url, models, "model", "compare", good, extra=extra)
    assert "passes the gate" in out
    _cli(patrol, s.store.url, models, "model", "promote", good, extra=extra)

    # a worse candidate: the same chips with every label removed, trained hard
    worse_ds = tmp_path / "ds-empty"
    shutil.copytree(tmp_path / "ds", worse_ds)
    (worse_ds / "data.yaml").write_text((worse_ds / "data.yaml").read_text().replace(str(tmp_path / "ds"),
                                                                                     str(worse_ds)))
    for label in (worse_ds / "labels").rglob("*.txt"):
        label.write_text("")
    bad = _cli(patrol, s.store.url, models, "train", "--from-reviews", str(worse_ds), "--epochs", "4",
               extra=extra + ("--set", "models.fine_tune_lr=0.05")).split("candidate ", 1)[1].split()[0]
    assert main(["--store", s.store.url, "--set", f"models.dir={models}", *extra, "model", "promote", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not promoted" in err and "loses recall" in err and len(err.splitlines()) == 1, err

    store = open_store(s.store.url, s.store.crs)
    from pipeline.model.registry import active_model
    assert active_model(store, s)["version"] == good
    actions = list(store.model_events()["action"])
    assert actions.count("promoted") == 1 and actions[-1] == "refused"
    fig = {}
    for name in (shipped, good):
        path = s.model_path if name == shipped else Path(store.models(version=good)["path"].iloc[0])
        fig[name] = evaluate_ortho(later.out_dir / "epoch_1.tif", later.vectors, s, model=path, truth_layer="truth",
                                   epoch=1, progress=False)
    assert fig[good]["recall"] > fig[shipped]["recall"], fig
    assert fig[good]["precision"] > fig[shipped]["precision"], fig

    # flight 1 run again with the active model: detections and cases carry its version, history says so
    store.close()
    _cli(patrol, s.store.url, models, "run", flight["flight_id"], "--force", extra=extra)
    store = open_store(s.store.url, s.store.crs)
    assert set(store.detections(flight["flight_id"])["model_version"]) == {good}
    seen = store.cases()
    seen = seen[(seen["last_seen_flight"] == flight["flight_id"]) & (seen["source"] != "manual")]
    assert len(seen) and set(seen["model_version"]) == {good}
    notes = store.events(seen["case_no"].iloc[0])["note"]
    assert notes.str.contains(f"以模型 {good} 重新识别").any()
    store.close()
