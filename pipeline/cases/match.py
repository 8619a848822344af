"""Violation rules: detections against parcels and zones → findings.

Every threshold comes from config/rules.yaml (``load_rules``). ``find_violations`` is
vectorised: candidate pairs from an STRtree query, areas with shapely 2 array functions,
per-detection and per-parcel sums with pandas groupby — no Python loop over pairs.
"""
from __future__ import annotations

import os

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.core.errors import InputError
from pipeline.core.rules import RULE_IDS, Rules, load_rules, rule_setting_names  # noqa: F401  (the rules the stage applies)

EPS = 1e-9


# ---------------------------------------------------------------- helpers
def intersecting_pairs(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersecting (i_left, i_right, intersection area) pairs, vectorised."""
    if len(left) == 0 or len(right) == 0:
        e = np.array([], dtype=np.intp)
        return e, e, np.array([], dtype=float)
    tree = shapely.STRtree(right)
    li, ri = tree.query(left, predicate="intersects")
    area = _intersection_areas(left[li], right[ri])
    keep = area > 0
    return li[keep], ri[keep], area[keep]


def _intersection_areas(a: np.ndarray, b: np.ndarray, chunk: int = 50_000) -> np.ndarray:
    """Areas of a[i] ∩ b[i]; big inputs in chunks on every core (shapely releases the GIL)."""
    if len(a) <= chunk:
        return shapely.area(shapely.intersection(a, b))
    from concurrent.futures import ThreadPoolExecutor
    bounds = range(0, len(a), chunk)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        parts = pool.map(lambda s: shapely.area(shapely.intersection(a[s:s + chunk], b[s:s + chunk])), bounds)
        return np.concatenate(list(parts))


def _polygonal(gdf: gpd.GeoDataFrame, what: str) -> np.ndarray:
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = shapely.make_valid(geoms[bad])
    return geoms


def _check_crs(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, what: str) -> gpd.GeoDataFrame:
    if a.crs is not None and b.crs is not None and not a.crs.equals(b.crs):
        return b.to_crs(a.crs)
    return b


def _col(gdf: pd.DataFrame, name: str, default=None) -> pd.Series:
    if name in gdf.columns:
        return gdf[name]
    return pd.Series([default] * len(gdf), index=gdf.index, dtype=object)


FINDING_COLUMNS = [
    "detection_id", "class_name", "confidence", "area_m2", "rules", "category", "reasons",
    "priority", "priority_level", "exemption", "inside_m2", "inside_share", "parcel_id", "owner",
    "town", "village", "village_code", "parcel_snapshot", "zone_m2", "restricted_m2",
    "restricted_share", "basic_farmland_m2", "redline_m2", "farmland_m2", "approved_m2",
    "built_m2", "before_present", "change_confirmed", "before_area_m2", "change_confidence", "change_evidence",
    "height_m", "floors_est", "rise_m", "source", "geometry"]
#: what the change check (pipeline.cases.change) says of a detection, passed through to its finding
CHANGE_COLUMNS = ("before_present", "change_confirmed", "before_area_m2", "change_confidence", "change_evidence")
#: what the flight's heights say of a detection (pipeline.detection.heights), passed through likewise
HEIGHT_COLUMNS = ("height_m", "floors_est", "rise_m", "source")


def find_violations(detections: gpd.GeoDataFrame, parcels: gpd.GeoDataFrame,
                    zones: gpd.GeoDataFrame, rules: Rules, keep_all: bool = False) -> gpd.GeoDataFrame:
    """Findings: every detection that breaks at least one rule (all of them with
    ``keep_all``), with the rule ids, the numbers behind them, its parcel, the zone
    overlaps, category and priority. Detections below ``min_structure_area_m2`` or of a
    class the rules ignore are dropped. Result in the detections' CRS."""
    if len(detections) == 0 and "class_name" not in detections.columns:
        detections = detections.assign(class_name=pd.Series(dtype=object))
    for col in ("class_name", "geometry"):
        if col not in detections.columns:
            raise InputError(f"detections lack column '{col}'; pass the detector's GeoDataFrame")
    parcels = _check_crs(detections, parcels, "parcels")
    zones = _check_crs(detections, zones, "zones")
    det = detections.copy()
    geoms = _polygonal(det, "detections")
    area = shapely.area(geoms)
    det["area_m2"] = area
    keep = (area >= rules.min_structure_area_m2) & det["class_name"].isin(rules.classes).to_numpy()
    det, geoms, area = det[keep], geoms[keep], area[keep]
    n = len(det)
    cls = det["class_name"].to_numpy(dtype=object)
    pos = np.arange(n)

    # ---- parcels: overlaps, main parcel, registered share
    pgeoms = _polygonal(parcels, "parcels") if len(parcels) else np.array([], dtype=object)
    p_land = _col(parcels, "land_use").astype(object).where(lambda s: s.notna(), None).to_numpy()
    di, pi, parea = intersecting_pairs(geoms, pgeoms)
    pairs = pd.DataFrame({"d": di, "p": pi, "a": parea})
    ic = rules.rules.illegal_construction
    reg_codes = set(ic.registered_land_use)
    reg = pairs if not reg_codes else pairs[np.isin(p_land[pairs["p"]].astype(str), list(reg_codes))]
    inside = np.minimum(reg.groupby("d")["a"].sum().reindex(pos, fill_value=0.0).to_numpy(), area)
    share = np.divide(inside, area, out=np.zeros(n), where=area > 0)
    main = pairs.sort_values(["d", "a"], ascending=[True, False]).drop_duplicates("d")
    main_p = pd.Series(main["p"].to_numpy(), index=main["d"].to_numpy()).reindex(pos)
    main_a = pd.Series(main["a"].to_numpy(), index=main["d"].to_numpy()).reindex(pos, fill_value=0.0)

    # nearest parcel (for town / village only) where a structure touches none
    near_p = main_p.copy()
    lone = np.flatnonzero(main_p.isna().to_numpy())
    if len(lone) and len(pgeoms) and rules.nearest_parcel_m > 0:
        tree = shapely.STRtree(pgeoms)
        li, ri = tree.query_nearest(geoms[lone], max_distance=rules.nearest_parcel_m, all_matches=False)
        near_p.iloc[lone[li]] = ri

    # ---- restricted land: zones by kind (dissolved per kind) and DLBM-coded parcels / zones
    lu = rules.rules.illegal_land_use
    zone_m2: list[dict[str, float]] = [dict() for _ in range(n)]
    restricted_parts: list[pd.DataFrame] = []      # d, key, a  (key: zone kind or dlbm:CODE)
    if len(zones):
        zkind = _col(zones, "kind").fillna("").astype(str).to_numpy()
        zcode = _col(zones, "code").fillna("").astype(str).to_numpy()
        zg = _polygonal(zones, "zones")
        kinds = np.unique(zkind)
        kgeoms = np.array([shapely.union_all(zg[zkind == k]) for k in kinds], dtype=object)
        di2, ki, ka = intersecting_pairs(geoms, kgeoms)
        kp = pd.DataFrame({"d": di2, "key": kinds[ki], "a": ka})
        restricted_parts.append(kp)
        codes = [c for c in np.unique(zcode) if c in lu.dlbm_codes]
        if codes:
            cgeoms = np.array([shapely.union_all(zg[zcode == c]) for c in codes], dtype=object)
            di3, ci, ca = intersecting_pairs(geoms, cgeoms)
            restricted_parts.append(pd.DataFrame({"d": di3, "key": "dlbm:" + np.array(codes, dtype=object)[ci], "a": ca}))
    if len(pairs) and lu.dlbm_codes:
        pc = pairs.assign(code=p_land[pairs["p"].to_numpy()].astype(str))
        pc = pc[pc["code"].isin(lu.dlbm_codes)]
        if len(pc):
            g = pc.groupby(["d", "code"], as_index=False)["a"].sum()
            restricted_parts.append(pd.DataFrame({"d": g["d"], "key": "dlbm:" + g["code"], "a": g["a"]}))
    rp = (pd.concat(restricted_parts, ignore_index=True) if restricted_parts
          else pd.DataFrame({"d": pd.Series(dtype=int), "key": pd.Series(dtype=object), "a": pd.Series(dtype=float)}))
    rp = rp.groupby(["d", "key"], as_index=False)["a"].sum()
    for d, key, a in rp.itertuples(index=False):        # per (detection, kind): a few per structure
        zone_m2[d][key] = round(float(a), 3)

    def kind_sum(keys: set[str], mask: np.ndarray | None = None) -> np.ndarray:
        sel = rp[rp["key"].isin(keys)] if mask is None else rp[rp["key"].isin(keys) & mask]
        return np.minimum(sel.groupby("d")["a"].sum().reindex(pos, fill_value=0.0).to_numpy(), area)

    restricted_keys = set(lu.zone_kinds) | {f"dlbm:{c}" for c in lu.dlbm_codes}
    bf_m2 = kind_sum({"basic_farmland"})
    red_m2 = kind_sum({"ecological_redline"})
    farm_m2 = kind_sum({"farmland"})

    # ---- exemptions: per detection, the rules it is exempt from and the exempt land keys
    exempt_rules: list[set[str]] = [set() for _ in range(n)]
    exempt_keys: list[set[str]] = [set() for _ in range(n)]
    exemption_id = np.array([None] * n, dtype=object)
    for ex in rules.exemptions:                         # a handful of configured exemptions
        on_cls = np.isin(cls, ex.classes)
        keys = set(ex.zone_kinds) | {f"dlbm:{c}" for c in ex.dlbm_codes}
        if keys:
            ok = on_cls & (kind_sum(keys) >= ex.min_share * area - EPS)
        else:
            ok = on_cls
        for d in np.flatnonzero(ok):
            exempt_rules[d] |= set(ex.rules)
            if "illegal_land_use" in ex.rules:
                exempt_keys[d] |= keys
            exemption_id[d] = ex.id if exemption_id[d] is None else f"{exemption_id[d]},{ex.id}"

    # restricted overlap, minus land an exemption covers (exempt structures only)
    if len(rp):
        ex_key = np.array([k in exempt_keys[d] for d, k in zip(rp["d"], rp["key"])], dtype=bool)
        ok_rows = rp["key"].isin(restricted_keys).to_numpy() & ~ex_key
        restricted = np.minimum(rp[ok_rows].groupby("d")["a"].sum().reindex(pos, fill_value=0.0).to_numpy(), area)
    else:
        restricted = np.zeros(n)
    r_share = np.divide(restricted, area, out=np.zeros(n), where=area > 0)

    # ---- over approval: built area per parcel
    oa = rules.rules.over_approval
    approved = pd.to_numeric(_col(parcels, "approved_area_m2"), errors="coerce").to_numpy(dtype=float)
    counted = np.isin(cls, oa.classes)
    if oa.built_area == "clipped":
        bp = pairs[counted[pairs["d"].to_numpy()]] if len(pairs) else pairs
        built_per_parcel = bp.groupby("p")["a"].sum()
    else:
        mp = pd.DataFrame({"p": main_p.to_numpy(), "a": area})[counted & main_p.notna().to_numpy()]
        built_per_parcel = mp.groupby("p")["a"].sum()
        built_per_parcel.index = built_per_parcel.index.astype(int)
    has_main = main_p.notna().to_numpy()
    mp_idx = main_p.fillna(-1).astype(int).to_numpy()
    approved_d = np.where(has_main, approved[np.clip(mp_idx, 0, None)] if len(approved) else np.nan, np.nan)
    built_d = np.where(has_main, built_per_parcel.reindex(mp_idx, fill_value=0.0).to_numpy(), np.nan)
    main_share = np.divide(main_a.to_numpy(), area, out=np.zeros(n), where=area > 0)

    # ---- heights (a flight with a DSM): storeys against the parcel's approval, a storey added since
    of = rules.rules.over_floors
    floors = pd.to_numeric(_col(det, "floors_est"), errors="coerce").to_numpy(dtype=float)
    approved_fl = pd.to_numeric(_col(parcels, "approved_floors"), errors="coerce").to_numpy(dtype=float)
    approved_fl_d = np.where(has_main, approved_fl[np.clip(mp_idx, 0, None)] if len(approved_fl) else np.nan, np.nan)
    rise = pd.to_numeric(_col(det, "rise_m"), errors="coerce").to_numpy(dtype=float)
    raised = _col(det, "storey_added", False).fillna(False).to_numpy(dtype=bool)
    source = _col(det, "source").to_numpy(dtype=object)

    # ---- fire
    fired = {}
    sa = rules.rules.storey_added
    fired["storey_added"] = sa.enabled & np.isin(cls, sa.classes) & raised
    with np.errstate(invalid="ignore"):
        fired["over_floors"] = (of.enabled & np.isin(cls, of.classes) & has_main & np.isfinite(floors)
                                & np.isfinite(approved_fl_d) & (approved_fl_d > 0)
                                & (main_share >= of.min_inside_share - EPS) & (floors > approved_fl_d + of.extra_floors))
    fired["illegal_construction"] = (ic.enabled & np.isin(cls, ic.classes)
                                     & (share < ic.max_inside_share - EPS))
    fired["illegal_land_use"] = (lu.enabled & np.isin(cls, lu.classes)
                                 & (restricted >= lu.min_overlap_m2 - EPS)
                                 & (r_share >= lu.min_overlap_share - EPS) & (restricted > 0))
    limit = approved_d * (1 + oa.tolerance)
    fired["over_approval"] = (oa.enabled & counted & has_main & np.isfinite(approved_d)
                              & (approved_d > 0) & (main_share >= oa.min_inside_share - EPS)
                              & (built_d > limit + 1e-6))
    for rid in RULE_IDS:
        fired[rid] &= np.array([rid not in s for s in exempt_rules], dtype=bool)

    # ---- parcel attributes for every detection
    pattrs = parcels.drop(columns=parcels.geometry.name).reset_index(drop=True) if len(parcels) else None
    att_idx = near_p.fillna(-1).astype(int).to_numpy()

    def pcol(name: str, idx: np.ndarray, only_main: bool) -> np.ndarray:
        out = np.array([None] * n, dtype=object)
        if pattrs is None or name not in pattrs.columns:
            return out
        vals = pattrs[name].to_numpy(dtype=object)
        ok = idx >= 0
        if only_main:
            ok &= has_main
        out[ok] = vals[idx[ok]]
        return np.array([None if (isinstance(v, float) and np.isnan(v)) else v for v in out], dtype=object)

    main_pid = pcol("parcel_id", mp_idx, True)
    snapshots = np.array([None] * n, dtype=object)
    if pattrs is not None:
        recs = pattrs.astype(object).where(pattrs.notna(), None).to_dict("records")
        for d in np.flatnonzero(has_main):
            snapshots[d] = _snapshot(recs[mp_idx[d]], rules)

    # ---- reasons, category, priority
    pr = rules.priority
    rules_list, reasons, category, score = [], [], [], np.zeros(n)
    for d in range(n):                                   # one pass per detection to build JSON
        fired_d = [r for r in RULE_IDS if fired[r][d]]
        rs: dict = {}
        if fired["illegal_construction"][d]:
            rs["illegal_construction"] = {
                "inside_m2": round(float(inside[d]), 2), "inside_share": round(float(share[d]), 4),
                "max_inside_share": ic.max_inside_share,
                "text": f"登记地块内仅 {share[d]:.0%}（低于 {ic.max_inside_share:.0%}）"}
        if fired["illegal_land_use"][d]:
            rs["illegal_land_use"] = {
                "overlap_m2": round(float(restricted[d]), 2), "share": round(float(r_share[d]), 4),
                "by_kind": zone_m2[d], "min_overlap_m2": lu.min_overlap_m2,
                "min_overlap_share": lu.min_overlap_share,
                "text": f"占用受保护土地 {restricted[d]:.1f} m²（{r_share[d]:.0%}）"}
        if fired["over_approval"][d]:
            rs["over_approval"] = {
                "parcel_id": main_pid[d],
                "approved_m2": round(float(approved_d[d]), 2), "built_m2": round(float(built_d[d]), 2),
                "limit_m2": round(float(limit[d]), 2), "tolerance": oa.tolerance,
                "text": f"建筑占地 {built_d[d]:.1f} m² 超过批准 {approved_d[d]:.1f} m²（容差 {oa.tolerance:.0%}）"}
        if fired["storey_added"][d]:
            rs["storey_added"] = {"rise_m": round(float(rise[d]), 2), "height_m": _num(_col(det, "height_m").iloc[d]),
                                  "text": f"较前次航飞升高 {rise[d]:.1f} m（疑似加层）"}
        if fired["over_floors"][d]:
            rs["over_floors"] = {"parcel_id": main_pid[d], "approved_floors": int(approved_fl_d[d]),
                                 "floors_est": int(floors[d]), "extra_floors": of.extra_floors,
                                 "text": f"估算 {int(floors[d])} 层，超过批准 {int(approved_fl_d[d])} 层"}
        if exemption_id[d] is not None:
            rs["exemption"] = exemption_id[d]
        if source[d] == "height":                        # the detector missed it; the DSM found it
            rs["found_by"] = "height"
        cat = next((c for c in rules.category_order if c in fired_d), None)
        s = sum(pr.rule_weights.get(r, 0) for r in fired_d)
        if fired_d:
            s += pr.basic_farmland * (bf_m2[d] > 0) + pr.ecological_redline * (red_m2[d] > 0)
            s += pr.under_construction * (cls[d] == "under_construction")
            s += pr.per_100_m2 * min(area[d], pr.area_cap_m2) / 100.0
        rules_list.append(fired_d)
        reasons.append(rs)
        category.append(cat)
        score[d] = round(s, 1)
    level = np.where(score >= pr.levels.get("high", 60), "high",
                     np.where(score >= pr.levels.get("medium", 30), "medium", "low"))

    out = gpd.GeoDataFrame({
        "detection_id": _col(det, "detection_id").to_numpy(dtype=object),
        "class_name": cls,
        "confidence": pd.to_numeric(_col(det, "confidence", np.nan), errors="coerce").to_numpy(dtype=float),
        "area_m2": np.round(area, 3),
        "rules": rules_list, "category": category, "reasons": reasons,
        "priority": score,
        "priority_level": np.array([lv if r else None for lv, r in zip(level.astype(object), rules_list)],
                                   dtype=object),
        "exemption": exemption_id,
        "inside_m2": np.round(inside, 3), "inside_share": np.round(share, 4),
        "parcel_id": main_pid, "owner": pcol("owner", mp_idx, True),
        "town": pcol("town", att_idx, False), "village": pcol("village", att_idx, False),
        "village_code": pcol("village_code", att_idx, False),
        "parcel_snapshot": snapshots, "zone_m2": zone_m2,
        "restricted_m2": np.round(restricted, 3), "restricted_share": np.round(r_share, 4),
        "basic_farmland_m2": np.round(bf_m2, 3), "redline_m2": np.round(red_m2, 3),
        "farmland_m2": np.round(farm_m2, 3),
        "approved_m2": approved_d, "built_m2": np.round(built_d, 3),
        **{c: _col(det, c).to_numpy(dtype=object) for c in CHANGE_COLUMNS + HEIGHT_COLUMNS},
    }, geometry=list(geoms), crs=detections.crs, index=det.index)
    if not keep_all:
        out = out[np.array([bool(r) for r in rules_list], dtype=bool)]
    return _one_per_parcel(out[FINDING_COLUMNS])


def _num(v) -> float | None:
    v = pd.to_numeric(v, errors="coerce")
    return None if pd.isna(v) else round(float(v), 2)


def _one_per_parcel(findings: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Merge the findings of one parcel that break over-approval alone into one finding.

    Over-approval is judged on the parcel (宅基地), so a house and its extension seen as two
    structures make one case, not two: the merged finding keeps the biggest structure's
    fields, the union of the footprints, their summed areas and the best confidence.
    """
    only_oa = findings["rules"].map(lambda r: list(r) == ["over_approval"]) & findings["parcel_id"].notna()
    dup = only_oa & findings["parcel_id"].where(only_oa).duplicated(keep=False)
    if not dup.any():
        return findings
    merged = []
    for _, g in findings[dup].groupby("parcel_id", sort=False):
        g = g.sort_values("area_m2", ascending=False)
        row = g.iloc[0].copy()
        row[findings.geometry.name] = shapely.union_all(g.geometry.to_numpy())
        for col in ("area_m2", "inside_m2", "restricted_m2", "basic_farmland_m2", "redline_m2", "farmland_m2"):
            row[col] = round(float(g[col].sum()), 3)
        row["inside_share"] = round(row["inside_m2"] / row["area_m2"], 4) if row["area_m2"] else 0.0
        row["restricted_share"] = round(row["restricted_m2"] / row["area_m2"], 4) if row["area_m2"] else 0.0
        row["confidence"] = float(g["confidence"].max())
        row["priority"] = float(g["priority"].max())
        merged.append(row)
    out = pd.concat([findings[~dup], gpd.GeoDataFrame(merged, crs=findings.crs)])
    return gpd.GeoDataFrame(out, geometry=findings.geometry.name, crs=findings.crs).sort_index()


def _snapshot(rec: dict, rules: Rules) -> dict:
    """The parcel at detection time, with 三调 keys (DLBM, DLMC, ZLDWDM, ZLDWMC, QSDWMC)."""
    snap = {k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()
            if not isinstance(v, (dict, list))}
    attrs = rec.get("attrs") or {}
    if isinstance(attrs, dict):
        for k, v in attrs.items():
            snap.setdefault(k, v)
    code = snap.get("DLBM") or snap.get("land_use")
    snap.setdefault("DLBM", code)
    snap.setdefault("DLMC", rules.dlbm_names.get(str(code)) if code else None)
    snap.setdefault("ZLDWDM", snap.get("village_code"))
    snap.setdefault("ZLDWMC", snap.get("village"))
    snap.setdefault("QSDWMC", snap.get("village"))
    for k, v in list(snap.items()):
        if hasattr(v, "isoformat"):
            snap[k] = v.isoformat()
    return snap
