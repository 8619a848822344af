"""The rules file: read once into the settings, every mistake one line naming the file and the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.core.config import load_settings
from pipeline.core.errors import ConfigError
from pipeline.core.rules import load_rules, rule_setting_names

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "rules.yaml"


def test_the_shipped_rules_load_and_every_key_is_named():
    rules = load_rules(SHIPPED)
    assert rules.source == SHIPPED and "suspected" in rules.lifecycle.states
    names = rule_setting_names()
    assert "min_structure_area_m2" in names and any(n.startswith("lifecycle.") for n in names)


def test_settings_read_the_rules_once_and_again_only_for_another_file(tmp_path):
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    other = tmp_path / "rules.yaml"
    other.write_text(yaml.safe_dump({**data, "min_structure_area_m2": 42.0}, allow_unicode=True), encoding="utf-8")
    settings = load_settings()
    first = settings.rules
    assert settings.rules is first                                 # read once
    moved = settings.model_copy(update={"rules_file": other})
    assert moved.rules.min_structure_area_m2 == 42.0 and settings.rules is first


@pytest.mark.parametrize("change, words", [
    (None, "is not valid YAML"),
    ({"min_structure_area_m2": "many"}, "'min_structure_area_m2'"),
    ({"no_such_rule": 1}, "'no_such_rule'"),
])
def test_a_bad_rules_file_is_one_line_naming_it(tmp_path, change, words):
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    bad.write_text("min_structure_area_m2: [" if change is None else
                   yaml.safe_dump({**data, **change}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_rules(bad)
    assert words in str(e.value) and "bad.yaml" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_rules(tmp_path / "missing.yaml")
