"""Campaign statistics reported upward (DOMAIN.md), counted by the date each action happened.

Every figure is a count of cases whose event of that kind happened in the window: 本期 (the
period ``since <= at < until``) and 累计 (from ``report.campaign_start``, else the first
record, up to ``until``). So a 2025 case demolished this month counts in this month's
拆除, and a step the lifecycle let a bureau skip is not counted as done (a case ordered
without being filed is not 已立案).

- found 发现: the case's first_seen_at (created_at when missing); verified, stopped, filed,
  ordered, demolished, rectified, rechecked, closed, lawful, unfounded, false_positive: the
  ``case_event`` rows that moved the case into that state (an assignment, a document or a
  note that leaves the status as it was is no step);
- rebuilt 复建: events from ``lifecycle.rebuilt_from`` back to ``lifecycle.rebuilt_to``;
  a rebuild undoes the case's earlier demolished / rectified / rechecked / closed events
  (the case leaves those counts until it is demolished again), and is its own line;
- m² and 亩 (1 亩 = 666.67 m²): the case's footprint; demolished: demolished_area_m2;
- 整改率 = cumulative (demolished or rectified, among verified illegal) ÷ verified illegal;
  销号率 = cumulative (closed, among filed) ÷ filed; verified illegal leaves a case that
  was later found lawful / unfounded / a false positive;
- open 在办 and overdue 到期未办: the state at the end of the window (``as_of``: the day
  before ``until``, else today), deadline before that day.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.census_stats import add_census_sheets, census_markdown, census_stats
from pipeline.report.common import CATEGORIES, label, text
from pipeline.report.ledger import M2_PER_MU

STAGES = ["found", "verified", "stopped", "filed", "ordered", "demolished", "rectified", "rechecked",
          "closed", "rebuilt", "lawful", "unfounded", "false_positive"]
UNDONE_BY_REBUILD = {"demolished", "rectified", "rechecked", "closed"}
AREA_STAGES = {"found": "found_m2", "demolished": "demolished_m2", "rectified": "rectified_m2"}

ROW_LABELS: dict[str, tuple[str, str]] = {
    "flights": ("航飞架次", "Flights"),
    "area_flown_km2": ("航飞面积(km²)", "Area flown (km²)"),
    "found": ("发现疑似图斑", "Suspected patches found"),
    "found_m2": ("发现图斑面积(m²)", "Area found (m²)"),
    "found_mu": ("发现图斑面积(亩)", "Area found (mu)"),
    "new_build": ("其中新建", "of which new builds"),
    "existing": ("其中存量", "of which existing"),
    "verified": ("核查确认违法", "Verified illegal"),
    "stopped": ("已制止", "Stopped"),
    "filed": ("已立案", "Filed"),
    "ordered": ("已下达整改/拆除", "Ordered"),
    "demolished": ("已拆除", "Demolished"),
    "demolished_m2": ("拆除面积(m²)", "Demolished area (m²)"),
    "demolished_mu": ("拆除面积(亩)", "Demolished area (mu)"),
    "rectified": ("已整改", "Rectified"),
    "rectified_m2": ("整改面积(m²)", "Rectified area (m²)"),
    "rectified_mu": ("整改面积(亩)", "Rectified area (mu)"),
    "rechecked": ("已复查", "Rechecked"),
    "closed": ("已销号", "Closed"),
    "rebuilt": ("复建", "Rebuilt"),
    "lawful": ("合法", "Lawful"),
    "unfounded": ("举报不实", "Unfounded"),
    "false_positive": ("误报", "False positive"),
    "open": ("在办(期末)", "Open (at the end)"),
    "overdue": ("到期未办(期末)", "Overdue (at the end)"),
    "rectification_rate": ("整改率", "Rectification rate"),
    "closure_rate": ("销号率", "Closure rate"),
}
#: figures that are a state at the end of the window, not events in it
STATE_FIGURES = ("open", "overdue")
BREAK_STAGES = ["found", "verified", "stopped", "filed", "ordered", "demolished", "rectified", "closed", "rebuilt"]
BREAK_COLS: dict[str, tuple[str, str]] = {
    "category": ("类别", "Category"), "town": ("乡镇", "Town"), "village": ("村", "Village"),
    "month": ("月份", "Month"), "demolished_m2": ("拆除面积(m²)", "Demolished (m²)"),
    **{s: ROW_LABELS[s] for s in BREAK_STAGES},
}
BREAKDOWNS = (("by_month", ["month"], ("按月份（按事项发生日期）", "By month (of the event)")),
              ("by_town", ["town"], ("按乡镇", "By town")),
              ("by_village", ["town", "village"], ("按村", "By village")),
              ("by_category", ["category"], ("按类别", "By category")))


def _ts(v: Any) -> pd.Timestamp | None:
    if v is None or v == "":
        return None
    return pd.Timestamp(v)


def stage_events(cases: pd.DataFrame, events: pd.DataFrame, lifecycle, until: pd.Timestamp | None) -> pd.DataFrame:
    """One row per counted action (case_no, stage, at), up to ``until``: discoveries, the
    events that moved a case into a state, rebuilds; actions a later rebuild undid are gone."""
    found_at = pd.to_datetime(cases["first_seen_at"], errors="coerce").fillna(
        pd.to_datetime(cases["created_at"], errors="coerce"))
    rows = [pd.DataFrame({"case_no": cases["case_no"].to_numpy(), "stage": "found", "at": found_at.to_numpy()})]
    if len(events):
        ev = events[["case_no", "at", "from_status", "to_status", "event_id"]].copy()
        ev = ev[ev["to_status"].notna() & (ev["from_status"] != ev["to_status"])]   # moves only, not notes
        ev["at"] = pd.to_datetime(ev["at"], errors="coerce")
        rebuild = ev["from_status"].isin(lifecycle.rebuilt_from) & (ev["to_status"] == lifecycle.rebuilt_to)
        ev["stage"] = np.where(rebuild, "rebuilt", ev["to_status"].astype(object))
        ev = ev[ev["stage"].isin(STAGES)]
        rows.append(ev[["case_no", "stage", "at", "event_id"]])
    out = pd.concat(rows, ignore_index=True)
    out = out[out["at"].notna()]
    if until is not None:
        out = out[out["at"] < until]
    # a rebuild undoes the case's completion steps before it
    last_rebuild = out[out["stage"] == "rebuilt"].groupby("case_no")["at"].max()
    lr = pd.to_datetime(out["case_no"].map(last_rebuild.to_dict()))
    undone = out["stage"].isin(UNDONE_BY_REBUILD) & lr.notna() & (out["at"] <= lr)
    return out[~undone].sort_values("at", kind="stable").reset_index(drop=True)


def _window(ev: pd.DataFrame, since: pd.Timestamp | None) -> pd.DataFrame:
    return ev if since is None else ev[ev["at"] >= since]


def campaign_stats(store, rules, since: Any = None, until: Any = None, as_of: Any = None,
                   campaign_start: Any = None, places: Any = None) -> dict:
    """The figures as a dict: ``period`` and ``cumulative`` (figure → number), ``rates``
    (cumulative), ``empty`` (nothing happened in the period), breakdowns of the period
    ``by_month`` (of the event), ``by_town``, ``by_village``, ``by_category`` (DataFrames).
    ``places`` (towns or villages) keeps only their cases (an officer's figures)."""
    lc = rules.lifecycle
    since_t, until_t, start_t = _ts(since), _ts(until), _ts(campaign_start)
    if as_of is not None:
        as_of_t = pd.Timestamp(as_of).normalize()
    elif until_t is not None:
        as_of_t = (until_t - timedelta(days=1)).normalize()
    else:
        as_of_t = pd.Timestamp(datetime.now()).normalize()
    cases = store.cases()
    events = store.events()
    if places is not None:
        cases = cases[cases["town"].isin(places) | cases["village"].isin(places)]
        events = events[events["case_no"].isin(set(cases["case_no"]))] if len(events) else events
    ev = stage_events(cases, events, lc, until_t)
    info = cases.set_index("case_no")
    area = pd.to_numeric(info["area_m2"], errors="coerce").fillna(0.0)
    dem_area = pd.to_numeric(info["demolished_area_m2"], errors="coerce").fillna(area)
    flights = store.list_flights()
    fl_t = pd.to_datetime(flights["captured_at"], errors="coerce") if len(flights) else pd.Series(dtype="datetime64[ns]")

    def figures(win: pd.DataFrame, lo: pd.Timestamp | None) -> dict[str, float]:
        per = {s: set(win.loc[win["stage"] == s, "case_no"]) for s in STAGES}
        keep = np.ones(len(flights), bool)
        if lo is not None:
            keep &= (fl_t >= lo).to_numpy()
        if until_t is not None:
            keep &= (fl_t < until_t).to_numpy()
        fl = flights[keep] if len(flights) else flights
        out: dict[str, float] = {"flights": int(len(fl)),
                                 "area_flown_km2": round(float(fl.geometry.dropna().area.sum()) / 1e6, 4)
                                 if len(fl) else 0.0}
        for s in STAGES:
            out[s] = len(per[s])
            if s in AREA_STAGES:
                m2 = float((dem_area if s == "demolished" else area).reindex(list(per[s])).fillna(0).sum())
                out[AREA_STAGES[s]] = round(m2, 1)
                out[AREA_STAGES[s].replace("_m2", "_mu")] = round(m2 / M2_PER_MU, 2)
        stock = info["stock"].reindex(list(per["found"]))
        out["new_build"] = int((stock == "new_build").sum())
        out["existing"] = int((stock == "existing").sum())
        return {k: out[k] for k in ROW_LABELS if k in out}          # display order

    period_ev = _window(ev, since_t)
    cum_ev = _window(ev, start_t)
    period, cumulative = figures(period_ev, since_t), figures(cum_ev, start_t)

    # the state of every case at the end of the window
    state = info["status"].astype(object).copy()
    if len(events):
        e = events.copy()
        e["at"] = pd.to_datetime(e["at"], errors="coerce")
        e = e[e["at"] < as_of_t + timedelta(days=1)].sort_values(["at", "event_id"])
        last = e.groupby("case_no")["to_status"].last()
        state = last.reindex(info.index).fillna(state)
    existed = ev[ev["stage"] == "found"].set_index("case_no")["at"].reindex(info.index)
    existed = (existed < as_of_t + timedelta(days=1)).fillna(False)
    deadline = pd.to_datetime(info["deadline"], errors="coerce")
    open_ = state.isin(lc.open) & existed
    for d in (period, cumulative):
        d["open"] = int(open_.sum())
        d["overdue"] = int((open_ & (deadline < as_of_t).fillna(False)).sum())

    dismissed = set(cum_ev.loc[cum_ev["stage"].isin(["lawful", "unfounded", "false_positive"]), "case_no"])
    verified = set(cum_ev.loc[cum_ev["stage"] == "verified", "case_no"]) - dismissed
    filed = set(cum_ev.loc[cum_ev["stage"] == "filed", "case_no"])
    fixed = set(cum_ev.loc[cum_ev["stage"].isin(["demolished", "rectified"]), "case_no"])
    closed = set(cum_ev.loc[cum_ev["stage"] == "closed", "case_no"])
    rates = {"rectification_rate": len(fixed & verified) / len(verified) if verified else None,
             "closure_rate": len(closed & filed) / len(filed) if filed else None}

    counted = period_ev.join(info[["town", "village", "category"]], on="case_no")
    counted["month"] = counted["at"].dt.strftime("%Y-%m")
    counted["demolished_m2"] = np.where(counted["stage"] == "demolished",
                                        counted["case_no"].map(dem_area).fillna(0), 0.0)
    out = {"since": text(since_t.date()) if since_t is not None else "",
           "until": text(until_t.date()) if until_t is not None else "",
           "campaign_start": text(start_t.date()) if start_t is not None else "",
           "first_record": text(ev["at"].min().date()) if len(ev) else "",
           "as_of": text(as_of_t.date()), "period": period, "cumulative": cumulative, "rates": rates,
           "empty": not len(period_ev[period_ev["stage"] != "found"]) and not period["found"]
           and not period["flights"]}
    for key, keys, _ in BREAKDOWNS:
        out[key] = breakdown(counted, keys)
    return out


def breakdown(counted: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Distinct cases per stage, per group of ``keys``, plus the demolished m²."""
    cols = keys + BREAK_STAGES + ["demolished_m2"]
    if not len(counted):
        return pd.DataFrame(columns=cols)
    c = counted.copy()
    for k in keys:
        c[k] = c[k].fillna("").astype(str)
    n = c.drop_duplicates(keys + ["stage", "case_no"]).pivot_table(
        index=keys, columns="stage", values="case_no", aggfunc="count", fill_value=0)
    n = n.reindex(columns=BREAK_STAGES, fill_value=0).astype(int)
    m2 = c[c["stage"] == "demolished"].drop_duplicates(["case_no"] + keys).groupby(keys)["demolished_m2"].sum()
    n["demolished_m2"] = m2.reindex(n.index).fillna(0.0).round(1)
    return n.reset_index()[cols]


def period_text(st: dict, lang: str) -> str:
    """The window in words: both dates, one open end, or everything so far."""
    zh = lang != "en"
    start = st["since"] or (st["campaign_start"] or st["first_record"])
    if st["since"] or st["until"]:
        a = st["since"] or ("（开始）" if zh else "(start)")
        b = (pd.Timestamp(st["until"]) - timedelta(days=1)).date().isoformat() if st["until"] else st["as_of"]
        return f"{a} 至 {b}" if zh else f"{a} to {b}"
    if zh:
        return f"全部（自 {start} 起，截至 {st['as_of']}）" if start else f"全部（截至 {st['as_of']}）"
    return f"everything (from {start}, as of {st['as_of']})" if start else f"everything (as of {st['as_of']})"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float, np.integer, np.floating)) else text(v)


def figure_rows(st: dict, lang: str) -> list[tuple[str, str, str]]:
    """(label, 本期, 累计) per figure, rates last (cumulative only)."""
    rows = []
    for k, v in st["period"].items():
        rows.append((label(ROW_LABELS, k, lang), "—" if k in STATE_FIGURES else _num(v), _num(st["cumulative"][k])))
    for k, v in st["rates"].items():
        rows.append((label(ROW_LABELS, k, lang), "—", _pct(v)))
    return rows


def labelled(df: pd.DataFrame, lang: str) -> pd.DataFrame:
    """A breakdown with display labels: category names, Chinese headers."""
    df = df.copy()
    if "category" in df:
        df["category"] = [label(CATEGORIES, c, lang) if c else "—" for c in df["category"]]
    return df.rename(columns={k: label(BREAK_COLS, k, lang) for k in df.columns})


def stats_markdown(st: dict, lang: str, district: str = "") -> str:
    zh = lang != "en"
    head = ("指标", "本期", "累计") if zh else ("Figure", "This period", "Cumulative")
    lines = [f"# {district} {'两违巡查统计' if zh else 'Patrol campaign figures'}", "",
             f"{'统计期' if zh else 'Period'}: {period_text(st, lang)}", ""]
    if st["empty"]:
        lines += ["本期无任何记录（无航飞、无新发现、无处置事项）。" if zh else
                  "Nothing happened in this period (no flight, no discovery, no action).", ""]
    lines += [f"| {' | '.join(head)} |", "| --- | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in figure_rows(st, lang)]
    for key, _, title in BREAKDOWNS:
        df = labelled(st[key], lang)
        lines += ["", f"## {title[0]}（本期）" if zh else f"## {title[1]} (this period)", ""]
        if not len(df):
            lines.append("本期无记录" if zh else "nothing in this period")
            continue
        lines.append("| " + " | ".join(df.columns) + " |")
        lines.append("| " + " | ".join("---" for _ in df.columns) + " |")
        for row in df.itertuples(index=False):
            lines.append("| " + " | ".join(_num(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_stats_xlsx(st: dict, path: Path, lang: str, district: str = "", census: dict | None = None) -> Path:
    """The figures, one sheet per breakdown, and the 自建房 census's figures when given."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    zh = lang != "en"
    wb = Workbook()
    ws = wb.active
    ws.title = "汇总" if zh else "Totals"
    ws.append([f"{district} {'两违巡查统计' if zh else 'Patrol campaign figures'}"])
    ws.append([f"{'统计期' if zh else 'Period'}: {period_text(st, lang)}"])
    ws.append(["指标", "本期", "累计"] if zh else ["Figure", "This period", "Cumulative"])
    for k in st["period"]:
        ws.append([label(ROW_LABELS, k, lang), None if k in STATE_FIGURES else st["period"][k],
                   st["cumulative"][k]])
    for k, v in st["rates"].items():
        ws.append([label(ROW_LABELS, k, lang), None, v])
        if v is not None:
            ws.cell(ws.max_row, 3).number_format = "0.0%"
    ws.column_dimensions["A"].width = 24
    ws.column_dimensions["B"].width = ws.column_dimensions["C"].width = 14
    for c in ws[3]:
        c.font = Font(bold=True)
    ws.freeze_panes = "A4"
    for key, _, title in BREAKDOWNS:
        df = labelled(st[key], lang)
        sh = wb.create_sheet(title[1][:31] if not zh else title[0][:31])
        sh.append(list(df.columns))
        for row in df.itertuples(index=False):
            sh.append([v.item() if hasattr(v, "item") else v for v in row])
        for j in range(1, len(df.columns) + 1):
            sh.column_dimensions[get_column_letter(j)].width = 14
        for c in sh[1]:
            c.font = Font(bold=True)
        sh.freeze_panes = "A2"
    if census is not None:
        add_census_sheets(wb, census)
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


def _cjk_font() -> str | None:
    from matplotlib import font_manager
    for f in font_manager.fontManager.ttflist:
        if any(k in f.name for k in ("Noto Sans CJK", "Noto Serif CJK", "WenQuanYi", "SimHei", "Source Han",
                                      "Microsoft YaHei", "PingFang", "AR PL")):
            return f.name
    return None


def write_stats_png(st: dict, path: Path, lang: str) -> Path:
    """Bar chart: the period's enforcement funnel and the actions per month. Labels in
    English when no CJK font is installed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = _cjk_font() if lang == "zh" else None
    use = lang if font or lang == "en" else "en"
    if font:
        plt.rcParams["font.sans-serif"] = [font, "DejaVu Sans"]
    t = st["period"]
    keys = ["found", "verified", "filed", "ordered", "demolished", "rectified", "closed", "rebuilt"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    ax = axes[0]
    vals = [t[k] for k in keys]
    ax.barh([label(ROW_LABELS, k, use) for k in keys][::-1], vals[::-1], color="#4c72b0")
    for y, v in enumerate(vals[::-1]):
        ax.text(v, y, f" {v}", va="center", fontsize=9)
    rr, cr = st["rates"]["rectification_rate"], st["rates"]["closure_rate"]
    ax.set_title(f"{period_text(st, use)}\n{label(ROW_LABELS, 'rectification_rate', use)} {_pct(rr)} · "
                 f"{label(ROW_LABELS, 'closure_rate', use)} {_pct(cr)}", fontsize=9)
    ax = axes[1]
    bm = st["by_month"]
    if len(bm):
        x = np.arange(len(bm))
        ax.bar(x - 0.2, bm["found"], 0.4, label=label(BREAK_COLS, "found", use), color="#dd8452")
        ax.bar(x + 0.2, bm["demolished"] + bm["rectified"], 0.4,
               label=("拆除/整改" if use == "zh" else "Demolished/rectified"), color="#55a868")
        ax.set_xticks(x, bm["month"], rotation=45, fontsize=8)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "本期无记录" if use == "zh" else "nothing in this period", ha="center", va="center")
    ax.set_title("按月份（事项发生日期）" if use == "zh" else "By month (of the event)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_stats(store, settings, rules, out_dir: Path, since: Any = None, until: Any = None,
                as_of: Any = None) -> dict[str, Path]:
    """stats.md, stats.xlsx and stats.png under ``out_dir``: the 两违 figures, then the 自建房 census's."""
    lang = settings.report.language
    st = campaign_stats(store, rules, since, until, as_of, settings.report.campaign_start)
    census = census_stats(store, settings.census, since, until, settings.report.campaign_start)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "stats.md"
    md.write_text(stats_markdown(st, lang, settings.district.name) + "\n" + census_markdown(census), encoding="utf-8")
    return {"stats_md": md,
            "stats_xlsx": write_stats_xlsx(st, out_dir / "stats.xlsx", lang, settings.district.name, census),
            "stats_png": write_stats_png(st, out_dir / "stats.png", lang)}
