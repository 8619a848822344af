"""Dispatch and deadlines: the daily digest, delivered to a real local HTTP receiver."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from pipeline.core.config import load_settings
from pipeline.core.errors import PatrolError
from pipeline.core.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 12, 1)


class Receiver:
    """A chat robot stand-in: records each POST body, answers ``reply`` with ``status``."""

    def __init__(self, reply: dict | None = None, status: int = 200):
        self.bodies: list[dict] = []
        self.reply, self.status = reply or {"errcode": 0, "errmsg": "ok"}, status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(n).decode("utf-8")))
                data = json.dumps(outer.reply).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/cgi-bin/webhook/send?key=secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def dispatch_store(tmp_path):
    from pipeline.store import open_store
    store = open_store(tmp_path / "s.gpkg", "EPSG:4547")

    def case(no, status, deadline, assignee, first_seen="2026-10-01"):
        x = 500_000 + 40 * int(no[-2:])
        return {"case_no": no, "status": status, "deadline": deadline, "assignee": assignee, "town": "东镇",
                "village": "甲村", "category": "illegal_construction", "area_m2": 50.0, "first_seen_at": first_seen,
                "geometry": shapely.box(x, 3_000_000, x + 10, 3_000_010)}
    store.save_cases(gpd.GeoDataFrame([
        case("LW2026-000001", "ordered", "2026-11-21", "off"),          # 10 days overdue
        case("LW2026-000002", "ordered", "2026-12-03", "off"),          # due in 2 days
        case("LW2026-000003", "ordered", "2026-12-20", None),           # not due soon
        case("LW2026-000004", "suspected", None, None, "2026-11-30T22:00:00"),   # new
        case("LW2026-000005", "demolished", "2026-11-01", "off"),       # done: never overdue
    ], geometry="geometry", crs="EPSG:4547"))
    yield store, tmp_path / "s.gpkg"
    store.close()


def test_navigation_coordinates_follow_each_map():
    """高德 takes GCJ-02, 百度 BD-09 (published formulas; a point in Wuhan, offsets of ~500 m)."""
    from pipeline.core.geo import gcj02_to_bd09, wgs84_to_gcj02
    glon, glat = wgs84_to_gcj02(114.305, 30.593)
    assert 0.004 < glon - 114.305 < 0.007 and -0.004 < glat - 30.593 < 0.0
    blon, blat = gcj02_to_bd09(glon, glat)
    assert 0.006 < blon - glon < 0.0075 and 0.005 < blat - glat < 0.0075


def _settings(url=None, **kw):
    """The test robot listens on this machine: its host allowed."""
    return load_settings(overrides={**({"dispatch.webhook_url": url} if url else {}),
                                    "dispatch.allowed_hosts": ["127.0.0.1"], **kw})


def test_digest_lists_overdue_due_soon_and_new(dispatch_store):
    from pipeline.cases.dispatch import digest, digest_markdown, work_queue
    store, _ = dispatch_store
    s = _settings()
    rules = load_rules(s.rules_path)
    dg = digest(store, rules, s, today=TODAY, now=datetime(2026, 12, 1, 8, 0))
    assert [(i["case_no"], i["days"]) for i in dg["overdue"]] == [("LW2026-000001", 10)]
    assert [(i["case_no"], i["days"]) for i in dg["due_soon"]] == [("LW2026-000002", -2)]
    assert [i["case_no"] for i in dg["new"]] == ["LW2026-000004"]
    assert dg["by_officer"]["off"] == {"overdue": 1, "due_soon": 1, "new": 0}
    md = digest_markdown(dg)
    assert "逾期未办 1 件" in md and "LW2026-000001 东镇甲村 限期整改/拆除 逾期 10 天（off）" in md
    assert "LW2026-000002" in md and "2 天后到期" in md and "LW2026-000004" in md and "未分派" in md
    q = work_queue(store.cases(), rules, s, today=TODAY)
    assert [(i["case_no"], i["state"]) for i in q["items"]] == [
        ("LW2026-000001", "overdue"), ("LW2026-000002", "due_soon"), ("LW2026-000003", "ordered"),
        ("LW2026-000004", "to_check")]                            # the demolished case is not work
    assert q["counts"] == {"overdue": 1, "due_soon": 1, "ordered": 1, "to_check": 1, "open": 0}
    nav = q["items"][0]["nav"]
    assert nav["amap"].startswith("https://uri.amap.com/marker?position=") and "coordinate=gaode" in nav["amap"]
    assert "coord_type=bd09ll" in nav["baidu"] and nav["geo"].startswith(f"geo:{q['items'][0]['lat']:.6f},")


@pytest.mark.parametrize("fmt, key", [("wecom", "content"), ("dingtalk", "text")])
def test_digest_is_delivered_to_the_webhook(dispatch_store, fmt, key):
    from pipeline.cases.dispatch import digest, send_digest
    store, _ = dispatch_store
    rx = Receiver()
    try:
        s = _settings(rx.url, **{"dispatch.webhook_format": fmt})
        dg = digest(store, load_rules(s.rules_path), s, today=TODAY, now=datetime(2026, 12, 1, 8, 0))
        line = send_digest(dg, s)
    finally:
        rx.close()
    assert "sent" in line and "secret" not in line               # the robot's key stays out of logs
    assert len(rx.bodies) == 1 and rx.bodies[0]["msgtype"] == "markdown"
    assert "LW2026-000001" in rx.bodies[0]["markdown"][key] and "两违巡查日报" in rx.bodies[0]["markdown"][key]


def test_a_refused_or_unreachable_webhook_is_one_line(dispatch_store, monkeypatch):
    from pipeline.cases import dispatch
    store, _ = dispatch_store
    monkeypatch.setattr(dispatch, "RETRY_S", 0.01)
    rx = Receiver(reply={"errcode": 93000, "errmsg": "invalid webhook url"})
    try:
        s = _settings(rx.url)
        dg = dispatch.digest(store, load_rules(s.rules_path), s, today=TODAY)
        with pytest.raises(PatrolError, match="errcode 93000") as e:
            dispatch.send_digest(dg, s)
        assert len(rx.bodies) == 1 and "\n" not in str(e.value) and "secret" not in str(e.value)
    finally:
        rx.close()
    rx = Receiver(status=502)
    try:
        with pytest.raises(PatrolError, match="HTTP 502"):
            dispatch.send_digest(dg, _settings(rx.url))
        assert len(rx.bodies) == dispatch.ATTEMPTS                # tried again
    finally:
        rx.close()


def test_cli_digest_send(dispatch_store):
    store, path = dispatch_store
    rx = Receiver()
    try:
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "--store", str(path), "digest", "--date",
                            "2026-12-01", "--send"], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "PATROL__DISPATCH__WEBHOOK_URL": rx.url,
                                "PATROL__DISPATCH__ALLOWED_HOSTS": "[127.0.0.1]"})
    finally:
        rx.close()
    assert r.returncode == 0, r.stderr
    assert "逾期未办 1 件" in r.stdout and len(rx.bodies) == 1
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "--store", str(path), "digest", "--send"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "dispatch.webhook_url is not set" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("url, allowed, words", [
    ("file:///etc/passwd", ["127.0.0.1"], "http(s) address"),
    ("ftp://127.0.0.1/x", ["127.0.0.1"], "http(s) address"),
    ("http://127.0.0.1:9/cgi-bin/webhook/send?key=secret", ["qyapi.weixin.qq.com"], "not in dispatch.allowed_hosts"),
    ("http://169.254.169.254/latest/meta-data?key=secret", ["qyapi.weixin.qq.com"], "not in dispatch.allowed_hosts"),
])
def test_the_webhook_posts_only_to_an_allowed_http_host(dispatch_store, url, allowed, words):
    """No file:, no other scheme, no host the bureau did not list (loopback, cloud metadata): one line,
    without the robot's key, and nothing sent."""
    from pipeline.cases.dispatch import digest, send_digest
    store, _ = dispatch_store
    s = load_settings(overrides={"dispatch.webhook_url": url, "dispatch.allowed_hosts": allowed})
    dg = digest(store, load_rules(s.rules_path), s, today=TODAY)
    with pytest.raises(PatrolError, match=re.escape(words)) as e:
        send_digest(dg, s)
    assert "\n" not in str(e.value) and "secret" not in str(e.value)


