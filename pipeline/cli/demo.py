"""`patrol demo`: the generated district through every stage, epoch after epoch.

Between flights a simulated officer acts as the truth layer implies (illegal cases
verified and ordered, lawful ones dismissed, demolition seen → demolished), so the
lifecycle of a real campaign shows up in the store and the reports.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

DEMO_ACTOR = "demo-officer"

# lazy imports: the stages load when the demo runs, so that `patrol --help` stays quick


def officer_actions_from_truth(store, truth: gpd.GeoDataFrame, rules, actor: str = DEMO_ACTOR,
                               now=None) -> dict[str, int]:
    """Act on the store's cases as a field check against ``truth`` (one epoch) would.

    A suspected case whose footprint is mostly an illegal truth structure is verified and
    ordered; one over a legal structure is closed as lawful; one over nothing is a false
    positive. An ordered case flagged demolition_seen is marked demolished."""
    from pipeline.cases.track import transition

    lc = rules.lifecycle
    cases = store.cases()
    if not len(cases):
        return {}
    truth = truth.to_crs(cases.crs)
    cg = np.asarray(cases.geometry.values, dtype=object)
    tg = np.asarray(truth.geometry.values, dtype=object)
    ci, ti = shapely.STRtree(tg).query(cg, predicate="intersects")
    share = shapely.area(shapely.intersection(cg[ci], tg[ti])) / np.maximum(shapely.area(cg[ci]), 1e-9)
    pairs = pd.DataFrame({"c": ci, "t": ti, "share": share}).sort_values("share", ascending=False)
    best = pairs[pairs["share"] >= 0.3].drop_duplicates("c").set_index("c")["t"]
    violation = truth["violation"].fillna("").to_numpy(dtype=object)

    counts: dict[str, int] = {}
    events, changed = [], []
    for i in range(len(cases)):
        row = cases.iloc[i].to_dict()
        steps: list[tuple[str, str]] = []
        if row["status"] == lc.initial:
            if i in best.index and violation[best[i]]:
                steps = [("verified", "现场核查：确认违法"),
                         ("ordered", "下达限期拆除通知书")]
            elif i in best.index:
                steps = [("lawful", "现场核查：合法建筑")]
            else:
                steps = [("false_positive", "现场核查：无建筑，误报")]
        elif row["status"] in lc.demolition_watch and "demolition_seen" in (row["flags"] or []):
            steps = [("demolished", "复查：航拍显示已拆除")]
        for to, note in steps:
            events.append(transition(row, to, actor, note, lc, now))
            counts[to] = counts.get(to, 0) + 1
        if steps:
            changed.append(row)
    if changed:
        with store.transaction():
            store.save_cases(gpd.GeoDataFrame(changed, geometry="geometry", crs=cases.crs))
            store.append_events(events)
    return counts


STRUCTURES = ("砖混", "框架", "砖木", "混合")
USES = ("自住", "自住", "自住", "出租", "餐饮", "住宿", "生产经营")


def census_actions(store, census, day: str, actor: str = DEMO_ACTOR) -> dict[str, int]:
    """A simulated census team on ``day``: every house still waiting is inspected (facts drawn
    from its number, so each run gives the same census: about one in six a serious hazard, one
    in four a general one); a hazard inspected earlier goes into rectification; a house in
    rectification since an earlier visit is rectified, rechecked and closed (销号)."""
    import hashlib

    from pipeline.cases.houses import inspect_house, set_house_status
    counts: dict[str, int] = {}
    deadline = (pd.Timestamp(day) + pd.Timedelta(days=60)).date().isoformat()
    for h in store.houses().itertuples(index=False):
        k = int(hashlib.sha256(h.house_no.encode()).hexdigest()[:8], 16)
        if h.status == "registered" and pd.isna(h.gone_flight):
            use = USES[k % len(USES)]
            judgement = ("存在严重安全隐患" if k % 6 == 0 else "存在一般安全隐患" if k % 4 == 1 else "未发现安全隐患")
            facts = {"owner": h.owner if isinstance(h.owner, str) else "", "structure": STRUCTURES[k % 4],
                     "built_year": str(1985 + k % 35), "floors": str(int(h.floors) if not pd.isna(h.floors) else 2),
                     "use": use, "business": "是" if use not in ("自住",) else "否", "judgement": judgement,
                     "inspected_on": day}
            step = inspect_house(store, census, h.house_no, facts, actor)["status"]
        elif h.status == "hazard":
            measures = ["停用/封控", "加固"] if h.hazard == "存在严重安全隐患" else ["限期整改"]
            step = set_house_status(store, census, h.house_no, "rectifying", actor, measures=measures,
                                    deadline=deadline, assignee="村建设协管员", on=day)["status"]
        elif h.status == "rectifying":
            set_house_status(store, census, h.house_no, "rectified", actor, on=day)
            step = set_house_status(store, census, h.house_no, "closed", actor, note="复核：整治完成，隐患消除",
                                    on=day)["status"]
        else:
            continue
        counts[step] = counts.get(step, 0) + 1
    return counts


#: the documents the demo prints: for the first case in each status, these kinds
DEMO_DOCUMENTS = {"suspected": ("inspection",), "ordered": ("sheet", "inspection", "stop_notice", "demolition_notice"),
                  "demolished": ("recheck",)}


def demo_documents(store, settings, rules, out_dir: Path) -> list[Path]:
    """Print the first case of each status in DEMO_DOCUMENTS its documents, as an officer would."""
    from pipeline.report.documents import print_document, write_pdf
    cases = store.cases()
    out = []
    for status, kinds in DEMO_DOCUMENTS.items():
        hit = cases[cases["status"] == status]
        if not len(hit):
            continue
        no = hit["case_no"].iloc[0]
        for kind in kinds:
            row, pdf, _ = print_document(store, settings, rules, kind, no, DEMO_ACTOR)
            out.append(write_pdf(out_dir / f"{no}_{kind}.pdf", pdf))
    return out


def run_demo(ctx, out_dir: Path, seed: int = 1, size_m: float = 400.0, epochs: int = 3, echo=print) -> dict:
    """Generate the district once, then ingest, detect, match and track every epoch."""
    from pipeline.detection.detectors import ModelTileDetector, TruthTileDetector
    from pipeline.ingest.parcels import import_registry
    from pipeline.process.run import process_flight, register_flight
    from pipeline.report import write_reports
    from pipeline.report.census_form import write_census_form
    from pipeline.report.census_stats import census_rows, census_stats
    from pipeline.report.register import write_register_xlsx
    from pipeline.store import open_store
    from pipeline.synth import generate_district

    out_dir = Path(out_dir)
    if "store.url" not in ctx.overrides and not os.environ.get("PATROL_STORE"):
        ctx.overrides["store.url"] = str(out_dir / "patrol.gpkg")
        ctx._settings = None
    settings = ctx.settings          # a bad config fails here, before any work
    meta_path = out_dir / "district.json"
    if meta_path.exists():
        echo(f"using the district already in {out_dir}")
    else:
        echo(f"generating the demo district (seed {seed}, {size_m:g} m, {epochs} epochs) into {out_dir} ...")
        generate_district(out_dir, seed=seed, size_m=size_m, epochs=epochs)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    vectors = out_dir / "district.gpkg"

    rules = settings.rules
    store = open_store(settings.store.url, settings.store.crs, case_prefix=settings.district.case_prefix)
    import_registry(store, vectors, replace=True)

    truth_all = gpd.read_file(vectors, layer="truth")
    if not settings.model_path.exists():
        echo(f"no detector weights at {settings.model_path}: using the truth layer as detections "
             f"(rules and tracking only)")
        detector = TruthTileDetector(vectors, settings.detector.classes)
    else:
        detector = ModelTileDetector(settings)
        echo(f"detector: {settings.model_path.name}")
    summary = {"store": settings.store.url, "flights": []}
    for ep in meta["epochs"]:
        truth = truth_all[truth_all["epoch"] == ep["epoch"]]
        dsm = out_dir / ep["dsm"] if ep.get("dsm") else None        # the flight's heights (docs/HEIGHTS.md)
        flight = register_flight(store, out_dir / ep["ortho"], settings, team="demo", dsm=dsm)
        res = process_flight(store, flight["flight_id"], settings, detector=detector, force=True)
        acted = officer_actions_from_truth(store, truth, rules)
        surveyed = census_actions(store, settings.census, str(ep["date"])[:10])
        echo(f"epoch {ep['epoch']} ({ep['date']}): flight {res.flight_id}: {res.detections} detections, "
             f"{res.findings} findings, {res.new_cases} new cases; simulated officer: "
             + (", ".join(f"{k} {v}" for k, v in sorted(acted.items())) or "nothing to do"))
        echo(f"  自建房台账: {res.houses_new} houses registered, {res.houses_gone} no longer seen; census team: "
             + (", ".join(f"{k} {v}" for k, v in sorted(surveyed.items())) or "nothing to do"))
        if res.heights:
            echo(f"  heights (DSM): {res.heights['flat_dropped']} flat boxes dropped, "
                 f"{res.heights['found_by_height']} structures found by height, "
                 f"{res.heights.get('storey_added', 0)} storeys added (加层)")
        summary["flights"].append(res.__dict__)
    cases = store.cases()
    echo(f"cases: {len(cases)} ({', '.join(f'{k} {v}' for k, v in cases['status'].value_counts().items())})")
    echo("writing reports ...")
    paths = write_reports(store, settings, out_dir / "reports")
    documents = demo_documents(store, settings, rules, out_dir / "reports" / "documents")
    census = census_stats(store, settings.census)
    register = write_register_xlsx(store.houses(), settings.census, out_dir / "reports" / "houses.xlsx",
                                   f"{settings.district.name} 自建房安全排查台账")
    closed = store.houses(status="closed")
    form = write_census_form(store, settings, (closed if len(closed) else store.houses())["house_no"].iloc[0],
                             out_dir / "reports" / "documents" / "census_form.pdf") if len(store.houses()) else None
    store.close()
    echo(f"map:        {paths['map']}")
    echo(f"case list:  {paths['cases_xlsx']}  (also .csv .geojson .kml .kmz .gpkg beside it)")
    echo(f"evidence:   {paths['evidence_index']}")
    for key in ("stats_md", "stats_xlsx", "stats_png"):
        if key in paths:
            echo(f"statistics: {paths[key]}")
    if documents:
        echo(f"documents:  {len(documents)} PDFs in {documents[0].parent} (patrol docs KIND CASE_NO)")
    echo("census (自建房安全排查, 累计): " + "; ".join(f"{a} {c}" for a, _, c in census_rows(census)))
    echo(f"register:   {register}  (patrol houses export)")
    if form is not None:
        echo(f"排查表:     {form}  (patrol houses form HOUSE_NO)")
    echo(f"store:      {settings.store.url}")
    summary["reports"] = {k: str(v) for k, v in paths.items()}
    return summary
