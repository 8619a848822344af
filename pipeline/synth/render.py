"""Raster rendering of a layout at any GSD, window by window (vectorised numpy + OpenCV).

A `View` is a pixel window of the scene grid; everything drawn in it is a function of
map coordinates, the scene seed and the structure's own look, so the same structure looks
the same in every epoch and bands rendered separately join without seams.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.synth.layout import structures_at
from pipeline.synth.parts import Layout, Part
from pipeline.synth.randomisation import (
    CROP_LOOK,
    CROPS,
    GROUND,
    SEASONS,
    TREE,
    Randomisation,
    pick,
)
from pipeline.synth.roofs import RoofSurfaces, antialias, hash01

AMBIENT, DIFFUSE = 0.36, 0.64
SHIFT = 3  # sub-pixel bits for cv2 drawing
ONE = 1 << SHIFT


@dataclass
class Sun:
    azimuth_deg: float
    elevation_deg: float

    @property
    def vector(self) -> np.ndarray:
        a, e = math.radians(self.azimuth_deg), math.radians(self.elevation_deg)
        return np.array([math.sin(a) * math.cos(e), math.cos(a) * math.cos(e), math.sin(e)])

    def shadow_offset(self, h: float) -> np.ndarray:
        """Ground offset (m, x east / y north) of the shadow of a point at height h."""
        a = math.radians(self.azimuth_deg)
        d = h / math.tan(math.radians(max(self.elevation_deg, 5.0)))
        return -np.array([math.sin(a), math.cos(a)]) * d


@dataclass
class View:
    x0: float
    ytop: float
    gsd: float
    r0: int
    c0: int
    h: int
    w: int

    def px(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, float)
        return np.c_[(xy[..., 0] - self.x0) / self.gsd - self.c0, (self.ytop - xy[..., 1]) / self.gsd - self.r0]

    def fixed(self, xy: np.ndarray) -> np.ndarray:
        """cv2 fixed-point pixel coordinates (pixel centres at .5)."""
        return np.round((self.px(xy) - 0.5) * ONE).astype(np.int32)

    def roi(self, minx, miny, maxx, maxy, pad: float = 1.0):
        j0 = int(math.floor((minx - self.x0) / self.gsd - self.c0 - pad))
        j1 = int(math.ceil((maxx - self.x0) / self.gsd - self.c0 + pad))
        i0 = int(math.floor((self.ytop - maxy) / self.gsd - self.r0 - pad))
        i1 = int(math.ceil((self.ytop - miny) / self.gsd - self.r0 + pad))
        i0, j0, i1, j1 = max(i0, 0), max(j0, 0), min(i1, self.h), min(j1, self.w)
        if i0 >= i1 or j0 >= j1:
            return None
        return i0, i1, j0, j1

    def coords(self, i0, i1, j0, j1):
        """float32 map coordinates of pixel centres relative to the scene's upper-left corner."""
        x = ((self.c0 + np.arange(j0, j1, dtype=np.float64) + 0.5) * self.gsd).astype(np.float32)
        y = (-(self.r0 + np.arange(i0, i1, dtype=np.float64) + 0.5) * self.gsd).astype(np.float32)
        return np.meshgrid(x, y)


