"""Web service end to end (issue 8): `patrol serve` as a subprocess on a free localhost port,
driven by real headless Chromium. A patrol user uploads a generated orthophoto, an admin
processes it, an officer opens a case from the map, confirms it with a note and sees it in
the history. Screenshots go to tests/artifacts/service_*.png.

Processing uses the shipped detector when models/lianwei-yolo11n.onnx exists; otherwise the
`patrol serve --truth-layer` (test/demo only) makes the server take the district's truth
layer as detections, so the case-review path is always exercised."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, launch_chromium

from pipeline.core import accounts
from pipeline.core.config import DEFAULT_CONFIG, load_settings
from pipeline.store import open_store

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
MODEL = DEFAULT_CONFIG.parent.parent / "models" / "lianwei-yolo11n.onnx"
XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"
USERS = {"pat": ("patrol-pass-1", "patrol"), "adm": ("admin-pass-1", "admin"), "off": ("officer-pass-1", "officer")}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (make system-deps)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(small_district_store, tmp_path_factory):
    """`patrol serve` over a fresh store holding the district's parcels and zones and three accounts."""
    from pipeline.ingest.parcels import read_parcels, read_zones

    _, _, district = small_district_store
    root = tmp_path_factory.mktemp("serve")
    store_path = root / "patrol.gpkg"
    sets = {"service.upload_dir": root / "uploads", "service.work_dir": root / "work",
            "service.secret_file": root / "secret", "media.dir": root / "media", "models.dir": root / "models",
            "models.eval_generated_size_m": 60}
    use_model = MODEL.is_file()
    settings = load_settings(overrides={"store.url": str(store_path), **{k: str(v) for k, v in sets.items()}})
    store = open_store(store_path, settings.store.crs)
    parcels = read_parcels(district / "district.gpkg", store_crs=settings.store.crs)
    store.import_parcels(parcels)
    store.import_zones(read_zones(district / "district.gpkg", store_crs=settings.store.crs))
    town = parcels["town"].dropna().iloc[0]
    for u, (pw, role) in USERS.items():
        accounts.add_user(store, u, pw, role, [town] if role == "officer" else [])
    store.close()

    port = _free_port()
    exe = Path(sys.executable).parent / "patrol"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pipeline.cli"]
    cmd += ["--store", str(store_path)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    cmd += ["serve", "--host", "127.0.0.1", "--port", str(port)]
    if not use_model:
        cmd += ["--truth-layer", str(district / "district.gpkg")]
    log = open(root / "server.log", "w")
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"patrol serve exited: {(root / 'server.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("patrol serve did not listen within 60 s")
    yield {"base": base, "store": store_path, "settings": settings, "district": district, "town": town,
           "log": root / "server.log", "model": use_model}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _login(browser, base, user, problems, **context):
    ctx = browser.new_context(**{"viewport": {"width": 1400, "height": 900}, "base_url": base, **context})
    page = ctx.new_page()
    page.on("pageerror", lambda e: problems.append(f"{user}: {e}"))
    page.on("console", lambda m: problems.append(f"{user}: {m.text}") if m.type == "error" else None)
    page.on("dialog", lambda d: (problems.append(f"{user}: dialog {d.message}"), d.dismiss()))
    page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:", "about:"))
            else problems.append(f"{user}: left the intranet {r.url}"))
    page.goto("/login")
    page.fill("#username", user)
    page.fill("#password", USERS[user][0])
    page.click("button[type=submit]")
    page.wait_for_selector("#who")
    return ctx, page


