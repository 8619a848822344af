"""How each kind of roof is drawn (tiles, gable, hip, flat with water tanks and stairs, metal,
greenhouse, building site) and cars: the surfaces the renderer fills, as a mixin of ``Renderer``."""
from __future__ import annotations

import math

import numpy as np

from pipeline.synth.parts import Part


def hash01(i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic per-cell random value in [0, 1)."""
    h = (i.astype(np.int64) * 374761393 + j.astype(np.int64) * 668265263 + seed * 2246822519) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFF).astype(np.float32) / 65536.0


def antialias(period: float, gsd: float) -> float:
    """Contrast kept for a periodic texture of `period` metres at this GSD (no aliasing)."""
    return float(np.clip((period / gsd - 2.0) / 2.0, 0.0, 1.0))


def object_mask(kind, la, lb, r1, r2):
    if kind == "tank":
        return la ** 2 + lb ** 2 < r1 ** 2
    return (np.abs(la) < r1) & (np.abs(lb) < r2)


def roof_objects(p: Part, rng) -> list:
    """Stair room, water tanks, solar heaters, rebar stubs and clutter on a flat roof."""
    lk = p.look
    L, W = p.length / 2 - lk.get("parapet_w", 0.2) - 0.3, p.width / 2 - lk.get("parapet_w", 0.2) - 0.3
    objs = []
    if L < 1.5 or W < 1.5:
        return objs
    placed: list[tuple[float, float, float]] = []

    def free(oa, ob, rad):
        return all(math.hypot(oa - x, ob - y) > rad + r + 0.3 for x, y, r in placed)

    if lk.get("stair") and L > 3 and W > 3:
        r1, r2 = rng.uniform(1.2, 1.8), rng.uniform(1.1, 1.6)
        oa = rng.choice([-1, 1]) * (L - r1 + 0.3)
        ob = rng.choice([-1, 1]) * (W - r2 + 0.3)
        objs.append(("stair", oa, ob, r1, r2, 2.6, tuple(np.asarray(lk["colour"]) * rng.uniform(0.95, 1.1))))
        placed.append((oa, ob, max(r1, r2)))
    tanks = lk.get("tank_palette", [(200, 205, 210)])
    for _ in range(lk.get("n_tanks", 0)):
        rad = rng.uniform(0.45, 0.75)
        oa, ob = rng.uniform(-L + rad, L - rad), rng.uniform(-W + rad, W - rad)
        if free(oa, ob, rad):
            objs.append(("tank", oa, ob, rad, rad, rng.uniform(1.0, 1.8), tanks[int(rng.integers(len(tanks)))]))
            placed.append((oa, ob, rad))
    if lk.get("solar"):
        oa, ob = rng.uniform(-L + 1, L - 1), rng.uniform(-W + 1, W - 1)
        if free(oa, ob, 1.1):
            objs.append(("solar", oa, ob, 1.0, 0.75, 1.2, (38, 44, 62)))
            placed.append((oa, ob, 1.1))
    if lk.get("rebar"):
        for sa in (-1, 1):
            for sb in (-1, 1):
                objs.append(("box", sa * (L + 0.1), sb * (W + 0.1), 0.12, 0.12, 0.8, (70, 60, 54)))
    for _ in range(lk.get("clutter", 0)):
        r1, r2 = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.6)
        oa, ob = rng.uniform(-L + r1, L - r1), rng.uniform(-W + r2, W - r2)
        if free(oa, ob, max(r1, r2)):
            col = tuple(rng.uniform(40, 220, 3)) if rng.random() < 0.5 else (120, 112, 100)
            objs.append(("box", oa, ob, r1, r2, rng.uniform(0.2, 0.6), col))
            placed.append((oa, ob, max(r1, r2)))
    return objs


class RoofSurfaces:
    """Surface functions of one part: each returns the colour field of its region."""

    def _car(self, p, a, b, du, dv, s, region):
        lk = p.look
        col = np.asarray(lk["colour"], np.float32)
        L = p.length / 2
        out = np.broadcast_to(col, a.shape + (3,)).copy()
        glass = np.array([38, 42, 48], np.float32)
        wind = ((a > 0.12 * L) & (a < 0.42 * L)) | ((a < -0.45 * L) & (a > -0.68 * L))
        side = (np.abs(b) > p.width / 2 - 0.28) & (a > -0.55 * L) & (a < 0.35 * L)
        out = np.where((wind | side)[..., None] & (dv > 0.1)[..., None], glass, out)
        roof = (a > -0.45 * L) & (a < 0.12 * L) & (np.abs(b) < p.width / 2 - 0.28)
        out = np.where(roof[..., None], col * 1.06, out)
        out *= np.where((np.minimum(du, dv) < 0.12)[..., None], 0.78, 1.0)
        return out

    def _tiles(self, p, q, a, s, colour, f):
        """Tile courses (q = distance up-slope) and columns on a sloped face."""
        g = self.gsd
        period = 0.24
        k1 = antialias(period, g)
        course = np.floor(q / period)
        col = np.floor((a + p.length + (course % 2) * 0.11) / 0.22)
        var = hash01(course, col, p.look["seed"]) - 0.5
        fr = (q / period) % 1.0
        groove = 1 - 0.35 * k1 * np.exp(-((fr - 0.05) / 0.12) ** 2)
        cg = 1 - 0.12 * antialias(0.22, g) * (np.abs(((a + p.length + (course % 2) * 0.11) / 0.22) % 1.0 - 0.5) > 0.42)
        v = f * (1 + 0.10 * k1 * var) * groove * cg * (1 + 0.05 * s["lf"] + 0.05 * s["mf"])
        return np.asarray(colour, np.float32)[None, None, :] * v[..., None]

    def _gable(self, p, a, b, du, dv, s, region):
        pitch = math.radians(p.look["pitch"])
        side = np.where(b >= 0, 1.0, -1.0)
        f = self.shade(0.0, side * math.sin(pitch), math.cos(pitch), p)
        q = dv / math.cos(pitch)
        out = self._tiles(p, q, a, s, p.look["colour"], f)
        cap = (np.abs(b) < 0.14)[..., None]
        out = np.where(cap, np.asarray(p.look["colour"], np.float32) * 1.1 * (1 + 0.03 * s["hf"][..., None]), out)
        out *= np.where(((dv < 0.1) | (du < 0.1))[..., None], 0.72, 1.0)
        return out

    def _hip(self, p, a, b, du, dv, s, region):
        pitch = math.radians(p.look["pitch"])
        long_face = dv <= du
        nb = np.where(long_face, np.sign(b) * math.sin(pitch), 0.0)
        na = np.where(long_face, 0.0, np.sign(a) * math.sin(pitch))
        f = self.shade(na, nb, math.cos(pitch), p)
        q = np.minimum(du, dv) / math.cos(pitch)
        out = self._tiles(p, q, np.where(long_face, a, b), s, p.look["colour"], f)
        ridge = (np.abs(du - dv) < 0.12) | ((np.abs(b) < 0.13) & (du > dv))
        out = np.where(ridge[..., None], np.asarray(p.look["colour"], np.float32) * 1.12, out)
        out *= np.where((np.minimum(du, dv) < 0.1)[..., None], 0.72, 1.0)
        return out

    def _flat(self, p, a, b, du, dv, s, region):
        lk = p.look
        base = np.asarray(lk["colour"], np.float32)
        stain = np.clip(s["mf"] * 0.5 + s["lf"] * 0.3 - 0.2, 0, 1)
        v = (1 + 0.04 * s["lf"] + 0.05 * s["hf"] + 0.04 * s["vhf"]) * (1 - 0.2 * stain)
        pw, ph = lk.get("parapet_w", 0.2), lk.get("parapet_h", 0.8)
        edge = np.minimum(du, dv)
        v = v * (1 - 0.12 * np.exp(-np.maximum(edge - pw, 0) / 0.35))  # grime along the parapet
        if lk["seed"] % 3 == 0:  # tiled terrace
            ti, tj = np.floor((a + p.length) / 0.5), np.floor((b + p.width) / 0.5)
            v = v * (1 + 0.08 * (hash01(ti, tj, lk["seed"]) - 0.5))
            k = antialias(0.5, self.gsd)
            grout = (((a + p.length) % 0.5) < 0.04) | (((b + p.width) % 0.5) < 0.04)
            v = v * (1 - 0.12 * k * grout)
        out = base[None, None, :] * v[..., None]
        inner_l, inner_w = p.length / 2 - pw, p.width / 2 - pw
        # inner shadow of the parapet on the side towards the sun
        sa_, sb_ = self.sun_local(p, ph)
        sh = (np.abs(a + sa_) > inner_l) | (np.abs(b + sb_) > inner_w)
        rng = np.random.default_rng(lk["seed"])
        objs = roof_objects(p, rng)
        shadow = sh.copy()
        obj_layers = []
        for kind, oa, ob, r1, r2, h, colour in objs:
            m = object_mask(kind, a - oa, b - ob, r1, r2)
            if not m.any():
                continue
            va, vb = self.sun_local(p, h)
            for t in np.linspace(0.1, 1.0, 7):
                shadow |= object_mask(kind, a + va * t - oa, b + vb * t - ob, r1, r2)
            obj_layers.append((kind, m, a - oa, b - ob, r1, r2, colour))
        gain = np.asarray(self.shadow_gain, np.float32)
        out = np.where(shadow[..., None], out * gain, out)
        for kind, m, la, lb, r1, r2, colour in obj_layers:
            oc = np.asarray(colour, np.float32)[None, None, :] * np.ones_like(out)
            if kind == "stair":
                oc = oc * (1 + 0.04 * s["hf"])[..., None]
                rim = (np.minimum(r1 - np.abs(la), r2 - np.abs(lb)) < 0.15)[..., None]
                oc = np.where(rim, oc * 1.08, oc)
            elif kind == "tank":
                rr = np.sqrt(la ** 2 + lb ** 2) / r1
                oc = oc * (1.05 - 0.25 * rr ** 4)[..., None]
            elif kind == "solar":
                tubes = 0.5 + 0.5 * np.cos(2 * np.pi * la / 0.09)
                k = antialias(0.09, self.gsd)
                oc = oc * (0.85 + 0.3 * k * tubes)[..., None]
                bar = (lb > r2 - 0.25)[..., None]
                oc = np.where(bar, np.array([205, 208, 212], np.float32), oc)
            out = np.where(m[..., None], oc, out)
        # parapet top last (it is the highest edge)
        par = (edge < pw)[..., None]
        out = np.where(par, np.asarray(lk.get("parapet_colour", base * 1.1), np.float32) *
                       (1 + 0.03 * s["hf"])[..., None], out)
        out *= np.where((edge < 0.05)[..., None], 0.8, 1.0)
        return out

    def _metal(self, p, a, b, du, dv, s, region):
        lk = p.look
        pitch = math.radians(lk["pitch"])
        per = lk.get("period", 0.2)
        k = antialias(per, self.gsd)
        rib = 0.45 * k * np.sin(2 * np.pi * a / per)
        if lk.get("mono"):
            nb = -math.sin(pitch)  # slopes down towards -b
        else:
            nb = np.where(b >= 0, 1.0, -1.0) * math.sin(pitch)
        f = self.shade(rib, nb, math.cos(pitch), p)
        base = np.asarray(lk["colour"], np.float32)[None, None, :] * np.ones(a.shape + (1,), np.float32)
        rust = lk.get("rust", 0.0)
        if rust > 0:
            t = np.clip((s["mf"] * 0.6 + s["hf"] * 0.4 + 0.3) * rust, 0, 0.9)[..., None]
            base = base * (1 - t) + np.array([122, 72, 46], np.float32) * t
        if lk.get("skylights"):
            sky = (((a + p.length / 2) % 3.6) < 0.85)[..., None]
            base = np.where(sky, np.array([200, 208, 204], np.float32), base)
        seam = 1 - 0.10 * antialias(1.0, self.gsd) * (((a + p.length / 2) % 0.95) < 0.05)
        purlin = 1 - 0.05 * antialias(1.2, self.gsd) * (((b + p.width / 2) % 1.2) < 0.04)
        dirt = 1 + 0.04 * s["lf"] + 0.03 * s["mf"] + 0.02 * s["vhf"]
        out = base * (f * seam * purlin * dirt)[..., None]
        if not lk.get("mono"):
            cap = (np.abs(b) < 0.18)[..., None]
            out = np.where(cap, base * 1.08, out)
        out *= np.where(((dv < 0.08) | (du < 0.08))[..., None], 1.1, 1.0)
        return np.clip(out, 0, 255)

    def _greenhouse(self, p, a, b, du, dv, s, region):
        lk = p.look
        half = p.width / 2
        t = np.clip(b / half, -0.985, 0.985)
        hz = 0.45 * p.width
        dzdb = -hz * t / (half * np.sqrt(1 - t * t))
        n = np.sqrt(1 + dzdb ** 2)
        nb, nz_ = -dzdb / n, 1 / n
        f = self.shade(0.0, nb, nz_, p)
        film = np.asarray(lk["colour"], np.float32)
        under = np.array([78, 118, 66], np.float32) * (1 + 0.1 * s["hf"])[..., None]
        tr = lk["transparency"]
        base = film * (1 - tr) + under * tr
        # specular sheen where the film faces the sun
        ca, sa = math.cos(p.angle), math.sin(p.angle)
        lb = -self.L[0] * sa + self.L[1] * ca
        hv = np.array([lb, 1 + self.L[2]])
        hv = hv / np.linalg.norm(hv)
        spec = np.clip(nb * hv[0] + nz_ * hv[1], 0, 1) ** 40 * 45
        wrinkle = 1 + 0.025 * s["mf"] + 0.03 * s["hf"] + 0.03 * s["vhf"]
        out = base * (f * wrinkle)[..., None] + spec[..., None]
        rib = lk["rib"]
        ribm = (((a + p.length / 2) % rib) < 0.06)
        out = np.where(ribm[..., None], out * (1 - 0.25 * antialias(rib, self.gsd) - 0.05), out)
        for frac in (0.35, 0.75):
            ln = np.abs(np.abs(b) - frac * half) < 0.03
            out = np.where(ln[..., None], out * 0.9, out)
        if lk.get("vents"):
            vent = (dv < 0.45)[..., None]
            out = np.where(vent, under * 0.8, out)
        out *= np.where((du < 0.12)[..., None], 0.8, 1.0)
        return np.clip(out, 0, 255)

    def _site(self, p, a, b, du, dv, s, region):
        lk = p.look
        rng = np.random.default_rng(lk["seed"])
        soil = np.asarray(lk["soil"], np.float32)
        v = 1 + 0.08 * s["mf"] + 0.07 * s["hf"] + 0.06 * s["vhf"] + 0.05 * s["lf"]
        out = soil[None, None, :] * v[..., None]
        damp = np.clip(s["mf"] * 0.7 - 0.4, 0, 1)[..., None]
        out = out * (1 - 0.25 * damp)
        stage = lk["stage"]
        grid = lk["grid"]
        bw = 0.36
        edge = np.minimum(du, dv)
        ga = np.abs(((a + p.length / 2) % grid) - grid / 2) > grid / 2 - bw / 2
        gb = np.abs(((b + p.width / 2) % grid) - grid / 2) > grid / 2 - bw / 2
        beams = (edge < bw) | ((ga | gb) & (edge > 0))
        concrete = np.array([172, 170, 164], np.float32) * (1 + 0.04 * s["vhf"])[..., None]
        if stage == 0:  # trenches being dug
            out = np.where(beams[..., None], out * 0.62, out)
        else:
            out = np.where(beams[..., None], concrete, out)
            cols = (np.abs(((a + p.length / 2 + grid / 2) % grid) - grid / 2) < 0.22) & \
                   (np.abs(((b + p.width / 2 + grid / 2) % grid) - grid / 2) < 0.22)
            cols |= (np.abs(((a + p.length / 2) % grid)) < 0.25) & (edge < 0.5)
            cage = np.array([74, 62, 56], np.float32)
            out = np.where(cols[..., None], cage if stage == 1 else concrete * 0.9, out)
            if stage == 2:  # brick walls rising on the beams, with their shadows inside
                wall_h = 1.4
                sa_, sb_ = self.sun_local(p, wall_h)
                sh = (edge >= bw) & ((np.abs(a + sa_) > p.length / 2 - bw) | (np.abs(b + sb_) > p.width / 2 - bw))
                out = np.where(sh[..., None], out * self.shadow_gain.astype(np.float32), out)
                brick = np.array([168, 88, 66], np.float32) * (1 + 0.06 * s["vhf"])[..., None]
                out = np.where((edge < bw)[..., None], brick, out)
        # materials: brick stacks, sand piles, rebar bundles, formwork boards
        L, W = p.length / 2 - 0.8, p.width / 2 - 0.8
        for _ in range(int(rng.integers(2, 6))):
            kind = rng.choice(["bricks", "sand", "rebar", "boards"])
            oa, ob = rng.uniform(-L, L), rng.uniform(-W, W)
            if kind == "bricks":
                m = (np.abs(a - oa) < 0.9) & (np.abs(b - ob) < 0.6)
                blk = 1 - 0.15 * antialias(0.12, self.gsd) * ((((a - oa) % 0.24) < 0.03) | (((b - ob) % 0.12) < 0.02))
                out = np.where(m[..., None], np.array([176, 86, 64], np.float32) * blk[..., None], out)
            elif kind == "sand":
                rr = np.sqrt((a - oa) ** 2 + ((b - ob) * 1.3) ** 2) / 1.3
                m = rr < 1
                gx, gy = -(a - oa), -(b - ob)
                nrm = np.maximum(np.sqrt(gx ** 2 + gy ** 2), 1e-3)
                fsh = self.shade(0.5 * (a - oa) / nrm * rr, 0.5 * (b - ob) / nrm * rr, 1.0, p)
                out = np.where(m[..., None], np.array([196, 178, 140], np.float32) * fsh[..., None], out)
            elif kind == "rebar":
                ln = np.abs(b - ob) < 0.35
                m = ln & (np.abs(a - oa) < 2.5) & ((((b - ob) % 0.12) < 0.05))
                out = np.where(m[..., None], np.array([70, 58, 52], np.float32), out)
            else:
                m = (np.abs(a - oa) < 1.2) & (np.abs(b - ob) < 0.5)
                out = np.where(m[..., None], np.array([196, 164, 116], np.float32) *
                               (1 + 0.05 * s["vhf"])[..., None], out)
        return out

    # -------------------------------------------------------------- trees
