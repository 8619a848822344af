"""Procedural layout of a rural district: blocks, roads, fields, parcels, zones, structures.

Everything is in map metres (EPSG:4547). Structures are unions of rotated rectangles
(`Part`); their truth footprint is the roof outline. A structure's life over the epochs
(appear / grow / demolish / rebuild) is planned here, and its violation is derived from
the simple rules (parcel overlap, zone overlap, approved area) so labels stay consistent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon, box
from shapely.ops import unary_union

from pipeline.synth.randomisation import (
    FLAT_CHINA,
    FLAT_GLOBAL,
    METAL_GLOBAL,
    SHED_CHINA,
    TANK_CHINA,
    TANK_GLOBAL,
    TILE_CHINA,
    TILE_GLOBAL,
    Randomisation,
    jitter,
    pick,
)

CLASSES = ("building", "steel_shed", "under_construction", "greenhouse")
ZONE_KINDS = ("basic_farmland", "farmland", "ecological_redline")
GREENHOUSE_EXEMPT_KINDS = {"farmland"}
SURNAMES = list("王李张刘陈杨黄赵周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕")
GIVEN = list("建国军华明伟强平芳秀英兰红霞丽敏静海涛斌勇春生福贵荣德志")
TOWNS = ["新店镇", "三里桥镇", "柏泉街道", "东山镇", "辛安渡镇"]
VILLAGES = ["张湾村", "李家墩村", "杨岗村", "朱家河村", "马湖村", "石桥村"]


@dataclass
class Part:
    """A rotated rectangle of roof: centre, length along `angle` (ridge axis), width across."""

    cx: float
    cy: float
    length: float
    width: float
    angle: float
    height: float
    roof: str  # gable, hip, flat, metal, greenhouse, site
    look: dict = field(default_factory=dict)

    def corners(self) -> np.ndarray:
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        ax, ay = ca * self.length / 2, sa * self.length / 2
        bx, by = -sa * self.width / 2, ca * self.width / 2
        return np.array([[self.cx - ax - bx, self.cy - ay - by], [self.cx + ax - bx, self.cy + ay - by],
                         [self.cx + ax + bx, self.cy + ay + by], [self.cx - ax + bx, self.cy - ay + by]])

    def polygon(self) -> Polygon:
        return Polygon(self.corners())


@dataclass
class Structure:
    sid: str
    cls: str
    parts: list[Part]
    ext: list[Part] = field(default_factory=list)
    parcel_id: str = ""
    role: str = ""
    appear: int | None = None
    grow: int | None = None
    demolish: int | None = None
    rebuild: int | None = None

    def exists(self, e: int) -> bool:
        if self.appear is None or e < self.appear:
            return False
        if self.demolish is not None and e >= self.demolish:
            return self.rebuild is not None and e >= self.rebuild
        return True

    def parts_at(self, e: int) -> list[Part]:
        grown = self.grow is not None and e >= self.grow
        return self.parts + (self.ext if grown else [])

    def footprint(self, e: int):
        return unary_union([p.polygon() for p in self.parts_at(e)])

    def full_extent(self):
        return unary_union([p.polygon() for p in self.parts + self.ext])

    def change_at(self, e: int) -> list[str]:
        out = []
        if self.appear == e and e > 1:
            out.append("new")
        if self.grow == e:
            out.append("grown")
        if self.demolish == e:
            out.append("demolished")
        if self.rebuild == e:
            out.append("rebuilt")
        return out


@dataclass
class Field:
    poly: Polygon
    row_angle: float
    seed: int
    kind: str = "crop"  # crop, greenhouse_ground


@dataclass
class Ground:
    fields: list[Field] = field(default_factory=list)
    roads: list[tuple[np.ndarray, float, str]] = field(default_factory=list)  # coords, width, surface
    ponds: list[Polygon] = field(default_factory=list)
    yards: list[Polygon] = field(default_factory=list)
    gardens: list[Polygon] = field(default_factory=list)
    patches: list[tuple[Polygon, str]] = field(default_factory=list)  # village, vacant, meadow
    walls: list[tuple[np.ndarray, float]] = field(default_factory=list)  # open polyline, height
    trees: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # x, y, r, h, seed
    cars: list[tuple[Part, int]] = field(default_factory=list)  # car, slot seed (present per epoch)


@dataclass
class Layout:
    seed: int
    size_m: float
    x0: float  # west edge
    y0: float  # south edge
    n_epochs: int
    rnd: Randomisation
    region: Polygon  # where structures may stand (inside every flight footprint)
    ground: Ground
    structures: list[Structure]
    parcels: list[dict]  # attributes + "geometry"
    zones: list[dict]

    @property
    def ytop(self) -> float:
        return self.y0 + self.size_m

    def bounds(self):
        return box(self.x0, self.y0, self.x0 + self.size_m, self.y0 + self.size_m)


# ------------------------------------------------------------------ helpers
def blob(cx: float, cy: float, radius: float, rng: np.random.Generator, wobble: float = 0.08,
         n: int = 96, harmonics: int = 5) -> Polygon:
    """A smooth star-shaped polygon (radial Fourier series)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 2 + harmonics):
        r += rng.uniform(-wobble, wobble) / (k - 1) ** 0.6 * np.sin(k * t + rng.uniform(0, 2 * np.pi))
    return Polygon(np.c_[cx + radius * r * np.cos(t), cy + radius * r * np.sin(t)])


