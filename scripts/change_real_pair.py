"""The change check on real imagery: a real ortho as the later flight, and as the earlier flight
a copy with a quarter of its real buildings taken out, re-coloured (another season and light) and
georeferenced some metres off — so every new building is known. Both go through the product
(``patrol``'s register + process, the shipped model or ``--model``), with the check on and off.

    .venv/bin/python scripts/change_real_pair.py ../shared/realdata/kampala/mosaic_z20_c0.tif \
        ../shared/realdata/kampala/osm_buildings.geojson --out /tmp/pair_kampala

Kampala is the real area kept out of all training (models/*.MODEL_CARD.md). A building is taken
out by covering its footprint (1 m wider) with the ground of a nearby place that holds no
footprint. Prints, for each mode: the shift found, the 新增 flags and how many stand on a
removed building (precision), how many removed buildings got one (recall; also of those the
model detects in the later flight at all).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_pair(ortho: Path, footprints: Path, out: Path, share: float, shift: tuple[float, float], seed: int):
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.features import rasterize

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with rasterio.open(ortho) as src:
        rgb = src.read([1, 2, 3])
        valid = src.read_masks(1) > 0 if src.count < 4 else src.read(4) > 0
        prof = src.profile
        t, crs = src.transform, src.crs
    fps = gpd.read_file(footprints).to_crs(crs)
    fps = fps.set_geometry(fps.geometry.make_valid())
    inside = fps[fps.within(shapely.box(*rasterio.transform.array_bounds(rgb.shape[1], rgb.shape[2], t)))]
    inside = inside[[valid[int(r), int(c)] for c, r in (~t * (g.centroid.x, g.centroid.y) for g in inside.geometry)]]
    removed = inside.sample(frac=share, random_state=seed)
    every = rasterize([(g.buffer(1.0), 1) for g in fps.geometry], out_shape=valid.shape, transform=t).astype(bool)
    before = rgb.copy()
    px = abs(t.a)
    for g in removed.geometry:
        m = rasterize([(g.buffer(1.0), 1)], out_shape=valid.shape, transform=t).astype(bool)
        rr, cc = np.nonzero(m)
        for _ in range(200):                       # ground from a nearby place without a building
            dy, dx = (rng.uniform(-40, 40, 2) / px).astype(int)
            r2, c2 = rr + dy, cc + dx
            if (r2.min() < 0 or c2.min() < 0 or r2.max() >= valid.shape[0] or c2.max() >= valid.shape[1]):
                continue
            if not every[r2, c2].any() and valid[r2, c2].all():
                before[:, rr, cc] = rgb[:, r2, c2]
                break
    # another season and light: warmer, darker, less contrast
    f = before.astype(np.float32)
    f = 128 + (f - 128) * 0.85
    f *= np.array([1.06, 1.0, 0.9])[:, None, None] * 0.92
    before = np.clip(f, 0, 255).astype(np.uint8)
    prof.update(count=3, driver="GTiff", compress="DEFLATE", tiled=True, blockxsize=256, blockysize=256,
                photometric="RGB")
    prof.pop("nodata", None)
    for name, data, tr, when in (("after.tif", rgb, t, "2024:09:01 10:00:00"),
                                 ("before.tif", before, t * rasterio.Affine.translation(shift[0] / px, -shift[1] / px),
                                  "2024:03:01 10:00:00")):
        with rasterio.open(out / name, "w", **{**prof, "transform": tr}) as dst:
            dst.write(data)
            dst.write_mask((valid * 255).astype(np.uint8))
            dst.update_tags(TIFFTAG_DATETIME=when)
    removed.to_file(out / "removed.geojson", driver="GeoJSON")
    return out / "before.tif", out / "after.tif", removed, inside


def run(before: Path, after: Path, removed, inside, out: Path, check: bool, store_crs: str,
        model: Path | None = None) -> dict:
    import geopandas as gpd
    import shapely

    from pipeline.core.config import load_settings
    from pipeline.detection.detectors import ModelTileDetector
    from pipeline.process.run import process_flight, register_flight
    from pipeline.store import open_store

    url = out / f"patrol_{'on' if check else 'off'}.gpkg"
    url.unlink(missing_ok=True)
    s = load_settings(overrides={"store.url": str(url), "store.crs": store_crs,
                                 "change_check.coregister": check, "change_check.confirm": check,
                                 **({"detector.model": str(model)} if model else {})})
    rem = removed.to_crs(store_crs)
    rem = rem.set_geometry(rem.geometry.make_valid())
    allf = inside.to_crs(store_crs)
    with open_store(str(url), store_crs) as store:
        c = shapely.box(*allf.total_bounds).centroid       # one parcel: the flights are in the district
        store.import_parcels(gpd.GeoDataFrame({"parcel_id": ["P1"], "owner": ["—"], "town": ["镇"], "village": ["村"],
                                               "land_use": ["0702"]}, geometry=[c.buffer(3)], crs=store_crs))
        det = ModelTileDetector(s)
        flights = [register_flight(store, p, s) for p in (before, after)]
        for f in flights:
            process_flight(store, f["flight_id"], s, detector=det, progress=False, force=True)
        reg = store.get_flight(flights[1]["flight_id"])["registration"]
        cases = store.cases()
        dets = store.detections(flights[1]["flight_id"])
    if reg.get("applied"):                 # the cases lie in the earlier flight's frame: so must the truth
        dx, dy = -float(reg["dx_total"]), -float(reg["dy_total"])
        rem = rem.set_geometry(rem.geometry.translate(dx, dy))
    mine = cases[cases["first_seen_flight"] == flights[1]["flight_id"]]
    flagged = mine[mine["stock"] == "new_build"]

    def hits(g, pool, iou=0.3, cover=0.5):
        p = np.asarray(pool.geometry.values)
        inter = shapely.area(shapely.intersection(p, g))
        return bool(((inter / (shapely.area(p) + g.area - inter) >= iou) | (inter >= cover * shapely.area(p))).any())
    right = sum(hits(g, rem) for g in flagged.geometry)
    found = [hits(g, flagged) for g in rem.geometry]
    seen = [hits(g, dets) for g in rem.geometry]
    return {"check": check, "shift_found_m": [reg.get("dx_total"), reg.get("dy_total")], "note": reg.get("note"),
            "flagged_new": len(flagged), "on_a_removed_building": right,
            "precision": round(right / len(flagged), 3) if len(flagged) else None,
            "removed": len(rem), "flagged_of_removed": int(sum(found)),
            "recall": round(sum(found) / len(rem), 3),
            "removed_detected_in_later_flight": int(sum(seen)),
            "recall_of_detected": round(sum(f for f, d in zip(found, seen) if d) / max(sum(seen), 1), 3),
            "existing_first_seen": int((mine["stock"] == "existing").sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ortho", type=Path)
    ap.add_argument("footprints", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--share", type=float, default=0.25, help="share of the buildings taken out")
    ap.add_argument("--shift", type=float, nargs=2, default=(2.5, -1.5), metavar=("EAST", "NORTH"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--store-crs", default="EPSG:32636")
    ap.add_argument("--model", type=Path, help="weights (default: detector.model, the shipped model)")
    a = ap.parse_args()
    before, after, removed, inside = make_pair(a.ortho, a.footprints, a.out, a.share, tuple(a.shift), a.seed)
    print(f"{len(inside)} footprints on the ortho, {len(removed)} taken out of the earlier flight; "
          f"earlier flight shifted {a.shift} m")
    for check in (False, True):
        r = run(before, after, removed, inside, a.out, check, a.store_crs, a.model)
        print(json.dumps(r, ensure_ascii=False))


if __name__ == "__main__":
    main()
