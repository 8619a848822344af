"""Matching at district scale: N parcels against M detections, Python vs PostGIS, one run.

    .venv/bin/python bench/match_scale.py                      # 1,000,000 parcels, 100,000 detections
    .venv/bin/python bench/match_scale.py --url postgresql://user@host/db   # an existing PostGIS
    .venv/bin/python bench/match_scale.py --parcels 100000 --detections 10000   # a quick look

Both sides compute the same two things, timed apart: the intersecting (detection, parcel)
pairs, then those pairs with their intersection areas (what ``pipeline.cases.match`` needs
before its rules; pairs that only touch, area 0, are dropped).

- Python: ``pipeline.cases.match.intersecting_pairs`` = shapely STRtree built over the parcels, one bulk
  ``query(predicate="intersects")``, vectorised intersection areas.
- PostGIS: the parcels and detections loaded with COPY (hex EWKB) into two tables,
  GiST indexes built, ANALYZE, then one ``JOIN … ON ST_Intersects`` with
  ``ST_Area(ST_Intersection(…))`` summed on the server.

Each side runs in its own child process so its peak memory is its own: the figure is the
child's peak RSS (``ru_maxrss``) above its RSS once the data was generated; for PostGIS
also the peak RSS of the server backend that ran the join (``VmHWM``, local server only).
Without ``--url`` a throw-away server is started (tests/pg.py; needs PostgreSQL 15 +
PostGIS on this machine). Figures go to stdout and, with ``--json``, to a file.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import shapely

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SRID = 4547
X0, Y0 = 500_000.0, 3_400_000.0
CELL = 10.0                          # one parcel per 10 m grid cell (宅基地 scale)


def generate(n_parcels: int, n_dets: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Parcels: a jittered grid of 6–9.5 m plots; detections: 3–25 m boxes anywhere on it."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_parcels)))
    k = np.arange(n_parcels)
    cx = X0 + (k % side) * CELL + CELL / 2
    cy = Y0 + (k // side) * CELL + CELL / 2
    w = rng.uniform(6.0, 9.5, n_parcels) / 2
    h = rng.uniform(6.0, 9.5, n_parcels) / 2
    parcels = shapely.box(cx - w, cy - h, cx + w, cy + h)
    extent = side * CELL
    dx = X0 + rng.uniform(0, extent, n_dets)
    dy = Y0 + rng.uniform(0, (n_parcels / side) * CELL, n_dets)
    dw = rng.uniform(3.0, 25.0, n_dets) / 2
    dh = rng.uniform(3.0, 25.0, n_dets) / 2
    dets = shapely.box(dx - dw, dy - dh, dx + dw, dy + dh)
    return parcels, dets


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def python_side(n_parcels: int, n_dets: int, out: mp.Queue) -> None:
    from pipeline.cases.match import intersecting_pairs
    parcels, dets = generate(n_parcels, n_dets)
    base = _rss_mb()
    t = time.perf_counter()
    tree = shapely.STRtree(parcels)
    t_tree = time.perf_counter() - t
    li, _ = tree.query(dets, predicate="intersects")
    t_query = time.perf_counter() - t
    del tree, li
    t = time.perf_counter()
    di, pi, area = intersecting_pairs(dets, parcels)          # tree + query + intersection areas
    t_all = time.perf_counter() - t
    out.put({"side": "python", "pairs_s": round(t_query, 2), "seconds": round(t_all, 2),
             "tree_build_s": round(t_tree, 2), "pairs": int(len(di)), "area_m2": round(float(area.sum()), 1),
             "peak_mb_above_data": round(_peak_mb() - base, 1)})


def postgis_side(url: str, n_parcels: int, n_dets: int, parallel: int, out: mp.Queue) -> None:
    import psycopg

    from pipeline.store.postgis import ewkb_hex
    parcels, dets = generate(n_parcels, n_dets)
    base = _rss_mb()
    res: dict = {"side": "postgis"}
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS bench_parcel, bench_detection")
        for name in ("bench_parcel", "bench_detection"):
            con.execute(f"CREATE UNLOGGED TABLE {name} (id bigint, geom geometry(MultiPolygon, {SRID}))")
        t = time.perf_counter()
        for name, geoms in (("bench_parcel", parcels), ("bench_detection", dets)):
            with con.cursor() as cur, cur.copy(f"COPY {name} (id, geom) FROM STDIN") as cp:
                for chunk in range(0, len(geoms), 100_000):
                    hexes = ewkb_hex(geoms[chunk:chunk + 100_000], SRID, name)
                    cp.write("".join(f"{i}\t{h}\n" for i, h in enumerate(hexes, start=chunk)))
        res["copy_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        con.execute("CREATE INDEX ON bench_parcel USING gist (geom)")
        con.execute("CREATE INDEX ON bench_detection USING gist (geom)")
        con.execute("ANALYZE bench_parcel")
        con.execute("ANALYZE bench_detection")
        res["gist_index_s"] = round(time.perf_counter() - t, 2)
        pid = con.execute("SELECT pg_backend_pid()").fetchone()[0]
        con.execute("SELECT set_config('max_parallel_workers_per_gather', %s, false)", (str(parallel),))
        con.execute("SELECT set_config('work_mem', '256MB', false)")
        t = time.perf_counter()
        res["pairs_intersecting"] = con.execute(
            "SELECT count(*) FROM bench_detection d JOIN bench_parcel p ON ST_Intersects(d.geom, p.geom)"
        ).fetchone()[0]
        res["pairs_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        n, area = con.execute(
            "SELECT count(*), sum(a) FROM (SELECT ST_Area(ST_Intersection(d.geom, p.geom)) AS a "
            "FROM bench_detection d JOIN bench_parcel p ON ST_Intersects(d.geom, p.geom)) s "
            "WHERE a > 0").fetchone()
        res["seconds"] = round(time.perf_counter() - t, 2)
        res["pairs"], res["area_m2"] = int(n), round(float(area or 0), 1)
        res["plan"] = " / ".join(r[0].strip() for r in con.execute(
            "EXPLAIN SELECT 1 FROM bench_detection d JOIN bench_parcel p ON ST_Intersects(d.geom, p.geom)"
        ).fetchall()[:4])
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            res["server_backend_peak_mb"] = round(int(status.split("VmHWM:")[1].split()[0]) / 1024, 1)
        except (OSError, IndexError):
            res["server_backend_peak_mb"] = None     # a remote server
        con.execute("DROP TABLE bench_parcel, bench_detection")
    res["client_peak_mb_above_data"] = round(_peak_mb() - base, 1)
    out.put(res)


def _child(target, *args) -> dict:
    q: mp.Queue = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=target, args=(*args, q))
    p.start()
    try:
        result = q.get(timeout=3600)
    finally:
        p.join()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parcels", type=int, default=1_000_000)
    ap.add_argument("--detections", type=int, default=100_000)
    ap.add_argument("--url", help="postgresql:// URL of a database with postgis (default: start one)")
    ap.add_argument("--parallel", type=int, default=0,
                    help="PostGIS parallel workers per query (0: one core, like the Python side)")
    ap.add_argument("--skip-postgis", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    a = ap.parse_args(argv)

    t = time.perf_counter()
    generate(a.parcels, a.detections)
    print(f"{a.parcels:,} parcels vs {a.detections:,} detections "
          f"(generated in {time.perf_counter() - t:.1f} s; {os.cpu_count()} CPUs)", flush=True)
    results = [_child(python_side, a.parcels, a.detections)]
    print(json.dumps(results[-1]), flush=True)
    server = None
    if not a.skip_postgis:
        url = a.url
        if url is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from pg import PgServer
            server = PgServer.start(extra={"shared_buffers": "512MB", "maintenance_work_mem": "512MB",
                                           "max_wal_size": "4GB"})
            url = server.new_database("bench")
        try:
            results.append(_child(postgis_side, url, a.parcels, a.detections, a.parallel))
            print(json.dumps(results[-1]), flush=True)
        finally:
            if server is not None:
                server.stop()
    print()
    print(f"{'':10} {'pairs s':>8} {'+areas s':>8} {'pairs':>9} {'peak MB':>8}  notes")
    py = results[0]
    print(f"{'python':10} {py['pairs_s']:>8} {py['seconds']:>8} {py['pairs']:>9} {py['peak_mb_above_data']:>8}  "
          f"STRtree build {py['tree_build_s']} s (included)")
    if len(results) > 1:
        pg = results[1]
        print(f"{'postgis':10} {pg['pairs_s']:>8} {pg['seconds']:>8} {pg['pairs']:>9} "
              f"{pg['server_backend_peak_mb']!s:>8}  "
              f"server backend peak; + COPY {pg['copy_s']} s, GiST {pg['gist_index_s']} s; client "
              f"{pg['client_peak_mb_above_data']} MB")
        same = py["pairs"] == pg["pairs"] and abs(py["area_m2"] - pg["area_m2"]) < 1e-6 * max(1, py["area_m2"])
        print(f"same pairs and areas on both sides: {same}")
    print(f"Python path target <= 10 s: intersecting pairs {py['pairs_s']} s "
          f"({'met' if py['pairs_s'] <= 10 else 'NOT met'}), pairs + intersection areas "
          f"(pipeline.cases.match.intersecting_pairs) {py['seconds']} s ({'met' if py['seconds'] <= 10 else 'NOT met'}); "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