class _Frame:
    """Local (u, v) frame rotated by theta about the scene centre."""

    def __init__(self, cx: float, cy: float, theta: float):
        self.cx, self.cy, self.theta = cx, cy, theta
        self.c, self.s = math.cos(theta), math.sin(theta)

    def xy(self, u, v):
        u, v = np.asarray(u, float), np.asarray(v, float)
        return self.cx + u * self.c - v * self.s, self.cy + u * self.s + v * self.c

    def rect(self, u0, v0, u1, v1) -> Polygon:
        x, y = self.xy([u0, u1, u1, u0], [v0, v0, v1, v1])
        return Polygon(np.c_[x, y])

    def part(self, u0, v0, u1, v1, height, roof, look, along_u=True, dtheta=0.0) -> Part:
        x, y = self.xy((u0 + u1) / 2, (v0 + v1) / 2)
        lu, lv = abs(u1 - u0), abs(v1 - v0)
        if along_u:
            return Part(float(x), float(y), lu, lv, self.theta + dtheta, height, roof, look)
        return Part(float(x), float(y), lv, lu, self.theta + math.pi / 2 + dtheta, height, roof, look)


def _names(rng):
    return str(rng.choice(SURNAMES)) + "".join(rng.choice(GIVEN, int(rng.integers(1, 3))))


# ------------------------------------------------------------------ looks
def _palette(rnd: Randomisation, rng) -> str:
    if rnd.palette == "mixed":
        return "china" if rng.random() < 0.5 else "global"
    return rnd.palette


def house_look(rng, rnd: Randomisation, floors: int) -> tuple[str, dict, float]:
    """Roof type, look dict and height of a village house."""
    pal = _palette(rnd, rng)
    if pal == "china":
        roof = str(rng.choice(["flat", "gable", "hip"], p=[0.55, 0.35, 0.10]))
        colour = pick(rng, FLAT_CHINA if roof == "flat" else TILE_CHINA)
        tanks = TANK_CHINA
    else:
        roof = str(rng.choice(["flat", "metal", "hip", "gable"], p=[0.4, 0.42, 0.1, 0.08]))
        colour = pick(rng, FLAT_GLOBAL if roof == "flat" else METAL_GLOBAL if roof == "metal"
                      else TILE_GLOBAL)
        tanks = TANK_GLOBAL
    look = {"colour": jitter(rng, colour, 7), "seed": int(rng.integers(1 << 30)), "palette": pal,
            "pitch": float(rng.uniform(22, 32) if roof in ("gable", "hip") else rng.uniform(6, 14)),
            "rust": float(rng.uniform(0, 0.6)) if pal == "global" and roof == "metal" else 0.0,
            "period": float(rng.uniform(0.07, 0.14)) if roof == "metal" else 0.2}
    height = floors * 3.1 + (0.9 if roof == "flat" else 0.0)
    if roof == "flat":
        look["parapet_w"] = float(rng.uniform(0.18, 0.26))
        look["parapet_h"] = float(rng.uniform(0.5, 1.1))
        look["parapet_colour"] = jitter(rng, (205, 204, 198), 8)
        look["tank_palette"] = [jitter(rng, pick(rng, tanks), 5) for _ in range(3)]
        look["n_tanks"] = int(rng.integers(0, 3))
        look["solar"] = bool(rng.random() < (0.45 if pal == "china" else 0.15))
        look["stair"] = bool(rng.random() < 0.55)
        look["rebar"] = bool(pal == "global" and rng.random() < 0.35)
        look["clutter"] = int(rng.integers(0, 6 if pal == "global" else 3))
    return roof, look, height


