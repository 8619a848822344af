"""A gallery of what the detector does on real imagery: one picture per crop of the suite.

    .venv/bin/python scripts/real_gallery.py ../shared/realdata --out docs/img --roles eval,train

Each crop of ``config/realdata_suite.yaml`` (``pipeline.model.evaluate``) is detected as ``patrol evaluate``
does and drawn at most 1000 px wide: detections matching a footprint at IoU 0.5 in green, false
detections in red, footprints nobody found in yellow. Writes ``real_<area>_<crop>.jpg``.

With ``--look DIR`` it also draws, for looking at one by one, every detection lying less than half
on any footprint (the suite's "off footprints": an unmapped structure or a false alarm), 8 m around
it, numbered, 24 to a sheet: ``DIR/off_<area>_<crop>_<k>.jpg``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GREEN, RED, YELLOW = (40, 220, 60), (255, 40, 40), (255, 220, 0)


def pixel_rings(geom, x0: float, y1: float, sx: float, sy: float):
    """The exterior rings of a (multi)polygon in pixels of an image whose top-left is (x0, y1)."""
    for poly in getattr(geom, "geoms", [geom]):
        if hasattr(poly, "exterior"):
            yield [((x - x0) * sx, (y1 - y) * sy) for x, y in np.asarray(poly.exterior.coords)[:, :2]]


def draw(ortho: Path, pred, gt, out: Path, width: int = 1000) -> dict:
    import rasterio
    from PIL import Image, ImageDraw
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from pipeline.model.evaluate import match_footprints
    from pipeline.report.common import to_uint8

    pi, ti, _ = match_footprints(pred.geometry.to_numpy(), gt.geometry.to_numpy(), 0.5)
    with rasterio.open(ortho) as src, WarpedVRT(src, crs=gt.crs) as vrt:
        x0, y0, x1, y1 = vrt.bounds
        h = int(round(width * (y1 - y0) / (x1 - x0)))
        rgb = vrt.read([1, 2, 3], out_shape=(3, h, width), resampling=Resampling.average)
        valid = vrt.read_masks(1, out_shape=(h, width)) > 0
    img = np.moveaxis(to_uint8(rgb), 0, -1).copy()
    img[~valid] = 200
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    scale = (x0, y1, width / (x1 - x0), width / (x1 - x0))
    matched_t, matched_p = set(ti.tolist()), set(pi.tolist())
    for k, g in enumerate(gt.geometry):
        if k not in matched_t:
            for r in pixel_rings(g, *scale):
                d.line(r, fill=YELLOW, width=2)
    for k, g in enumerate(pred.geometry):
        for r in pixel_rings(g, *scale):
            d.line(r, fill=GREEN if k in matched_p else RED, width=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out, quality=82)
    return {"tp": len(pi), "fp": len(pred) - len(pi), "fn": len(gt) - len(ti)}


def off_footprint_sheets(ortho: Path, pred, gt, out_dir: Path, name: str, px: int = 200) -> int:
    """Sheets of crops around the detections less than half on any footprint; returns how many."""
    import rasterio
    import shapely
    from PIL import Image, ImageDraw
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import from_bounds

    from pipeline.model.evaluate import on_footprint_share
    from pipeline.report.common import to_uint8

    pg, tg = pred.geometry.to_numpy(), gt.geometry.to_numpy()
    crops = []
    with rasterio.open(ortho) as src, WarpedVRT(src, crs=gt.crs) as vrt:
        for k in np.flatnonzero(on_footprint_share(pg, tg) < 0.5):
            around = pg[k].buffer(8)
            x0, y0, x1, y1 = around.bounds
            rgb = vrt.read([1, 2, 3], window=from_bounds(x0, y0, x1, y1, vrt.transform), out_shape=(3, px, px))
            im = Image.fromarray(np.moveaxis(to_uint8(rgb), 0, -1).copy())
            d = ImageDraw.Draw(im)
            scale = (x0, y1, px / (x1 - x0), px / (y1 - y0))
            for t in tg[shapely.intersects(tg, around)]:
                for r in pixel_rings(t, *scale):
                    d.line(r, fill=YELLOW, width=1)
            for r in pixel_rings(pg[k], *scale):
                d.line(r, fill=RED, width=2)
            d.text((3, 3), f"{len(crops)} {pred['class_name'].iloc[k]}", fill=(255, 255, 255))
            crops.append(im)
    out_dir.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(crops), 24):
        sheet = Image.new("RGB", (6 * (px + 2), 4 * (px + 2)))
        for i, im in enumerate(crops[s:s + 24]):
            sheet.paste(im, ((i % 6) * (px + 2), (i // 6) * (px + 2)))
        sheet.save(out_dir / f"off_{name}_{s // 24}.jpg", quality=85)
    return len(crops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--roles", default="eval,train")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--model", type=Path, help="weights (default: detector.model)")
    ap.add_argument("--look", type=Path, help="also draw the off-footprint detections here, to look at")
    a = ap.parse_args()
    from pipeline.core.config import load_settings
    from pipeline.model.evaluate import detect_against_truth, read_suite

    settings = load_settings()
    for c in read_suite():
        if c["role"] not in a.roles.split(",") or c["holdout"] is not None:   # a split crop: its eval part only
            continue
        pred, gt, _ = detect_against_truth(a.suite / c["ortho"], a.suite / c["truth"], settings, a.model,
                                           progress=False, part=c["part"])
        name = f"real_{c['area']}_{Path(c['ortho']).stem}{'_eval' if c['part'] else ''}.jpg"
        n = draw(a.suite / c["ortho"], pred, gt, a.out / name, a.width)
        print(f"{name}: {c['role']}, {n['tp']} found (green), {n['fp']} false (red), {n['fn']} missed (yellow)")
        if a.look:
            k = off_footprint_sheets(a.suite / c["ortho"], pred, gt, a.look, Path(name).stem)
            print(f"  {k} detections less than half on any footprint: {a.look}/off_{Path(name).stem}_*.jpg")


if __name__ == "__main__":
    main()
