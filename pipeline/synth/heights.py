"""Heights of a generated district: the DSM (surface) and DTM (terrain) a photogrammetry tool would
write beside each epoch's orthophoto.

Terrain: a tilted plane (up to 3 % each way) with a long, low swell. Structures stand on it: flat
roofs at their slab (the parapet ring above it), gable / hip / shed roofs rising to the ridge,
greenhouses as arches, sites barely above ground; a house that gains a storey in an epoch
(``Structure.raise_at``) stands ``STOREY_M`` higher from then on. Tree crowns are domes with a rough
top; walls are thin ridges. Then what photogrammetry does to it: edges smeared, a little noise, no
data over water and in a few holes, nothing outside the flight.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.synth.parts import STOREY_M, Layout, Part
from pipeline.synth.render import View
from pipeline.synth.scene import rasterise_valid

NODATA = -9999.0


def terrain(lay: Layout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ground height (m) at map points: a tilted plane with a long, low swell."""
    rng = np.random.default_rng([lay.seed, 3301])
    gx, gy = rng.uniform(-0.03, 0.03, 2)
    amp, wave = rng.uniform(0.3, 1.0), rng.uniform(250.0, 400.0)
    ph = rng.uniform(0, 2 * np.pi, 2)
    cx, cy = lay.x0 + lay.size_m / 2, lay.y0 + lay.size_m / 2
    return (35.0 + gx * (x - cx) + gy * (y - cy)
            + amp * np.sin(2 * np.pi * (x - cx) / wave + ph[0]) * np.cos(2 * np.pi * (y - cy) / wave + ph[1]))


def _part_surface(p: Part, u: np.ndarray, v: np.ndarray, raised: bool) -> np.ndarray:
    """Height above the ground of a part's roof at local coordinates u (along), v (across)."""
    hw, hl = p.width / 2, p.length / 2
    base = p.height + (STOREY_M if raised else 0.0)
    rise = p.rise()
    if p.roof == "flat":
        slab = base - p.look.get("parapet_h", 0.0)
        rim = (hw - np.abs(v) < p.look.get("parapet_w", 0.2)) | (hl - np.abs(u) < p.look.get("parapet_w", 0.2))
        return np.where(rim, base, slab)
    if p.roof == "hip":
        return base + rise * np.clip(np.minimum(1 - np.abs(v) / hw, (hl - np.abs(u)) / hw), 0, 1)
    if p.roof == "metal" and p.look.get("mono"):
        return base + rise * (v + hw) / p.width
    if p.roof in ("gable", "metal"):
        return base + rise * (1 - np.abs(v) / hw)
    if p.roof == "greenhouse":
        return base * np.sqrt(np.clip(1 - (v / hw) ** 2, 0.05, 1))
    return np.full_like(u, base)          # site


def surface_models(lay: Layout, epoch: int, gsd: float, footprint) -> tuple[np.ndarray, np.ndarray]:
    """(DSM, DTM) of one epoch on the district's grid at ``gsd`` (float32, ``NODATA`` outside the
    flight's ``footprint``, over water and in a few holes of the DSM)."""
    n = int(round(lay.size_m / gsd))
    view = View(lay.x0, lay.ytop, gsd, 0, 0, n, n)
    xs = lay.x0 + (np.arange(n) + 0.5) * gsd
    ys = lay.ytop - (np.arange(n) + 0.5) * gsd
    dtm = terrain(lay, xs[None, :], ys[:, None]).astype(np.float32)
    above = np.zeros((n, n), np.float32)

    def window(cx, cy, r):
        c0, c1 = max(0, int((cx - r - lay.x0) / gsd)), min(n, int((cx + r - lay.x0) / gsd) + 2)
        r0, r1 = max(0, int((lay.ytop - cy - r) / gsd)), min(n, int((lay.ytop - cy + r) / gsd) + 2)
        return r0, r1, c0, c1

    for s in lay.structures:
        if not s.exists(epoch):
            continue
        raised = s.raised(epoch)
        for p in s.parts_at(epoch):
            r0, r1, c0, c1 = window(p.cx, p.cy, math.hypot(p.length, p.width) / 2 + gsd)
            if r0 >= r1 or c0 >= c1:
                continue
            dx, dy = xs[None, c0:c1] - p.cx, ys[r0:r1, None] - p.cy
            ca, sa = math.cos(p.angle), math.sin(p.angle)
            u, v = dx * ca + dy * sa, -dx * sa + dy * ca
            inside = (np.abs(u) <= p.length / 2) & (np.abs(v) <= p.width / 2)
            z = _part_surface(p, u, v, raised)
            block = above[r0:r1, c0:c1]
            block[inside] = np.maximum(block[inside], z[inside])
    rng = np.random.default_rng([lay.seed, epoch, 3302])
    for x, y, r, h, _ in lay.ground.trees:
        r0, r1, c0, c1 = window(x, y, r)
        if r0 >= r1 or c0 >= c1:
            continue
        d = np.hypot(xs[None, c0:c1] - x, ys[r0:r1, None] - y) / r
        crown = h * (0.55 + 0.45 * np.sqrt(np.clip(1 - d ** 2, 0, 1))) + rng.normal(0, 0.6, d.shape)
        block = above[r0:r1, c0:c1]
        block[d < 1] = np.maximum(block[d < 1], crown[d < 1])
    walls = np.zeros((n, n), np.float32)
    for coords, h in lay.ground.walls:
        cv2.polylines(walls, [view.fixed(coords)], False, float(h), 1, cv2.LINE_8, 3)
    above = np.maximum(above, walls)
    dsm = dtm + above
    sigma = 0.3 / gsd                                   # photogrammetry smears edges
    dsm = cv2.GaussianBlur(dsm, (0, 0), sigma) + rng.normal(0, 0.05, dsm.shape).astype(np.float32)
    valid = rasterise_valid(footprint, view)
    holes = np.zeros((n, n), np.uint8)
    for pond in lay.ground.ponds:                       # water gives no matches
        cv2.fillPoly(holes, [view.fixed(np.asarray(pond.exterior.coords))], 1, cv2.LINE_8, 3)
    for _ in range(int(rng.integers(2, 6))):            # and a few places photogrammetry gave up on
        hx, hy = rng.uniform(lay.x0, lay.x0 + lay.size_m), rng.uniform(lay.y0, lay.ytop)
        cv2.circle(holes, tuple(int(v) for v in view.fixed(np.array([[hx, hy]]))[0]),
                   int(rng.uniform(1.5, 4.0) / gsd * 8), 1, -1, cv2.LINE_8, 3)
    dsm = np.where(valid & (holes == 0), dsm, NODATA).astype(np.float32)
    dtm = np.where(valid, dtm, NODATA).astype(np.float32)
    return dsm, dtm
