"""The lifecycle table: every allowed transition, refused ones, dates, optional steps."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cases.match import load_rules
from pipeline.cases.track import transition
from pipeline.core.errors import TransitionError

RULES_PATH = Path(__file__).resolve().parents[2] / "config" / "rules.yaml"
NOW = datetime(2026, 5, 4, 9, 30)
LC = load_rules(RULES_PATH).lifecycle

# the product states of DOMAIN.md with optional stopped / filed skippable
ALLOWED = {
    "suspected": {"verified", "lawful", "unfounded", "false_positive"},
    "verified": {"stopped", "filed", "ordered", "lawful", "unfounded"},
    "stopped": {"filed", "ordered"},
    "filed": {"ordered"},
    "ordered": {"demolished", "rectified"},
    "demolished": {"rechecked", "suspected"},
    "rectified": {"rechecked"},
    "rechecked": {"closed", "ordered", "suspected"},
    "closed": {"suspected"},
    "lawful": {"suspected"},
    "unfounded": {"suspected"},
    "false_positive": {"suspected"},
}
ALL_PAIRS = [(a, b) for a in ALLOWED for b in ALLOWED if a != b]


def case(status, **kw):
    return {"case_no": "LW2026-000007", "status": status, "area_m2": 42.5, **kw}


def test_labels_are_the_domain_ones():
    assert LC.label("suspected") == "疑似待核查" and LC.label("closed") == "已销号"
    assert set(LC.states) == set(ALLOWED)


@pytest.mark.parametrize("frm,to", [(a, b) for a, bs in ALLOWED.items() for b in sorted(bs)])
def test_every_allowed_transition(frm, to):
    c = case(frm)
    ev = transition(c, to, "王科员", "现场核查", LC, NOW)
    assert c["status"] == to
    assert ev == {"case_no": "LW2026-000007", "at": pd.Timestamp(NOW), "actor": "王科员",
                  "from_status": frm, "to_status": to, "note": "现场核查"}


@pytest.mark.parametrize("frm,to", [p for p in ALL_PAIRS if p[1] not in ALLOWED[p[0]]])
def test_every_other_transition_is_refused(frm, to):
    c = case(frm)
    with pytest.raises(TransitionError) as e:
        transition(c, to, "王科员", "", LC, NOW)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"case LW2026-000007: cannot go from {frm} to {to}" in msg
    for nxt in ALLOWED[frm]:
        assert nxt in msg
    assert c["status"] == frm                       # unchanged


def test_unknown_status_refused():
    with pytest.raises(TransitionError, match="unknown status 'approved'"):
        transition(case("suspected"), "approved", "x", "", LC, NOW)


def test_dates_set_on_the_way():
    c = case("suspected")
    transition(c, "verified", "a", "", LC, NOW)
    transition(c, "ordered", "a", "限期拆除", LC, NOW, order_no="城管罚字〔2026〕12号")
    assert c["order_no"] == "城管罚字〔2026〕12号"
    assert c["order_date"] == pd.Timestamp("2026-05-04")
    assert c["deadline"] == pd.Timestamp("2026-06-03")          # order_deadline_days: 30
    transition(c, "demolished", "a", "自拆", LC, NOW)
    assert c["demolished_area_m2"] == 42.5
    transition(c, "rechecked", "a", "", LC, NOW)
    assert c["recheck_date"] == pd.Timestamp("2026-05-04")
    transition(c, "closed", "a", "销号", LC, NOW)
    assert c["closed_date"] == pd.Timestamp("2026-05-04")
    transition(c, "suspected", "system", "复建", LC, NOW)
    assert c["closed_date"] is None and c["demolished_area_m2"] == 42.5


def test_explicit_deadline_and_demolished_area():
    c = case("verified")
    transition(c, "ordered", "a", "", LC, NOW, deadline="2026-07-01")
    assert c["deadline"] == pd.Timestamp("2026-07-01")
    transition(c, "demolished", "a", "", LC, NOW, demolished_area_m2=30.0)
    assert c["demolished_area_m2"] == 30.0


def test_a_bureau_that_requires_stop_and_filing():
    strict = LC.model_copy(update={"optional": []})
    assert strict.allowed("verified") == ["stopped", "lawful", "unfounded"]
    with pytest.raises(TransitionError, match="allowed next: stopped, lawful, unfounded"):
        transition(case("verified"), "ordered", "a", "", strict, NOW)
    c = case("verified")
    for s in ("stopped", "filed", "ordered"):
        transition(c, s, "a", "", strict, NOW)
    assert c["status"] == "ordered"


def test_pandas_row_changes_in_place():
    row = pd.Series(case("suspected"))
    transition(row, "false_positive", "a", "阴影", LC, NOW)
    assert row["status"] == "false_positive" and row["closed_date"] == pd.Timestamp("2026-05-04")