class NoiseFields:
    """Scene-wide smooth noise fields (seeded by the scene only), sampled in any view."""

    CELLS = {"lf": 7.0, "mf": 1.6, "hf": 0.45}

    def __init__(self, seed: int, size_m: float, gsd: float):
        rng = np.random.default_rng([seed, 31337])
        self.cells = dict(self.CELLS, vhf=max(0.13, gsd * 1.6))
        self.grids = {}
        for name, cell in self.cells.items():
            n = int(math.ceil(size_m / cell)) + 6
            g = rng.standard_normal((n, n)).astype(np.float32)
            self.grids[name] = g * (1.25 if name != "vhf" else 1.0)

    def sample(self, view: View) -> dict[str, np.ndarray]:
        out = {}
        for name, g in self.grids.items():
            k = view.gsd / self.cells[name]
            m = np.array([[k, 0, (view.c0 + 0.5) * k + 2.5], [0, k, (view.r0 + 0.5) * k + 2.5]], np.float64)
            f = cv2.warpAffine(g, m, (view.w, view.h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
            out[name] = f
        return out


# ------------------------------------------------------------------ the look of one epoch
@dataclass
class Look:
    rnd: Randomisation
    sun: Sun
    season: str
    seed: int  # sensor-noise seed (epoch)


class Renderer(RoofSurfaces):
    """Renders one epoch of a layout into views."""

    def __init__(self, lay: Layout, epoch: int, look: Look, gsd: float, noise: NoiseFields | None = None):
        self.lay, self.e, self.look, self.gsd = lay, epoch, look, gsd
        self.noise = noise or NoiseFields(lay.seed, lay.size_m, gsd)
        self.sun = look.sun
        self.L = look.sun.vector
        self.parts = sorted([p for s in structures_at(lay, epoch) for p in s.parts_at(epoch)],
                            key=lambda p: p.height)
        self.cars = [c for c, sd in lay.ground.cars
                     if hash01(np.array([sd % 100003]), np.array([epoch]), lay.seed)[0] < 0.5]
        self.flat = AMBIENT + DIFFUSE * self.L[2]
        self.shadow_gain = np.array([0.93, 0.98, 1.12]) * (AMBIENT * 1.15 / self.flat)

    def shade(self, na, nb, nz, part: Part):
        ca, sa = math.cos(part.angle), math.sin(part.angle)
        la = self.L[0] * ca + self.L[1] * sa
        lb = -self.L[0] * sa + self.L[1] * ca
        d = np.maximum(na * la + nb * lb + nz * self.L[2], 0.0)
        return (AMBIENT + DIFFUSE * d) / self.flat

    def sun_local(self, part: Part, h: float) -> tuple[float, float]:
        """Horizontal vector towards the sun whose length is the shadow length of height h."""
        off = -self.sun.shadow_offset(h)
        ca, sa = math.cos(part.angle), math.sin(part.angle)
        return off[0] * ca + off[1] * sa, -off[0] * sa + off[1] * ca

    # -------------------------------------------------------------- window
    def render(self, view: View, grain_seed: int) -> np.ndarray:
        nz = self.noise.sample(view)
        img = self._ground(view, nz)
        self._apply_shadows(img, view)
        self._walls(img, view, nz)
        for p in self.cars:
            self._part(img, view, p, nz)
        self._facades(img, view)
        for p in self.parts:
            self._part(img, view, p, nz)
        self._roof_shadows(img, view)
        self._trees(img, view, nz)
        return self._finish(img, grain_seed)

    # -------------------------------------------------------------- ground
    def _fill(self, img, view, polys, fn, nz, aa=True):
        """Composite fn(X, Y, noise-roi) over the pixels of polygons."""
        for poly in polys:
            if poly.is_empty:
                continue
            r = view.roi(*poly.bounds)
            if r is None:
                continue
            i0, i1, j0, j1 = r
            mask = np.zeros((i1 - i0, j1 - j0), np.uint8)
            geoms = getattr(poly, "geoms", [poly])
            pts = []
            for g in geoms:
                pts.append(view.fixed(np.asarray(g.exterior.coords)) - np.array([j0, i0]) * ONE)
            cv2.fillPoly(mask, pts, 255, cv2.LINE_AA if aa else cv2.LINE_8, SHIFT)
            for g in geoms:
                for hole in g.interiors:
                    cv2.fillPoly(mask, [view.fixed(np.asarray(hole.coords)) - np.array([j0, i0]) * ONE], 0,
                                 cv2.LINE_AA, SHIFT)
            if not mask.any():
                continue
            X, Y = view.coords(i0, i1, j0, j1)
            sub = {k: v[i0:i1, j0:j1] for k, v in nz.items()}
            col = fn(X, Y, sub)
            a = (mask.astype(np.float32) / 255.0)[..., None]
            region = img[i0:i1, j0:j1]
            region += (col - region) * a

    def _ground(self, view: View, nz) -> np.ndarray:
        season = self.look.season
        g = np.array(GROUND[season], np.float32)
        lf, mf, hf, vhf = nz["lf"], nz["mf"], nz["hf"], nz["vhf"]
        tex = 1 + 0.07 * lf + 0.07 * mf + 0.06 * hf + 0.05 * vhf
        img = cv2.merge([tex * float(g[0]), tex * float(g[1]), tex * float(g[2])])
        G = self.lay.ground

        def patch(kind):
            def fn(X, Y, s):
                if kind == "village":
                    base, alt = np.array([158, 148, 124]), np.array([112, 122, 80])
                    t = np.clip(0.5 + 0.6 * s["mf"] + 0.3 * s["lf"], 0, 1)[..., None]
                elif kind == "vacant":
                    base, alt = np.array([146, 134, 108]), np.array(GROUND[season]) * 0.97
                    t = np.clip(0.5 + 0.2 * s["mf"] + 0.25 * s["hf"] + 0.35 * s["vhf"], 0, 1)[..., None]
                else:
                    base, alt = np.array(GROUND[season]) * 1.05, np.array([86, 112, 60])
                    t = np.clip(0.5 + 0.5 * s["mf"], 0, 1)[..., None]
                c = base * (1 - t) + alt * t
                return c * (1 + 0.06 * s["hf"] + 0.06 * s["vhf"])[..., None]
            return fn

        for kind in ("village", "vacant", "meadow"):
            self._fill(img, view, [p for p, k in G.patches if k == kind], patch(kind), nz)
        si = SEASONS.index(season)
        for f in G.fields:
            self._fill(img, view, [f.poly], self._field_fn(f, si), nz)
        # gardens and yards of homesteads
        veg = CROP_LOOK["vegetable"]

        def garden(X, Y, s):
            q = -X * math.sin(self.lay_theta) + Y * math.cos(self.lay_theta)
            rows = 0.5 + 0.5 * np.cos(2 * np.pi * q / 0.8)
            c = np.array(veg[1]) + (np.array(veg[0]) - np.array(veg[1])) * (rows * (0.6 + 0.3 * s["mf"]))[..., None]
            return c * (1 + 0.05 * s["hf"])[..., None]

        def yard(X, Y, s):
            c = np.array([176, 174, 166], np.float32) * (1 + 0.04 * s["mf"] + 0.03 * s["vhf"] + 0.03 * s["lf"])[..., None]
            return c
        self._fill(img, view, G.gardens, garden, nz)
        self._fill(img, view, G.yards, yard, nz)
        # ponds: muddy bank then water
        self._fill(img, view, [p.buffer(1.0) for p in G.ponds],
                   lambda X, Y, s: np.array([128, 118, 92]) * (1 + 0.08 * s["hf"])[..., None], nz)

        def water(X, Y, s):
            c = np.array([50, 74, 64], np.float32) * (1 + 0.05 * s["lf"] + 0.02 * s["mf"])[..., None]
            return c + np.array([10, 12, 12]) * np.clip(s["mf"], 0, 2)[..., None] * 0.5
        self._fill(img, view, G.ponds, water, nz)
        self._roads(img, view, nz)
        return img

    @property
    def lay_theta(self) -> float:
        return self.lay.ground.fields[0].row_angle if self.lay.ground.fields else 0.0

    def _field_fn(self, f, si):
        rng = np.random.default_rng([f.seed, si])
        if f.kind == "greenhouse_ground":
            def gfn(X, Y, s):
                c = np.array([150, 134, 108], np.float32)
                t = np.clip(0.3 + 0.6 * s["mf"], 0, 1)[..., None]
                return (c * (1 - t) + np.array([104, 118, 74]) * t) * (1 + 0.06 * s["hf"])[..., None]
            return gfn
        crop = pick(rng, CROPS[SEASONS[si]])
        col, between, period, contrast = CROP_LOOK[crop]
        col = np.array(col, np.float32) * rng.uniform(0.9, 1.08) + rng.normal(0, 4, 3)
        between = np.array(between, np.float32) * rng.uniform(0.92, 1.06)
        contrast *= antialias(period, self.gsd) * 0.8 + 0.2 * antialias(period, self.gsd) ** 2
        ra = f.row_angle
        patchy = rng.uniform(0.05, 0.2)

        def fn(X, Y, s):
            q = -X * math.sin(ra) + Y * math.cos(ra)
            rows = 0.5 + 0.5 * np.cos(2 * np.pi * q / period)
            t = (1 - contrast) + contrast * rows
            t = np.clip(t * (1 - patchy * np.clip(-s["mf"], 0, 2)), 0, 1)[..., None]
            c = between + (col - between) * t
            return c * (1 + 0.05 * s["lf"] + 0.04 * s["hf"] + 0.05 * s["vhf"])[..., None]
        return fn

    def _roads(self, img, view, nz):
        col = {"dirt": (162, 144, 112), "concrete": (176, 174, 166), "asphalt": (80, 82, 84)}
        edge = {"dirt": (130, 124, 92), "concrete": (140, 134, 112), "asphalt": (150, 146, 130)}
        for layer, extra in ((edge, 0.5), (col, 0.0)):
            for surf in ("dirt", "concrete", "asphalt"):
                pieces = [q for coords, w, sf in self.lay.ground.roads if sf == surf
                          for q in _road_pieces(coords, w + extra)]
                c = np.array(layer[surf], np.float32)
                rough = 0.05 if surf == "dirt" else 0.0

                def fn(X, Y, s, c=c, rough=rough):
                    tex = 1 + 0.05 * s["lf"] + 0.03 * s["mf"] + 0.04 * s["vhf"] + rough * s["hf"]
                    return c[None, None, :] * tex[..., None]
                self._fill(img, view, pieces, fn, nz)

    # -------------------------------------------------------------- shadows
    def _shadow_polys(self, p: Part, base: float = 0.0) -> np.ndarray:
        """Convex outline of the shadow of p on a surface at height `base`."""
        c = p.corners()
        if base > 0:
            p = Part(p.cx, p.cy, p.length, p.width, p.angle, max(p.height - base, 0.05), p.roof, p.look)
        ca, sa = math.cos(p.angle), math.sin(p.angle)
        ax = np.array([ca, sa]) * p.length / 2
        bx = np.array([-sa, ca]) * p.width / 2
        ctr = np.array([p.cx, p.cy])
        pts = [c]
        pitch = math.radians(p.look.get("pitch", 0.0))
        if p.roof in ("flat", "car"):
            pts.append(c + self.sun.shadow_offset(p.height))
        elif p.roof in ("gable", "hip") or (p.roof == "metal" and not p.look.get("mono")):
            rise = p.width / 2 * math.tan(pitch)
            pts.append(c + self.sun.shadow_offset(p.height))
            inset = ax * (1 - p.width / p.length) if p.roof == "hip" and p.length > p.width else ax
            ridge = np.array([ctr - inset, ctr + inset])
            pts.append(ridge + self.sun.shadow_offset(p.height + rise))
        elif p.roof == "metal":
            rise = p.width * math.tan(pitch)
            hi = np.array([ctr - ax + bx, ctr + ax + bx])
            lo = np.array([ctr - ax - bx, ctr + ax - bx])
            pts += [lo + self.sun.shadow_offset(p.height), hi + self.sun.shadow_offset(p.height + rise)]
        elif p.roof == "greenhouse":
            pts.append(c + self.sun.shadow_offset(p.height * 0.35))
            pts.append(np.array([ctr - ax, ctr + ax]) + self.sun.shadow_offset(p.height))
            pts.append(np.array([ctr - ax + bx * 0.6, ctr + ax + bx * 0.6, ctr - ax - bx * 0.6,
                                 ctr + ax - bx * 0.6]) + self.sun.shadow_offset(p.height * 0.8))
        else:
            return c
        return cv2.convexHull(np.vstack(pts).astype(np.float32)).reshape(-1, 2).astype(np.float64)

    def _apply_shadows(self, img, view):
        mask = np.zeros((view.h, view.w), np.uint8)
        polys = [view.fixed(self._shadow_polys(p)) for p in self.parts + self.cars if p.roof != "site"]
        if polys:
            cv2.fillPoly(mask, polys, 255, cv2.LINE_AA, SHIFT)
        for coords, h in self.lay.ground.walls:
            off = self.sun.shadow_offset(h)
            for a, b in zip(coords[:-1], coords[1:]):
                quad = np.array([a, b, b + off, a + off])
                cv2.fillPoly(mask, [view.fixed(cv2.convexHull(quad.astype(np.float32)).reshape(-1, 2))],
                             255, cv2.LINE_AA, SHIFT)
        T = self.lay.ground.trees
        if len(T):
            for x, y, r, h, _ in self._trees_in(view, extra=30):
                # crown shadow from the lower crown (0.35 h) to the crown top (0.85 h): attached to the tree
                o1, o2 = self.sun.shadow_offset(h * 0.35), self.sun.shadow_offset(h * 0.8)
                p1 = view.fixed(np.array([x + o1[0], y + o1[1]]))[0]
                p2 = view.fixed(np.array([x + o2[0], y + o2[1]]))[0]
                rad = int(r * 0.92 / self.gsd * ONE)
                cv2.circle(mask, (int(p1[0]), int(p1[1])), rad, 255, -1, cv2.LINE_AA, SHIFT)
                cv2.circle(mask, (int(p2[0]), int(p2[1])), rad, 255, -1, cv2.LINE_AA, SHIFT)
                cv2.line(mask, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), 255,
                         max(1, int(2 * r * 0.92 / self.gsd)), cv2.LINE_AA, SHIFT)
        if not mask.any():
            return
        sig = max(0.5, 0.08 / self.gsd)
        x, y, w, h = cv2.boundingRect(mask)
        pad = int(3 * sig) + 2
        y0, y1, x0, x1 = max(0, y - pad), min(view.h, y + h + pad), max(0, x - pad), min(view.w, x + w + pad)
        m = cv2.GaussianBlur(mask[y0:y1, x0:x1], (0, 0), sig).astype(np.float32) / 255.0
        k = (1.0 - self.shadow_gain).astype(np.float32)
        img[y0:y1, x0:x1] *= 1.0 - m[..., None] * k[None, None, :]

    def _walls(self, img, view, nz):
        walls = self.lay.ground.walls
        if not walls:
            return
        mask = np.zeros((view.h, view.w), np.uint8)
        th = max(1, int(round(0.24 / self.gsd)))
        cv2.polylines(mask, [view.fixed(c) for c, _ in walls], False, 255, th, cv2.LINE_AA, SHIFT)
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0:
            return
        a = (mask[y:y + h, x:x + w].astype(np.float32) / 255.0)[..., None]
        c = np.array([196, 194, 186], np.float32)
        region = img[y:y + h, x:x + w]
        region += (c - region) * a

    # -------------------------------------------------------------- structures
    def _part(self, img, view, p: Part, nz):
        c = p.corners()
        r = view.roi(c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max(), pad=2)
        if r is None:
            return
        i0, i1, j0, j1 = r
        X, Y = view.coords(i0, i1, j0, j1)
        ca, sa = math.cos(p.angle), math.sin(p.angle)
        dx, dy = X - np.float32(p.cx - view.x0), Y - np.float32(p.cy - view.ytop)
        a = (dx * ca + dy * sa).astype(np.float32)
        b = (-dx * sa + dy * ca).astype(np.float32)
        du, dv = p.length / 2 - np.abs(a), p.width / 2 - np.abs(b)
        alpha = np.clip(np.minimum(du, dv) / self.gsd + 0.5, 0, 1)
        if not alpha.any():
            return
        s = {k: v[i0:i1, j0:j1] for k, v in nz.items()}
        fn = {"car": self._car, "gable": self._gable, "hip": self._hip, "flat": self._flat, "metal": self._metal,
              "greenhouse": self._greenhouse, "site": self._site}[p.roof]
        region = img[i0:i1, j0:j1]
        col = fn(p, a, b, du, dv, s, region)
        region += (col - region) * alpha[..., None]

    def _roof_shadows(self, img, view):
        """Shadows of taller structures falling on lower roofs nearby."""
        boxes = [np.r_[p.corners().min(0), p.corners().max(0)] for p in self.parts]
        for qi, q in enumerate(self.parts):
            if q.roof in ("site",):
                continue
            qb = boxes[qi]
            casters = []
            for pi, p in enumerate(self.parts):
                if p is q or p.height <= q.height + 0.3 or p.roof == "site":
                    continue
                reach = np.abs(self.sun.shadow_offset(p.height - q.height)).max() + 0.5
                pb = boxes[pi]
                if pb[0] - reach > qb[2] or pb[2] + reach < qb[0] or pb[1] - reach > qb[3] or pb[3] + reach < qb[1]:
                    continue
                casters.append(p)
            if not casters:
                continue
            r = view.roi(*qb, pad=1)
            if r is None:
                continue
            i0, i1, j0, j1 = r
            off = np.array([j0, i0]) * ONE
            qmask = np.zeros((i1 - i0, j1 - j0), np.uint8)
            cv2.fillPoly(qmask, [view.fixed(q.corners()) - off], 255, cv2.LINE_8, SHIFT)
            sh = np.zeros_like(qmask)
            own = np.zeros_like(qmask)
            for p in casters:
                cv2.fillPoly(sh, [view.fixed(self._shadow_polys(p, base=q.height)) - off], 255, cv2.LINE_AA, SHIFT)
                cv2.fillPoly(own, [view.fixed(p.corners()) - off], 255, cv2.LINE_8, SHIFT)
            m = (sh.astype(np.float32) / 255.0) * ((qmask > 0) & (own == 0))
            if not m.any():
                continue
            k = (1.0 - self.shadow_gain).astype(np.float32)
            img[i0:i1, j0:j1] *= 1.0 - m[..., None] * k[None, None, :]

    def _facades(self, img, view):
        """Relief displacement: walls of tall structures show on the side facing the nadir."""
        lean = self.look.rnd.lean
        if lean <= 0:
            return
        S = self.lay.size_m
        cx, cy = self.lay.x0 + S / 2, self.lay.y0 + S / 2
        for p in self.parts:
            if p.roof in ("site", "greenhouse"):
                continue
            d = np.array([p.cx - cx, p.cy - cy]) / (S / 2)
            vec = d * lean * p.height
            if np.hypot(*vec) < self.gsd * 0.7:
                continue
            c = p.corners()
            r = view.roi(*(np.r_[c.min(0) - np.abs(vec), c.max(0) + np.abs(vec)]), pad=2)
            if r is None:
                continue
            hull = cv2.convexHull(np.vstack([c, c - vec]).astype(np.float32)).reshape(-1, 2).astype(np.float64)
            i0, i1, j0, j1 = r
            mask = np.zeros((i1 - i0, j1 - j0), np.uint8)
            cv2.fillPoly(mask, [view.fixed(hull) - np.array([j0, i0]) * ONE], 255, cv2.LINE_AA, SHIFT)
            walls = [(222, 220, 214), (200, 196, 186), (172, 168, 160), (168, 98, 76), (214, 196, 160)]
            col = np.array(walls[p.look.get("seed", 0) % len(walls)], np.float32)
            # a wall facing away from the sun is in shade
            facing = -vec / max(np.hypot(*vec), 1e-6)
            lit = max(0.0, facing[0] * self.L[0] + facing[1] * self.L[1])
            col = col * (AMBIENT + DIFFUSE * lit) / self.flat * 0.9
            a = (mask.astype(np.float32) / 255.0)[..., None]
            region = img[i0:i1, j0:j1]
            region += (col - region) * a

    def _trees_in(self, view, extra=0.0):
        T = self.lay.ground.trees
        if not len(T):
            return T
        x0 = view.x0 + view.c0 * self.gsd
        x1 = x0 + view.w * self.gsd
        y1 = view.ytop - view.r0 * self.gsd
        y0 = y1 - view.h * self.gsd
        pad = T[:, 2] + extra
        keep = (T[:, 0] + pad > x0) & (T[:, 0] - pad < x1) & (T[:, 1] + pad > y0) & (T[:, 1] - pad < y1)
        return T[keep]

    def _trees(self, img, view, nz):
        T = self._trees_in(view)
        if not len(T):
            return
        rows = view.px(T[:, :2])
        r_px = T[:, 2] / self.gsd
        i0 = int(max(0, np.floor((rows[:, 1] - r_px * 1.4).min())))
        i1 = int(min(view.h, np.ceil((rows[:, 1] + r_px * 1.4).max())))
        if i0 >= i1:
            return
        h = i1 - i0
        rgb = np.zeros((h, view.w, 3), np.float32)
        alpha = np.zeros((h, view.w), np.uint8)
        base_col = np.array(TREE[self.look.season], np.float32)
        sv = self.L[:2] / max(np.linalg.norm(self.L[:2]), 1e-6)
        sv = np.array([sv[0], -sv[1]])  # towards the sun in pixel axes
        for x, y, r, _, seed in T:
            rng = np.random.default_rng(int(seed))
            tint = base_col * rng.uniform(0.8, 1.2) + rng.normal(0, 5, 3)
            c = view.px(np.array([x, y]))[0] - np.array([0, i0])
            rp = r / self.gsd
            blobs = [(c - sv * 0.15 * rp, 0.62 * rp, 0.62, True)]
            for _ in range(int(rng.integers(5, 10))):
                ang, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.55) * rp
                cc = c + d * np.array([math.cos(ang), math.sin(ang)])
                blobs.append((cc, rng.uniform(0.3, 0.5) * rp, rng.uniform(0.78, 0.95), True))
            for _ in range(int(rng.integers(4, 8))):
                ang, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45) * rp
                cc = c + sv * 0.2 * rp + d * np.array([math.cos(ang), math.sin(ang)])
                blobs.append((cc, rng.uniform(0.18, 0.35) * rp, rng.uniform(1.0, 1.3), False))
            for (cc, rr, k, cover) in blobs:
                ctr = (int(round((cc[0] - 0.5) * ONE)), int(round((cc[1] - 0.5) * ONE)))
                rad = max(1, int(rr * ONE))
                cv2.circle(rgb, ctr, rad, tuple(float(v) for v in tint * k), -1, cv2.LINE_AA, SHIFT)
                if cover:
                    cv2.circle(alpha, ctr, rad, 255, -1, cv2.LINE_AA, SHIFT)
        leaf = 1 + 0.22 * nz["vhf"][i0:i1] + 0.15 * nz["hf"][i0:i1]
        rgb *= leaf[..., None]
        a = (alpha.astype(np.float32) / 255.0)[..., None]
        region = img[i0:i1]
        region += (rgb - region) * a

    # -------------------------------------------------------------- camera
    def _finish(self, img, grain_seed: int) -> np.ndarray:
        r = self.look.rnd
        gain = np.asarray(r.white_balance, np.float64) * r.brightness
        if r.contrast != 1.0:
            gain = gain * r.contrast
        cv2.multiply(img, tuple(float(g) for g in gain) + (0.0,), dst=img)
        if r.contrast != 1.0:
            cv2.add(img, (118.0 * (1 - r.contrast),) * 3 + (0.0,), dst=img)
        if r.saturation != 1.0:
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
            img = cv2.addWeighted(img, r.saturation, np.repeat(grey, 3, axis=2), 1 - r.saturation, 0)
        if r.haze > 0:
            img = cv2.addWeighted(img, 1 - r.haze, np.full_like(img, 200.0), r.haze, 0)
        if r.blur_sigma_px > 0.05:
            img = cv2.GaussianBlur(img, (0, 0), r.blur_sigma_px)
        if r.noise_sigma > 0:
            cv2.setRNGSeed(int(grain_seed) & 0x7FFFFFFF)
            lum = np.empty(img.shape[:2], np.float32)
            cv2.randn(lum, 0.0, float(r.noise_sigma))
            chroma = np.empty(img.shape, np.float32)
            cv2.randn(chroma, (0.0, 0.0, 0.0), (r.noise_sigma * 0.4,) * 3)
            cv2.add(img, chroma, dst=img)
            img += lum[..., None]
        img += 0.5
        return np.clip(img, 0, 255).astype(np.uint8)


def _road_pieces(coords: np.ndarray, width: float, step: float = 16.0) -> list:
    """A road centre line as short overlapping flat-capped polygons (small drawing windows)."""
    from shapely.geometry import LineString
    line = LineString(coords)
    n = max(1, int(math.ceil(line.length / step)))
    out = []
    for k in range(n):
        a, b = max(0.0, k * step - 0.3), min(line.length, (k + 1) * step + 0.3)
        p0, p1 = line.interpolate(a), line.interpolate(b)
        out.append(LineString([p0, p1]).buffer(width / 2, cap_style="flat"))
    return out


def _bbox(c: np.ndarray):
    return c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()