def test_upload_process_review_confirm_in_chromium(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    base, problems = server["base"], []
    ortho = server["district"] / "epoch_1.tif"
    try:
        _run(sync_api, server, base, ortho, problems)
    except Exception:
        print(server["log"].read_text()[-3000:])
        print("browser problems:", problems)
        raise


def _run(sync_api, server, base, ortho, problems):
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            # -------- patrol: upload the orthophoto (chunked, through the page)
            ctx, page = _login(browser, base, "pat", problems)
            assert page.url.endswith("/flights")
            page.goto("/upload")
            page.set_input_files("#file", str(ortho))
            page.click("#upload-form button[type=submit]")
            page.wait_for_selector("#upload-msg.ok", timeout=60000)
            fid = page.get_attribute("#flight-link", "data-flight")
            assert fid and "待夜间处理" in page.inner_text("#upload-msg")
            page.screenshot(path=str(ARTIFACTS / "service_upload.png"))
            page.goto("/flights")
            assert page.get_attribute(f"tr[data-flight='{fid}'] .badge", "data-status") == "uploaded"
            assert page.locator("button.process").count() == 0          # patrol cannot process
            ctx.close()

            # -------- admin: process it now
            ctx, page = _login(browser, base, "adm", problems)
            page.goto("/flights")
            page.click(f"tr[data-flight='{fid}'] button.process")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                page.goto("/flights")
                status = page.get_attribute(f"tr[data-flight='{fid}'] .badge", "data-status")
                if status in ("done", "failed"):
                    break
                time.sleep(0.5)
            row = page.inner_text(f"tr[data-flight='{fid}']")
            assert status == "done", row
            assert ("truth" in row) != server["model"]
            page.screenshot(path=str(ARTIFACTS / "service_flights.png"))
            ctx.close()

            # a hostile owner name on one case (written by another process, as a registry import would)
            with open_store(server["store"], server["settings"].store.crs) as store:
                cases = store.cases()
                cases = cases[cases["town"] == server["town"]]       # the officer's town
                assert len(cases), "processing made no case in the officer's town"
                xss_case = cases["case_no"].iloc[-1]
                store.save_cases(cases.loc[cases["case_no"] == xss_case, ["case_no"]].assign(owner=XSS))

            # -------- officer: review on the map, open a case from it, confirm with a note
            ctx, page = _login(browser, base, "off", problems)
            assert page.url.endswith("/review")
            frame = page.frame_locator("#map")
            page.wait_for_function("document.getElementById('map').contentWindow.patrolReport"
                                   " && document.getElementById('map').contentWindow.patrolReport.ready",
                                   timeout=30000)
            page.wait_for_function("document.getElementById('map').contentDocument.documentElement"
                                   ".getAttribute('data-patrol-hook') === 'ready'", timeout=10000)
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / "service_review.png"))
            n_rows = page.locator("#cases tbody tr").count()
            assert n_rows == len(cases)
            # table tools: search narrows, sort reorders
            page.fill("#search", xss_case)
            assert page.locator("#cases tbody tr:not([hidden])").count() == 1
            page.fill("#search", "")
            case_no = next((c for c in cases["case_no"] if c != xss_case), xss_case)
            page.click(f"#cases tr[data-case='{case_no}'] button.show")
            link = frame.locator("a.open-case")
            link.wait_for(state="visible", timeout=10000)
            assert case_no in frame.locator(".leaflet-popup-content").inner_text()
            page.screenshot(path=str(ARTIFACTS / "service_review_popup.png"))
            link.click()
            page.wait_for_url(f"**/cases/{case_no}", timeout=10000)
            assert page.get_attribute("#case-status", "data-status") == "suspected"
            page.wait_for_function("Array.from(document.querySelectorAll('#chips img'))"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=10000)
            assert page.locator("#chips img").count() >= 1
            assert page.locator("#reasons li").count() >= 1
            note = "现场核实：未批先建 confirmed on site"
            page.fill("#note", note)
            page.click("button[data-to='verified']")
            page.wait_for_selector("#case-status[data-status='verified']", timeout=10000)
            page.wait_for_function("Array.from(document.querySelectorAll('#chips img'))"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=10000)
            history = page.inner_text("#history-table")
            assert note in history and "已核查确认" in history and "off" in history
            page.screenshot(path=str(ARTIFACTS / "service_case.png"), full_page=True)

            # the hostile owner shows as text and runs nothing
            page.goto(f"/cases/{xss_case}")
            assert XSS in page.inner_text("#facts")
            assert page.locator("#facts img, #facts script").count() == 0
            page.goto("/review")
            page.wait_for_timeout(300)
            assert XSS in page.inner_text("#cases")
            ctx.close()
        finally:
            browser.close()
    with open_store(server["store"], server["settings"].store.crs) as store:
        ev = store.events(case_no)
        assert ev["to_status"].iloc[-1] == "verified" and ev["note"].iloc[-1] == note and ev["actor"].iloc[-1] == "off"
    assert problems == [], problems


def _seed_work(server) -> list[str]:
    """Two cases of the officer's town written as another process would: one ordered and
    overdue, assigned to the officer; one suspected and unassigned."""
    import geopandas as gpd
    import shapely
    with open_store(server["store"], server["settings"].store.crs) as store:
        parcels = store.parcels()
        p = parcels[parcels["town"] == server["town"]].geometry.iloc[0]
        c = p.centroid
        rows = [{"case_no": "LW2026-900001", "status": "ordered", "deadline": "2026-01-10", "assignee": "off",
                 "town": server["town"], "village": parcels["village"].iloc[0], "category": "illegal_construction",
                 "area_m2": 64.0, "first_seen_at": "2025-12-01", "geometry": shapely.box(c.x, c.y, c.x + 8, c.y + 8)},
                {"case_no": "LW2026-900002", "status": "suspected", "town": server["town"],
                 "village": parcels["village"].iloc[0], "category": "illegal_land_use", "area_m2": 30.0,
                 "first_seen_at": "2026-11-30", "geometry": shapely.box(c.x + 20, c.y, c.x + 26, c.y + 6)}]
        store.save_cases(gpd.GeoDataFrame(rows, geometry="geometry", crs=store.crs))
    return [r["case_no"] for r in rows]