def test_the_webhook_follows_no_redirect_and_ends_within_its_deadline(dispatch_store, monkeypatch):
    """A redirect is refused (the address it points to is never posted to); an answer dripping a
    byte a second is cut at dispatch.timeout_s, every try together."""
    import time

    from pipeline.cases import dispatch
    store, _ = dispatch_store
    monkeypatch.setattr(dispatch, "RETRY_S", 0.01)
    elsewhere = Receiver()
    hits = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.path)
            self.send_response(307)
            self.send_header("Location", elsewhere.url)
            self.end_headers()

        def log_message(self, *a):
            pass

    class Drip(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(60):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.5)

        def log_message(self, *a):
            pass

    servers = [HTTPServer(("127.0.0.1", 0), h) for h in (Redirect, Drip)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        s = _settings(f"http://127.0.0.1:{servers[0].server_port}/send?key=secret")
        dg = dispatch.digest(store, load_rules(s.rules_path), s, today=TODAY)
        with pytest.raises(PatrolError, match="redirects") as e:
            dispatch.send_digest(dg, s)
        assert hits == ["/send?key=secret"] and elsewhere.bodies == [] and "secret" not in str(e.value)
        s = _settings(f"http://127.0.0.1:{servers[1].server_port}/send?key=secret", **{"dispatch.timeout_s": 2})
        t0 = time.monotonic()
        with pytest.raises(PatrolError, match="no answer within 2 s"):
            dispatch.send_digest(dg, s)
        assert time.monotonic() - t0 < 4
    finally:
        elsewhere.close()
        servers[0].shutdown()                  # the dripping one is left to its daemon thread
        for srv in servers:
            srv.server_close()
