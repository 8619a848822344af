"""The pieces of a generated district: structures made of rotated rectangles (`Part`), fields,
the ground's extras, the layout that holds them, and the look of each kind of roof."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Polygon, box
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
STOREY_M = 3.1   # one storey of a generated village house (m)
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

    def rise(self) -> float:
        """How far the roof rises above the eaves (m)."""
        pitch = math.radians(self.look.get("pitch", 0.0))
        if self.roof in ("gable", "hip") or (self.roof == "metal" and not self.look.get("mono")):
            return self.width / 2 * math.tan(pitch)
        if self.roof == "metal":
            return self.width * math.tan(pitch)
        return 0.0

    def top(self, raised: bool = False) -> float:
        """The top of the roof above the ground (m): the ridge, or a flat roof's slab; ``raised``:
        one storey higher."""
        slab = self.look.get("parapet_h", 0.0) if self.roof == "flat" else 0.0
        return self.height + self.rise() - slab + (STOREY_M if raised else 0.0)


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
    raise_at: int | None = None   # the epoch from which it stands one storey higher (加层)

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
        if self.raise_at == e:
            out.append("storey_added")
        return out

    def floors(self, e: int) -> int:
        """Storeys at epoch ``e`` (0 for a site): its tallest part's, plus one once raised."""
        base = max(round((p.height - (0.9 if p.roof == "flat" else 0.0)) / STOREY_M) for p in self.parts_at(e))
        if self.cls != "building":
            base = 0 if self.cls == "under_construction" else 1
        return int(base) + (1 if self.raised(e) else 0)

    def raised(self, e: int) -> bool:
        return self.raise_at is not None and e >= self.raise_at

    def top(self, e: int) -> float:
        """The top of its highest roof above the ground at epoch ``e`` (m)."""
        return max(p.top(self.raised(e)) for p in self.parts_at(e))


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


class Frame:
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


def person_name(rng):
    return str(rng.choice(SURNAMES)) + "".join(rng.choice(GIVEN, int(rng.integers(1, 3))))


# ------------------------------------------------------------------ looks
def palette(rnd: Randomisation, rng) -> str:
    if rnd.palette == "mixed":
        return "china" if rng.random() < 0.5 else "global"
    return rnd.palette


def house_look(rng, rnd: Randomisation, floors: int) -> tuple[str, dict, float]:
    """Roof type, look dict and height of a village house."""
    pal = palette(rnd, rng)
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
    height = floors * STOREY_M + (0.9 if roof == "flat" else 0.0)
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
    pal = palette(rnd, rng)
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