def _uncovered(page) -> list[str]:
    """Visible buttons and links that another element covers at their centre (each scrolled into view)."""
    return page.evaluate("""() => {
      const bad = [];
      for (const el of document.querySelectorAll('main button, main a[href], header a, header button')) {
        const r0 = el.getBoundingClientRect();
        if (!r0.width || !r0.height || getComputedStyle(el).visibility === 'hidden') continue;
        el.scrollIntoView({block: 'center', inline: 'center'});
        const r = el.getBoundingClientRect();
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        if (!(hit && (hit === el || el.contains(hit) || hit.contains(el)))) {
          bad.push((el.id || el.textContent.trim()).slice(0, 40) + ' under ' + (hit ? hit.tagName + '.' + hit.className : 'nothing'));
        }
      }
      window.scrollTo(0, 0);
      return bad;
    }""")


def _fits(page) -> bool:
    wide = page.evaluate("""() => Array.from(document.querySelectorAll('body *')).filter(
        e => e.getBoundingClientRect().right > window.innerWidth + 1).slice(0, 5).map(
        e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
    if wide:
        print("wider than the screen:", wide)
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_tasks_documents_and_stats_in_chromium_at_desktop_and_phone_size(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    base, problems = server["base"], []
    overdue, fresh = _seed_work(server)
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            # -------- admin at a desk: dispatch the new case, print a document
            ctx, page = _login(browser, base, "adm", problems)
            page.set_viewport_size({"width": 1280, "height": 800})
            page.goto("/tasks")
            assert overdue in page.inner_text("#digest") and fresh in page.inner_text("#unassigned")
            page.check(f"#assign-form input[value='{fresh}']")
            page.select_option("#assign-form select[name=officer]", "off")
            page.click("#assign-form button[type=submit]")
            page.wait_for_url("**/tasks#unassigned")
            assert fresh not in page.inner_text("#unassigned")
            page.screenshot(path=str(ARTIFACTS / "service_tasks_admin.png"), full_page=True)
            page.goto(f"/cases/{overdue}")
            with ctx.expect_event("response", lambda r: "/documents/demolition_notice" in r.url) as info:
                page.click("button[data-kind='demolition_notice']")     # opens in a new tab
            r = info.value
            assert r.status == 200 and r.headers["content-type"] == "application/pdf"
            page.reload()
            assert "限拆〔" in page.inner_text("#documents-table")
            pdf = ctx.request.get(page.get_attribute("#documents-table a", "href"))   # the re-print link
            assert pdf.ok and pdf.body()[:5] == b"%PDF-"
            page.screenshot(path=str(ARTIFACTS / "service_case_documents.png"), full_page=True)
            ctx.close()

            # -------- officer on a phone: tasks, the case, the figures
            with open_store(server["store"], server["settings"].store.crs) as store:
                at = store.cases().set_index("case_no").loc[[fresh]].to_crs("EPSG:4326").geometry.iloc[0].centroid
            ctx, page = _login(browser, base, "off", problems, geolocation={"latitude": at.y, "longitude": at.x},
                               permissions=["geolocation"])
            page.set_viewport_size({"width": 390, "height": 844})
            # the review page on a phone: map and list take turns, no control covers the popup's link
            page.goto("/review")
            page.wait_for_function("document.getElementById('map').contentWindow.patrolReport"
                                   " && document.getElementById('map').contentWindow.patrolReport.ready",
                                   timeout=30000)
            assert _fits(page), "the review page scrolls sideways on a phone"
            assert _uncovered(page) == []
            assert not page.locator("#cases").is_visible()
            frame = page.frame_locator("#map")
            assert not frame.locator(".leaflet-control-layers-list").is_visible()     # folded
            page.click(".view-switch button[data-view='list']")
            assert page.locator("#cases").is_visible() and not page.locator("#map").is_visible()
            page.click(f"#cases tr[data-case='{overdue}'] button.show")
            assert page.locator("#map").is_visible()
            link = frame.locator("a.open-case")
            link.wait_for(state="visible", timeout=10000)
            page.screenshot(path=str(ARTIFACTS / "service_review_phone.png"))
            link.click()                                  # Playwright refuses a click on a covered link
            page.wait_for_url(f"**/cases/{overdue}", timeout=10000)
            page.goto("/tasks")
            row = page.locator(f"#my-cases tr[data-state='overdue']:has(a:text('{overdue}'))")
            assert row.count() == 1 and "逾期" in row.inner_text()
            assert page.locator(f"#my-cases a:text('{fresh}')").count() == 1
            assert page.locator("#my-cases tbody tr").first.get_attribute("data-state") == "overdue"
            # 附近优先: standing at the new case puts it first, with its distance
            page.click("#near-me")
            page.wait_for_selector("#near-msg:text('已按距离排序')", timeout=10000)
            first = page.locator("#my-cases tbody tr").first
            assert fresh in first.inner_text() and first.locator(".dist").inner_text().endswith(" m")
            nav = first.locator("td.nav a")
            assert nav.count() == 3 and all(nav.nth(k).is_visible() for k in range(3))
            assert "coordinate=gaode" in nav.nth(0).get_attribute("href")
            assert _fits(page), "the task page scrolls sideways on a phone"
            assert _uncovered(page) == []
            page.screenshot(path=str(ARTIFACTS / "service_tasks_phone.png"), full_page=True)
            page.goto(f"/cases/{overdue}")
            assert page.locator("button[data-kind='sheet']").is_visible()
            page.fill("#facts-form input[name=party]", "王建国")
            page.fill("#facts-form input[name=floors]", "2")
            page.click("#facts-form button[type=submit]")
            page.wait_for_url(f"**/cases/{overdue}#site")
            assert page.input_value("#facts-form input[name=party]") == "王建国"
            assert _fits(page), "the case page scrolls sideways on a phone"
            assert _uncovered(page) == []
            page.screenshot(path=str(ARTIFACTS / "service_case_phone.png"), full_page=True)
            # the new case from 疑似 to 已拆除 on the phone: photo, party, measured area
            from makers import jpeg
            photo = ARTIFACTS / "site_photo.jpg"
            photo.write_bytes(jpeg(at.x, at.y))
            page.goto(f"/cases/{fresh}")
            page.set_input_files("#media-form input[type=file]", str(photo))
            page.fill("#media-form input[name=note]", "现场在建")
            page.click("#media-form button[type=submit]")
            page.wait_for_url(f"**/cases/{fresh}#media")
            page.wait_for_function("Array.from(document.querySelectorAll('#media-list img'))"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=10000)
            assert page.locator("#media-list img").count() == 1 and "距案件" in page.inner_text("#media-list")
            page.fill("#facts-form input[name=party]", "李四")
            page.click("#facts-form button[type=submit]")
            page.wait_for_url(f"**/cases/{fresh}#site")
            for to, note in (("verified", "现场核查确认"), ("ordered", "下达限期拆除通知书"), ("demolished", "当事人自拆")):
                page.fill("#note", note)
                if to == "demolished":
                    page.fill("input[name=demolished_area_m2]", "28.5")
                page.click(f"button[data-to='{to}']")
                page.wait_for_selector(f"#case-status[data-status='{to}']", timeout=10000)
                assert _fits(page), f"the case page scrolls sideways on a phone ({to})"
            page.screenshot(path=str(ARTIFACTS / "service_case_demolished_phone.png"), full_page=True)
            page.goto("/stats")
            assert page.locator("#figures").is_visible() and page.locator("#funnel .bar").count() == 9
            assert "统计期" in page.inner_text("#period")
            assert _fits(page), "the statistics page scrolls sideways on a phone"
            assert _uncovered(page) == []
            page.screenshot(path=str(ARTIFACTS / "service_stats_phone.png"), full_page=True)
            page.goto("/report")
            page.wait_for_selector("#locate-msg:text('已定位')", timeout=10000)     # the phone's position
            assert page.input_value("#report-lat") and _fits(page) and _uncovered(page) == []
            page.set_viewport_size({"width": 1280, "height": 800})
            page.goto("/stats")
            page.screenshot(path=str(ARTIFACTS / "service_stats.png"), full_page=True)
            ctx.close()
        finally:
            browser.close()
    with open_store(server["store"], server["settings"].store.crs) as store:
        c = store.cases().set_index("case_no").loc[fresh]
        assert c["status"] == "demolished" and c["demolished_area_m2"] == 28.5 and c["party"] == "李四"
        assert len(store.media(fresh)) == 1
    assert problems == [], problems


def test_offline_on_a_phone_queues_photo_and_status_and_shows_a_conflict(server):
    """The network cut (Playwright's offline emulation): the case page comes from the phone,
    a photo and a status change wait in the outbox and arrive when the connection returns; a
    change the server refuses because the case moved on meanwhile is shown, not lost."""
    import geopandas as gpd
    import shapely
    sync_api = pytest.importorskip("playwright.sync_api")
    from makers import jpeg
    no = "LW2026-900003"
    with open_store(server["store"], server["settings"].store.crs) as store:
        parcels = store.parcels()
        c = parcels[parcels["town"] == server["town"]].geometry.iloc[-1].centroid
        store.save_cases(gpd.GeoDataFrame([{
            "case_no": no, "status": "ordered", "deadline": "2026-12-20", "assignee": "off", "town": server["town"],
            "village": parcels["village"].iloc[-1], "category": "illegal_construction", "area_m2": 40.0,
            "first_seen_at": "2026-10-01", "geometry": shapely.box(c.x, c.y, c.x + 6, c.y + 6)}],
            geometry="geometry", crs=store.crs))
        at = store.cases().set_index("case_no").loc[[no]].to_crs("EPSG:4326").geometry.iloc[0].centroid
    photo = ARTIFACTS / "site_photo_offline.jpg"
    ARTIFACTS.mkdir(exist_ok=True)
    photo.write_bytes(jpeg(at.x, at.y, when="2026:12:01 09:00:00"))
    base, problems = server["base"], []
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            ctx, page = _login(browser, base, "off", problems)
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto("/tasks")
            page.wait_for_function("navigator.serviceWorker.controller !== null || "
                                   "(location.reload(), false)", timeout=15000, polling=1000)
            page.wait_for_function("async () => !!(await (await caches.open('patrol-pages-v1')).match('/review/map'))",
                                   timeout=30000, polling=500)                        # kept ahead by the queue
            page.goto(f"/cases/{no}")
            assert page.get_attribute("#case-status", "data-status") == "ordered"
            ctx.set_offline(True)
            page.goto("/review")                                # the map of their cases, without a signal
            page.wait_for_function("document.getElementById('map').contentWindow.patrolReport"
                                   " && document.getElementById('map').contentWindow.patrolReport.ready",
                                   timeout=20000)
            page.goto(f"/cases/{no}")                           # from the phone, not the server
            assert page.get_attribute("#case-status", "data-status") == "ordered"
            page.set_input_files("#media-form input[type=file]", str(photo))
            page.click("#media-form button[type=submit]")
            page.wait_for_selector("#outbox .waiting:text('离线待发送 1 项')", timeout=5000)
            page.fill("#facts-form input[name=party]", "王五")
            page.fill("#facts-form input[name=phone]", "13800000000")
            page.click("#facts-form button[type=submit]")
            page.wait_for_selector("#outbox .waiting:text('离线待发送 2 项')", timeout=5000)
            page.fill("#note", "离线：当事人已自拆")
            page.click("button[data-to='demolished']")
            page.wait_for_selector("#outbox .waiting:text('离线待发送 3 项')", timeout=5000)
            page.screenshot(path=str(ARTIFACTS / "service_offline_phone.png"))
            ctx.set_offline(False)                               # the signal is back
            page.wait_for_selector("#outbox", state="hidden", timeout=20000)
            with open_store(server["store"], server["settings"].store.crs) as store:
                case = store.cases().set_index("case_no").loc[no]
                assert case["status"] == "demolished" and len(store.media(no)) == 1
                assert case["party"] == "王五" and case["phone"] == "13800000000"
                assert store.events(no)["note"].iloc[-1] == "离线：当事人已自拆"
            # offline again: a step the case has passed meanwhile is refused and shown
            page.goto(f"/cases/{no}")
            page.reload()
            ctx.set_offline(True)
            page.fill("#note", "复查")
            page.click("button[data-to='rechecked']")
            page.wait_for_selector("#outbox .waiting:text('离线待发送 1 项')", timeout=5000)
            from pipeline.cases.casework import change_status
            from pipeline.core.rules import load_rules
            with open_store(server["store"], server["settings"].store.crs) as store:   # meanwhile, at the office
                change_status(store, no, "rechecked", "adm", "办公室复查", load_rules(server["settings"].rules_path).lifecycle)
            ctx.set_offline(False)
            page.wait_for_selector("#outbox .failed li", timeout=20000)
            assert "未能提交" in page.inner_text("#outbox") and "不能转为「已复查」" in page.inner_text("#outbox")
            page.click("#outbox .failed button")
            page.wait_for_selector("#outbox", state="hidden", timeout=5000)
            ctx.close()
        finally:
            browser.close()
    assert not [x for x in problems if "Failed to load resource" not in x], problems


#: an attribute of the review map's document (None while the iframe loads)
MAP_ATTR = "document.getElementById('map').contentDocument?.documentElement?.getAttribute"


def _wait_drawn(page, frame, test: str) -> None:
    """Wait for the map's draw tool to report a saved drawing; its message when it does not."""
    try:
        page.wait_for_function(f"{MAP_ATTR}('data-patrol-drawn'){test}", timeout=15000)
    except Exception:
        raise AssertionError(f"not saved: {frame.locator('.draw-msg').inner_text()}") from None


def _done_flight(server) -> dict:
    """A processed flight in the server's store (the district's first epoch, truth as detections
    when no earlier test processed one)."""
    from pipeline.detection.detectors import TruthTileDetector
    from pipeline.process.run import process_flight, register_flight
    s = server["settings"]
    with open_store(server["store"], s.store.crs) as store:
        done = store.list_flights(status="done")
        if not len(done):
            flight = register_flight(store, server["district"] / "epoch_1.tif", s, team="test")
            truth = TruthTileDetector(server["district"] / "district.gpkg", s.detector.classes, confidence=0.9)
            process_flight(store, flight["flight_id"], s, progress=False, detector=truth)
            done = store.list_flights(status="done")
        return store.get_flight(done["flight_id"].iloc[-1])


def _click_corners(page, frame, corners):
    """Click WGS84 corners (lon, lat) on the review map inside the iframe."""
    box = page.locator("#map").bounding_box()
    lons, lats = [c[0] for c in corners], [c[1] for c in corners]
    page.evaluate("([s, w, n, e]) => { const m = document.getElementById('map').contentWindow.patrolReport.map;"
                  " const z = m.getSize();"      # the drawing in the middle, clear of every map control
                  " m.fitBounds([[s, w], [n, e]], {paddingTopLeft: [z.x * 0.45, z.y * 0.4],"
                  " paddingBottomRight: [z.x * 0.25, z.y * 0.3], animate: false}); }",
                  [min(lats), min(lons), max(lats), max(lons)])
    page.wait_for_timeout(300)
    for lon, lat in corners:
        pt = page.evaluate("([lat, lon]) => { const P = document.getElementById('map').contentWindow.patrolReport;"
                           " const p = P.map.latLngToContainerPoint([lat, lon]); return [p.x, p.y]; }", [lat, lon])
        page.mouse.click(box["x"] + pt[0], box["y"] + pt[1])
        page.wait_for_timeout(100)


#: buttons and links of the map's controls that another element covers at their centre
_COVERED_CONTROLS = """() => Array.from(document.querySelectorAll('.leaflet-control a, .leaflet-control button'))
  .filter(el => { const r = el.getBoundingClientRect(); if (!r.width || !r.height || el.offsetParent === null) return false;
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    return !(hit && (hit === el || el.contains(hit) || hit.contains(el))); })
  .map(el => (el.className || el.textContent).toString().slice(0, 40))"""


def test_officer_redraws_an_outline_and_draws_a_missed_structure_admin_promotes_and_rolls_back(server, tmp_path,
                                                                                                make_raster):
    """Corrections in the desktop review (issue 20): 修正轮廓 on a case's popup replaces its outline,
    勾绘漏检建筑 on the ortho makes a manual case; fewer than three corners is one Chinese line. The
    admin's 模型 page compares a candidate, promotes it and rolls back."""
    import geopandas as gpd
    import shapely

    from pipeline.model.registry import register
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    base, problems, s = server["base"], [], server["settings"]
    flight = _done_flight(server)
    from pipeline.process.run import register_flight
    with open_store(server["store"], s.store.crs) as store:       # a 0.5 m ortho registered with --force
        minx, _, _, maxy = store.parcels().total_bounds
        coarse = make_raster("卫片.tif", 64, 64, res=0.5, crs=s.store.crs, origin=(minx, maxy))
        coarse_id = register_flight(store, coarse, s, team="pat", force=True)["flight_id"]
    with open_store(server["store"], s.store.crs) as store:
        cases = store.cases()
        mine = cases[(cases["town"] == server["town"]) & (cases["status"] == "suspected")]
        assert len(mine), "no suspected case in the officer's town"
        target = mine.iloc[0]
        # an empty 8 m square inside the flight, 15 m from every case
        fp = flight["footprint"].buffer(-10)
        taken = shapely.union_all(cases.geometry.buffer(15).to_numpy())
        free = fp.difference(taken)
        assert not free.is_empty
        c = free.representative_point()
        missed = shapely.box(c.x - 4, c.y - 4, c.x + 4, c.y + 4)
    to_wgs = lambda g: gpd.GeoSeries([g], crs=s.store.crs).to_crs("EPSG:4326").iloc[0]   # noqa: E731
    redrawn = to_wgs(target.geometry.minimum_rotated_rectangle.buffer(1.5, join_style="mitre"))
    drawn = to_wgs(missed)
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            ctx, page = _login(browser, base, "off", problems)
            frame = page.frame_locator("#map")
            page.wait_for_function(f"{MAP_ATTR}('data-patrol-hook') === 'ready'", timeout=30000)
            # 修正轮廓 from the case's popup
            page.click(f"#cases tr[data-case='{target['case_no']}'] button.show")
            frame.locator("button.redraw-outline").click(timeout=10000)
            frame.locator(".draw-tools").wait_for(state="visible", timeout=5000)
            _click_corners(page, frame, list(redrawn.exterior.coords)[:-1])
            with page.expect_navigation(timeout=30000):       # the review page lists the change
                frame.locator(".draw-done").click()
                _wait_drawn(page, frame, "?.startsWith('outline:')")
                assert "已修正" in frame.locator(".draw-msg").inner_text()
            page.wait_for_function(f"{MAP_ATTR}('data-patrol-hook') === 'ready'", timeout=30000)
            # two corners are refused in Chinese, nothing stored
            frame.locator(".draw-start").click()
            frame.locator(".draw-tools").wait_for(state="visible", timeout=5000)
            _click_corners(page, frame, list(drawn.exterior.coords)[:2])
            frame.locator(".draw-done").click()
            assert "至少点击三个角点" in frame.locator(".draw-msg").inner_text()
            frame.locator(".draw-cancel").click()
            # 勾绘漏检建筑 on an empty place of the ortho
            frame.locator(".draw-start").click()
            _click_corners(page, frame, list(drawn.exterior.coords)[:-1])
            page.screenshot(path=str(ARTIFACTS / "service_review_draw.png"))
            frame.locator(".draw-done").click()
            _wait_drawn(page, frame, "?.startsWith('LW')")
            manual_no = page.evaluate(f"{MAP_ATTR}('data-patrol-drawn')")
            ctx.close()

            # admin: a candidate (the shipped weights under another name) compared, promoted, rolled back
            with open_store(server["store"], s.store.crs) as store:
                pt, onnx = tmp_path / "cand.pt", tmp_path / "cand.onnx"
                model = Path(s.model_path)
                pt.write_bytes(model.with_suffix(".pt").read_bytes())
                onnx.write_bytes(model.read_bytes())
                settings = load_settings(overrides={"store.url": str(server["store"]),
                                                    "models.dir": str(server["log"].parent / "models")})
                cand = register(store, settings, pt, onnx, parent=model.stem, data={}, actor="adm")["version"]
            ctx, page = _login(browser, base, "adm", problems)
            page.goto("/admin/models")
            assert model.stem in page.inner_text("#active-model")
            page.click(f"#models tr[data-version='{cand}'] form[action$='/compare'] button")
            page.wait_for_url("**/admin/models", timeout=120000)
            assert "通过" in page.inner_text(f"#models tr[data-version='{cand}']")
            page.click(f"#models tr[data-version='{cand}'] form[action$='/promote'] button")
            page.wait_for_url("**/admin/models", timeout=60000)
            assert cand in page.inner_text("#active-model")
            page.screenshot(path=str(ARTIFACTS / "service_models.png"), full_page=True)
            page.click("#active-model button")
            page.wait_for_url("**/admin/models", timeout=60000)
            assert model.stem in page.inner_text("#active-model")
            assert "回退" in page.inner_text("#model-events")
            # the same pages on a phone: nothing wider than the screen, no button under another
            page.set_viewport_size({"width": 390, "height": 844})
            for url, shot in (("/admin/models", "service_models_phone.png"), ("/flights", "service_flights_phone.png")):
                page.goto(url)
                assert _fits(page), f"{url} scrolls sideways on a phone"
                assert _uncovered(page) == [], url
                page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
            forced = page.locator(f"tr[data-flight='{coarse_id}'] [data-forced]")
            assert forced.is_visible() and "超出模型适用分辨率，强制处理" in forced.inner_text()
            ctx.close()

            # the officer's review map on a phone: the draw tool covers none of the map's controls
            ctx, page = _login(browser, base, "off", problems)
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto("/review")
            page.wait_for_function(f"{MAP_ATTR}('data-patrol-hook') === 'ready'", timeout=30000)
            frame = page.frame_locator("#map")
            frame.locator(".draw-start").click()
            frame.locator(".draw-tools").wait_for(state="visible", timeout=5000)
            assert _fits(page) and _uncovered(page) == []
            covered = page.frames[1].evaluate(_COVERED_CONTROLS)
            assert covered == [], covered
            page.screenshot(path=str(ARTIFACTS / "service_review_draw_phone.png"))
            ctx.close()
        finally:
            browser.close()
    with open_store(server["store"], s.store.crs) as store:
        after = store.cases().set_index("case_no")
        got = gpd.GeoSeries([after.loc[target["case_no"], "geometry"]], crs=store.crs).to_crs("EPSG:4326").iloc[0]
        assert got.symmetric_difference(redrawn).area < 0.1 * redrawn.area      # clicked to the pixel
        assert "轮廓修正（off）" in store.events(target["case_no"])["note"].iloc[-1]
        new = after.loc[manual_no]
        assert new["source"] == "manual" and new["first_seen_flight"] == flight["flight_id"]
        assert abs(float(new["area_m2"]) - 64) < 8
        assert list(store.model_events()["action"])[-3:] == ["registered", "promoted", "rolled_back"]
    assert problems == [], problems


def _english(page) -> list[str]:
    """Latin words on the page's main part, leaving out numbers like ZJ2026-000001, WGS84 and the
    accounts' names (who did what)."""
    import re
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"ZJ\d{4}-\d{6}|WGS84", "", page.inner_text("main")))
    return [w for w in words if w not in USERS]


