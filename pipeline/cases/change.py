"""Change an officer can trust: flights lined up on each other, and each change seen in the images.

``coregister`` estimates how far a new flight's orthophoto sits from the earlier flights it
overlaps (GPS without RTK is off by metres): phase correlation of gradient images read on one
ground grid at ``change_check.coregister_gsd_m``, on several blocks of the overlap, which must agree.
Gradients, not colours: season, sun and exposure change the colours of a place, not where its
edges are. An unreliable estimate is refused (the flight's registration says why) and nothing is
shifted. ``check_flight`` does that for a new flight, then looks at the other flight at every
candidate change before the flag is raised: the earlier ortho re-examined with the detector at
``change_check.recheck_confidence``, a second look at the flight's own ortho, and a radiometrically
normalised appearance difference of the co-registered before/after chips (docs/CHANGE.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import shapely.affinity

from pipeline.cases.track import covered_by, match_pairs
from pipeline.detection.flightplan import (
    Chunk,
    FlightPlan,
    Tiling,
    finish,
    run_chunk,
    window_extent,
)
from pipeline.ingest import flight_frames

BLOCK_PX = 128                       # phase-correlation block edge at the coarse GSD
MAX_BLOCKS = 9
CONTEXT_M = 12.0                     # the surroundings an outline's colour is measured against


@dataclass
class Registration:
    """The shift of a flight against its reference flight (metres, store CRS: +x east, +y north):
    the flight's content sits at ``true + (dx, dy)``; ``dx_total``/``dy_total`` add the reference's
    own shift, so every flight is corrected into the frame of the first one."""
    reference: str | None
    dx: float = 0.0
    dy: float = 0.0
    dx_total: float = 0.0
    dy_total: float = 0.0
    blocks: int = 0
    agree_m: float = 0.0
    peak: float = 0.0
    applied: bool = False
    note: str = ""

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


# ---------------------------------------------------------------- reading on one grid
def read_bands(path: str | Path, bounds: tuple[float, float, float, float], gsd: float, crs: Any
               ) -> tuple[np.ndarray, np.ndarray]:
    """The raster's colour bands (bands, rows, cols; float) and validity over ``bounds`` (store
    CRS) at ``gsd``, north up (a north-up raster in the store CRS is read straight from its
    overviews; any other is warped)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import WindowError
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window, from_bounds

    x0, y0, x1, y1 = bounds
    w, h = max(1, int(round((x1 - x0) / gsd))), max(1, int(round((y1 - y0) / gsd)))
    with rasterio.open(path) as src:
        bands = list(range(1, min(src.count, 3) + 1))
        t = src.transform
        if src.crs is not None and src.crs == rasterio.crs.CRS.from_user_input(crs) and t.b == 0 and t.d == 0 \
                and t.e < 0:
            win = from_bounds(x0, y0, x1, y1, transform=t)
            data = np.zeros((len(bands), h, w), np.float32)
            mask = np.zeros((h, w), bool)
            try:                                            # only the part inside the raster is read
                inner = win.intersection(Window(0, 0, src.width, src.height))
            except WindowError:                             # no overlap
                return data, mask
            sy, sx = h / win.height, w / win.width
            r0, c0 = int(round((inner.row_off - win.row_off) * sy)), int(round((inner.col_off - win.col_off) * sx))
            ih, iw = min(h - r0, max(1, int(round(inner.height * sy)))), min(w - c0, max(1, int(round(inner.width * sx))))
            if ih <= 0 or iw <= 0:
                return data, mask
            data[:, r0:r0 + ih, c0:c0 + iw] = src.read(bands, window=inner, out_shape=(len(bands), ih, iw),
                                                       resampling=Resampling.average)
            mask[r0:r0 + ih, c0:c0 + iw] = src.read_masks(1, window=inner, out_shape=(ih, iw)) > 0
            return data, mask
        transform = rasterio.Affine(gsd, 0, x0, 0, -gsd, y1)
        with WarpedVRT(src, crs=crs, transform=transform, width=w, height=h, resampling=Resampling.average) as vrt:
            return vrt.read(bands).astype(np.float32), vrt.read_masks(1) > 0


