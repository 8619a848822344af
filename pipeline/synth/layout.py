"""Procedural layout of a rural district: blocks, roads, fields, parcels, zones, structures.

Everything is in map metres (EPSG:4547). Structures are unions of rotated rectangles
(`Part`); their truth footprint is the roof outline. A structure's life over the epochs
(appear / grow / demolish / rebuild) is planned here, and its violation is derived from
the simple rules (parcel overlap, zone overlap, approved area) so labels stay consistent.
"""
from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry import Polygon, box

from pipeline.synth.blocks import (
    add_trees,
    field_strips,
    informal_block,
    place_cars,
    terrace_block,
    village_block,
)
from pipeline.synth.parts import (
    GREENHOUSE_EXEMPT_KINDS,
    TOWNS,
    VILLAGES,
    Field,
    Frame,
    Ground,
    Layout,
    Structure,
    blob,
    greenhouse_look,
    house_look,
    shed_look,
    site_look,
)
from pipeline.synth.randomisation import (
    Randomisation,
)


# ------------------------------------------------------------------ the layout
def build_layout(seed: int, size_m: float, n_epochs: int = 3, rnd: Randomisation | None = None,
                 origin: tuple[float, float] | None = None, full_region: bool = False) -> Layout:
    """Lay out a district: deterministic for (seed, size_m, n_epochs, rnd)."""
    rnd = rnd or Randomisation()
    rng = np.random.default_rng([seed, 7919])
    S = float(size_m)
    if origin is None:
        origin = (515000.0 + 500 * int(rng.integers(0, 60)), 3375000.0 + 500 * int(rng.integers(0, 40)))
    x0, y0 = origin
    cx, cy = x0 + S / 2, y0 + S / 2
    theta = float(rng.uniform(-0.45, 0.45))
    fr = Frame(cx, cy, theta)
    bounds = box(x0, y0, x0 + S, y0 + S)
    margin = max(2.5, 0.035 * S)
    if full_region:
        region = box(x0 + 1.0, y0 + 1.0, x0 + S - 1.0, y0 + S - 1.0)
    else:
        region = blob(cx, cy, S / 2 - margin * 2.2, rng, wobble=0.06).intersection(
            bounds.buffer(-margin * 1.5))
    ground = Ground()
    structures: list[Structure] = []
    parcels: list[dict] = []
    zones: list[dict] = []
    town = str(rng.choice(TOWNS))
    village = str(rng.choice(VILLAGES))
    vcode = f"4201161{int(rng.integers(0, 100)):02d}2{int(rng.integers(0, 100)):02d}"
    dens = float(np.clip(rnd.density, 0.2, 3.0))

    # --- the block grid in the local frame
    H = S * 0.75 + 10
    main_w = float(rng.uniform(5.0, 7.0))
    lane_w = float(rng.uniform(3.0, 4.0))
    track_w = 2.2
    vr = float(rng.uniform(-0.1, 0.1) * S) if S >= 200 else float(rng.uniform(-0.3, 0.3) * S)
    main_surface = str(rng.choice(["concrete", "asphalt"], p=[0.7, 0.3]))
    # rows: (v0, v1, kind) with kind village for the two rows along the main road
    rows = []
    v = vr + main_w / 2
    k = 0
    while v < H:
        d = float(rng.uniform(26, 34)) if k == 0 else float(rng.uniform(30, 70))
        rows.append((v, v + d, "village" if k == 0 else "field", k + 1))
        v += d + (lane_w if k == 0 else track_w)
        k += 1
    v = vr - main_w / 2
    k = 0
    while v > -H:
        d = float(rng.uniform(26, 34)) if k == 0 else float(rng.uniform(30, 70))
        rows.append((v - d, v, "village" if k == 0 else "field", -(k + 1)))
        v -= d + (lane_w if k == 0 else track_w)
        k += 1
    # columns
    cols = []
    u = -H + float(rng.uniform(0, 30))
    while u < H:
        w = float(rng.uniform(36, 70))
        cols.append((u, u + w))
        u += w + lane_w
    village_half = S * (0.18 + 0.12 * min(dens, 2.0))
    first = ["basic_farmland", "greenhouse", "vacant"]
    other_types = ["farmland", "redline", "basic_farmland", "farmland", "orchard", "vacant", "basic_farmland",
                   "greenhouse", "farmland"]
    rng.shuffle(first)
    rng.shuffle(other_types)
    other_types = first + other_types
    blocks = []
    for (v0, v1, rk, ri) in rows:
        for (u0, u1) in cols:
            uc = (u0 + u1) / 2
            if rk == "village" and (abs(uc) < village_half or u0 < 0 < u1):
                t = "village"
            else:
                t = None
            blocks.append([u0, v0, u1, v1, t, ri])
    # non-village blocks: nearest to the centre get the most diverse types
    rest = sorted([b for b in blocks if b[4] is None],
                  key=lambda b: math.hypot((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
    for i, b in enumerate(rest):
        b[4] = other_types[i % len(other_types)] if i < len(other_types) else str(
            rng.choice(["basic_farmland", "farmland", "orchard", "vacant", "greenhouse"],
                       p=[0.4, 0.3, 0.1, 0.1, 0.1]))

    # --- roads (centre lines in the gaps)
    def road(u0, v0, u1, v1, w, surf):
        x, y = fr.xy([u0, u1], [v0, v1])
        ground.roads.append((np.c_[x, y], w, surf))

    road(-H, vr, H, vr, main_w, main_surface)
    for (v0, v1, rk, ri) in rows:
        gap = lane_w if abs(ri) == 1 else track_w
        edge = v1 + gap / 2 if ri > 0 else v0 - gap / 2
        road(-H, edge, H, edge, gap, "concrete" if abs(ri) == 1 else "dirt")
    for (u0, u1) in cols:
        uu = u1 + lane_w / 2
        # concrete lane through the village rows, dirt tracks through the fields
        vlo = min(r[0] for r in rows if abs(r[3]) == 1)
        vhi = max(r[1] for r in rows if abs(r[3]) == 1)
        road(uu, vlo, uu, vhi, lane_w, "concrete")
        road(uu, -H, uu, vlo, track_w, "dirt")
        road(uu, vhi, uu, H, track_w, "dirt")

    sid = [0]
    pid = [0]
    zid = [0]
    occupied: list[Polygon] = []

    def new_structure(cls, parts, role, ext=None, parcel_id="", gap=0.6):
        s = Structure(f"S{sid[0] + 1:04d}", cls, parts, ext or [], parcel_id, role)
        ext_geom = s.full_extent()
        if not region.buffer(-0.3).contains(ext_geom):
            return None
        probe = ext_geom if gap >= 0.6 else ext_geom.buffer(-0.05)     # gap 0: wall to wall
        if any(o.intersects(probe) for o in occupied):
            return None
        occupied.append(ext_geom.buffer(gap))
        sid[0] += 1
        structures.append(s)
        return s

    def add_zone(poly, kind):
        poly = poly.intersection(bounds)
        if poly.is_empty or poly.area < 20:
            return
        zid[0] += 1
        code, name = {"basic_farmland": (f"JBNT{420116:06d}{zid[0]:03d}", "永久基本农田"),
                      "farmland": (str(rng.choice(["0101", "0102", "0103"])), "一般耕地"),
                      "ecological_redline": (f"STHX-42-{zid[0]:03d}", "生态保护红线")}[kind]
        zones.append({"zone_id": f"Z{zid[0]:03d}", "kind": kind, "code": code, "name": name,
                      "geometry": poly})

    def random_site_in(u0, v0, u1, v1, L, W):
        if u1 - u0 < L + 4 or v1 - v0 < W + 4:
            return None
        uu = float(rng.uniform(u0 + 2 + L / 2, u1 - 2 - L / 2))
        vv = float(rng.uniform(v0 + 2 + W / 2, v1 - 2 - W / 2))
        return uu - L / 2, vv - W / 2, uu + L / 2, vv + W / 2

    def illegal_slot(u0, v0, u1, v1, role):
        """An illegal structure (shed, house or site) somewhere in the block."""
        kind = str(rng.choice(["shed", "house", "site"], p=[0.55, 0.25, 0.2]))
        dth = math.radians(float(rng.normal(0, rnd.orientation_jitter_deg)))
        for _ in range(6):
            if kind == "shed":
                L, W = float(rng.uniform(7, 18)), float(rng.uniform(4, 8))
                r = random_site_in(u0, v0, u1, v1, L, W)
                if r and new_structure("steel_shed", [fr.part(*r, float(rng.uniform(3, 4.5)),
                                                              "metal", shed_look(rng, rnd),
                                                              dtheta=dth)], role):
                    return
            elif kind == "house":
                L, W = float(rng.uniform(8, 13)), float(rng.uniform(7, 11))
                r = random_site_in(u0, v0, u1, v1, L, W)
                if r:
                    roof, look, h = house_look(rng, rnd, int(rng.integers(1, 3)))
                    if new_structure("building", [fr.part(*r, h, roof, look, dtheta=dth)], role):
                        return
            else:
                L, W = float(rng.uniform(9, 15)), float(rng.uniform(8, 12))
                r = random_site_in(u0, v0, u1, v1, L, W)
                if r and new_structure("under_construction",
                                       [fr.part(*r, 0.3, "site", site_look(rng), dtheta=dth)], role):
                    return

    # --- blocks
    for (u0, v0, u1, v1, t, ri) in blocks:
        poly = fr.rect(u0, v0, u1, v1)
        if not poly.intersects(bounds):
            continue
        if t == "village" and rnd.terraces > 0 and rng.random() < rnd.terraces:
            ground.patches.append((poly, "village"))
            terrace_block(fr, rng, rnd, u0, v0, u1, v1, new_structure)
            continue
        if t == "village" and rnd.palette != "china" and rng.random() < 0.5:
            t = "informal"
        if t == "informal" or (t == "vacant" and rnd.palette != "china" and rng.random() < 0.5):
            ground.patches.append((poly, "village"))
            informal_block(fr, rng, rnd, u0, v0, u1, v1, dens, ground, new_structure)
        elif t == "village":
            ground.patches.append((poly, "village"))
            village_block(fr, rng, rnd, u0, v0, u1, v1, ri, dens, town, village, vcode, ground,
                           parcels, pid, new_structure, illegal_slot)
        elif t in ("basic_farmland", "farmland", "orchard"):
            field_strips(fr, rng, ground, u0, v0, u1, v1, poly)
            add_zone(poly, "farmland" if t == "orchard" else t)
            if t == "orchard":
                uu, vv = np.meshgrid(np.arange(u0 + 2.5, u1 - 1.5, 4.5), np.arange(v0 + 2.5, v1 - 1.5, 4.5))
                x, y = fr.xy(uu.ravel(), vv.ravel())
                add_trees(ground, rng, x, y, (1.2, 1.9), (2.5, 4.0))
            else:
                for _ in range(int(rng.poisson(1.2 * dens)) + (1 if abs(ri) == 2 else 0)):
                    illegal_slot(u0, v0, u1, v1, "illegal_land")
        elif t == "greenhouse":
            ground.fields.append(Field(poly, theta, int(rng.integers(1 << 30)), "greenhouse_ground"))
            add_zone(poly, "farmland")
            along_u = (u1 - u0) >= (v1 - v0)
            gw = float(rng.uniform(7, 9.5))
            gap = float(rng.uniform(1.5, 3.0))
            a0, a1, b0, b1 = (u0, u1, v0, v1) if along_u else (v0, v1, u0, u1)
            b = b0 + 1.5
            while b + gw < b1 - 1.0:
                s0 = a0 + 1.5 + float(rng.uniform(0, 4))
                while True:
                    L = float(rng.uniform(14, 40))
                    if s0 + L > a1 - 1.5:
                        break
                    r = (s0, b, s0 + L, b + gw) if along_u else (b, s0, b + gw, s0 + L)
                    new_structure("greenhouse", [fr.part(*r, float(rng.uniform(2.6, 3.4)), "greenhouse",
                                                         greenhouse_look(rng, rnd), along_u=along_u)],
                                  "greenhouse")
                    s0 += L + float(rng.uniform(2.0, 5.0))
                b += gw + gap
        elif t == "redline":
            ground.patches.append((poly, "meadow"))
            add_zone(poly, "ecological_redline")
            pu, pv = (u0 + u1) / 2 + rng.uniform(-5, 5), (v0 + v1) / 2 + rng.uniform(-5, 5)
            px, py = fr.xy(pu, pv)
            rad = 0.32 * min(u1 - u0, v1 - v0)
            pond = blob(float(px), float(py), rad, rng, wobble=0.15).intersection(poly.buffer(-2))
            if not pond.is_empty:
                ground.ponds.append(pond)
                occupied.append(pond.buffer(1.0))
            ring = np.linspace(0, 2 * np.pi, 28, endpoint=False)
            tx = px + (rad + 3.5) * np.cos(ring) + rng.normal(0, 1.5, ring.size)
            ty = py + (rad + 3.5) * np.sin(ring) + rng.normal(0, 1.5, ring.size)
            keep = rng.random(ring.size) < 0.6
            add_trees(ground, rng, tx[keep], ty[keep], (1.8, 3.6), (5, 10))
            illegal_slot(u0, v0, u1, v1, "illegal_redline")
        elif t == "vacant":
            ground.patches.append((poly, "vacant"))
            for _ in range(int(rng.poisson(2.0 * dens)) + 1):
                illegal_slot(u0, v0, u1, v1, "illegal_vacant")
            n = int(rng.poisson(6))
            tx, ty = fr.xy(rng.uniform(u0 + 2, u1 - 2, n), rng.uniform(v0 + 2, v1 - 2, n))
            add_trees(ground, rng, tx, ty, (1.5, 3.5), (4, 9))

    # roadside trees along the main road
    uu = np.arange(-H, H, float(rng.uniform(5, 8)))
    for side in (-1, 1):
        keep = rng.random(uu.size) < 0.55
        tx, ty = fr.xy(uu[keep], np.full(keep.sum(), vr + side * (main_w / 2 + 1.2)))
        add_trees(ground, rng, tx, ty, (1.6, 3.0), (5, 9))

    # trees must not cover any structure (any epoch) nor stand in ponds
    if len(ground.trees):
        obstacles = [s.full_extent().buffer(0.3) for s in structures] + list(ground.ponds)
        if obstacles:
            tree = shapely.STRtree(obstacles)
            # crowns may overhang a roof edge a little (up to 40 % of their radius), as real trees do
            disks = shapely.buffer(shapely.points(ground.trees[:, :2]), ground.trees[:, 2] * 0.6)
            hit = tree.query(disks, predicate="intersects")
            bad = np.zeros(len(disks), bool)
            bad[hit[0]] = True
            ground.trees = ground.trees[~bad]
        inside = shapely.contains_xy(bounds.buffer(6), ground.trees[:, 0], ground.trees[:, 1])
        ground.trees = ground.trees[inside]

    place_cars(ground, rng, rnd, bounds, [st.full_extent() for st in structures])
    parcels = [p for p in parcels if p["geometry"].intersects(bounds)]
    lay = Layout(seed, S, x0, y0, n_epochs, rnd, region, ground, structures, parcels, zones)
    plan_epochs(lay, rng)
    plan_storeys(lay)
    return lay


# ------------------------------------------------------------------ epochs and rules
def plan_epochs(lay: Layout, rng: np.random.Generator) -> None:
    """Assign appear / grow / demolish / rebuild epochs to every structure slot."""
    n = lay.n_epochs
    for s in lay.structures:
        p_first = {"legal": 0.85, "over": 0.7, "greenhouse": 0.8, "legal_site": 0.4}.get(s.role, 0.45)
        r = rng.random()
        if r < p_first or n == 1:
            s.appear = 1
        elif r < 0.93:
            s.appear = int(rng.integers(2, n + 1))
        else:
            s.appear = None
    if n == 1:
        _drop_unused(lay)
        return
    illegal_roles = [s for s in lay.structures if s.role.startswith("illegal")]
    if illegal_roles and not any(s.appear == 1 for s in illegal_roles):  # some 存量 to enforce on
        illegal_roles[int(rng.integers(len(illegal_roles)))].appear = 1
    for e in range(2, n + 1):
        # every later epoch has at least one new structure: a free slot, else one not yet built
        if not any(s.appear == e for s in lay.structures):
            free = [s for s in lay.structures if s.appear is None] or \
                   [s for s in lay.structures if s.appear == 1 and s.grow is None and s.demolish is None
                    and s.role != "greenhouse"][1:]
            if free:
                free[int(rng.integers(len(free)))].appear = e
        alive_before = [s for s in lay.structures if s.exists(e - 1)]
        labels = {s.sid: violation_of(lay, s, e - 1) for s in alive_before}
        # demolitions: illegal ones mostly (enforcement), a few old legal houses
        cands = [s for s in alive_before if s.rebuild is None and s.grow != e and s.cls != "greenhouse"]
        ill = [s for s in cands if labels[s.sid]]
        chosen = [s for s in ill if rng.random() < 0.35]
        chosen += [s for s in cands if not labels[s.sid] and s.cls == "building" and rng.random() < 0.03]
        if not chosen and (ill or cands):
            pool = ill or [s for s in cands if s.grow is None] or cands
            chosen = [pool[int(rng.integers(len(pool)))]]
        for s in chosen:
            s.demolish = e
        # growth: legal houses with a planned extension
        gc = [s for s in alive_before if s.ext and s.grow is None and s.demolish is None
              and not labels[s.sid]]
        grown = [s for s in gc if rng.random() < 0.15]
        if not grown and gc:
            grown = [gc[int(rng.integers(len(gc)))]]
        for s in grown:
            s.grow = e
        # rebuilds (from the third epoch on): same place, same footprint
        if e >= 3:
            rc = [s for s in lay.structures if s.demolish is not None and s.demolish < e and s.rebuild is None]
            rb = [s for s in rc if rng.random() < 0.5]
            if not rb and rc:
                rb = [rc[int(rng.integers(len(rc)))]]
            for s in rb:
                s.rebuild = e
    _drop_unused(lay)


def plan_storeys(lay: Layout) -> None:
    """Houses that gain a storey (加层) in a later epoch: about one in eight of the houses standing
    before and after, at least one per epoch; drawn from a stream of their own, so the rest of the
    layout (and every orthophoto: a storey does not show from above) is what it was."""
    rng = np.random.default_rng([lay.seed, 3373])
    for e in range(2, lay.n_epochs + 1):
        cands = [s for s in lay.structures if s.cls == "building" and s.exists(e - 1) and s.exists(e)
                 and s.raise_at is None and not s.change_at(e)]
        chosen = [s for s in cands if rng.random() < 0.12]
        if not chosen and cands:
            chosen = [cands[int(rng.integers(len(cands)))]]
        for s in chosen:
            s.raise_at = e


def _drop_unused(lay: Layout) -> None:
    lay.structures = [s for s in lay.structures if s.appear is not None]


def violation_of(lay: Layout, s: Structure, e: int) -> str:
    """The rule-consistent label of a structure at an epoch ('' legal)."""
    geom = s.footprint(e)
    return classify(geom, s.cls, lay.parcels, lay.zones)


def classify(geom, cls: str, parcels: list[dict], zones: list[dict]) -> str:
    area = geom.area
    kinds = {z["kind"] for z in zones if z["geometry"].intersection(geom).area > max(0.5, 0.02 * area)}
    if kinds:
        if cls == "greenhouse" and kinds <= GREENHOUSE_EXEMPT_KINDS:
            return ""
        return "illegal_land_use"
    best, frac = None, 0.0
    for p in parcels:
        if p["geometry"].intersects(geom):
            f = p["geometry"].intersection(geom).area / area
            if f > frac:
                best, frac = p, f
    if best is None or frac < 0.5:
        return "illegal_construction"
    if area > best["approved_area_m2"] * 1.2:
        return "over_approval"
    return ""


def structures_at(lay: Layout, e: int) -> list[Structure]:
    return [s for s in lay.structures if s.exists(e)]