def shed_look(rng, rnd: Randomisation) -> dict:
    pal = _palette(rnd, rng)
    colour = pick(rng, SHED_CHINA if pal == "china" else SHED_CHINA + METAL_GLOBAL)
    return {"colour": jitter(rng, colour, 6), "seed": int(rng.integers(1 << 30)), "palette": pal,
            "pitch": float(rng.uniform(5, 12)), "mono": bool(rng.random() < 0.45),
            "period": float(rng.uniform(0.17, 0.25)), "skylights": bool(rng.random() < 0.3),
            "rust": float(rng.uniform(0, 0.3)) if pal == "global" else 0.0}


def site_look(rng) -> dict:
    return {"seed": int(rng.integers(1 << 30)), "stage": int(rng.integers(0, 3)),
            "soil": jitter(rng, (150, 124, 96), 10), "grid": float(rng.uniform(3.3, 4.5))}


def greenhouse_look(rng, rnd: Randomisation) -> dict:
    dark = rnd.palette != "china" and rng.random() < 0.2
    film = (70, 74, 72) if dark else (226, 230, 228)
    return {"colour": jitter(rng, film, 5), "seed": int(rng.integers(1 << 30)),
            "transparency": float(rng.uniform(0.15, 0.4)), "rib": float(rng.uniform(0.9, 1.4)),
            "vents": bool(rng.random() < 0.5)}


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
    fr = _Frame(cx, cy, theta)
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
            _terrace_block(fr, rng, rnd, u0, v0, u1, v1, new_structure)
            continue
        if t == "village" and rnd.palette != "china" and rng.random() < 0.5:
            t = "informal"
        if t == "informal" or (t == "vacant" and rnd.palette != "china" and rng.random() < 0.5):
            ground.patches.append((poly, "village"))
            _informal_block(fr, rng, rnd, u0, v0, u1, v1, dens, ground, new_structure)
        elif t == "village":
            ground.patches.append((poly, "village"))
            _village_block(fr, rng, rnd, u0, v0, u1, v1, ri, dens, town, village, vcode, ground,
                           parcels, pid, new_structure, illegal_slot)
        elif t in ("basic_farmland", "farmland", "orchard"):
            _field_strips(fr, rng, ground, u0, v0, u1, v1, poly)
            add_zone(poly, "farmland" if t == "orchard" else t)
            if t == "orchard":
                uu, vv = np.meshgrid(np.arange(u0 + 2.5, u1 - 1.5, 4.5), np.arange(v0 + 2.5, v1 - 1.5, 4.5))
                x, y = fr.xy(uu.ravel(), vv.ravel())
                _add_trees(ground, rng, x, y, (1.2, 1.9), (2.5, 4.0))
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
            _add_trees(ground, rng, tx[keep], ty[keep], (1.8, 3.6), (5, 10))
            illegal_slot(u0, v0, u1, v1, "illegal_redline")
        elif t == "vacant":
            ground.patches.append((poly, "vacant"))
            for _ in range(int(rng.poisson(2.0 * dens)) + 1):
                illegal_slot(u0, v0, u1, v1, "illegal_vacant")
            n = int(rng.poisson(6))
            tx, ty = fr.xy(rng.uniform(u0 + 2, u1 - 2, n), rng.uniform(v0 + 2, v1 - 2, n))
            _add_trees(ground, rng, tx, ty, (1.5, 3.5), (4, 9))

    # roadside trees along the main road
    uu = np.arange(-H, H, float(rng.uniform(5, 8)))
    for side in (-1, 1):
        keep = rng.random(uu.size) < 0.55
        tx, ty = fr.xy(uu[keep], np.full(keep.sum(), vr + side * (main_w / 2 + 1.2)))
        _add_trees(ground, rng, tx, ty, (1.6, 3.0), (5, 9))

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

    _place_cars(ground, rng, rnd, bounds, [st.full_extent() for st in structures])
    parcels = [p for p in parcels if p["geometry"].intersects(bounds)]
    lay = Layout(seed, S, x0, y0, n_epochs, rnd, region, ground, structures, parcels, zones)
    plan_epochs(lay, rng)
    return lay