def test_the_census_on_a_phone_tab_form_offline_and_house_page(server):
    """自建房排查 at 390 × 844: the census tab and a house's page fit the screen in Chinese; the
    排查 form filled without a signal waits on the phone and is stored when the signal returns."""
    import geopandas as gpd
    import shapely
    sync_api = pytest.importorskip("playwright.sync_api")
    with open_store(server["store"], server["settings"].store.crs) as store:
        parcels = store.parcels()
        mine = parcels[parcels["town"] == server["town"]]
        rows = []
        for k in range(2):
            c = mine.geometry.iloc[k].centroid
            rows.append({"house_no": f"ZJ2026-90000{k + 1}", "town": server["town"], "village": mine["village"].iloc[k],
                         "owner": "刘一", "area_m2": 96.0, "floors": 2, "floors_source": "parcel", "flights": ["f1"],
                         "first_seen_flight": "f1", "first_seen_at": "2026-10-01",
                         "geometry": shapely.box(c.x - 5, c.y - 5, c.x + 5, c.y + 4.6)})
        store.save_houses(gpd.GeoDataFrame(rows, geometry="geometry", crs=store.crs))
    no = "ZJ2026-900001"
    base, problems = server["base"], []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            ctx, page = _login(browser, base, "off", problems)
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto("/tasks")
            page.click("nav.tabs >> text=自建房排查")
            page.wait_for_selector("#census")
            assert no in page.inner_text("#my-cases") and "待排查" in page.inner_text("#census-counts")
            assert _fits(page) and not _english(page), _english(page)
            page.screenshot(path=str(ARTIFACTS / "service_census_tab_phone.png"), full_page=True)
            page.wait_for_function("navigator.serviceWorker.controller !== null || "
                                   "(location.reload(), false)", timeout=15000, polling=1000)
            page.click(f"a[href='/houses/{no}']")
            page.wait_for_selector("#inspect-form")
            assert page.get_attribute("#house-status", "data-status") == "registered"
            assert _fits(page) and not _english(page), _english(page)
            assert not _uncovered(page), _uncovered(page)
            page.screenshot(path=str(ARTIFACTS / "service_house_phone.png"), full_page=True)
            ctx.set_offline(True)                              # no signal in the village
            page.goto(f"/houses/{no}")                         # from the phone
            page.select_option("#inspect-form select[name=structure]", "砖木")
            page.select_option("#inspect-form select[name=judgement]", "存在一般安全隐患")
            page.select_option("#inspect-form select[name=use]", "出租")
            page.fill("#inspect-form input[name=inspected_on]", "2026-11-20")
            page.fill("#inspect-form input[name=floors]", "3")
            page.click("#inspect-form button[type=submit]")
            page.wait_for_selector("#outbox .waiting:text('离线待发送 1 项')", timeout=5000)
            page.screenshot(path=str(ARTIFACTS / "service_census_offline_phone.png"))
            with open_store(server["store"], server["settings"].store.crs) as store:
                assert store.houses(house_no=no)["status"].iloc[0] == "registered"       # still on the phone
            ctx.set_offline(False)
            page.wait_for_selector("#outbox", state="hidden", timeout=20000)
            with open_store(server["store"], server["settings"].store.crs) as store:
                rec = store.houses(house_no=no).iloc[0]
                assert (rec["status"], rec["hazard"], rec["inspection"]["structure"], int(rec["floors"])) == \
                    ("hazard", "存在一般安全隐患", "砖木", 3)
            page.goto(f"/houses/{no}")
            assert page.get_attribute("#house-status", "data-status") == "hazard"
            assert "改为：整治中" in page.inner_text("#steps") and _fits(page) and not _english(page)
            page.set_viewport_size({"width": 1366, "height": 768})
            page.screenshot(path=str(ARTIFACTS / "service_house_desktop.png"), full_page=True)
            ctx.close()
        finally:
            browser.close()
    assert not [x for x in problems if "Failed to load resource" not in x], problems
