"""The active model at the bottom of the model package: the configured weights until one is
promoted; a registered file that changed is refused, never used."""
from __future__ import annotations

import pytest

from pipeline.core.config import load_settings
from pipeline.core.errors import ModelError
from pipeline.model.active import active_model, active_settings, file_hash, verified_path
from pipeline.store import open_store


def test_without_a_promotion_the_configured_model_is_active(tmp_path):
    settings = load_settings(overrides={"store.url": str(tmp_path / "s.gpkg")})
    with open_store(settings.store.url, settings.store.crs) as store:
        row = active_model(store, settings)
        assert not row["registered"] and row["path"] == str(settings.model_path)
        assert active_settings(store, settings) is settings


def test_a_weights_file_that_changed_or_went_is_refused(tmp_path):
    weights = tmp_path / "m001.onnx"
    weights.write_bytes(b"weights v1")
    row = {"version": "m001-abc", "path": str(weights), "file_hash": file_hash(weights)}
    assert verified_path(row) == weights
    weights.write_bytes(b"weights v2")
    with pytest.raises(ModelError, match="no longer matches its registered sha256") as e:
        verified_path(row)
    assert "模型 m001-abc" in e.value.zh
    weights.unlink()
    with pytest.raises(ModelError, match="weights m001.onnx are missing"):
        verified_path(row)
