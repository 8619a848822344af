"""docs/CONFIG.md names every setting the loaders accept, and nothing they do not.

Format of the reference: one ``## `config/<file>` `` section per file; in it, every table row
whose first cell is a name in backticks (``| `detector.confidence` | …``) is one setting.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.cases.match import load_rules, rule_setting_names
from pipeline.core.config import load_settings, setting_names
from pipeline.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CONFIG.md"
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")


def documented(text: str) -> dict[str, list[str]]:
    """Setting names per config file, in document order."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^##\s+`config/([\w.]+)`", line)
        if head:
            current = head.group(1)
            out[current] = []
        elif re.match(r"^##\s", line):
            current = None
        elif current and (m := ROW.match(line)):
            out[current].append(m.group(1))
    return out


def flat_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        if isinstance(v, dict):
            keys += flat_keys(v, f"{prefix}{k}.")
        else:
            keys.append(prefix + k)
    return keys


@pytest.fixture(scope="module")
def doc() -> dict[str, list[str]]:
    return documented(DOC.read_text(encoding="utf-8"))


def check(names: list[str], accepted: list[str], what: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    missing = sorted(set(accepted) - set(names))
    unknown = sorted(set(names) - set(accepted))
    assert not dup, f"docs/CONFIG.md names {what} settings twice: {dup}"
    assert not missing, f"docs/CONFIG.md lacks {what} settings {missing}"
    assert not unknown, f"docs/CONFIG.md names {what} settings the loader does not accept: {unknown}"


def test_default_yaml_reference_is_complete_and_exact(doc):
    assert "default.yaml" in doc
    check(doc["default.yaml"], setting_names(), "default.yaml")


def test_rules_yaml_reference_is_complete_and_exact(doc):
    assert "rules.yaml" in doc
    check(doc["rules.yaml"], rule_setting_names(), "rules.yaml")


def test_train_yaml_reference_names_the_shipped_keys(doc):
    shipped = yaml.safe_load((ROOT / "config" / "train.yaml").read_text(encoding="utf-8"))
    check(doc["train.yaml"], flat_keys(shipped), "train.yaml")


def test_shipped_files_use_only_documented_names(doc):
    """The shipped default.yaml / rules.yaml set nothing outside the reference (and load)."""
    s = load_settings(ROOT / "config" / "default.yaml", environ={})
    rules = load_rules(s.rules_path)
    assert rules.lifecycle.initial == "suspected"
    data = yaml.safe_load((ROOT / "config" / "default.yaml").read_text(encoding="utf-8"))
    assert set(flat_keys(data)) <= set(doc["default.yaml"])
    rdata = yaml.safe_load((ROOT / "config" / "rules.yaml").read_text(encoding="utf-8"))
    rule_names = set(doc["rules.yaml"])
    for top, value in rdata.items():
        if top == "exemptions":
            for ex in value:
                assert {f"exemptions[].{k}" for k in ex} <= rule_names
        elif top in rule_names:                  # a value, a list, or a mapping setting (dlbm_names)
            continue
        else:
            assert isinstance(value, dict), top
            for k in flat_keys(value, f"{top}."):
                # a mapping setting (lifecycle.states, priority.levels) is one name
                assert any(k == n or k.startswith(n + ".") for n in rule_names), k


def test_parser_reads_the_documented_format():
    text = ("## `config/default.yaml`\n| setting | default |\n| --- | --- |\n| `store.url` | x |\n"
            "not a row `store.crs`\n## Other\n| `ignored.name` | y |\n## `config/rules.yaml`\n| `classes` | z |\n")
    assert documented(text) == {"default.yaml": ["store.url"], "rules.yaml": ["classes"]}


def test_names_the_loader_refuses_are_really_refused():
    """The reference claims the loader rejects unknown names: check one each way."""
    with pytest.raises(ConfigError, match="detector.confidense"):
        load_settings(ROOT / "config" / "default.yaml", overrides={"detector.confidense": 0.3}, environ={})
    s = load_settings(ROOT / "config" / "default.yaml", overrides={"detector.confidence": 0.3}, environ={})
    assert s.detector.confidence == 0.3
