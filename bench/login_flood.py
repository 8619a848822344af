"""How a flood of wrong passwords slows everyone else, with the sign-in guard and without it.

Starts `patrol serve` twice on a fresh store (the shipped settings, then the guard switched off:
no backoff, no lockout, 16 password checks at once). Each time it times a signed-in user's
`GET /api/me` while idle, then while N threads post wrong passwords to `POST /api/token` as fast
as they can. It prints the medians side by side, with the ratio to idle.

    .venv/bin/python bench/login_flood.py [--threads 8] [--requests 40]
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

PATROL = [sys.executable, "-m", "pipeline.cli"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _me(base: str, token: str) -> float:
    t0 = time.perf_counter()
    req = urllib.request.Request(base + "/api/me", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
    return time.perf_counter() - t0


def measure(root: Path, sets: list[str], threads: int, n: int) -> tuple[float, float, int]:
    port = _port()
    store = root / f"bench-{port}.gpkg"
    args = ["--store", str(store), "--set", f"service.secret_file={root / 'secret'}",
            "--set", f"service.work_dir={root / 'work'}", "--set", f"service.upload_dir={root / 'up'}", *sets]
    subprocess.run([*PATROL, *args, "users", "add", "adm", "--role", "admin", "--password", "admin-pass-01"],
                   check=True, capture_output=True)
    server = subprocess.Popen([*PATROL, *args, "serve", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/login", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        req = urllib.request.Request(base + "/api/token", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"username": "adm", "password": "admin-pass-01"}).encode())
        token = json.load(urllib.request.urlopen(req))["access_token"]
        idle = statistics.median(_me(base, token) for _ in range(n))
        stop, sent = threading.Event(), [0]

        def flood(k: int) -> None:
            while not stop.is_set():
                _post(base + "/api/token", {"username": f"guess{k}", "password": "wrong-password"})
                sent[0] += 1

        workers = [threading.Thread(target=flood, args=(k,), daemon=True) for k in range(threads)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        busy = statistics.median(_me(base, token) for _ in range(n))
        stop.set()
        return idle, busy, sent[0]
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--requests", type=int, default=40)
    a = ap.parse_args()
    off = ["--set", "service.login_backoff_after=1000000", "--set", "service.login_lockout_after=1000000",
           "--set", "service.password_checks=16"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("guard on (shipped)", *measure(Path(tmp), [], a.threads, a.requests)),
                ("guard off", *measure(Path(tmp), off, a.threads, a.requests))]
    print(f"GET /api/me while {a.threads} threads post wrong passwords (median of {a.requests})")
    print("| setting | idle s | during the flood s | × idle | wrong sign-ins answered |")
    print("| --- | --- | --- | --- | --- |")
    for name, idle, busy, sent in rows:
        print(f"| {name} | {idle:.3f} | {busy:.3f} | {busy / idle:.1f} | {sent} |")


if __name__ == "__main__":
    main()
