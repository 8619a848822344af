"""The 自建房 census figures reported upward (DOMAIN.md), counted by the day each step happened:
本期 (``since <= day < until``) and 累计 (from ``report.campaign_start``, else the first record, up to
``until``), in total and by town and village.

- registered 登记栋数: houses first seen (the flight's capture day) in the window;
- inspected 排查栋数: houses whose first inspection (排查日期) lies in the window; what they were found
  to be — 经营性, 3 层及以上, 人员密集 (a use of ``crowded_uses``), 存在隐患, 严重隐患 — is their
  latest inspection up to ``until`` (a re-inspection corrects, it does not count twice);
- rectifying 整治中, rectified 已整治, closed 已销号: houses with that step (its day) in the window;
- 销号率 = closed ÷ hazardous and 整改率 = rectified ÷ hazardous, cumulative.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.report.common import text

FIGURES: dict[str, str] = {
    "registered": "登记栋数", "inspected": "排查栋数", "business": "其中经营性",
    "three_storeys": "其中3层及以上", "crowded": "其中人员密集", "hazard": "存在安全隐患",
    "serious": "其中严重隐患", "rectifying": "进入整治", "rectified": "已完成整治", "closed": "已销号",
}
RATES: dict[str, str] = {"closure_rate": "销号率", "rectification_rate": "整改率"}
STEPS = ("rectifying", "rectified", "closed")


def _day(v: Any) -> pd.Timestamp | None:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    return pd.Timestamp(str(v)[:10])


def census_stats(store, census, since: Any = None, until: Any = None, campaign_start: Any = None,
                 places: Any = None) -> dict:
    """``period`` and ``cumulative`` (figure → houses), ``rates`` (cumulative), and the period
    ``by_village`` (town, village, figure columns). ``places`` (towns or villages) keeps only
    their houses (an officer's figures)."""
    since_t, until_t, start_t = _day(since), _day(until), _day(campaign_start)
    houses = store.houses().set_index("house_no")
    events = store.house_events()
    if places is not None:
        houses = houses[houses["town"].isin(places) | houses["village"].isin(places)]
        events = events[events["house_no"].isin(set(houses.index))]
    rows = []                                         # (house_no, step, day, facts)
    for no, seen in houses["first_seen_at"].items():
        if _day(seen) is not None:
            rows.append((no, "registered", _day(seen), {}))
    for e in events.itertuples(index=False):
        facts = e.facts if isinstance(e.facts, dict) else {}
        day = _day(facts.get("on")) or _day(e.at)
        if "judgement" in facts:
            rows.append((e.house_no, "inspection", day, facts))
        elif e.to_status in STEPS:
            rows.append((e.house_no, e.to_status, day, facts))
    steps = pd.DataFrame(rows, columns=["house_no", "step", "day", "facts"])
    if until_t is not None:
        steps = steps[steps["day"] < until_t]
    inspections = steps[steps["step"] == "inspection"].sort_values("day", kind="stable")
    latest = inspections.groupby("house_no")["facts"].last()          # what each house was found to be
    first_day = inspections.groupby("house_no")["day"].first()

    def found(nos: set, test) -> int:
        return sum(1 for n in nos if n in latest.index and test(latest[n]))

    def figures(lo: pd.Timestamp | None, keep: set | None = None) -> dict[str, int]:
        s = steps if lo is None else steps[steps["day"] >= lo]
        f = first_day if lo is None else first_day[first_day >= lo]
        if keep is not None:
            s, f = s[s["house_no"].isin(keep)], f[f.index.isin(keep)]
        inspected = set(f.index)
        out = {"registered": len(set(s.loc[s["step"] == "registered", "house_no"])), "inspected": len(inspected),
               "business": found(inspected, lambda x: bool(x.get("business"))),
               "three_storeys": found(inspected, lambda x: int(x.get("floors") or 0) >= 3),
               "crowded": found(inspected, lambda x: x.get("use") in census.crowded_uses),
               "hazard": found(inspected, lambda x: x.get("judgement") in census.hazard_values),
               "serious": found(inspected, lambda x: x.get("judgement") in census.serious_values)}
        for step in STEPS:
            out[step] = len(set(s.loc[s["step"] == step, "house_no"]))
        return out

    period, cumulative = figures(since_t), figures(start_t)
    hazardous = cumulative["hazard"]
    rates = {"closure_rate": cumulative["closed"] / hazardous if hazardous else None,
             "rectification_rate": cumulative["rectified"] / hazardous if hazardous else None}
    places = houses[["town", "village"]].fillna("").astype(str)
    by_village = [{"town": town, "village": village, **figures(since_t, set(group.index))}
                  for (town, village), group in places.groupby(["town", "village"])]
    return {"since": text(since_t.date()) if since_t is not None else "",
            "until": text(until_t.date()) if until_t is not None else "",
            "period": period, "cumulative": cumulative, "rates": rates,
            "by_village": pd.DataFrame(by_village, columns=["town", "village", *FIGURES])}


def census_rows(st: dict) -> list[tuple[str, str, str]]:
    """(label, 本期, 累计) per figure, the rates last (cumulative only)."""
    rows = [(FIGURES[k], str(st["period"][k]), str(st["cumulative"][k])) for k in FIGURES]
    rows += [(RATES[k], "—", "—" if v is None else f"{v * 100:.1f}%") for k, v in st["rates"].items()]
    return rows


def census_markdown(st: dict) -> str:
    lines = ["## 自建房安全排查", "", "| 指标 | 本期 | 累计 |", "| --- | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in census_rows(st)]
    df = st["by_village"]
    lines += ["", "### 按村（本期）", ""]
    if not len(df):
        return "\n".join(lines + ["本期无记录"]) + "\n"
    heads = ["乡镇", "村", *FIGURES.values()]
    lines += ["| " + " | ".join(heads) + " |", "| " + " | ".join("---" for _ in heads) + " |"]
    lines += ["| " + " | ".join(str(v) if v != "" else "—" for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def add_census_sheets(wb, st: dict) -> None:
    """The census figures and the by-village table as two sheets of the statistics workbook."""
    from openpyxl.styles import Font

    ws = wb.create_sheet("自建房排查")
    ws.append(["指标", "本期", "累计"])
    for k in FIGURES:
        ws.append([FIGURES[k], st["period"][k], st["cumulative"][k]])
    for k, v in st["rates"].items():
        ws.append([RATES[k], None, v])
        if v is not None:
            ws.cell(ws.max_row, 3).number_format = "0.0%"
    ws.column_dimensions["A"].width = 18
    sh = wb.create_sheet("自建房按村")
    sh.append(["乡镇", "村", *FIGURES.values()])
    for row in st["by_village"].itertuples(index=False):
        sh.append([v.item() if hasattr(v, "item") else v for v in row])
    for sheet in (ws, sh):
        for c in sheet[1]:
            c.font = Font(bold=True)
