"""The blocks of a generated district: village blocks of parcels and houses (L / T wings,
terraces, informal clusters), field strips, trees and cars."""
from __future__ import annotations

import math

import numpy as np
from shapely.geometry import LineString

from pipeline.synth.parts import (
    Field,
    Frame,
    Ground,
    Part,
    house_look,
    person_name,
    shed_look,
    site_look,
)
from pipeline.synth.randomisation import (
    Randomisation,
    jitter,
    pick,
)


def add_trees(ground: Ground, rng, x, y, r_range, h_range):
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    if x.size == 0:
        return
    r = rng.uniform(*r_range, x.size)
    h = rng.uniform(*h_range, x.size)
    seeds = rng.integers(0, 1 << 30, x.size)
    ground.trees = np.vstack([ground.trees, np.c_[x, y, r, h, seeds]])


CAR_COLOURS = [((225, 226, 228), 5), ((40, 42, 46), 3), ((150, 152, 156), 3), ((170, 40, 36), 1),
               ((40, 70, 130), 1), ((190, 170, 120), 1)]


def place_cars(ground: Ground, rng, rnd: Randomisation, bounds, obstacles: list) -> None:
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
            park_car(ground, rng, cx, cy, ang + (math.pi if rng.random() < 0.5 else 0.0))
    for y in ground.yards:
        if rng.random() < 0.15 * rnd.cars:
            c = y.centroid
            park_car(ground, rng, c.x, c.y, float(rng.uniform(0, 2 * math.pi)))
    # no car on another car or under a structure of any epoch
    kept, taken = [], list(obstacles)
    for car in ground.cars:
        g = car[0].polygon().buffer(0.3)
        if not any(g.intersects(o) for o in taken):
            kept.append(car)
            taken.append(g)
    ground.cars = kept


def park_car(ground, rng, cx, cy, ang):
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


def informal_block(fr, rng, rnd, u0, v0, u1, v1, dens, ground, new_structure):
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
    add_trees(ground, rng, x, y, (1.2, 3.2), (4, 9))


def terrace_block(fr, rng, rnd, u0, v0, u1, v1, new_structure):
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


def field_strips(fr: Frame, rng, ground: Ground, u0, v0, u1, v1, poly):
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


def village_block(fr, rng, rnd, u0, v0, u1, v1, ri, dens, town, village, vcode, ground, parcels,
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
                "parcel_id": parcel_id, "owner": person_name(rng), "town": town, "village": village,
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


