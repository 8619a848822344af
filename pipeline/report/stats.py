"""Campaign statistics reported upward (DOMAIN.md): a table (Markdown, xlsx) and a chart (PNG).

Cohort: the cases first seen in the period (``since <= first_seen_at < until``, as
``store.cases``), each counted by every stage it has reached so far (its event history
plus its current status). Stages the lifecycle lets a bureau skip count as reached when a
later stage of the enforcement line is: an ordered case was verified and filed.

- verified illegal 核查确认违法: reached verified or any later stage of the line
- stopped 制止: reached stopped; filed 立案: reached filed, ordered or later
- demolished / rectified 拆除/整改: reached it (count, m² = demolished_area_m2 or area_m2)
- 整改率 = (demolished + rectified) ÷ verified illegal; 销号率 = closed ÷ filed
- overdue 到期未办: still open (lifecycle.open), deadline before ``as_of``
- side exits: current status lawful / unfounded / false_positive
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.common import CATEGORIES, label, text

LINE = ["verified", "stopped", "filed", "ordered", "demolished", "rectified", "rechecked", "closed"]
AFTER_FILED = ["filed", "ordered", "demolished", "rectified", "rechecked", "closed"]
SIDE = ["lawful", "unfounded", "false_positive"]

ROW_LABELS: dict[str, tuple[str, str]] = {
    "flights": ("航飞架次", "Flights"),
    "area_flown_km2": ("航飞面积(km²)", "Area flown (km²)"),
    "found": ("发现疑似图斑", "Suspected patches found"),
    "new_build": ("其中新建", "of which new builds"),
    "existing": ("其中存量", "of which existing"),
    "verified_illegal": ("核查确认违法", "Verified illegal"),
    "stopped": ("已制止", "Stopped"),
    "filed": ("已立案", "Filed"),
    "ordered": ("已下达整改/拆除", "Ordered"),
    "demolished": ("已拆除", "Demolished"),
    "demolished_m2": ("拆除面积(m²)", "Demolished area (m²)"),
    "rectified": ("已整改", "Rectified"),
    "rectified_m2": ("整改面积(m²)", "Rectified area (m²)"),
    "rechecked": ("已复查", "Rechecked"),
    "closed": ("已销号", "Closed"),
    "lawful": ("合法", "Lawful"),
    "unfounded": ("举报不实", "Unfounded"),
    "false_positive": ("误报", "False positive"),
    "open": ("在办", "Open"),
    "overdue": ("到期未办", "Overdue"),
    "rebuilt": ("复建", "Rebuilt"),
    "rectification_rate": ("整改率", "Rectification rate"),
    "closure_rate": ("销号率", "Closure rate"),
}


def _reached(cases: pd.DataFrame, events: pd.DataFrame) -> list[set[str]]:
    by_case: dict[str, set[str]] = {}
    if len(events):
        for cno, to in zip(events["case_no"], events["to_status"]):
            if isinstance(to, str):
                by_case.setdefault(cno, set()).add(to)
    out = []
    for cno, st in zip(cases["case_no"], cases["status"]):
        s = set(by_case.get(cno, set()))
        if isinstance(st, str):
            s.add(st)
        out.append(s)
    return out


def _ts(v: Any) -> pd.Timestamp | None:
    if v is None or v == "":
        return None
    return pd.Timestamp(v)


def campaign_stats(store, rules, since: Any = None, until: Any = None, as_of: Any = None) -> dict:
    """The figures of the period as a dict: ``totals`` (name → number), ``rates`` and
    breakdowns ``by_category``, ``by_village``, ``by_month`` (DataFrames)."""
    lc = rules.lifecycle
    since_t, until_t = _ts(since), _ts(until)
    as_of_t = pd.Timestamp(as_of or datetime.now()).normalize()
    cases = store.cases(since=since, until=until)
    events = store.events()
    events = events[events["case_no"].isin(set(cases["case_no"]))] if len(events) else events
    flights = store.list_flights()
    if len(flights):
        t = pd.to_datetime(flights["captured_at"])
        keep = np.ones(len(flights), bool)
        if since_t is not None:
            keep &= (t >= since_t).to_numpy()
        if until_t is not None:
            keep &= (t < until_t).to_numpy()
        flights = flights[keep]
    reached = _reached(cases, events)
    line_after = {s: set(LINE[LINE.index(s):]) for s in LINE}

    def n_reached(states: set[str]) -> np.ndarray:
        return np.array([bool(r & states) for r in reached], dtype=bool)

    verified = n_reached(line_after["verified"])
    filed = n_reached(set(AFTER_FILED))
    demolished = n_reached({"demolished"})
    rectified = n_reached({"rectified"})
    closed = n_reached({"closed"})
    area = pd.to_numeric(cases["area_m2"], errors="coerce").fillna(0).to_numpy()
    dem_area = pd.to_numeric(cases["demolished_area_m2"], errors="coerce").to_numpy()
    dem_area = np.where(np.isnan(dem_area), area, dem_area)
    status = cases["status"].astype(object).to_numpy()
    deadline = pd.to_datetime(cases["deadline"], errors="coerce")
    open_ = np.isin(status, lc.open)
    overdue = open_ & (deadline < as_of_t).fillna(False).to_numpy()
    flags = [set(f) if isinstance(f, (list, tuple)) else set() for f in cases["flags"]]
    rebuilt = np.array(["rebuilt" in f for f in flags], dtype=bool)
    fp_area = 0.0
    if len(flights):
        fp_area = float(flights.geometry.dropna().area.sum())
    totals: dict[str, float] = {
        "flights": int(len(flights)),
        "area_flown_km2": round(fp_area / 1e6, 4),
        "found": int(len(cases)),
        "new_build": int((cases["stock"] == "new_build").sum()),
        "existing": int((cases["stock"] == "existing").sum()),
        "verified_illegal": int(verified.sum()),
        "stopped": int(n_reached({"stopped"}).sum()),
        "filed": int(filed.sum()),
        "ordered": int(n_reached(line_after["ordered"]).sum()),
        "demolished": int(demolished.sum()),
        "demolished_m2": round(float(dem_area[demolished].sum()), 1),
        "rectified": int(rectified.sum()),
        "rectified_m2": round(float(area[rectified].sum()), 1),
        "rechecked": int(n_reached({"rechecked", "closed"}).sum()),
        "closed": int(closed.sum()),
        "lawful": int((status == "lawful").sum()),
        "unfounded": int((status == "unfounded").sum()),
        "false_positive": int((status == "false_positive").sum()),
        "open": int(open_.sum()),
        "overdue": int(overdue.sum()),
        "rebuilt": int(rebuilt.sum()),
    }
    fixed = demolished | rectified
    rates = {
        "rectification_rate": (float(fixed.sum()) / verified.sum()) if verified.sum() else None,
        "closure_rate": (float(closed.sum()) / filed.sum()) if filed.sum() else None,
    }
    df = pd.DataFrame({
        "category": cases["category"].fillna("").to_numpy(),
        "town": cases["town"].fillna("").to_numpy(), "village": cases["village"].fillna("").to_numpy(),
        "month": pd.to_datetime(cases["first_seen_at"].fillna(cases["created_at"])).dt.strftime("%Y-%m").to_numpy()
        if len(cases) else [],
        "found": 1, "verified_illegal": verified.astype(int), "fixed": fixed.astype(int),
        "closed": closed.astype(int), "overdue": overdue.astype(int), "area_m2": area})

    def breakdown(keys: list[str]) -> pd.DataFrame:
        if not len(df):
            return pd.DataFrame(columns=keys + ["found", "verified_illegal", "fixed", "closed", "overdue", "area_m2"])
        return df.groupby(keys, sort=True)[["found", "verified_illegal", "fixed", "closed", "overdue", "area_m2"]] \
            .sum().reset_index()

    return {"since": text(since_t) if since_t is not None else "", "until": text(until_t) if until_t is not None else "",
            "as_of": text(as_of_t), "totals": totals, "rates": rates,
            "by_category": breakdown(["category"]), "by_village": breakdown(["town", "village"]),
            "by_month": breakdown(["month"]),
            "by_status": cases["status"].value_counts().to_dict()}


BREAK_COLS: dict[str, tuple[str, str]] = {
    "category": ("类别", "Category"), "town": ("乡镇", "Town"), "village": ("村", "Village"),
    "month": ("月份", "Month"), "found": ("发现", "Found"), "verified_illegal": ("确认违法", "Verified illegal"),
    "fixed": ("拆除/整改", "Demolished/rectified"), "closed": ("销号", "Closed"),
    "overdue": ("到期未办", "Overdue"), "area_m2": ("面积(m²)", "Area (m²)"),
}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def _labelled(df: pd.DataFrame, lang: str) -> pd.DataFrame:
    df = df.copy()
    if "category" in df:
        df["category"] = [label(CATEGORIES, c, lang) for c in df["category"]]
    if "area_m2" in df:
        df["area_m2"] = df["area_m2"].round(1)
    return df.rename(columns={k: label(BREAK_COLS, k, lang) for k in df.columns})


def stats_markdown(st: dict, lang: str, district: str = "") -> str:
    zh = lang != "en"
    period = f"{st['since'] or '…'} – {st['until'] or '…'}"
    lines = [f"# {district} {'两违巡查统计' if zh else 'Patrol campaign figures'}", "",
             f"{'统计期' if zh else 'Period'}: {period}  ({'截至' if zh else 'as of'} {st['as_of']})", "",
             f"| {'指标' if zh else 'Figure'} | {'数值' if zh else 'Value'} |", "| --- | ---: |"]
    for k, v in st["totals"].items():
        lines.append(f"| {label(ROW_LABELS, k, lang)} | {v:g} |")
    for k, v in st["rates"].items():
        lines.append(f"| {label(ROW_LABELS, k, lang)} | {_pct(v)} |")
    for key, title in (("by_category", ("按类别", "By category")), ("by_village", ("按乡镇/村", "By town/village")),
                       ("by_month", ("按月份", "By month"))):
        df = _labelled(st[key], lang)
        lines += ["", f"## {title[1] if lang == 'en' else title[0]}", ""]
        if not len(df):
            lines.append("—")
            continue
        lines.append("| " + " | ".join(df.columns) + " |")
        lines.append("| " + " | ".join("---" for _ in df.columns) + " |")
        for row in df.itertuples(index=False):
            lines.append("| " + " | ".join(text(v) if not isinstance(v, (int, np.integer)) else str(v)
                                           for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_stats_xlsx(st: dict, path: Path, lang: str) -> Path:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = "汇总" if lang == "zh" else "Totals"
    ws.append(["指标" if lang == "zh" else "Figure", "数值" if lang == "zh" else "Value"])
    for k, v in st["totals"].items():
        ws.append([label(ROW_LABELS, k, lang), v])
    for k, v in st["rates"].items():
        ws.append([label(ROW_LABELS, k, lang), v])
        if v is not None:
            ws.cell(ws.max_row, 2).number_format = "0.0%"
    ws.column_dimensions["A"].width = 24
    ws.column_dimensions["B"].width = 14
    for key, title in (("by_category", ("按类别", "By category")), ("by_village", ("按村", "By village")),
                       ("by_month", ("按月份", "By month"))):
        df = _labelled(st[key], lang)
        sh = wb.create_sheet(title[1] if lang == "en" else title[0])
        sh.append(list(df.columns))
        for row in df.itertuples(index=False):
            sh.append([v.item() if hasattr(v, "item") else v for v in row])
        for j in range(1, len(df.columns) + 1):
            sh.column_dimensions[chr(64 + j)].width = 14
    for sh in wb.worksheets:
        for c in sh[1]:
            c.font = Font(bold=True)
        sh.freeze_panes = "A2"
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
    """Bar chart: the enforcement funnel and cases found per month. Labels in English when
    no CJK font is installed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = _cjk_font() if lang == "zh" else None
    use = lang if font or lang == "en" else "en"
    if font:
        plt.rcParams["font.sans-serif"] = [font, "DejaVu Sans"]
    t = st["totals"]
    keys = ["found", "verified_illegal", "filed", "ordered", "demolished", "rectified", "closed", "overdue"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    ax = axes[0]
    vals = [t[k] for k in keys]
    ax.barh([label(ROW_LABELS, k, use) for k in keys][::-1], vals[::-1], color="#4c72b0")
    for y, v in enumerate(vals[::-1]):
        ax.text(v, y, f" {v}", va="center", fontsize=9)
    rr, cr = st["rates"]["rectification_rate"], st["rates"]["closure_rate"]
    ax.set_title(f"{label(ROW_LABELS, 'rectification_rate', use)} {_pct(rr)} · "
                 f"{label(ROW_LABELS, 'closure_rate', use)} {_pct(cr)}", fontsize=10)
    ax = axes[1]
    bm = st["by_month"]
    if len(bm):
        x = np.arange(len(bm))
        ax.bar(x - 0.2, bm["found"], 0.4, label=label(BREAK_COLS, "found", use), color="#dd8452")
        ax.bar(x + 0.2, bm["fixed"], 0.4, label=label(BREAK_COLS, "fixed", use), color="#55a868")
        ax.set_xticks(x, bm["month"], rotation=45, fontsize=8)
        ax.legend(fontsize=8)
    ax.set_title("按月份" if use == "zh" else "By month", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_stats(store, settings, rules, out_dir: Path, since: Any = None, until: Any = None,
                as_of: Any = None) -> dict[str, Path]:
    """stats.md, stats.xlsx and stats.png under ``out_dir``."""
    lang = settings.report.language
    st = campaign_stats(store, rules, since, until, as_of)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "stats.md"
    md.write_text(stats_markdown(st, lang, settings.district.name), encoding="utf-8")
    return {"stats_md": md, "stats_xlsx": write_stats_xlsx(st, out_dir / "stats.xlsx", lang),
            "stats_png": write_stats_png(st, out_dir / "stats.png", lang)}
