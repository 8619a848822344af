"""A gallery of what the detector does on real imagery: one picture per crop of the suite.

    .venv/bin/python scripts/real_gallery.py ../shared/realdata --out docs/img --roles eval,train

Each crop of ``config/realdata_suite.yaml`` (``pipeline.evaluate``) is detected as ``patrol evaluate``
does and drawn at most 1000 px wide: detections matching a footprint at IoU 0.5 in green, false
detections in red, footprints nobody found in yellow. Writes ``real_<area>_<crop>.jpg``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GREEN, RED, YELLOW = (40, 220, 60), (255, 40, 40), (255, 220, 0)


def draw(ortho: Path, pred, gt, out: Path, width: int = 1000) -> dict:
    import rasterio
    from PIL import Image, ImageDraw
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from pipeline.evaluate import match_footprints
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
    sx = width / (x1 - x0)

    def ring(g):
        for poly in getattr(g, "geoms", [g]):
            if hasattr(poly, "exterior"):
                yield [((x - x0) * sx, (y1 - y) * sx) for x, y in np.asarray(poly.exterior.coords)[:, :2]]

    matched_t, matched_p = set(ti.tolist()), set(pi.tolist())
    for k, g in enumerate(gt.geometry):
        if k not in matched_t:
            for r in ring(g):
                d.line(r, fill=YELLOW, width=2)
    for k, g in enumerate(pred.geometry):
        for r in ring(g):
            d.line(r, fill=GREEN if k in matched_p else RED, width=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out, quality=82)
    return {"tp": len(pi), "fp": len(pred) - len(pi), "fn": len(gt) - len(ti)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--roles", default="eval,train")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--model", type=Path, help="weights (default: detector.model)")
    a = ap.parse_args()
    from pipeline.config import load_settings
    from pipeline.evaluate import detect_against_truth, read_suite

    settings = load_settings()
    for c in read_suite():
        if c["role"] not in a.roles.split(",") or c["holdout"] is not None:   # a split crop: its eval part only
            continue
        pred, gt, _ = detect_against_truth(a.suite / c["ortho"], a.suite / c["truth"], settings, a.model,
                                           progress=False, part=c["part"])
        name = f"real_{c['area']}_{Path(c['ortho']).stem}{'_eval' if c['part'] else ''}.jpg"
        n = draw(a.suite / c["ortho"], pred, gt, a.out / name, a.width)
        print(f"{name}: {c['role']}, {n['tp']} found (green), {n['fp']} false (red), {n['fn']} missed (yellow)")


if __name__ == "__main__":
    main()
