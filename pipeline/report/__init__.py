"""Reports: the offline map, case lists, evidence chips and sheets, campaign statistics.

``write_reports(store, settings, out_dir, flight_id=None)`` writes everything for one
flight or the whole district and returns the paths by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.errors import PatrolError
from pipeline.report.evidence import make_chips, write_evidence_sheets
from pipeline.report.lists import (  # noqa: F401
    FORMATS,
    export_cases,
    write_csv,
    write_geojson,
    write_gpkg,
    write_kml,
    write_kmz,
    write_xlsx,
)
from pipeline.report.map import build_map
from pipeline.report.stats import write_stats


def write_reports(store, settings, out_dir: str | Path, flight_id: str | None = None, *,
                  status: Any = None, category: Any = None, town: str | None = None,
                  village: str | None = None, since: Any = None, until: Any = None,
                  progress: bool = True) -> dict[str, Path]:
    """Map(s), case lists (xlsx, csv, GeoJSON, KML, KMZ, GeoPackage), evidence chips and
    sheets, and statistics under ``out_dir``. With ``flight_id``: that flight's map and the
    cases it covers; without: the district map plus one map per flight. Filters narrow the
    cases listed and mapped (statistics always cover every case of the period)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rules = settings.rules
    lang = settings.report.language
    flights = store.list_flights()
    scope = flights
    if flight_id is not None:
        scope = flights[flights["flight_id"] == flight_id]
        if not len(scope):
            raise PatrolError(f"flight {flight_id} is not in {store.url}; see `patrol flights list`")
    cases = store.cases(status=status, category=category, town=town, village=village, since=since, until=until)
    if flight_id is not None and len(cases):
        fp = scope.geometry.iloc[0]
        cases = cases[cases.intersects(fp)] if fp is not None else cases.iloc[0:0]
    evidence = make_chips(store, cases, flights, out, settings.report.chip_margin_m, progress=progress)
    if len(evidence) == 0:
        evidence = store.evidence()
    paths: dict[str, Path] = {}
    stem = f"flight_{flight_id}" if flight_id else "district"
    map_html = out / f"map_{stem}.html"
    sheets = write_evidence_sheets(store, cases, evidence, out, settings, rules, flights, map_html,
                                   progress=progress)
    paths["evidence_index"] = sheets["index"]
    paths["map"] = build_map(store, settings, map_html, flight_id=flight_id, cases=cases, evidence=evidence,
                             rules=rules, sheets=sheets)
    if flight_id is None:
        for fid in flights["flight_id"]:
            fl_cases = cases
            fp = flights.loc[flights["flight_id"] == fid].geometry.iloc[0]
            if fp is not None and len(cases):
                fl_cases = cases[cases.intersects(fp)]
            paths[f"map_flight_{fid}"] = build_map(store, settings, out / f"map_flight_{fid}.html", flight_id=fid,
                                                   cases=fl_cases, evidence=evidence, rules=rules, sheets=sheets)
    crs = store.crs
    columns = settings.ledger.columns
    paths["cases_xlsx"] = write_xlsx(cases, out / f"cases_{stem}.xlsx", lang, rules, evidence, crs,
                                     columns=columns, store=store)
    paths["cases_csv"] = write_csv(cases, out / f"cases_{stem}.csv", lang, rules, crs, columns, store)
    paths["cases_geojson"] = write_geojson(cases, out / f"cases_{stem}.geojson", lang, rules, crs)
    paths["cases_kml"] = write_kml(cases, out / f"cases_{stem}.kml", lang, rules, crs)
    paths["cases_kmz"] = write_kmz(cases, out / f"cases_{stem}.kmz", lang, rules, crs, evidence, store)
    paths["cases_gpkg"] = write_gpkg(cases, out / f"cases_{stem}.gpkg", lang, rules, crs)
    paths.update(write_stats(store, settings, rules, out, since, until))
    return paths
