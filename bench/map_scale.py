"""The offline district map with many cases, in real headless Chromium: build time, time until
the page is ready (``window.patrolReport.ready``), and the page's JS heap, for 1,000 and 10,000
cases side by side.

    .venv/bin/python bench/map_scale.py [--cases 1000 10000]

Cases are generated: 10 × 10 m roofs scattered over 6 × 6 km in EPSG:4547, every status and
category, Chinese names, as ``store.cases()`` returns them. Not a timed test.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def cases_frame(n: int, seed: int = 0):
    import geopandas as gpd
    import numpy as np
    from shapely.geometry import box

    from pipeline.store.schema import CASE_COLUMNS
    rng = np.random.default_rng(seed)
    x = 500_000 + rng.uniform(0, 6000, n)
    y = 3_400_000 + rng.uniform(0, 6000, n)
    statuses = ["suspected", "verified", "ordered", "demolished", "closed", "false_positive"]
    cats = ["illegal_construction", "illegal_land_use", "over_approval"]
    data = {c: [None] * n for c in CASE_COLUMNS if c != "geometry"}
    data.update({"case_no": [f"LW2026-{i:06d}" for i in range(1, n + 1)],
                 "status": [statuses[i % len(statuses)] for i in range(n)],
                 "category": [cats[i % len(cats)] for i in range(n)], "area_m2": [100.0] * n,
                 "town": ["东山镇"] * n, "village": [f"村{i % 40}" for i in range(n)], "owner": ["张三"] * n,
                 "flags": [["new"]] * n, "rules": [["illegal_construction"]] * n, "reasons": [{}] * n,
                 "confidence": [0.9] * n, "detector_class": ["building"] * n, "stock": ["new_build"] * n})
    return gpd.GeoDataFrame(data, geometry=[box(a, b, a + 10, b + 10) for a, b in zip(x, y)], crs="EPSG:4547")


def measure(n: int, tmp: Path) -> dict:
    import pandas as pd
    from browser import launch_chromium
    from playwright.sync_api import sync_playwright

    from pipeline.core.config import load_settings
    from pipeline.report.map import build_map
    from pipeline.store import open_store

    settings = load_settings(overrides={"store.url": str(tmp / f"s{n}.gpkg")})
    store = open_store(settings.store.url, settings.store.crs)
    cases = cases_frame(n)
    out = tmp / f"map_{n}.html"
    t0 = time.perf_counter()
    build_map(store, settings, out, cases=cases, evidence=pd.DataFrame())
    build_s = time.perf_counter() - t0
    store.close()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            t0 = time.perf_counter()
            page.goto(out.resolve().as_uri())
            page.wait_for_function("window.patrolReport && window.patrolReport.ready", timeout=120_000)
            ready_s = time.perf_counter() - t0
            heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
            shown = page.locator(".patrol-case-marker, .marker-cluster").count()
        finally:
            browser.close()
    return {"cases": n, "html_mb": out.stat().st_size / 2**20, "build_s": build_s, "ready_s": ready_s,
            "heap_mb": heap / 2**20, "markers_drawn": shown}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, nargs="+", default=[1000, 10000])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, Path(tmp)) for n in a.cases]
    print("| cases | page MB | build s | until ready in Chromium s | JS heap MB | markers/clusters drawn |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['cases']:,} | {r['html_mb']:.1f} | {r['build_s']:.1f} | {r['ready_s']:.2f} | "
              f"{r['heap_mb']:.0f} | {r['markers_drawn']} |")


if __name__ == "__main__":
    main()