def _gradient(gray: np.ndarray) -> np.ndarray:
    """Edge strength of a lightly smoothed image, scaled to unit spread (light-independent)."""
    gy, gx = np.gradient(_smooth(gray.astype(np.float64)))
    m = np.hypot(gx, gy)
    m = np.log1p(m)
    return (m - m.mean()) / (m.std() + 1e-9)


def phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Sub-pixel (dx, dy) in pixels with ``b ≈ a`` moved by (dx, dy) (x right, y down), and the
    correlation peak's height over the surface's spread (a reliability score)."""
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.fft2(a * win), np.fft.fft2(b * win)
    r = fb * np.conj(fa)
    r /= np.abs(r) + 1e-12
    c = np.fft.ifft2(r).real
    iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
    peak = float((c[iy, ix] - c.mean()) / (c.std() + 1e-12))

    def sub(cm, c0, cp):
        d = cm - 2 * c0 + cp
        return 0.0 if abs(d) < 1e-12 else 0.5 * (cm - cp) / d

    h, w = c.shape
    dy = iy + sub(c[(iy - 1) % h, ix], c[iy, ix], c[(iy + 1) % h, ix])
    dx = ix + sub(c[iy, (ix - 1) % w], c[iy, ix], c[iy, (ix + 1) % w])
    if dy > h / 2:
        dy -= h
    if dx > w / 2:
        dx -= w
    return float(dx), float(dy), peak


def _blocks(overlap, gsd: float) -> list[tuple[float, float, float, float]]:
    """Up to MAX_BLOCKS square blocks of BLOCK_PX at ``gsd`` lying inside the overlap."""
    size = BLOCK_PX * gsd
    x0, y0, x1, y1 = overlap.bounds
    cands = []
    for cx in np.arange(x0 + size / 2, x1 - size / 2 + 1e-6, size / 2):      # half-overlapping blocks
        for cy in np.arange(y0 + size / 2, y1 - size / 2 + 1e-6, size / 2):
            b = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
            if overlap.contains(shapely.box(*b)):
                cands.append(b)
    if len(cands) > MAX_BLOCKS:
        idx = np.linspace(0, len(cands) - 1, MAX_BLOCKS).round().astype(int)
        cands = [cands[k] for k in idx]
    return cands


def coregister(flight: dict, reference: dict | None, settings, ref_shift: tuple[float, float] = (0.0, 0.0)
               ) -> Registration:
    """The new flight's shift against ``reference`` (an earlier flight it overlaps), or why none
    is applied (``applied`` False, ``note`` in Chinese)."""
    ch = settings.change_check
    if reference is None:
        return Registration(None, note="无可对照的前期航次，未做配准")
    rid = reference["flight_id"]
    out = Registration(rid, dx_total=ref_shift[0], dy_total=ref_shift[1], applied=False)
    frames_new, frames_ref = flight_frames(flight), flight_frames(reference)
    if len(frames_new) != 1 or len(frames_ref) != 1:
        out.note = "照片航次（非正射影像），未做配准"
        return out
    fa, fb = reference.get("footprint"), flight.get("footprint")
    overlap = shapely.intersection(fa, fb) if fa is not None and fb is not None else None
    inner = overlap
    if inner is None or inner.is_empty or inner.area < ch.min_overlap_m2:
        out.note = (f"与前期航次 {rid} 重叠不足（{0 if overlap is None else overlap.area:.0f} m²），"
                    f"无法可靠配准，未做位移改正")
        return out
    gsd = ch.coregister_gsd_m
    blocks = _blocks(inner, gsd)
    if not blocks:
        out.note = f"与前期航次 {rid} 的重叠区太窄，无法可靠配准，未做位移改正"
        return out
    crs = settings.store.crs
    est = []
    for b in blocks:
        ga, ma = read_bands(frames_ref[0], b, gsd, crs)
        gb, mb = read_bands(frames_new[0], b, gsd, crs)
        if ma.mean() < 0.95 or mb.mean() < 0.95:
            continue
        a, bb = _gradient(ga.mean(axis=0)), _gradient(gb.mean(axis=0))
        dx, dy, peak = phase_shift(a, bb)
        if peak >= ch.min_peak:
            est.append((dx * gsd, -dy * gsd, peak))          # rows run south: +dy pixels is -y metres
    out.blocks = len(est)
    if not est:
        out.note = f"与前期航次 {rid} 的影像无法可靠配准（相关峰过弱），未做位移改正"
        return out
    e = np.asarray(est)
    mdx, mdy = float(np.median(e[:, 0])), float(np.median(e[:, 1]))
    dist = np.hypot(e[:, 0] - mdx, e[:, 1] - mdy)
    good = e[dist <= ch.agree_m]
    out.agree_m = float(dist.max())
    out.peak = float(np.median(e[:, 2]))
    if len(good) < min(2, len(e)) or len(good) < 0.6 * len(e):
        out.note = (f"与前期航次 {rid} 各区块配准结果不一致（相差 {out.agree_m:.1f} m），"
                    f"估计不可靠，未做位移改正")
        return out
    dx, dy = float(good[:, 0].mean()), float(good[:, 1].mean())
    if math.hypot(dx, dy) > ch.max_shift_m:
        out.note = f"与前期航次 {rid} 的位移估计 {math.hypot(dx, dy):.1f} m 超过上限，未做位移改正"
        return out
    out.dx, out.dy = dx, dy
    out.dx_total, out.dy_total = dx + ref_shift[0], dy + ref_shift[1]
    out.blocks, out.agree_m, out.applied = len(good), float(dist[dist <= ch.agree_m].max()), True
    out.note = (f"相对前期航次 {rid} 位移 东 {dx:+.2f} m、北 {dy:+.2f} m（{len(good)} 个区块一致），"
                f"检测结果已改正")
    return out


def shift_frame(gdf: gpd.GeoDataFrame, reg: Registration) -> gpd.GeoDataFrame:
    """The detections moved into the reference frame (minus the flight's total shift)."""
    if not reg.applied or (reg.dx_total == 0 and reg.dy_total == 0) or not len(gdf):
        return gdf
    out = gdf.copy()
    out.geometry = gpd.GeoSeries(shapely.transform(np.asarray(gdf.geometry.values),
                                                   lambda xy: xy - [reg.dx_total, reg.dy_total]),
                                 crs=gdf.crs, index=gdf.index)
    return out


def unshift(geoms: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Geometries of the reference frame placed where a flight with ``shift`` shows them."""
    return shapely.transform(np.asarray(geoms), lambda xy: xy + list(shift))


# ---------------------------------------------------------------- appearance change
def appearance_change(before: np.ndarray, after: np.ndarray, inside: np.ndarray, around: np.ndarray) -> float:
    """0 (looks the same) … 1 (looks different): the outline's median colour in each image, as
    robust z-scores against that image's own surroundings (``around``; so light, exposure and
    season, which move the surroundings too, do not count), compared between the images."""
    if inside.sum() < 4 or around.sum() < 4:
        return 0.0

    def z(x):
        x = np.stack([_smooth(b.astype(np.float64)) for b in x])
        med = np.median(x[:, around], axis=1)
        mad = np.median(np.abs(x[:, around] - med[:, None]), axis=1) * 1.4826 + 3.0
        return np.median((x[:, inside] - med[:, None]) / mad[:, None], axis=1)

    return float(np.clip(np.linalg.norm(z(after) - z(before)) / 2.0, 0.0, 1.0))


def _smooth(g: np.ndarray) -> np.ndarray:
    """A 3 × 3 binomial blur (edges kept)."""
    g = g.astype(np.float64, copy=True)
    g[1:-1] = (g[:-2] + 2 * g[1:-1] + g[2:]) / 4
    g[:, 1:-1] = (g[:, :-2] + 2 * g[:, 1:-1] + g[:, 2:]) / 4
    return g


def _inside(geom, bounds, gsd, shape) -> np.ndarray:
    """The pixels of a north-up grid over ``bounds`` at ``gsd`` that ``geom`` covers."""
    import rasterio
    from rasterio.features import rasterize

    x0, _, _, y1 = bounds
    t = rasterio.Affine(gsd, 0, x0, 0, -gsd, y1)
    return rasterize([(geom, 1)], out_shape=shape, transform=t, fill=0, dtype="uint8").astype(bool)


@dataclass
class Look:
    """What the other flight's image says at one place."""
    flight_id: str | None
    best_conf: float = 0.0             # the best re-detection on the outline at recheck confidence
    best_area_m2: float = 0.0          # its area
    cover: float = 0.0                 # share of the outline the re-detections cover
    appearance: float | None = None    # appearance change 0..1 (None: no image there)


def look_again(geoms: list, other: dict, other_shift: tuple[float, float], this_path: str | Path | None,
               this_shift: tuple[float, float], detector, settings) -> list[Look]:
    """For each outline (reference frame, store CRS): the other flight's ortho re-examined there
    with ``detector`` (at the recheck confidence; None: not re-examined) and the appearance change
    against this flight's ortho (``this_path``; None: no comparison)."""
    from rasterio.errors import RasterioError

    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import open_raster

    fid = other["flight_id"]
    looks = [Look(fid) for _ in geoms]
    if not geoms:
        return looks
    frames = flight_frames(other)
    tiling = Tiling.from_settings(settings)
    crs = settings.store.crs
    placed = unshift(np.asarray(geoms, dtype=object), other_shift)   # where the other flight shows them
    found = []
    for frame in frames if detector is not None else ():
        with open_raster(frame) as src:
            rcrs = src.crs
            here = np.asarray(gpd.GeoSeries(placed, crs=crs).to_crs(rcrs).values, dtype=object)
            windows = _covering_windows(src, tiling, here)
        if not windows:
            continue
        ext = np.array([window_extent(w) for w in windows])
        chunk = Chunk(fid, str(frame), other.get("captured_at"), tiling, list(range(len(windows))), windows, ext)
        plan = FlightPlan(fid, other.get("captured_at"), tiling, [str(frame)], raster_crs=rcrs)
        found.append(finish(detector, plan, [run_chunk(detector, chunk)], settings, crs))
    dets = pd.concat(found, ignore_index=True) if found else None
    if dets is not None and len(dets):
        dg = np.asarray(shift_frame(gpd.GeoDataFrame(dets, geometry="geometry", crs=crs),
                                    Registration(None, dx_total=other_shift[0], dy_total=other_shift[1],
                                                 applied=True)).geometry.values)
        tree = shapely.STRtree(dg)
        conf = dets["confidence"].to_numpy()
        for k, g in enumerate(geoms):
            hits = tree.query(g, predicate="intersects")
            if not len(hits):
                continue
            inter = shapely.area(shapely.intersection(dg[hits], g))
            # the same structure: a box holding a good part of the outline and lying mostly on it
            # (a neighbour's box that only reaches over the outline does not count)
            on = (inter / max(g.area, 1e-9) >= 0.3) & (inter / np.maximum(shapely.area(dg[hits]), 1e-9) >= 0.5)
            if on.any():
                looks[k].best_conf = float(conf[hits][on].max())
                looks[k].best_area_m2 = float(shapely.area(dg[hits][on]).max())
                looks[k].cover = float(min(1.0, shapely.area(shapely.intersection(
                    shapely.union_all(dg[hits][on]), g)) / max(g.area, 1e-9)))
    if this_path is not None and len(frames) == 1:
        gsd = settings.change_check.chip_gsd_m
        for k, g in enumerate(geoms):
            b = shapely.box(*g.buffer(CONTEXT_M).bounds).bounds
            try:
                before, mb = read_bands(frames[0], _moved(b, other_shift), gsd, crs)
                after, ma = read_bands(this_path, _moved(b, this_shift), gsd, crs)
            except (RasterioError, OSError):  # an unreadable chip: no comparison there
                continue
            outline = _inside(g.buffer(-0.5), b, gsd, before.shape[1:])
            near = _inside(g.buffer(1.0), b, gsd, before.shape[1:])
            valid = mb & ma
            looks[k].appearance = appearance_change(before, after, outline & valid, ~near & valid)
    return looks


def _covering_windows(src, tiling, geoms: np.ndarray) -> list:
    """Few tile windows that hold every outline whole (with a margin): one centred on an outline
    not yet held, which holds the others it happens to contain."""
    # lazy: loads rasterio only when used
    from pipeline.detection.tiling import windows_at

    margin = 4.0
    todo = list(range(len(geoms)))
    out: list[Any] = []
    while todo:
        g = geoms[todo[0]]
        c = shapely.get_coordinates(g.centroid)
        ws = windows_at(src, tiling.gsd_m, tiling.tile_px, c)
        if not ws:
            todo.pop(0)
            continue
        w = ws[0]
        if all((w.row, w.col) != (o.row, o.col) for o in out):
            out.append(w)
        box = shapely.box(*window_extent(w)).buffer(-margin)
        todo = [i for i in todo[1:] if not box.contains(geoms[i])]
    return out


def _moved(b, shift):
    return (b[0] + shift[0], b[1] + shift[1], b[2] + shift[0], b[3] + shift[1])


@dataclass
class FlightCheck:
    """What ``check_flight`` found: the detections in the reference frame with their change
    columns, the registration, the footprint in the reference frame, and the demolition
    candidates' verdicts (case_no → standing, confidence, evidence)."""
    detections: gpd.GeoDataFrame
    registration: Registration
    footprint: Any
    demolition: dict = field(default_factory=dict)


def _registration(reg: Any) -> dict:
    """A stored registration as a dict (the store may hand back its JSON text)."""
    if isinstance(reg, str):
        import json
        reg = json.loads(reg or "{}")
    return reg if isinstance(reg, dict) else {}


def flight_shift(flight: dict | None) -> tuple[float, float]:
    """The total shift recorded on a flight (0, 0 when none was applied)."""
    reg = _registration((flight or {}).get("registration"))
    return (float(reg.get("dx_total", 0.0)), float(reg.get("dy_total", 0.0))) if reg.get("applied") else (0.0, 0.0)


def registration_note(reg: Any) -> str:
    """The Chinese note of a flight's co-registration ('' when it has none)."""
    return str(_registration(reg).get("note") or "")


def corrected_footprint(flight: dict | None):
    """A flight's footprint moved into the reference frame."""
    fp = (flight or {}).get("footprint")
    if fp is None:
        return None
    dx, dy = flight_shift(flight)
    return shapely.affinity.translate(fp, -dx, -dy) if dx or dy else fp


def earlier_flights(store, flight: dict) -> list[dict]:
    """The processed flights captured before this one whose footprint it overlaps, newest first."""
    fl = store.list_flights(status="done")
    if not len(fl) or flight.get("footprint") is None:
        return []
    fl = fl[(fl["flight_id"] != flight["flight_id"]) & (fl["captured_at"] < flight["captured_at"])]
    out = []
    for fid in fl.sort_values("captured_at", ascending=False)["flight_id"]:
        f = store.get_flight(fid)
        if f.get("footprint") is not None and f["footprint"].intersects(flight["footprint"]):
            out.append(f)
    return out


def _confidence(cover_other: float, cover_here: float, appearance: float | None, share: float) -> float:
    """Change confidence 0..1: the other image holds nothing there (1 - the share of the outline
    its re-detections cover), this image holds the structure on a second look (its cover, up to
    the present share), and the place looks different (the appearance change; 0.5 unknown)."""
    absent = 1.0 - min(1.0, cover_other)
    here = min(1.0, cover_here / share)
    return round(absent * here * (0.6 + 0.4 * (0.5 if appearance is None else appearance)), 3)


def check_flight(store, flight: dict, detections: gpd.GeoDataFrame, settings, detector=None,
                 rules=None) -> FlightCheck:
    """Co-register the flight on the earlier flight it overlaps and move its detections into the
    reference frame; then, for every candidate new / grown / demolition-seen change, look at the
    other flight's image (``detector`` at the recheck confidence; None: the appearance only).
    Adds the columns before_present (the earlier image shows it), change_confirmed (the images
    show the change: False when they contradict it or show none), before_area_m2,
    change_confidence and change_evidence."""
    ch = settings.change_check
    earlier = earlier_flights(store, flight)
    det = detections.copy()
    for col, default in (("before_present", False), ("change_confirmed", None), ("before_area_m2", np.nan),
                         ("change_confidence", np.nan), ("change_evidence", None)):
        det[col] = default
    reg = Registration(None, note="未做配准（change_check.coregister 关闭）")
    if ch.coregister:
        ref = next((f for f in earlier if flight.get("footprint") is not None and f.get("footprint") is not None
                    and f["footprint"].intersection(flight["footprint"]).area >= ch.min_overlap_m2), None)
        ref = ref or (earlier[0] if earlier else None)
        reg = coregister(flight, ref, settings, flight_shift(ref))
        if not reg.applied and reg.reference is not None:        # the reference's own shift still holds
            reg.applied = bool(reg.dx_total or reg.dy_total)     # (coregister starts the totals from it)
    det = shift_frame(det, reg)
    shift = (reg.dx_total, reg.dy_total) if reg.applied else (0.0, 0.0)
    footprint = shapely.affinity.translate(flight["footprint"], -shift[0], -shift[1]) \
        if flight.get("footprint") is not None else None
    out = FlightCheck(det, reg, footprint)
    if not ch.confirm or not earlier or not len(det) or footprint is None:
        return out
    low = detector.at_confidence(ch.recheck_confidence) if detector is not None else None
    frames = flight_frames(flight)
    this_path = frames[0] if len(frames) == 1 else None
    bbox = footprint.buffer(20).bounds
    cases = store.cases(bbox)
    dg = np.asarray(det.geometry.values, dtype=object)
    cg = np.asarray(cases.geometry.values, dtype=object) if len(cases) else np.zeros(0, dtype=object)
    tr = settings.tracking
    pairs = match_pairs(dg, cg, tr.match_iou, tr.centroid_m)
    matched = pairs.drop_duplicates("a")
    case_of = dict(zip(matched["a"], matched["b"]))
    prior = [(f, corrected_footprint(f)) for f in earlier]

    def latest_over(g):
        return next((f for f, fp in prior if fp is not None and fp.covers(g.centroid)), None)

    # new: a detection matching no case, where an earlier flight looked
    todo: dict[str, tuple[dict, list[int]]] = {}
    new = set()
    for i in range(len(det)):
        if i in case_of:
            continue
        other = latest_over(dg[i])
        if other is not None:
            todo.setdefault(other["flight_id"], (other, []))[1].append(i)
            new.add(i)
    # grown: a detection larger than its case by the rules' margin; looked at on the case's last flight
    if rules is None:
        rules = settings.rules
    rules_change = rules.change
    for i, ci in case_of.items():
        old = float(cases["area_m2"].iloc[ci] or 0.0)
        area = float(shapely.area(dg[i]))
        if old > 0 and area - old >= max(rules_change.grown_min_m2, rules_change.grown_min_ratio * old) - 1e-9:
            other = next((f for f, _ in prior if f["flight_id"] == cases["last_seen_flight"].iloc[ci]), None) \
                or latest_over(dg[i])
            if other is not None:
                todo.setdefault(other["flight_id"], (other, []))[1].append(i)
    # demolition seen: a watched case this flight covers and no detection stands on
    lc = rules.lifecycle
    watched = cases["status"].isin(lc.demolition_watch).to_numpy() if len(cases) else np.zeros(0, bool)
    covered = covered_by(footprint, cg, rules_change.covered_share)
    standing = set(match_pairs(cg, dg, tr.match_iou, tr.centroid_m)["a"]) if len(dg) else set()
    gone = [ci for ci in np.flatnonzero(watched & covered) if ci not in standing]
    # the second look at this image, in one pass: new candidates the detector was not sure of
    # (a sure one needs none) and the places where a watched structure is no longer detected
    detector_conf = settings.detector.confidence
    me = {**flight, "registration": {"applied": True, "dx_total": shift[0], "dy_total": shift[1]}}
    second = detector.at_confidence(ch.recheck_confidence, flip=True) if detector is not None else None
    conf_col = det["confidence"].to_numpy(dtype=float) if "confidence" in det.columns else np.zeros(len(det))
    unsure = sorted(i for i in new if not conf_col[i] >= ch.sure_confidence)
    here = look_again([dg[i] for i in unsure] + [cg[ci] for ci in gone], me, shift, None, (0.0, 0.0),
                      second, settings) if second is not None else []
    cover_here = {i: lk.cover for i, lk in zip(unsure, here)} if second is not None else {}
    for fid, (other, idx) in todo.items():
        looks = look_again([dg[i] for i in idx], other, flight_shift(other), this_path, shift, low, settings)
        for i, lk in zip(idx, looks):
            looks_other = lk.appearance is not None and lk.appearance >= ch.strong_appearance
            # a faint box on a place that looks quite different now is the detector's guess, not the house
            present = lk.cover >= ch.present_share and not (looks_other and lk.best_conf < detector_conf)
            if not present and lk.cover >= ch.present_share:
                lk.cover = 0.0
            ch_here = cover_here.get(i, 1.0)
            conf = _confidence(lk.cover, ch_here, lk.appearance, ch.present_share)
            same_look = lk.appearance is not None and lk.appearance < ch.min_appearance
            det.iat[i, det.columns.get_loc("before_present")] = bool(present)
            det.iat[i, det.columns.get_loc("change_confirmed")] = bool(
                not present and ch_here >= ch.present_share and not same_look)
            det.iat[i, det.columns.get_loc("before_area_m2")] = round(lk.best_area_m2, 3) if lk.best_conf else 0.0
            det.iat[i, det.columns.get_loc("change_confidence")] = conf
            det.iat[i, det.columns.get_loc("change_evidence")] = {
                **_evidence(lk, reg), **({"second_look_cover": round(ch_here, 3)} if i in cover_here else {})}
    for ci, lk in zip(gone, here[len(unsure):] if second is not None else [Look(flight["flight_id"])] * len(gone)):
        before = next((f for f, _ in prior if f["flight_id"] == cases["last_seen_flight"].iloc[ci]), None)
        if before is not None and this_path is not None:
            lk.appearance = look_again([cg[ci]], before, flight_shift(before), this_path, shift,
                                       None, settings)[0].appearance
        conf = _confidence(0.0, 1.0 - lk.cover, lk.appearance, 1.0)   # ground here, where it stood
        out.demolition[cases["case_no"].iloc[ci]] = (lk.cover >= ch.present_share, conf, _evidence(lk, reg))
    return out


def _evidence(lk: Look, reg: Registration) -> dict:
    return {"other_flight": lk.flight_id, "redetected_conf": round(lk.best_conf, 3),
            "redetected_area_m2": round(lk.best_area_m2, 2), "redetected_cover": round(lk.cover, 3),
            "appearance_change": None if lk.appearance is None else round(lk.appearance, 3),
            "shift_m": [round(reg.dx_total, 2), round(reg.dy_total, 2)] if reg.applied else None}


def prior_coverage(store, flight: dict):
    """Union of the footprints of flights captured before this one, each moved by its
    co-registration into the reference frame (None if none)."""
    flights = store.list_flights(status="done")
    if not len(flights):
        return None
    earlier = flights[(flights["flight_id"] != flight["flight_id"])
                      & (flights["captured_at"] < flight["captured_at"])]
    geoms = [g for g in (corrected_footprint({**r, "footprint": r[flights.geometry.name]})
                         for r in earlier.to_dict("records")) if g is not None]
    return shapely.union_all(geoms) if geoms else None