def _add_trees(ground: Ground, rng, x, y, r_range, h_range):
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    if x.size == 0:
        return
    r = rng.uniform(*r_range, x.size)
    h = rng.uniform(*h_range, x.size)
    seeds = rng.integers(0, 1 << 30, x.size)
    ground.trees = np.vstack([ground.trees, np.c_[x, y, r, h, seeds]])


CAR_COLOURS = [((225, 226, 228), 5), ((40, 42, 46), 3), ((150, 152, 156), 3), ((170, 40, 36), 1),
               ((40, 70, 130), 1), ((190, 170, 120), 1)]


def _place_cars(ground: Ground, rng, rnd: Randomisation, bounds, obstacles: list) -> None:
    """Candidate car slots on concrete/asphalt roads and in yards; each epoch shows some of them."""
    for coords, w, surf in ground.roads:
        if surf == "dirt":
            continue
        line = LineString(coords).intersection(bounds)
        if line.is_empty or line.geom_type != "LineString":
            continue
        (x0, y0), (x1, y1) = line.coords[0], line.coords[-1]
        ang = math.atan2(y1 - y0, x1 - x0)
        for _ in range(int(rng.poisson(line.length / 40 * rnd.cars))):
            t = float(rng.uniform(0, 1))
            side = float(rng.choice([-1, 1])) * (w / 2 - 1.2)
            cx = x0 + (x1 - x0) * t - math.sin(ang) * side
            cy = y0 + (y1 - y0) * t + math.cos(ang) * side
            _car(ground, rng, cx, cy, ang + (math.pi if rng.random() < 0.5 else 0.0))
    for y in ground.yards:
        if rng.random() < 0.15 * rnd.cars:
            c = y.centroid
            _car(ground, rng, c.x, c.y, float(rng.uniform(0, 2 * math.pi)))
    # no car on another car or under a structure of any epoch
    kept, taken = [], list(obstacles)
    for car in ground.cars:
        g = car[0].polygon().buffer(0.3)
        if not any(g.intersects(o) for o in taken):
            kept.append(car)
            taken.append(g)
    ground.cars = kept


def _car(ground, rng, cx, cy, ang):
    look = {"colour": jitter(rng, pick(rng, CAR_COLOURS), 6), "seed": int(rng.integers(1 << 30))}
    part = Part(float(cx), float(cy), float(rng.uniform(4.0, 4.9)), float(rng.uniform(1.7, 1.9)), ang, 1.5,
                "car", look)
    ground.cars.append((part, int(rng.integers(1 << 30))))


