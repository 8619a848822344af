"""Statistics counted by the date each action happened, on a generated history whose
every figure is computed by hand below."""
from __future__ import annotations

import geopandas as gpd
import pytest
import shapely

from pipeline.core.config import load_settings
from pipeline.core.rules import load_rules

M2_PER_MU = 666.67


def _case(no, first_seen, area, town="东镇", village="甲村", category="illegal_construction", stock="new_build"):
    x = 500_000 + 50 * int(no[-2:])
    return {"case_no": no, "status": "suspected", "first_seen_at": first_seen, "area_m2": area, "town": town,
            "village": village, "category": category, "stock": stock,
            "geometry": shapely.box(x, 3_000_000, x + 10, 3_000_010)}


# case: (first seen, area m², [(date, from, to), ...]) — the history the figures below count
HISTORY = {
    # found in 2025, demolished in November 2026: counts in November's 拆除, not in its 发现
    "LW2025-000001": ("2025-06-10", 120.0, [("2025-06-20", "suspected", "verified"),
                                             ("2025-07-01", "verified", "stopped"),
                                             ("2025-07-05", "stopped", "filed"),
                                             ("2025-07-10", "filed", "ordered"),
                                             ("2026-11-12", "ordered", "demolished")]),
    # 制止 and 立案 skipped: ordered straight after verification; never counted as stopped or filed;
    # then assigned while ordered (a same-state event): no second 下达 step
    "LW2026-000002": ("2026-10-05", 80.0, [("2026-10-08", "suspected", "verified"),
                                            ("2026-11-03", "verified", "ordered"),
                                            ("2026-11-05", "ordered", "ordered")]),
    # demolished in October, rebuilt 复建 in November: leaves the demolished count
    "LW2026-000003": ("2026-09-01", 60.0, [("2026-09-03", "suspected", "verified"),
                                            ("2026-09-10", "verified", "ordered"),
                                            ("2026-10-15", "ordered", "demolished"),
                                            ("2026-11-20", "demolished", "suspected")]),
    # found and dismissed in November
    "LW2026-000004": ("2026-11-02", 30.0, [("2026-11-04", "suspected", "lawful")]),
    # found in November, nothing done yet, deadline-less
    "LW2026-000005": ("2026-11-25", 45.0, []),
    # rectified and closed in October
    "LW2026-000006": ("2026-10-01", 50.0, [("2026-10-02", "suspected", "verified"),
                                            ("2026-10-03", "verified", "stopped"),
                                            ("2026-10-04", "stopped", "filed"),
                                            ("2026-10-06", "filed", "ordered"),
                                            ("2026-10-20", "ordered", "rectified"),
                                            ("2026-10-25", "rectified", "rechecked"),
                                            ("2026-10-28", "rechecked", "closed")]),
}
STATUS = {"LW2025-000001": "demolished", "LW2026-000002": "ordered", "LW2026-000003": "suspected",
          "LW2026-000004": "lawful", "LW2026-000005": "suspected", "LW2026-000006": "closed"}


