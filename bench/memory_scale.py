"""Peak memory against the ortho's size, end to end: `patrol run` on a 5 cm BigTIFF of about 2.5 km²
and one of about 10 km² (4 × the area), side by side in one run, each in its own process.

    .venv/bin/python bench/memory_scale.py --work /tmp/memscale

The orthos are made by tiling one generated district (``--tile-m`` on a side, 5 cm, seed 7) n × n
times into a tiled, JPEG-compressed BigTIFF (3 × 3 and 6 × 6 by default), so that both hold the
same kind of scene; an empty store each, no parcels (every structure becomes a case: the store's
write is as large as it gets). Reported: ortho size (km², gigapixels), wall time, peak RSS of the
`patrol run` process (/usr/bin/time), detections, and the RSS ratio of the big to the small one
(issue 21: ≤ 1.1 at 4 × the area). Not a timed test.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bigtiff(tile: Path, out: Path, n: int) -> Path:
    """``tile`` repeated n × n into a BigTIFF (512 px JPEG tiles, overviews)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    if out.is_file():
        return out
    with rasterio.open(tile) as src:
        rgb = src.read([1, 2, 3])
        h, w = src.height, src.width
        prof = {"driver": "GTiff", "width": w * n, "height": h * n, "count": 3, "dtype": "uint8",
                "crs": src.crs, "transform": src.transform, "tiled": True, "blockxsize": 512, "blockysize": 512,
                "compress": "JPEG", "photometric": "YCBCR", "jpeg_quality": 85, "BIGTIFF": "YES"}
    part = out.with_suffix(".part.tif")
    with rasterio.open(part, "w", **prof) as dst:
        for i in range(n):
            for j in range(n):
                dst.write(rgb, window=Window(j * w, i * h, w, h))
        dst.build_overviews([2, 4, 8, 16], Resampling.average)
    part.rename(out)
    return out


def run(ortho: Path, work: Path) -> dict:
    store = work / f"{ortho.stem}.gpkg"
    for p in work.glob(f"{ortho.stem}.gpkg*"):      # a fresh store each run
        if p.is_file():
            p.unlink()
    exe = Path(sys.executable).parent / "patrol"
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB %M", str(exe), "--store", str(store),
           "--set", f"ingest.work_dir={work / 'flights'}", "run", str(ortho)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"patrol run {ortho.name} failed: {p.stderr.strip().splitlines()[-2:]}")
    rss = int(re.search(r"MAXRSS_KB (\d+)", p.stderr).group(1)) / 1024
    dets = re.search(r"(\d+) detections", p.stdout)
    return {"ortho": ortho.name, "wall_s": round(wall, 1), "peak_rss_mb": round(rss), "detections": int(dets.group(1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/memscale"))
    ap.add_argument("--tile-m", type=float, default=530.0)
    ap.add_argument("--n", type=int, nargs=2, default=[3, 6], help="repetitions per side: small, big")
    a = ap.parse_args()

    import rasterio

    from pipeline.synth import generate_district
    a.work.mkdir(parents=True, exist_ok=True)
    tile = a.work / "tile" / "epoch_1.tif"
    if not tile.is_file():
        generate_district(a.work / "tile", seed=7, size_m=a.tile_m, epochs=1, progress=False)
    rows = []
    for n in a.n:
        ortho = bigtiff(tile, a.work / f"ortho_{n}x{n}.tif", n)
        with rasterio.open(ortho) as src:
            km2 = src.width * src.height * abs(src.transform.a * src.transform.e) / 1e6
            gpx = src.width * src.height / 1e9
        rows.append({"n": n, "km2": round(km2, 4), "gigapixels": round(gpx, 2), **run(ortho, a.work)})
    small, big = rows
    print("| ortho | km² | gigapixels | wall s | flown km²/h | peak RSS MB | detections |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['n']}×{r['n']} tiles of {a.tile_m:g} m | {r['km2']} | {r['gigapixels']} | {r['wall_s']} | "
              f"{r['km2'] / r['wall_s'] * 3600:.1f} | {r['peak_rss_mb']} | {r['detections']} |")
    print(f"\narea × {big['km2'] / small['km2']:.2f} → peak RSS × {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}")
    (a.work / "memory_scale.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
