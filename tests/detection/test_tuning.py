"""The runtime and inference threads chosen by measuring the model on this machine: which pairs
are tried, which one wins, the measurement kept per machine and model, and said in the run
summary."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.config import load_settings
from pipeline.detection.detectors import ModelTileDetector
from pipeline.detection.tuning import Choice, Trial, best_of, candidates, choose
from pipeline.detection.yolo import Detector, OnnxYolo
from pipeline.process.executors import InlineExecutor

MODEL = Path(__file__).resolve().parents[2] / "models" / "lianwei-yolo11n.onnx"


def test_auto_tries_both_same_box_runtimes_at_every_core_and_one_less():
    assert candidates("auto", 0, cores=4) == [("fp32", 4), ("fp32", 3), ("openvino", 4), ("openvino", 3)]
    assert candidates("auto", 2, cores=4) == [("fp32", 2), ("openvino", 2)]
    assert candidates("int8", 0, cores=1) == [("int8", 1)]          # one core: nothing to leave free
    assert candidates("openvino", 3, cores=8) == [("openvino", 3)]


def test_the_fastest_wins_and_openvino_must_be_clearly_faster_to_pay_its_compile():
    trials = (Trial("fp32", 2, 0.050), Trial("fp32", 1, 0.090), Trial("openvino", 2, 0.049), Trial("openvino", 1, 0.088))
    assert (best_of(trials, "now").runtime, best_of(trials, "now").threads) == ("fp32", 2)
    trials = (Trial("fp32", 2, 0.050), Trial("fp32", 1, 0.090), Trial("openvino", 2, 0.025), Trial("openvino", 1, 0.045))
    best = best_of(trials, "now")
    assert (best.runtime, best.threads, round(best.tiles_per_s)) == ("openvino", 2, 40)
    trials = (Trial("fp32", 4, 0.040), Trial("fp32", 3, 0.030))     # a reader-starved machine: one core left free
    assert best_of(trials, "cached").threads == 3


def test_measured_once_per_machine_and_model_then_read_back(tmp_path):
    cache = tmp_path / "inference.json"
    first = choose(MODEL, 640, "fp32", 0, OnnxYolo, cores=2, cache=cache)
    assert first.measured == "now" and len(first.trials) == 2
    assert first.runtime == "fp32" and first.threads in (1, 2) and first.tiles_per_s > 0
    assert 1 / first.tiles_per_s <= min(t.tile_s for t in first.trials) * 1.05 + 1e-9
    again = choose(MODEL, 640, "fp32", 0, OnnxYolo, cores=2, cache=cache)
    assert again.measured == "cached" and (again.runtime, again.threads, again.trials) == (first.runtime, first.threads, first.trials)
    assert "measured before on this machine" in again.text() and "tiles/s" in again.text()
    cache.write_text(json.dumps({k: [{"runtime": 1}] for k in json.loads(cache.read_text())}))   # damaged
    assert choose(MODEL, 640, "fp32", 0, OnnxYolo, cores=2, cache=cache).measured == "now"
    assert len(choose(MODEL, 640, "auto", 2, OnnxYolo, cores=2, cache=cache).trials) == 2   # both runtimes
    blocked = tmp_path / "file"
    blocked.write_text("")                                          # the cache cannot be written: still chosen
    assert choose(MODEL, 640, "fp32", 0, OnnxYolo, cores=2, cache=blocked / "inference.json").measured == "now"


def test_a_runtime_and_threads_set_are_used_as_set_without_measuring(tmp_path):
    choice = choose(MODEL, 640, "fp32", 1, OnnxYolo, cache=tmp_path / "c.json")
    assert choice == Choice("fp32", 1) and choice.text() == "fp32, 1 inference thread (as set)"
    assert not (tmp_path / "c.json").exists()
    settings = load_settings(overrides={"detector.model": str(MODEL), "detector.runtime": "fp32", "detector.threads": 1})
    det = Detector.from_settings(settings)
    assert det.model.session.get_session_options().intra_op_num_threads == 1


def test_the_run_summary_says_how_the_model_ran(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # a batch size of its own: a model no earlier test loaded in this process
    settings = load_settings(overrides={"detector.model": str(MODEL), "processing.batch_size": 3,
                                        "detector.runtime": "fp32"})
    detector = ModelTileDetector(settings)
    text = InlineExecutor().inference(detector)["in-process"]
    assert text.startswith("fp32, ") and "measured at start-up" in text
    assert (tmp_path / "lianwei-patrol" / "inference.json").is_file()