def wing(fr, rng, rnd: Randomisation, u0, v0, u1, v1, height, roof, look, toward_high_v: bool,
         dtheta=0.0) -> list[Part]:
    """With probability ``rnd.l_houses`` (no random draw when it is 0), a second wing at right angles
    to the house ``u0..u1 × v0..v1`` (turned by ``dtheta`` about its centre, as the house is), at one
    end (L plan) or the middle (T plan), on the side ``toward_high_v``: the same roof and look, 0.1 m
    into the house so that the two are one house with one outline."""
    if rnd.l_houses <= 0 or rng.random() >= rnd.l_houses:
        return []
    L, W = u1 - u0, v1 - v0
    ww = min(float(rng.uniform(0.3, 0.5)) * L, 0.9 * W + 2.0)     # the wing's width (along u)
    wl = float(rng.uniform(0.6, 1.3)) * W                        # how far it reaches out (along v)
    at = str(rng.choice(["start", "end", "middle"], p=[0.4, 0.4, 0.2]))
    a = u0 if at == "start" else u1 - ww if at == "end" else (u0 + u1 - ww) / 2
    b0, b1 = (v1 - 0.1, v1 + wl) if toward_high_v else (v0 - wl, v0 + 0.1)
    p = fr.part(a, b0, a + ww, b1, height, roof, dict(look, seed=look.get("seed", 0) + 7), along_u=False,
                dtheta=dtheta)
    hx, hy = fr.xy((u0 + u1) / 2, (v0 + v1) / 2)                  # turned with the house about its centre
    dx, dy, c, s = p.cx - float(hx), p.cy - float(hy), math.cos(dtheta), math.sin(dtheta)
    p.cx, p.cy = float(hx) + c * dx - s * dy, float(hy) + s * dx + c * dy
    return [p]


def _informal_block(fr, rng, rnd, u0, v0, u1, v1, dens, ground, new_structure):
    """Dense, irregular peri-urban houses (no registered parcels): varied sizes and orientations."""
    area = (u1 - u0) * (v1 - v0)
    jit = max(rnd.orientation_jitter_deg, 6.0)
    for _ in range(int(area / 35 * dens)):
        L, W = float(rng.uniform(5, 14)), float(rng.uniform(4.5, 10))
        if u1 - u0 < L + 2 or v1 - v0 < W + 2:
            continue
        uu, vv = float(rng.uniform(u0 + 1 + L / 2, u1 - 1 - L / 2)), float(rng.uniform(v0 + 1 + W / 2, v1 - 1 - W / 2))
        roof, look, h = house_look(rng, rnd, int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])))
        dth = math.radians(float(rng.normal(0, jit)))
        extra = wing(fr, rng, rnd, uu - L / 2, vv - W / 2, uu + L / 2, vv + W / 2, h, roof, look,
                     bool(rng.random() < 0.5) if rnd.l_houses > 0 else True, dtheta=dth)
        main = fr.part(uu - L / 2, vv - W / 2, uu + L / 2, vv + W / 2, h, roof, look, dtheta=dth)
        if new_structure("building", [main, *extra], "illegal_informal") is None and extra:
            new_structure("building", [main], "illegal_informal")   # no room for the wing
    n = int(rng.poisson(area / 250))
    x, y = fr.xy(rng.uniform(u0 + 1, u1 - 1, n), rng.uniform(v0 + 1, v1 - 1, n))
    _add_trees(ground, rng, x, y, (1.2, 3.2), (4, 9))


def _terrace_block(fr, rng, rnd, u0, v0, u1, v1, new_structure):
    """Rows of adjoining houses (a dense settlement, an old village core): each house its own
    structure, wall to wall with its neighbours or a narrow gap apart; half of them in their
    neighbour's roofing (the same material, a shade apart: only the seam tells them apart), the
    rest in their own roof, colour and height; rows back to back or across an alley."""
    v = v0 + 1.0
    while v1 - 1.0 - v >= 4.5:
        vb = min(v + float(rng.uniform(5.5, 11.0)), v1 - 1.0)
        u = u0 + float(rng.uniform(1.0, 4.0))
        prev = None
        while u1 - 1.0 - u >= 3.0:
            ub = min(u + float(rng.uniform(3.5, 9.0)), u1 - 1.0)
            front, back = (float(x) for x in rng.uniform(0.0, 0.6, 2))      # fronts not quite in line
            if prev is not None and rng.random() < 0.5:
                roof, look, h = prev
                look = dict(look, colour=jitter(rng, look["colour"], 5), seed=int(rng.integers(1 << 30)))
            else:
                roof, look, h = house_look(rng, rnd, int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])))
            prev = (roof, look, h)
            new_structure("building", [fr.part(u, v + front, ub, vb - back, h, roof, look,
                                               along_u=bool(rng.random() < 0.5))], "illegal_informal", gap=0.0)
            u = ub + float(rng.choice([0.0, 0.0, 0.15, 0.4, 1.2]))
        v = vb + float(rng.choice([0.0, 0.8, 1.5, 2.5]))


