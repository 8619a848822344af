"""The settings loader: defaults, overrides, and one clear line for a bad value."""
import pytest

from pipeline.core.config import DEFAULT_CONFIG, load_settings, setting_names
from pipeline.core.errors import ConfigError


def test_defaults_load_and_resolve_paths():
    s = load_settings(DEFAULT_CONFIG, environ={})
    assert s.store.crs == "EPSG:4547"
    assert s.processing.gsd_m == pytest.approx(0.10)
    assert s.model_path.parent == DEFAULT_CONFIG.parent.parent / "models"
    assert s.rules_path == DEFAULT_CONFIG.parent / "rules.yaml"


def test_env_and_cli_overrides_in_order():
    env = {"PATROL_STORE": "/tmp/a.gpkg", "PATROL__PROCESSING__TILE_PX": "512"}
    s = load_settings(DEFAULT_CONFIG, environ=env)
    assert s.store.url == "/tmp/a.gpkg" and s.processing.tile_px == 512
    s = load_settings(DEFAULT_CONFIG, {"store.url": "/tmp/b.gpkg", "processing.tile_px": "320"}, environ=env)
    assert s.store.url == "/tmp/b.gpkg" and s.processing.tile_px == 320


@pytest.mark.parametrize("override, words", [
    ({"processing.gsd_m": "-1"}, "processing.gsd_m"),
    ({"processing.overlap_px": "400"}, "processing.overlap_px"),
    ({"report.language": "fr"}, "report.language"),
    ({"processing.no_such_key": "1"}, "processing.no_such_key"),
])
def test_bad_value_is_one_clear_line(override, words):
    with pytest.raises(ConfigError) as e:
        load_settings(DEFAULT_CONFIG, override, environ={})
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, environ={})


def test_setting_names_cover_sections():
    names = setting_names()
    assert "store.url" in names and "processing.gsd_m" in names and "rules_file" in names
    assert "source" not in names
