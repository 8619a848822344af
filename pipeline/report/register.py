"""The 自建房台账 as a workbook: one row per register record, in the column order and with the
headers of ``register_columns`` (config/census.yaml); the form's facts from the latest 排查."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd

from pipeline.core.geo import to_wgs84_points
from pipeline.report.common import missing, text


def _cell(v: Any) -> Any:
    if isinstance(v, bool):
        return "是" if v else "否"
    if isinstance(v, (list, tuple)):
        return "、".join(map(str, v))
    if missing(v):
        return None
    if isinstance(v, pd.Timestamp):
        return text(v)
    return v.item() if hasattr(v, "item") else v


def register_rows(houses: gpd.GeoDataFrame, census) -> pd.DataFrame:
    """The register's rows with the configured headers."""
    heads = census.register_headers()
    points = to_wgs84_points(houses, houses.crs)
    rows = []
    for i, (_, h) in enumerate(houses.iterrows()):
        facts = h["inspection"] if isinstance(h["inspection"], dict) else {}
        lon, lat = points[i]
        derived = {"seq": i + 1, "coords": f"{lon:.6f},{lat:.6f}", "status": census.lifecycle.label(h["status"]),
                   "gone": "是" if not pd.isna(h["gone_flight"]) else "", "area_m2": round(float(h["area_m2"]), 1)}
        rows.append([_cell(derived[f] if f in derived else facts[f] if f in facts else h.get(f))
                     for f, _ in heads])
    return pd.DataFrame(rows, columns=[hd for _, hd in heads])


def write_register_xlsx(houses: gpd.GeoDataFrame, census, path: Path, title: str = "") -> Path:
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    df = register_rows(houses, census)
    wb = Workbook()
    ws = wb.active
    ws.title = "自建房台账"
    ws.append([title or "自建房安全排查台账"])
    ws.append(list(df.columns))
    for row in df.itertuples(index=False):
        ws.append(list(row))
    for c in ws[2]:
        c.font = Font(bold=True)
    for j, col in enumerate(df.columns, start=1):
        ws.column_dimensions[get_column_letter(j)].width = max(8, min(28, 2 * len(str(col)) + 2))
    ws.freeze_panes = "A3"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path