@pytest.fixture(scope="module")
def history_store(tmp_path_factory):
    from pipeline.store import open_store
    path = tmp_path_factory.mktemp("stats") / "s.gpkg"
    store = open_store(path, "EPSG:4547")
    rows = []
    for no, (first, area, _) in HISTORY.items():
        c = _case(no, first, area, town="西镇" if no.endswith("6") else "东镇",
                  village="乙村" if no.endswith(("4", "5")) else "甲村",
                  category="illegal_land_use" if no.endswith("2") else "illegal_construction")
        c["status"] = STATUS[no]
        c["deadline"] = "2026-11-10" if no == "LW2026-000002" else None
        rows.append(c)
    store.save_cases(gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4547"))
    store.append_events([{"case_no": no, "at": f"{d}T10:00:00", "actor": "t", "from_status": a, "to_status": b,
                          "note": ""} for no, (_, _, evs) in HISTORY.items() for d, a, b in evs])
    yield store
    store.close()


def _stats(store, **kw):
    from pipeline.report.stats import campaign_stats
    return campaign_stats(store, load_rules(load_settings().rules_path), **kw)


def test_november_counts_actions_by_their_date(history_store):
    st = _stats(history_store, since="2026-11-01", until="2026-12-01")
    p = st["period"]
    assert p["found"] == 2                                   # 000004, 000005 (not the 2025 case)
    assert p["found_m2"] == pytest.approx(75.0) and p["found_mu"] == pytest.approx(round(75 / M2_PER_MU, 2))
    assert p["verified"] == 0 and p["stopped"] == 0 and p["filed"] == 0
    assert p["ordered"] == 1                                 # 000002, filing skipped
    assert p["demolished"] == 1                              # the 2025 case, demolished this month
    assert p["demolished_m2"] == pytest.approx(120.0)
    assert p["rebuilt"] == 1 and p["lawful"] == 1
    assert p["rectified"] == 0 and p["closed"] == 0
    assert not st["empty"]
    bm = st["by_month"].set_index("month")
    assert list(bm.index) == ["2026-11"] and bm.loc["2026-11", "demolished"] == 1
    bv = st["by_village"].set_index(["town", "village"])
    assert bv.loc[("东镇", "乙村"), "found"] == 2 and bv.loc[("东镇", "甲村"), "demolished"] == 1


def test_cumulative_figures_and_rates(history_store):
    st = _stats(history_store, since="2026-11-01", until="2026-12-01")
    c = st["cumulative"]
    assert c["found"] == 6
    assert c["verified"] == 4                                # 000001, 000002, 000003, 000006
    assert c["stopped"] == 2 and c["filed"] == 2             # 000001, 000006 only: skipped steps not counted
    assert c["ordered"] == 4
    assert c["demolished"] == 1                              # 000003's demolition was undone by its rebuild
    assert c["demolished_m2"] == pytest.approx(120.0)
    assert c["rectified"] == 1 and c["rechecked"] == 1 and c["closed"] == 1
    assert c["rebuilt"] == 1 and c["lawful"] == 1
    # 整改率: (000001 demolished, 000006 rectified) of 4 verified; 销号率: 000006 closed of 2 filed
    assert st["rates"]["rectification_rate"] == pytest.approx(2 / 4)
    assert st["rates"]["closure_rate"] == pytest.approx(1 / 2)
    # at the end of November: open = 000002 (ordered), 000003 and 000005 (suspected); 000002 is overdue
    assert c["open"] == 3 and c["overdue"] == 1


def test_october_before_the_rebuild(history_store):
    st = _stats(history_store, since="2026-10-01", until="2026-11-01")
    p = st["period"]
    assert p["found"] == 2                                   # 000002, 000006
    assert p["demolished"] == 1 and p["demolished_m2"] == pytest.approx(60.0)   # 000003: rebuilt only later
    assert p["rectified"] == 1 and p["closed"] == 1 and p["filed"] == 1 and p["stopped"] == 1
    assert p["verified"] == 2 and p["ordered"] == 1 and p["rebuilt"] == 0
    # at the end of October 000002 was verified (open) and 000001, 000003 ordered/demolished
    assert st["cumulative"]["open"] == 2 and st["cumulative"]["overdue"] == 0
    bm = st["by_month"].set_index("month")
    assert bm.loc["2026-10", "closed"] == 1


def test_an_empty_period_is_named(history_store, tmp_path):
    from pipeline.report.stats import period_text, stats_markdown
    st = _stats(history_store, since="2024-01-01", until="2024-02-01")
    assert st["empty"] and st["period"]["found"] == 0 and st["period"]["demolished"] == 0
    assert len(st["by_month"]) == 0
    md = stats_markdown(st, "zh", "测试区")
    assert "本期无任何记录" in md and "统计期: 2024-01-01 至 2024-01-31" in md
    assert period_text(_stats(history_store), "zh").startswith("全部（自 2025-06-10 起")
    assert "…" not in stats_markdown(_stats(history_store), "zh")


def test_campaign_start_bounds_the_cumulative_column(history_store):
    st = _stats(history_store, since="2026-11-01", until="2026-12-01", campaign_start="2026-01-01")
    assert st["cumulative"]["found"] == 5                    # the 2025 discovery is before the campaign
    assert st["cumulative"]["demolished"] == 1               # its demolition is inside it


def test_stats_files(history_store, tmp_path):
    from openpyxl import load_workbook

    from pipeline.report.stats import write_stats
    s = load_settings()
    paths = write_stats(history_store, s, load_rules(s.rules_path), tmp_path, "2026-11-01", "2026-12-01")
    md = paths["stats_md"].read_text(encoding="utf-8")
    assert "| 已拆除 | 1 | 1 |" in md and "| 复建 | 1 | 1 |" in md and "| 整改率 | — | 50.0% |" in md
    ws = load_workbook(paths["stats_xlsx"]).active
    rows = {r[0].value: (r[1].value, r[2].value) for r in ws.iter_rows(min_row=4)}
    assert rows["已立案"] == (0, 2) and rows["拆除面积(亩)"] == (pytest.approx(0.18), pytest.approx(0.18))
    assert paths["stats_png"].stat().st_size > 10_000


def test_the_last_day_given_is_counted_on_the_cli(history_store, patrol, tmp_path):
    """`--to` is the last day counted (a month's report ends on its 30th, not the day before): one day
    alone is its own period, the month boundary falls between 11-30 and 12-01, a backwards period is
    one line."""
    store = ["--store", history_store.url, "--set", "store.crs=EPSG:4547"]
    r = patrol(*store, "stats", "--from", "2026-11-25", "--to", "2026-11-25", "--out", tmp_path / "day")
    assert r.exit_code == 0, r.output
    assert "2026-11-25 至 2026-11-25" in r.stdout
    one_day = _stats(history_store, since="2026-11-25", until="2026-11-26")["period"]
    assert one_day["found"] == 1                                   # 000005, first seen that day
    r = patrol(*store, "stats", "--from", "2026-11-01", "--to", "2026-11-30", "--out", tmp_path / "month")
    assert "2026-11-01 至 2026-11-30" in r.stdout
    month = _stats(history_store, since="2026-11-01", until="2026-12-01")["period"]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in r.stdout.splitlines()
            if line.startswith("|") and line.count("|") >= 3}
    assert any(v == str(month["found"]) for k, v in rows.items() if "发现" in k), rows
    r = patrol(*store, "stats", "--from", "2026-12-01", "--to", "2026-11-30")
    assert r.exit_code == 2 and "after --to" in r.stderr and len(r.stderr.strip().splitlines()) == 1