def _field_strips(fr: _Frame, rng, ground: Ground, u0, v0, u1, v1, poly):
    """Split a farmland block into long strips separated by bunds (田埂)."""
    along_u = bool(rng.random() < 0.5)
    a0, a1 = (v0, v1) if along_u else (u0, u1)
    a = a0
    while a < a1 - 1:
        w = float(rng.uniform(6, 18))
        b = min(a + w, a1)
        if a1 - b < 4:
            b = a1
        r = fr.rect(u0, a, u1, b) if along_u else fr.rect(a, v0, b, v1)
        ground.fields.append(Field(r.buffer(-0.25, join_style=2), fr.theta + (0 if along_u else math.pi / 2),
                                   int(rng.integers(1 << 30))))
        a = b


def _village_block(fr, rng, rnd, u0, v0, u1, v1, ri, dens, town, village, vcode, ground, parcels,
                   pid, new_structure, illegal_slot):
    """Two rows of homesteads back to back; fronts (yards) face the lanes."""
    depth = (v1 - v0) / 2 - 0.3
    for row in (0, 1):
        front_low = row == 0  # row 0 fronts on v0, row 1 on v1
        pv0, pv1 = (v0, v0 + depth) if front_low else (v1 - depth, v1)
        u = u0 + float(rng.uniform(0.3, 3.0))
        while True:
            pw = float(rng.uniform(9.5, 14.0)) if rnd.palette == "china" else float(rng.uniform(7.0, 13.0))
            if u + pw > u1 - 0.3:
                if u1 - 0.3 - u > 5:  # leftover strip: unregistered land
                    illegal_slot(u, pv0, u1 - 0.3, pv1, "illegal_village")
                break
            pu0, pu1 = u, u + pw
            u += pw + 0.6
            registered = rng.random() < 0.85
            parcel_area = pw * depth
            jit = math.radians(float(rng.normal(0, rnd.orientation_jitter_deg))) if rnd.palette != "china" else 0.0
            floors = int(rng.choice([1, 2, 3], p=[0.2, 0.55, 0.25]))
            roof, look, h = house_look(rng, rnd, floors)
            hw = pw - 0.6
            # yard and courtyard wall in the front part
            yd = depth * float(rng.uniform(0.3, 0.45))  # front yard depth; the house stands behind it
            yard = (fr.rect(pu0 + 0.2, pv0 + 0.2, pu1 - 0.2, pv0 + yd) if front_low
                    else fr.rect(pu0 + 0.2, pv1 - yd, pu1 - 0.2, pv1 - 0.2))
            (ground.yards if rng.random() < 0.6 * min(1.0, dens) else ground.gardens).append(yard)
            if rng.random() < 0.45:
                fv = pv0 + 0.15 if front_low else pv1 - 0.15
                bv = pv1 - 0.15 if front_low else pv0 + 0.15
                gate = float(rng.uniform(pu0 + 1.5, pu1 - 4))
                x, y = fr.xy([gate, pu0 + 0.15, pu0 + 0.15], [fv, fv, bv])
                ground.walls.append((np.c_[x, y], 1.8))
                x, y = fr.xy([gate + 2.5, pu1 - 0.15, pu1 - 0.15], [fv, fv, bv])
                ground.walls.append((np.c_[x, y], 1.8))

            def house_rect(d):
                # house at the back of the parcel, full width
                if front_low:
                    return pu0 + 0.3, pv1 - 0.3 - d, pu1 - 0.3, pv1 - 0.3
                return pu0 + 0.3, pv0 + 0.3, pu1 - 0.3, pv0 + 0.3 + d

            if not registered:
                d = float(rng.uniform(0.45, 0.7)) * depth
                if rng.random() < 0.65:
                    new_structure("building", [fr.part(*house_rect(d), h, roof, look, dtheta=jit)],
                                  "illegal_village")
                else:  # a 彩钢棚 on unregistered land between homesteads
                    new_structure("steel_shed", [fr.part(*house_rect(d), float(rng.uniform(3, 4.5)), "metal",
                                                         shed_look(rng, rnd), dtheta=jit)], "illegal_village")
                continue
            pid[0] += 1
            parcel_id = f"{vcode}JC{pid[0]:05d}"
            approved = round(0.6 * parcel_area, 1)
            parcels.append({
                "parcel_id": parcel_id, "owner": _names(rng), "town": town, "village": village,
                "village_code": vcode, "land_use": "0702", "approved_area_m2": approved,
                "approved_floors": int(max(floors, 2)),
                "permit_no": f"鄂建房许字〔{int(rng.integers(2008, 2024))}〕{int(rng.integers(1, 999)):03d}号",
                "geometry": fr.rect(pu0, pv0, pu1, pv1)})
            role = str(rng.choice(["legal", "over", "site", "empty"],
                                  p=np.array([0.72, 0.10, 0.10, 0.08]) / 1.0))
            if role == "empty" and rng.random() < min(1.0, dens - 0.6):
                role = "legal"
            if role == "legal":
                area = float(rng.uniform(0.42, 0.54)) * approved / 0.6
                d = area / hw
                ext = []
                target = 0.86 * parcel_area
                ed_full = (target - hw * d) / hw
                if d + ed_full <= depth - 0.8:
                    lshape = rng.random() < 0.5
                    ew = hw * (0.55 if lshape else 1.0)
                    ed = (target - hw * d) / ew
                    if d + ed > depth - 0.8:
                        ew, ed = hw, ed_full
                    r = house_rect(d)
                    if front_low:
                        er = (r[0], r[1] - ed, r[0] + ew, r[1])
                    else:
                        er = (r[0], r[3], r[0] + ew, r[3] + ed)
                    elook = dict(look, seed=look["seed"] + 1)
                    eroof = "flat" if roof != "metal" else "metal"
                    if eroof == "flat":
                        elook.update(colour=jitter(rng, (178, 176, 170), 8), parapet_w=0.2, parapet_h=0.6,
                                     parapet_colour=(200, 200, 196), tank_palette=[(200, 205, 210)],
                                     n_tanks=0, solar=False, stair=False, rebar=False, clutter=0)
                        elook.setdefault("pitch", 8.0)
                    ext = [fr.part(*er, 3.4, eroof, elook, dtheta=jit)]
                r = house_rect(d)       # a wing reaches into the yard, in front of the house
                extra = wing(fr, rng, rnd, *r, h, roof, look, not front_low, dtheta=jit)
                if extra:               # where the later extension would stand: this house keeps its plan
                    ext = []
                main = fr.part(*r, h, roof, look, dtheta=jit)
                if new_structure("building", [main, *extra], "legal", ext=ext, parcel_id=parcel_id) is None \
                        and extra:                                        # no room for the wing
                    new_structure("building", [main], "legal", ext=ext, parcel_id=parcel_id)
            elif role == "over":
                d = min(0.86 * parcel_area / hw, depth - 0.6)
                new_structure("building", [fr.part(*house_rect(d), h, roof, look, dtheta=jit)], "over",
                              parcel_id=parcel_id)
            elif role == "site":
                d = float(rng.uniform(0.42, 0.52)) * approved / 0.6 / hw * 1.0
                new_structure("under_construction",
                              [fr.part(*house_rect(d), 0.3, "site", site_look(rng), dtheta=jit)],
                              "legal_site", parcel_id=parcel_id)
            # else: an empty homestead (garden)


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
