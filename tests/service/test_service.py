"""Web service (issue 8), in process: authentication on every route, roles and town scope,
CSRF, uploads (limits, bad files, names), HTML escaping, the OpenAPI spec under schemathesis,
and the `patrol users` commands. The browser end-to-end run is in test_service_e2e.py."""
from __future__ import annotations

import io
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.core import accounts  # noqa: E402
from pipeline.core.config import load_settings  # noqa: E402
from pipeline.service import auth as A  # noqa: E402
from pipeline.store import open_store  # noqa: E402

XSS = "<script>alert(1)</script>"
PASSWORDS = {"pat": "patrol-pass-1", "adm": "admin-pass-1", "off": "officer-pass-1", "far": "faraway-pass-1"}


def _settings(root: Path, store_path: Path, **extra):
    over = {"store.url": str(store_path), "service.upload_dir": str(root / "uploads"),
            "service.work_dir": str(root / "work"), "service.secret_file": str(root / "secret"),
            "service.max_upload_mb": "4", "service.chunk_mb": "1", "ingest.work_dir": str(root / "ingest"),
            "media.dir": str(root / "media")}
    over.update(extra)
    return load_settings(overrides=over)


@pytest.fixture(scope="module")
def svc(small_district_store, tmp_path_factory):
    """An app over a copy of the processed small district, with four accounts and one case
    owned by an HTML-named party; returns a namespace of what the tests need."""
    src, _, district = small_district_store
    root = tmp_path_factory.mktemp("service")
    shutil.copy(src, root / "patrol.gpkg")
    settings = _settings(root, root / "patrol.gpkg", **{"detector.model": str(root / "no-such-model.onnx")})
    store = open_store(settings.store.url, settings.store.crs)
    cases = store.cases()
    town = cases["town"].dropna().iloc[0]
    accounts.add_user(store, "pat", PASSWORDS["pat"], "patrol")
    accounts.add_user(store, "adm", PASSWORDS["adm"], "admin")
    accounts.add_user(store, "off", PASSWORDS["off"], "officer", [town])
    accounts.add_user(store, "far", PASSWORDS["far"], "officer", ["不存在镇"])
    in_town = cases[cases["town"] == town]["case_no"].tolist()
    xss_case = in_town[-1]
    store.save_cases(cases.loc[cases["case_no"] == xss_case, ["case_no"]].assign(owner=XSS))
    store.close()

    from pipeline.service.app import create_app
    app = create_app(settings)
    client = TestClient(app)

    class NS:
        pass
    ns = NS()
    ns.app, ns.client, ns.settings, ns.root, ns.district = app, client, settings, root, district
    ns.case, ns.xss_case, ns.town = in_town[0], xss_case, town
    ns.store = app.state.store
    ns.tokens = {u: _token(client, u) for u in PASSWORDS}
    yield ns
    client.close()


def _token(client, user):
    r = client.post("/api/token", json={"username": user, "password": PASSWORDS[user]})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _session(app, user) -> tuple[TestClient, str]:
    """A browser-like client signed in through the login form; returns it and its CSRF token."""
    c = TestClient(app, follow_redirects=False)
    page = c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = c.post("/login", data={"username": user, "password": PASSWORDS[user], "csrf_token": token, "next": "/"})
    assert r.status_code == 303 and A.SESSION_COOKIE in r.cookies, r.text
    home = c.get("/flights" if user == "pat" else "/review")
    assert home.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', home.text).group(1)
    return c, csrf


def _status(svc, case_no):
    cases = svc.store.cases()
    return cases.loc[cases["case_no"] == case_no, "status"].iloc[0]


# ---------------------------------------------------------------- authentication
def test_every_route_needs_a_session(svc):
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    public = {("GET", "/login"), ("POST", "/login"), ("POST", "/api/token")}
    c = TestClient(svc.app, follow_redirects=False)
    checked = 0
    for route in svc.app.routes:
        if not isinstance(route, (APIRoute, Route)):
            continue
        path = re.sub(r"\{fmt\}", "csv", route.path)
        path = re.sub(r"\{flight_id\}", "0123456789abcdef", path)
        path = re.sub(r"\{case_no\}", svc.case, path)
        path = re.sub(r"\{[^}]+\}", "x.png", path)
        for method in sorted(route.methods - {"HEAD"}):
            if (method, route.path) in public:
                continue
            r = c.request(method, path)
            checked += 1
            if route.path.startswith("/api/"):
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.headers.get("www-authenticate") == "Bearer"
            else:
                assert r.status_code == 303, (method, path, r.status_code)
                assert r.headers["location"].startswith("/login?next=")
    assert checked >= 25
    # a forged cookie or token is no session either
    c.cookies.set(A.SESSION_COOKIE, "eyJ1IjoiYWRtIn0.forged.sig")
    assert c.get("/review").status_code == 303
    assert c.get("/api/me", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_login_form_needs_its_csrf_token_and_the_right_password(svc):
    c = TestClient(svc.app, follow_redirects=False)
    r = c.post("/login", data={"username": "adm", "password": PASSWORDS["adm"], "next": "/"})
    assert r.status_code == 403 and A.SESSION_COOKIE not in r.cookies
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": "adm", "password": "wrong-password", "csrf_token": token})
    assert r.status_code == 303 and "error=1" in r.headers["location"] and A.SESSION_COOKIE not in r.cookies
    # no open redirect after login
    r = c.post("/login", data={"username": "adm", "password": PASSWORDS["adm"], "csrf_token": token,
                               "next": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")


def test_password_change_and_disable_end_tokens(svc):
    accounts.add_user(svc.store, "tmp", "temporary-1", "officer", [svc.town])
    c = svc.client
    h = _token_for(c, "tmp", "temporary-1")
    assert c.get("/api/me", headers=h).json()["username"] == "tmp"
    accounts.set_password(svc.store, "tmp", "temporary-2")
    assert c.get("/api/me", headers=h).status_code == 401
    h = _token_for(c, "tmp", "temporary-2")
    accounts.set_disabled(svc.store, "tmp")
    assert c.get("/api/me", headers=h).status_code == 401
    assert c.post("/api/token", json={"username": "tmp", "password": "temporary-2"}).status_code == 401


def _token_for(c, user, password):
    return {"Authorization": f"Bearer {c.post('/api/token', json={'username': user, 'password': password}).json()['access_token']}"}


# ---------------------------------------------------------------- roles and scope
def test_patrol_cannot_change_or_read_cases(svc):
    c, t = svc.client, svc.tokens["pat"]
    before = _status(svc, svc.case)
    r = c.post(f"/api/cases/{svc.case}/status", json={"to_status": "verified", "note": "x"}, headers=t)
    assert r.status_code == 403
    assert c.get("/api/cases", headers=t).status_code == 403
    s, csrf = _session(svc.app, "pat")
    r = s.post(f"/cases/{svc.case}/status", data={"to_status": "verified", "note": "x", "csrf_token": csrf})
    assert r.status_code == 403
    assert s.get(f"/cases/{svc.case}").status_code == 403
    assert _status(svc, svc.case) == before
    # and an officer cannot process flights or manage users
    assert c.post("/api/flights/0123456789abcdef/process", headers=svc.tokens["off"]).status_code == 403
    assert c.get("/admin/users", headers=svc.tokens["off"]).status_code == 403


def test_officer_sees_only_their_towns(svc):
    c = svc.client
    mine = c.get("/api/cases", headers=svc.tokens["off"]).json()
    assert mine and all(r["town"] == svc.town for r in mine)
    far = svc.tokens["far"]
    assert c.get("/api/cases", headers=far).json() == []
    assert c.get(f"/api/cases/{svc.case}", headers=far).status_code == 404
    before = _status(svc, svc.case)
    r = c.post(f"/api/cases/{svc.case}/status", json={"to_status": "verified", "note": "x"}, headers=far)
    assert r.status_code == 404 and _status(svc, svc.case) == before
    assert c.get(f"/cases/{svc.case}", headers=far).status_code == 404
    assert c.get(f"/sheets/{svc.case}", headers=far).status_code == 404
    assert c.get(f"/chips/{svc.case}_0123456789abcdef_after.png", headers=far).status_code == 404
    csv = c.get("/api/cases.csv", headers=far).text
    assert svc.case not in csv
    assert svc.case in c.get("/api/cases.csv", headers=svc.tokens["off"]).text
    assert svc.case not in c.get("/review", headers=far).text
    m = c.get("/review/map", headers=far)
    assert m.status_code == 200 and svc.case not in m.text
    mine = c.get("/review/map", headers=svc.tokens["off"]).text
    assert svc.case in mine
    parcels = svc.store.parcels()                    # parcel owners are personal data: own area only
    pid = parcels.loc[parcels["town"] == svc.town, "parcel_id"].iloc[0]
    assert pid in mine and pid not in m.text


def test_officer_moves_a_case_through_the_lifecycle(svc):
    c, t = svc.client, svc.tokens["off"]
    case = c.get("/api/cases", headers=t).json()[1]["case_no"]
    r = c.post(f"/api/cases/{case}/status", json={"to_status": "closed", "note": "skip"}, headers=t)
    assert r.status_code == 409 and "allowed next" in r.json()["detail"]
    r = c.post(f"/api/cases/{case}/status", json={"to_status": "verified", "note": "  "}, headers=t)
    assert r.status_code == 422
    for to in ("verified", "ordered", "demolished"):
        r = c.post(f"/api/cases/{case}/status", json={"to_status": to, "note": f"to {to}",
                                                      "order_no": "ZG-1" if to == "ordered" else None}, headers=t)
        assert r.status_code == 200, r.text
    d = c.get(f"/api/cases/{case}", headers=t).json()
    assert d["status"] == "demolished"
    assert [h["to_status"] for h in d["history"]][-3:] == ["verified", "ordered", "demolished"]
    assert d["history"][-1]["actor"] == "off" and d["history"][-1]["note"] == "to demolished"
    ev = svc.store.events(case)
    assert ev["to_status"].tolist()[-3:] == ["verified", "ordered", "demolished"]


def test_admin_manages_users_on_the_page(svc):
    s, csrf = _session(svc.app, "adm")
    r = s.post("/admin/users", data={"username": "zhao", "password": "zhao-pass-1", "role": "officer",
                                     "towns": f"{svc.town}, 某村", "display_name": XSS, "csrf_token": csrf})
    assert r.status_code == 303
    u = accounts.get_user(svc.store, "zhao")
    assert u.role == "officer" and u.towns == [svc.town, "某村"] and not u.disabled
    page = s.get("/admin/users").text
    assert "zhao" in page and XSS not in page
    assert s.post("/admin/users/zhao/disable", data={"disabled": "1"}).status_code == 403     # no CSRF
    assert s.post("/admin/users/zhao/disable", data={"disabled": "1", "csrf_token": csrf}).status_code == 303
    assert accounts.get_user(svc.store, "zhao").disabled
    r = s.post("/admin/users", data={"username": "zhao", "password": "zhao-pass-1", "role": "officer",
                                     "csrf_token": csrf})
    assert r.status_code == 422 and "exists already" in r.text
    r = s.post("/admin/users/adm/disable", data={"disabled": "1", "csrf_token": csrf})
    assert r.status_code == 422 and not accounts.get_user(svc.store, "adm").disabled


# ---------------------------------------------------------------- CSRF
def test_form_post_without_csrf_is_refused(svc):
    s, csrf = _session(svc.app, "off")
    case = s.get("/api/cases").json()[2]["case_no"]          # cookie auth on a GET: fine
    before = _status(svc, case)
    r = s.post(f"/cases/{case}/status", data={"to_status": "verified", "note": "no token"})
    assert r.status_code == 403 and "表单已过期" in r.text
    r = s.post(f"/cases/{case}/status", data={"to_status": "verified", "note": "bad", "csrf_token": "x" + csrf})
    assert r.status_code == 403
    r = s.post(f"/api/cases/{case}/status", json={"to_status": "verified", "note": "json, cookie, no header"})
    assert r.status_code == 403
    assert s.post("/logout").status_code == 403
    assert _status(svc, case) == before
    r = s.post(f"/cases/{case}/status", data={"to_status": "verified", "note": "with token", "csrf_token": csrf})
    assert r.status_code == 303 and _status(svc, case) == "verified"
    page = s.get(f"/cases/{case}").text
    assert "with token" in page and "已核查确认" in page


# ---------------------------------------------------------------- escaping
def test_owner_with_html_renders_as_text(svc):
    c, t = svc.client, svc.tokens["off"]
    for url in (f"/cases/{svc.xss_case}", "/review"):
        page = c.get(url, headers=t).text
        assert XSS not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert XSS not in c.get(f"/sheets/{svc.xss_case}", headers=t).text
    assert c.get(f"/api/cases/{svc.xss_case}", headers=t).json()["owner"] == XSS     # JSON keeps the data


def test_case_page_has_facts_chips_reasons_and_downloads(svc):
    c, t = svc.client, svc.tokens["off"]
    page = c.get(f"/cases/{svc.case}", headers=t).text
    chips = re.findall(r'<img src="(/chips/[^"]+)"', page)
    assert chips, "no before/after chip"
    r = c.get(chips[0], headers=t)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'id="reasons"' in page and "<li>—</li>" not in page.split('id="reasons"')[1][:200]
    r = c.get("/export/cases.xlsx", headers=t)
    assert r.status_code == 200 and r.content[:2] == b"PK"
    sheet = c.get(f"/sheets/{svc.case}", headers=t)
    assert sheet.status_code == 200 and svc.case in sheet.text
    for img in re.findall(r'<img[^>]+src="([^"]+)"', sheet.text):
        url = "/sheets/" + img if not img.startswith(("/", "..")) else img.replace("../", "/", 1)
        assert c.get(url, headers=t).status_code == 200, img
    m = c.get("/review/map", headers=t)
    assert m.status_code == 200 and "patrolReport" in m.text and "data-patrol-hook" in m.text
    for png in set(re.findall(r'"(ortho/[0-9a-f]+\.png)"', m.text)):
        assert c.get(f"/review/{png}", headers=t).status_code == 200


def test_print_button_issues_a_numbered_pdf_and_reprints_it(svc):
    from urllib.parse import unquote
    c, csrf = _session(svc.app, "off")
    page = c.get(f"/cases/{svc.case}").text
    assert 'id="print-form"' in page and "打印 责令停止违法行为通知书" in page and "尚未出具文书" in page
    r = c.post(f"/cases/{svc.case}/documents/stop_notice", data={"csrf_token": csrf})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf" and r.content[:5] == b"%PDF-"
    no = unquote(r.headers["x-document-no"])
    assert re.fullmatch(r"责停〔20\d\d〕第\d{3}号", no)
    # pressed again: the same document, not a new number; "new" numbers another
    again = c.post(f"/cases/{svc.case}/documents/stop_notice", data={"csrf_token": csrf})
    assert unquote(again.headers["x-document-no"]) == no and again.content == r.content
    other = c.post(f"/cases/{svc.case}/documents/stop_notice", data={"csrf_token": csrf, "new": "1"})
    assert unquote(other.headers["x-document-no"]) != no
    page = c.get(f"/cases/{svc.case}").text
    link = re.search(r'href="(/documents/[^"]+\.pdf)"', page).group(1)
    assert c.get(link).content == r.content
    assert "出具责令停止违法行为通知书 " + no in page                 # the case history records it
    # without the CSRF token, for another town's officer, for a patrol account: refused
    assert c.post(f"/cases/{svc.case}/documents/sheet").status_code == 403
    far, far_csrf = _session(svc.app, "far")
    assert far.post(f"/cases/{svc.case}/documents/sheet", data={"csrf_token": far_csrf}).status_code == 404
    assert far.get(link).status_code == 404
    assert c.post(f"/cases/{svc.case}/documents/memo", data={"csrf_token": csrf}).status_code == 404
    pat = svc.client.post(f"/cases/{svc.case}/documents/sheet", headers=svc.tokens["pat"])
    assert pat.status_code == 403
    # two officers press 打印 (new number) at the same moment: consecutive numbers, none twice
    from concurrent.futures import ThreadPoolExecutor
    c2, csrf2 = _session(svc.app, "off")
    before = set(svc.store.documents(kind="inspection")["seq"])
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda cc: cc[0].post(f"/cases/{svc.case}/documents/inspection",
                                                  data={"csrf_token": cc[1], "new": "1"}),
                            [(c, csrf), (c2, csrf2), (c, csrf), (c2, csrf2)]))
    assert all(g.status_code == 200 for g in got)
    seqs = sorted(set(svc.store.documents(kind="inspection")["seq"]) - before)
    assert len(seqs) == 4 and seqs == list(range(seqs[0], seqs[0] + 4))


def test_admin_dispatches_and_the_officer_sees_deadlines(svc):
    from pipeline.cases.casework import change_status
    cases = svc.store.cases()
    mine = [c for c in cases[cases["town"] == svc.town]["case_no"] if c not in (svc.case, svc.xss_case)]
    assert mine, "the district needs a third case in the officer's town"
    no = mine[0]
    adm, adm_csrf = _session(svc.app, "adm")
    page = adm.get(f"/cases/{no}").text
    assert 'id="assign-form"' in page and 'value="off"' in page and 'value="far"' not in page
    # an unassigned case's drop-down names no one (not the admin himself); sending it empty is one line
    assert re.search(r'<select name="officer"[^>]*required><option value="" selected>', page), page
    r = adm.post(f"/cases/{no}/assign", data={"officer": "", "csrf_token": adm_csrf})
    assert r.status_code == 422 and "请选择责任人" in r.text
    assert not isinstance(svc.store.cases().set_index("case_no").loc[no, "assignee"], str)   # still no one
    r = adm.post(f"/cases/{no}/assign", data={"officer": "off", "csrf_token": adm_csrf})
    assert r.status_code == 303
    assert svc.store.cases().set_index("case_no").loc[no, "assignee"] == "off"
    assert "分派给 off" in svc.store.events(no)["note"].iloc[-1]
    # an officer of another town cannot be given the case; an officer cannot dispatch
    r = adm.post(f"/cases/{no}/assign", data={"officer": "far", "csrf_token": adm_csrf})
    assert r.status_code == 422 and "不负责" in r.text
    off, off_csrf = _session(svc.app, "off")
    assert off.post(f"/cases/{no}/assign", data={"officer": "off", "csrf_token": off_csrf}).status_code == 403
    # ordered with a past deadline: on the officer's task list as overdue, and in the digest
    svc.store.save_cases(svc.store.cases().query("case_no == @no")[["case_no"]].assign(status="verified"))
    change_status(svc.store, no, "ordered", "adm", "限期拆除", svc.app.state.svc.lifecycle, deadline="2020-01-01")
    tasks = off.get("/tasks").text
    row = re.search(rf'<tr class="overdue" data-state="overdue"[^>]*>\s*<td><a href="/cases/{no}"', tasks)
    assert row and "逾期" in tasks and 'id="assign-form"' not in tasks
    assert no in tasks.split('id="digest"')[1].split('id="mine"')[0]
    far, _ = _session(svc.app, "far")
    assert no not in far.get("/tasks").text                      # another town's digest stays hidden
    # the admin's page lists officers and the open cases nobody has yet; bulk dispatch
    page = adm.get("/tasks").text
    assert 'id="officers"' in page and 'id="unassigned"' in page
    left = re.findall(r'name="case_no" value="([^"]+)"', page)
    if left:
        r = adm.post("/admin/assign", data={"officer": "adm", "case_no": left[:2], "csrf_token": adm_csrf})
        assert r.status_code == 303
        got = svc.store.cases().set_index("case_no")["assignee"]
        assert all(got[c] == "adm" for c in left[:2])
    assert adm.post("/admin/assign", data={"officer": "adm", "csrf_token": adm_csrf}).status_code == 422


def test_officer_records_party_and_building_on_the_case(svc):
    off, csrf = _session(svc.app, "off")
    no = svc.case
    r = off.post(f"/cases/{no}/facts", data={"party": "赵六", "phone": "139 0000 1111", "floors": "3",
                                           "floor_area_m2": "210.5", "unit": "第二执法中队", "csrf_token": csrf})
    assert r.status_code == 303
    c = svc.store.cases().set_index("case_no").loc[no]
    assert (c["party"], c["phone"], int(c["floors"]), c["floor_area_m2"], c["unit"]) == \
        ("赵六", "139 0000 1111", 3, 210.5, "第二执法中队")
    assert "当事人: 赵六" in svc.store.events(no)["note"].iloc[-1]
    page = off.get(f"/cases/{no}").text
    assert 'value="赵六"' in page and 'value="3"' in page
    # the ID number: whole on the case page, masked in the history and the 台账
    r = off.post(f"/cases/{no}/facts", data={"party": "赵六", "phone": "139 0000 1111", "floors": "3",
                                           "floor_area_m2": "210.5", "unit": "第二执法中队", "csrf_token": csrf,
                                           "id_number": "11010519491231002X", "address": "马湖村3组"})
    assert r.status_code == 303
    assert 'value="11010519491231002X"' in off.get(f"/cases/{no}").text
    assert "1101**********002X" in svc.store.events(no)["note"].iloc[-1]
    assert "11010519491231002X" not in " ".join(svc.store.events(no)["note"])
    xl = off.get("/export/cases.csv").content.decode("utf-8-sig")
    assert "11010519491231002X" not in xl
    wrong = off.post(f"/cases/{no}/facts", data={"party": "赵六", "id_number": "110105194912310021",
                                               "csrf_token": csrf})
    assert wrong.status_code == 422 and "校验位不符" in wrong.text and "110105194912310021" not in wrong.text
    bad = off.post(f"/cases/{no}/facts", data={"floors": "abc", "party": "赵六", "csrf_token": csrf})
    assert bad.status_code == 422 and "1–200 的整数" in bad.text
    assert int(svc.store.cases().set_index("case_no").loc[no, "floors"]) == 3      # nothing stored was lost
    far, far_csrf = _session(svc.app, "far")
    assert far.post(f"/cases/{no}/facts", data={"party": "x", "csrf_token": far_csrf}).status_code == 404


def test_on_site_photo_from_the_page_and_the_api(svc):
    from makers import jpeg
    no = svc.case
    c = svc.store.cases().set_index("case_no").loc[[no]].to_crs("EPSG:4326").geometry.iloc[0].centroid
    off, csrf = _session(svc.app, "off")
    r = off.post(f"/cases/{no}/media", data={"csrf_token": csrf, "note": "现场", "lat": "", "lon": ""},
                 files={"file": ("IMG_1.jpg", jpeg(c.x, c.y), "image/jpeg")})
    assert r.status_code == 303
    page = off.get(f"/cases/{no}").text
    src = re.search(r'<img src="(/media/[0-9a-f]{32})"', page).group(1)
    img = off.get(src)
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg" and "距案件" in page
    assert off.get(src + "/original").content == jpeg(c.x, c.y)
    import zipfile
    kmz = zipfile.ZipFile(io.BytesIO(off.get("/export/cases.kmz").content))     # the photo goes to 奥维 too
    assert any(n.startswith("files/photo_") for n in kmz.namelist())
    assert "files/photo_" in kmz.read("doc.kml").decode("utf-8")
    # a screenshot without EXIF: one line, nothing kept
    n = len(svc.store.media())
    bad = off.post(f"/cases/{no}/media", data={"csrf_token": csrf},
                   files={"file": ("shot.jpg", jpeg(exif=False), "image/jpeg")})
    assert bad.status_code == 422 and "没有拍摄信息" in bad.text and len(svc.store.media()) == n
    # the API: multipart upload with the phone's position, listed on the case
    t = svc.tokens["off"]
    r = svc.client.post(f"/api/cases/{no}/media", headers=t, data={"lat": str(c.y), "lon": str(c.x)},
                        files={"file": ("VID.mp4", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\0" * 64,
                                        "video/mp4")})
    assert r.status_code == 201 and r.json()["kind"] == "video" and "original_path" not in r.json()
    media = svc.client.get(f"/api/cases/{no}", headers=t).json()["media"]
    assert [m["kind"] for m in media][-2:] == ["photo", "video"] and media[-1]["position_source"] == "device"
    spec = svc.client.get("/api/openapi.json", headers=t).json()
    assert "post" in spec["paths"]["/api/cases/{case_no}/media"]
    # another town's officer can neither see nor add
    far, far_csrf = _session(svc.app, "far")
    assert far.get(src).status_code == 404
    assert far.post(f"/cases/{no}/media", data={"csrf_token": far_csrf},
                    files={"file": ("x.jpg", jpeg(c.x, c.y), "image/jpeg")}).status_code == 404
    assert svc.client.post(f"/api/cases/{no}/media", headers=svc.tokens["far"],
                           files={"file": ("x.jpg", jpeg(c.x, c.y), "image/jpeg")}).status_code == 404


def test_ground_report_from_the_page_and_the_api(svc):
    from makers import jpeg
    zones = svc.store.zones().to_crs("EPSG:4326")
    p = zones.geometry.iloc[0].representative_point()
    pat, csrf = _session(svc.app, "pat")
    page = pat.get("/report").text
    assert 'id="report-form"' in page and "地面巡查上报" in page
    r = pat.post("/report", data={"csrf_token": csrf, "lat": f"{p.y:.7f}", "lon": f"{p.x:.7f}",
                                  "detector_class": "building", "area_m2": "60", "note": "耕地上建房"},
                 files={"file": ("IMG_7.jpg", jpeg(p.x, p.y), "image/jpeg")})
    assert r.status_code == 303 and "/report?done=" in r.headers["location"]
    no = re.search(r"done=([^&]+)", r.headers["location"]).group(1)
    done = pat.get(r.headers["location"]).text
    assert f"已上报：案件 {no}" in done and f'href="/cases/{no}"' not in done      # patrol cannot open cases
    c = svc.store.cases().set_index("case_no").loc[no]
    assert c["source"] == "ground_patrol" and "illegal_land_use" in c["rules"]
    assert len(svc.store.media(no)) == 1
    house = svc.store.houses().set_index("house_no").loc[c["house_no"]]     # a house found on the ground: registered
    assert house["source"] == "ground_patrol" and house["case_no"] == no and house["status"] == "registered"
    adm, _ = _session(svc.app, "adm")
    case_page = adm.get(f"/cases/{no}").text
    assert "占用受保护土地" in case_page and "地面巡查上报（pat）：耕地上建房" in case_page
    # the API: JSON body; a bad position is one line
    q = p.y + 0.002
    r = svc.client.post("/api/reports", headers=svc.tokens["pat"],
                        json={"lat": q, "lon": p.x, "detector_class": "steel_shed", "area_m2": 30, "note": "新建棚"})
    assert r.status_code == 201 and r.json()["source"] == "ground_patrol" and r.json()["new"] is True
    bad = pat.post("/report", data={"csrf_token": csrf, "lat": "abc", "lon": "1", "area_m2": "50", "note": "x"})
    assert bad.status_code == 422 and "不是数字" in bad.text


def test_stats_page_counts_by_event_date_and_downloads(svc):
    import io

    from openpyxl import load_workbook
    off, _ = _session(svc.app, "off")
    page = off.get("/stats")
    assert page.status_code == 200 and 'id="figures"' in page.text and "统计期：全部" in page.text
    assert "本期" in page.text and "累计" in page.text and 'id="funnel"' in page.text
    empty = off.get("/stats", params={"since": "2001-01-01", "until": "2001-01-31"}).text
    assert 'id="empty"' in empty and "2001-01-01 至 2001-01-31" in empty
    x = off.get("/stats.xlsx", params={"since": "2001-01-01", "until": "2001-01-31"})
    assert x.status_code == 200 and x.content[:2] == b"PK"
    ws = load_workbook(io.BytesIO(x.content)).active
    assert "2001-01-01 至 2001-01-31" in ws["A2"].value
    bad = off.get("/stats", params={"since": "2001-13-01"})
    assert bad.status_code == 422 and "不是日期" in bad.text
    # an officer's figures are their towns' only
    far, _ = _session(svc.app, "far")
    figures = far.get("/stats").text.split('id="figures"')[1]
    assert re.search(r"<th>发现疑似图斑</th><td>0</td><td>0</td>", figures)


# ---------------------------------------------------------------- uploads
def _upload(c, t, data: bytes, name: str, chunk: int = 300_000):
    r = c.post("/api/uploads", json={"filename": name, "size": len(data)}, headers=t)
    if r.status_code != 201:
        return r
    up = r.json()["upload_id"]
    off = 0
    while off < len(data):
        r = c.put(f"/api/uploads/{up}?offset={off}", content=data[off:off + chunk], headers=t)
        if r.status_code != 200:
            return r
        off = r.json()["offset"]
    return c.post(f"/api/uploads/{up}/finish", headers=t)


def _flight_files(svc):
    return sorted(p.name for p in (svc.root / "uploads" / "flights").iterdir())


def test_upload_over_limit_or_not_an_image_is_refused(svc):
    c, t = svc.client, svc.tokens["pat"]
    n_flights, files = len(svc.store.list_flights()), _flight_files(svc)
    r = c.post("/api/uploads", json={"filename": "big.tif", "size": 5 * 2**20}, headers=t)
    assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"]
    # a chunk past the declared size, and one over the chunk limit
    r = c.post("/api/uploads", json={"filename": "a.tif", "size": 10}, headers=t)
    up = r.json()["upload_id"]
    assert c.put(f"/api/uploads/{up}?offset=0", content=b"x" * 11, headers=t).status_code == 413
    assert c.get(f"/api/uploads/{up}", headers=t).json()["offset"] == 0
    r = c.post("/api/uploads", json={"filename": "b.tif", "size": 3 * 2**20}, headers=t)
    up = r.json()["upload_id"]
    assert c.put(f"/api/uploads/{up}?offset=0", content=b"x" * (2**20 + 1), headers=t).status_code == 413
    assert c.put(f"/api/uploads/{up}?offset=5", content=b"x", headers=t).status_code == 422   # gap
    # not an image / not a raster type / a zip without an ortho
    assert c.post("/api/uploads", json={"filename": "notes.txt", "size": 5}, headers=t).status_code == 422
    r = _upload(c, t, b"this is not a GeoTIFF at all" * 100, "fake.tif")
    assert r.status_code == 422 and "\n" not in r.json()["detail"]
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("DJI_0001.JPG", b"\xff\xd8\xff" + b"0" * 100)
    r = _upload(c, t, buf.getvalue(), "photos.zip")
    assert r.status_code == 422 and "DJI_0001.JPG" in r.json()["detail"] and "\n" not in r.json()["detail"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", b"no flight here")
    r = _upload(c, t, buf.getvalue(), "notes.zip")
    assert r.status_code == 422 and "no orthophoto GeoTIFF and no drone photo" in r.json()["detail"]
    # an image without georeferencing
    import numpy as np
    import rasterio
    plain = svc.root / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(np.full((3, 64, 64), 100, np.uint8))
    r = _upload(c, t, plain.read_bytes(), "plain.tif")
    assert r.status_code == 422
    assert len(svc.store.list_flights()) == n_flights
    assert _flight_files(svc) == files


def test_upload_names_cannot_escape_and_a_good_upload_resumes(svc, make_raster):
    from pipeline.service.uploads import safe_name
    for bad in ("../../evil.tif", "..\\..\\evil.tif", "/etc/cron.d/evil.tif", "....//evil.tif", ".evil.tif",
                "a/../../b.tif", "evil.tif\x00.png", "C:\\Windows\\evil.tif"):
        name = safe_name(bad)
        assert name and "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
    assert safe_name("航线 2025-03 东山镇.tif") == "航线_2025-03_东山镇.tif"
    c, t = svc.client, svc.tokens["pat"]
    assert c.get("/api/uploads/..%2F..%2Fsecret", headers=t).status_code == 404
    assert c.put("/api/uploads/../../x?offset=0", content=b"x", headers=t).status_code in (404, 405)
    minx, _, _, maxy = svc.store.parcels().total_bounds          # a new flight inside the district
    data = make_raster("new.tif", 600, 600, crs=svc.store.crs, origin=(minx, maxy),
                       data=np.random.default_rng(1).integers(0, 255, (3, 600, 600)),
                       tags={"TIFFTAG_DATETIME": "2025:07:01 10:00:00"}).read_bytes()
    r = c.post("/api/uploads", json={"filename": "../../../../tmp/evil.tif", "size": len(data)}, headers=t)
    up = r.json()["upload_id"]
    assert r.json()["filename"] == "evil.tif"
    half = len(data) // 2
    assert c.put(f"/api/uploads/{up}?offset=0", content=data[:half], headers=t).json()["offset"] == half
    # resume: resend an overlapping chunk from the offset the server reports
    assert c.get(f"/api/uploads/{up}", headers=t).json()["offset"] == half
    other = svc.tokens["adm"] | {}
    assert c.get(f"/api/uploads/{up}", headers=svc.tokens["off"]).status_code == 403   # officers don't upload
    assert other
    off = half - 1000
    while off < len(data):
        off = c.put(f"/api/uploads/{up}?offset={off}", content=data[off:off + 2**20], headers=t).json()["offset"]
    r = c.post(f"/api/uploads/{up}/finish", headers=t)
    assert r.status_code == 200, r.text
    f = svc.store.get_flight(r.json()["flight_id"])
    p = Path(f["path"]).resolve()
    assert p.is_relative_to((svc.root / "uploads" / "flights").resolve()) and p.name == f"{up}_evil.tif"
    assert not Path("/tmp/evil.tif").exists()
    assert p.read_bytes() == data
    assert f["team"] == "pat"
    # the patrol team sees its flight, queued for the nightly run
    mine = c.get("/api/flights", headers=t).json()
    assert any(x["flight_id"] == f["flight_id"] and x["queue"] in ("nightly", "") for x in mine)


def test_a_copy_of_another_teams_flight_does_not_take_it_over(svc):
    """Uploading the bytes of a flight another team registered: the flight keeps its team and its
    file, the copy is not kept, and the uploader learns only its id and status."""
    known = svc.store.list_flights()
    before = known[known["path"].str.endswith("epoch_2.tif")].iloc[0]
    r = _upload(svc.client, svc.tokens["pat"], (svc.district / "epoch_2.tif").read_bytes(), "copy.tif")
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"flight_id", "status"} and r.json()["flight_id"] == before["flight_id"]
    after = svc.store.get_flight(before["flight_id"])
    assert after["team"] == before["team"] != "pat" and after["path"] == before["path"]
    assert not any("copy.tif" in p.name for p in (svc.root / "uploads" / "flights").iterdir())


def test_admin_processes_now_and_a_failure_shows_its_reason(svc, make_raster):
    c = svc.client
    minx, _, _, maxy = svc.store.parcels().total_bounds          # the patrol team's own new flight
    data = make_raster("own.tif", 700, 700, crs=svc.store.crs, origin=(minx, maxy),
                       data=np.random.default_rng(2).integers(0, 255, (3, 700, 700)),
                       tags={"TIFFTAG_DATETIME": "2025:08:01 10:00:00"}).read_bytes()
    r = _upload(c, svc.tokens["pat"], data, "own.tif", chunk=2**20)
    fid = r.json()["flight_id"]
    assert c.post(f"/api/flights/{fid}/process", headers=svc.tokens["pat"]).status_code == 403
    r = c.post(f"/api/flights/{fid}/process", headers=svc.tokens["adm"])
    assert r.status_code == 202 and r.json()["queue"] in ("queued", "running", "")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        f = c.get(f"/api/flights/{fid}", headers=svc.tokens["pat"]).json()
        if f["status"] == "failed" and not f["queue"]:
            break
        time.sleep(0.2)
    assert f["status"] == "failed" and "no-such-model.onnx" in f["error"] and "\n" not in f["error"]
    assert f["error_zh"] == "识别模型无法使用，请管理员检查模型文件与配置"
    page = c.get("/flights", headers=svc.tokens["pat"]).text
    assert 'data-status="failed"' in page
    row = page[page.index(f'data-flight="{fid}"'):]
    row = row[:row.index("</tr>")]
    shown = re.search(r'<div class="err">([^<]*)</div>', row).group(1)        # the patrol member's line
    assert shown == f["error_zh"]
    assert re.search(r'<details class="tech"><summary>技术信息</summary><code>[^<]*no-such-model.onnx', row)
    assert svc.app.state.processor.idle()


def test_a_zip_holding_one_ortho_is_unpacked_inside_the_folder(svc, make_raster):
    import io
    import zipfile
    minx, _, _, maxy = svc.store.parcels().total_bounds          # a flight inside the district
    tif = make_raster("zipped.tif", 128, 128, crs=svc.store.crs, origin=(minx, maxy),
                      tags={"TIFFTAG_DATETIME": "2025:05:01 10:00:00"})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(tif, "../../../evil/../ortho 东山.tif")
        z.writestr("readme.txt", "flight notes")
    parts = set((svc.root / "uploads" / "parts").iterdir())
    r = _upload(svc.client, svc.tokens["pat"], buf.getvalue(), "flight.zip")
    assert r.status_code == 200, r.text
    f = svc.store.get_flight(r.json()["flight_id"])
    p = Path(f["path"]).resolve()
    assert p.parent == (svc.root / "uploads" / "flights").resolve() and p.name.endswith("_ortho_东山.tif")
    assert p.read_bytes() == tif.read_bytes() and str(f["captured_at"]).startswith("2025-05-01")
    assert set((svc.root / "uploads" / "parts").iterdir()) == parts      # nothing left behind


# ---------------------------------------------------------------- OpenAPI fuzzing
def test_openapi_spec_fuzzed_finds_no_server_error(svc):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings

    auth = svc.tokens["adm"]
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", svc.app, headers=auth)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 10
    t0 = time.monotonic()
    for op in ops:
        @settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            r = case.call(headers=auth)
            assert r.status_code < 500, f"{case.method} {case.formatted_path}: {r.status_code} {r.text[:300]}"
        run()
    assert time.monotonic() - t0 < 60


# ---------------------------------------------------------------- PostGIS
def test_the_service_runs_over_postgis(pg_url, small_district_store, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    from pipeline.service.app import create_app
    _, _, district = small_district_store
    settings = _settings(tmp_path, tmp_path / "unused.gpkg", **{"store.url": pg_url})
    store = open_store(pg_url, settings.store.crs)
    assert store.status()["version"] == store.status()["latest_version"] >= 2
    x, y = 539000.0, 3383500.0
    nos = store.allocate_case_numbers(2026, 2)
    store.save_cases(gpd.GeoDataFrame({"case_no": nos, "status": ["suspected"] * 2, "town": ["东镇", "西镇"],
                                       "owner": [XSS, "b"], "category": ["illegal_construction"] * 2},
                                      geometry=[box(x, y, x + 9, y + 9), box(x + 20, y, x + 29, y + 9)],
                                      crs=settings.store.crs))
    accounts.add_user(store, "off", PASSWORDS["off"], "officer", ["东镇"])
    accounts.add_user(store, "pat", PASSWORDS["pat"], "patrol")
    store.close()
    app = create_app(settings)
    with TestClient(app) as c:
        t = _token(c, "off")
        assert [r["case_no"] for r in c.get("/api/cases", headers=t).json()] == [nos[0]]
        assert c.get(f"/api/cases/{nos[1]}", headers=t).status_code == 404
        r = c.post(f"/api/cases/{nos[0]}/status", json={"to_status": "verified", "note": "pg"}, headers=t)
        assert r.status_code == 200, r.text
        page = c.get(f"/cases/{nos[0]}", headers=t).text
        assert "pg" in page and XSS not in page
        r = _upload(c, _token(c, "pat"), (district / "epoch_1.tif").read_bytes(), "e1.tif", chunk=2**20)
        assert r.status_code == 200 and r.json()["status"] == "uploaded"
    ev = app.state.store.events(nos[0])
    assert ev["to_status"].tolist()[-1] == "verified" and ev["actor"].tolist()[-1] == "off"
    app.state.store.close()


# ---------------------------------------------------------------- CLI
def test_users_cli(tmp_path, capsys):
    from pipeline.cli import main
    store = tmp_path / "s.gpkg"
    base = ["--store", str(store)]
    assert main(base + ["users", "add", "li", "--role", "officer", "--town", "东山镇", "--town", "马湖村",
                        "--password", "secret-pass-1"]) == 0
    assert main(base + ["users", "add", "li", "--role", "officer", "--password", "secret-pass-1"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(base + ["users", "add", "x y", "--role", "patrol", "--password", "secret-pass-1"]) == 2
    assert main(base + ["users", "add", "wang", "--role", "patrol", "--password", "short"]) == 2
    assert "too short" in capsys.readouterr().err
    assert main(base + ["users", "passwd", "li", "--password", "another-pass-2"]) == 0
    assert main(base + ["users", "disable", "li"]) == 0
    assert main(base + ["users", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^li\tofficer\t东山镇,马湖村\tdisabled", out, re.M), out
    with open_store(store, "EPSG:4547") as s:
        row = s.get_user("li")
        assert row["password_hash"].startswith("$argon2id$") and "another" not in row["password_hash"]
        assert accounts.authenticate(s, "li", "another-pass-2") is None          # disabled
        accounts.set_disabled(s, "li", False)
        assert accounts.authenticate(s, "li", "another-pass-2").towns == ["东山镇", "马湖村"]
        assert accounts.authenticate(s, "li", "secret-pass-1") is None


def test_a_zip_of_drone_photos_uploads_as_one_photo_flight(svc, tmp_path):
    import io
    import zipfile

    from makers import make_photo
    from pyproj import Transformer
    c, t = svc.client, svc.tokens["pat"]
    files = _flight_files(svc)
    x0, y0, x1, y1 = svc.store.parcels().total_bounds                 # over the district
    lon, lat = Transformer.from_crs(svc.settings.store.crs, "EPSG:4326", always_xy=True).transform(
        (x0 + x1) / 2, (y0 + y1) / 2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, dlat in (("DCIM/DJI_0001.JPG", 0.0), ("DCIM/DJI_0002.JPG", 0.0002)):
            # 400 px frames from 20 m: 7.5 cm on the ground, inside the model's GSD range
            z.write(make_photo(tmp_path / Path(name).name, lat=lat + dlat, lon=lon, rel_alt="+20.00"), name)
    r = _upload(c, t, buf.getvalue(), "flight 3 photos.zip")
    assert r.status_code == 200, r.text
    f = svc.store.get_flight(r.json()["flight_id"])
    assert f["source"] == "photos" and f["team"] == "pat"
    assert (Path(f["path"]) / "frames.json").is_file()            # frames in ingest.work_dir
    assert _flight_files(svc) == files                             # the zip itself is not kept


def test_an_export_zip_uploads_with_its_heights_and_a_wrong_dsm_is_refused(svc, small_district_store, tmp_path):
    """A zip of a photogrammetry export (ortho, DSM, DTM as ODM names them) is one flight with heights;
    the same ortho with a DSM of another place is refused in one Chinese line and stores nothing."""
    import io
    import zipfile

    import rasterio
    district = small_district_store[2]
    c, t = svc.client, svc.tokens["pat"]

    def export(dsm_path):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.write(district / "epoch_2.tif", "odm/odm_orthophoto.tif")
            z.write(dsm_path, "odm/dsm.tif")
            z.write(district / "epoch_2_dtm.tif", "odm/dtm.tif")
        return buf.getvalue()

    with rasterio.open(district / "epoch_2_dsm.tif") as src:
        prof, data = src.profile, src.read()
    prof["transform"] = rasterio.Affine(prof["transform"].a, 0, prof["transform"].c + 9000, 0,
                                        prof["transform"].e, prof["transform"].f)
    with rasterio.open(tmp_path / "elsewhere.tif", "w", **prof) as dst:
        dst.write(data)
    before = len(svc.store.list_flights())
    r = _upload(c, t, export(tmp_path / "elsewhere.tif"), "odm export.zip")
    assert r.status_code == 422 and "其他地方" in r.json()["detail_zh"], r.text
    assert len(svc.store.list_flights()) == before
    r = _upload(c, t, export(district / "epoch_2_dsm.tif"), "odm export.zip")
    assert r.status_code == 200, r.text
    f = svc.store.get_flight(r.json()["flight_id"])
    assert Path(f["dsm"]).name.endswith("dsm.tif") and Path(f["dsm"]).is_file()
    assert Path(f["dtm"]).name.endswith("dtm.tif") and Path(f["dtm"]).is_file()


# ---------------------------------------------------------------- Chinese first
LATIN = re.compile(r"(?<![A-Za-z0-9_./-])[A-Za-z]{2,}(?![A-Za-z0-9_])")
#: Latin words allowed on an officer's zh screen: formats, units, coordinate systems, file names
ALLOWED = {"xlsx", "csv", "geojson", "kml", "kmz", "gpkg", "pdf", "m", "km", "MiB", "WGS", "EPSG", "GCJ", "BD",
           "sha", "jpg", "png", "mp", "GeoTIFF", "zip", "LW", "off", "adm", "far", "pat", "IMG", "VID", "x",
           "JPEG", "PNG", "MOV", "RGB", "RGBA", "GPS", "EXIF", "XMP", "DSM", "DTM", "UTF",
           "script", "alert"}     # formats; the fixture's hostile owner name: data, shown as text


def _screen_words(html_text: str) -> set[str]:
    """Latin words a reader sees on a page: text and the visible attributes, not scripts or styles."""
    import html as H
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", html_text, flags=re.S | re.I)
    shown = " ".join(re.findall(r'(?:placeholder|title|alt|aria-label)="([^"]*)"', body))
    text = H.unescape(re.sub(r"<[^>]+>", " ", body) + " " + shown)
    return {w for w in LATIN.findall(text) if w not in ALLOWED}


def test_no_english_word_reaches_an_officer_in_chinese(svc):
    """report.language zh: the officer's pages and the refusals of case work are Chinese."""
    off, csrf = _session(svc.app, "off")
    no = svc.case
    pages = ["/review", f"/cases/{no}", "/tasks", "/stats", "/report", "/stats?since=2001-01-01&until=2001-02-01"]
    for url in pages:
        r = off.get(url)
        assert r.status_code == 200, url
        assert not _screen_words(r.text), (url, sorted(_screen_words(r.text)))
    refusals = [
        off.post(f"/cases/{no}/status", data={"to_status": "closed", "note": "x", "csrf_token": csrf}),
        off.post(f"/cases/{no}/status", data={"to_status": "verified", "note": "", "csrf_token": csrf}),
        off.post(f"/cases/{no}/facts", data={"phone": "一二三", "csrf_token": csrf}),
        off.post(f"/cases/{no}/media", data={"csrf_token": csrf}, files={"file": ("a.jpg", b"<?php", "image/jpeg")}),
        off.post("/report", data={"csrf_token": csrf, "lat": "91", "lon": "0", "area_m2": "50", "note": "x"}),
        off.post(f"/cases/{no}/status", data={"to_status": "verified", "note": "x"}),          # no CSRF token
        off.get("/cases/LW1999-000404"), off.get("/stats?since=2001-13-01"), off.get("/no/such/page"),
    ]
    for r in refusals:
        assert r.status_code in (403, 404, 409, 422), r.status_code
        msg = re.search(r'id="error-message">([^<]*)<', r.text).group(1)
        assert re.search(r"[\u4e00-\u9fff]", msg) and not _screen_words(r.text), (r.status_code, msg)


def test_the_flights_page_says_how_a_flight_was_lined_up(svc):
    """A flight's co-registration note (pipeline.cases.change) is on the 航线 page, in Chinese."""
    fid = svc.store.list_flights()["flight_id"].iloc[-1]
    note = "相对前期航次 X 位移 东 +1.64 m、北 +1.44 m（7 个区块一致），检测结果已改正"
    with svc.store.transaction():
        svc.store.upsert_flight({"flight_id": fid, "registration": {"applied": True, "dx_total": 1.64,
                                                                     "dy_total": 1.44, "note": note}})
    try:
        page = svc.client.get("/flights", headers=svc.tokens["adm"]).text
        row = page[page.index(f'data-flight="{fid}"'):]
        assert note in row[:row.index("</tr>")]
    finally:                                             # the shared district stays as it was
        with svc.store.transaction():
            svc.store.upsert_flight({"flight_id": fid, "registration": {}})


def test_upload_refusals_read_in_chinese(svc, make_raster):
    """What a patrol member sees when the upload page refuses a file: the Chinese line (detail_zh),
    one line, no English word, and nothing stored."""
    import io
    import zipfile
    c, t = svc.client, svc.tokens["pat"]
    n_flights = len(svc.store.list_flights())
    minx, _, _, maxy = svc.store.parcels().total_bounds

    def zipped(members: dict) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return buf.getvalue()

    grey = make_raster("灰度.tif", 64, 64, count=1, crs=svc.store.crs, origin=(minx, maxy)).read_bytes()
    bands = make_raster("多光谱.tif", 64, 64, count=5, crs=svc.store.crs, origin=(minx, maxy)).read_bytes()
    far = make_raster("外区.tif", 64, 64, crs=svc.store.crs, origin=(minx - 90_000, maxy)).read_bytes()
    coarse = make_raster("卫片.tif", 64, 64, res=0.5, crs=svc.store.crs, origin=(minx, maxy)).read_bytes()
    uploads = {"卫片.tif": coarse,
        "假影像.tif": b"this is not a GeoTIFF at all" * 100, "灰度.tif": grey, "多光谱.tif": bands, "外区.tif": far,
        "照片.zip": zipped({"航片1.JPG": b"\xff\xd8\xff" + b"0" * 100}), "说明.zip": zipped({"说明.txt": b"x"}),
        "两张.zip": zipped({"航片1.JPG": b"\xff\xd8\xff" + b"0" * 100, "航片2.JPG": b"\xff\xd8\xff" + b"1" * 90}),
        "说明.txt": b"x",
    }
    for name, data in uploads.items():
        r = _upload(c, t, data, name)
        assert r.status_code == 422, (name, r.text)
        zh = r.json().get("detail_zh", "")
        assert re.search(r"[\u4e00-\u9fff]", zh) and "\n" not in zh, (name, r.json())
        assert not {w for w in LATIN.findall(zh) if w not in ALLOWED}, (name, zh)
        assert re.search(r"[0-9a-f]{32}", zh + r.json()["detail"]) is None, r.json()   # no stored name
        if name == "卫片.tif":                     # outside the model's GSD range: the measured GSD and the range
            assert "0.500 m" in zh and "0.02–0.16 m" in zh, zh
    assert len(svc.store.list_flights()) == n_flights


def test_the_pages_speak_english_when_the_bureau_sets_it(small_district_store, tmp_path):
    """report.language: en — the catalogue's English on the pages, the English refusals."""
    from pipeline.service.app import create_app
    src, _, _ = small_district_store
    shutil.copy(src, tmp_path / "patrol.gpkg")
    settings = _settings(tmp_path, tmp_path / "patrol.gpkg", **{"report.language": "en"})
    store = open_store(settings.store.url, settings.store.crs)
    accounts.add_user(store, "off", PASSWORDS["off"], "officer", [store.cases()["town"].dropna().iloc[0]])
    no = store.cases()["case_no"].iloc[0]
    store.close()
    app = create_app(settings)
    c, csrf = _session(app, "off")
    page = c.get(f"/cases/{no}").text
    for word in ("Review", "Facts", "Party &amp; building", "History", "Sign out", "On-site photos"):
        assert word in page, word
    r = c.post(f"/cases/{no}/status", data={"to_status": "closed", "note": "x", "csrf_token": csrf})
    assert r.status_code == 409 and "cannot go from" in r.text


def _free_spot(store, flights, centre):
    """A 10 m square near ``centre`` that a processed flight covers and no case touches."""
    import shapely
    cases = store.cases()
    for dx in range(-80, 81, 10):
        for dy in range(-80, 81, 10):
            sq = shapely.box(centre.x + dx - 5, centre.y + dy - 5, centre.x + dx + 5, centre.y + dy + 5)
            if flights.geometry.covers(sq).any() and not cases.intersects(sq.buffer(3)).any():
                return sq
    raise AssertionError("no free ground near the case")


def test_drawing_refusals_are_one_chinese_line_and_store_nothing(svc):
    """修正轮廓 / 勾绘漏检 through the API: a line, a sliver, a place no flight covers, an outline far
    from its case, a case of another town: each refused with one line and its Chinese, nothing kept."""
    import geopandas as gpd
    import shapely
    c, off, far = svc.client, svc.tokens["off"], svc.tokens["far"]
    store = svc.store
    case = store.cases().set_index("case_no").loc[svc.case]
    to_gj = lambda g: shapely.geometry.mapping(gpd.GeoSeries([g], crs=store.crs).to_crs("EPSG:4326").iloc[0])  # noqa: E731
    centre = case.geometry.centroid
    before_cases, before_events = len(store.cases()), len(store.events())
    flights = store.list_flights(status="done")
    away = shapely.Point(flights.total_bounds[2] + 400, flights.total_bounds[3] + 400)
    cases = [
        (c.post("/api/structures", json={"geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}},
                headers=off), "请至少点击三个角点"),
        (c.post("/api/structures", json={"geometry": to_gj(shapely.box(centre.x, centre.y, centre.x + 1,
                                                                         centre.y + 1))}, headers=off), "4–100000"),
        (c.post("/api/structures", json={"geometry": to_gj(away.buffer(5, cap_style="square"))}, headers=off),
         "没有已处理的航次影像"),
        (c.post("/api/structures", json={"geometry": to_gj(case.geometry)}, headers=off), f"已有案件 {svc.case}"),
        (c.post(f"/api/cases/{svc.case}/outline", json={"geometry": to_gj(away.buffer(5, cap_style="square"))},
                headers=off), "请在该建筑上勾绘"),
        (c.post(f"/api/cases/{svc.case}/outline", json={"geometry": to_gj(case.geometry)}, headers=far),
         "不在您负责的乡镇/村"),
        (c.post("/api/structures", json={"geometry": to_gj(_free_spot(store, flights, centre))}, headers=far),
         "不在您负责的乡镇/村"),                     # free ground of a town not hers: no case made there
    ]
    for r, zh in cases:
        assert r.status_code in (404, 409, 422), (r.status_code, r.text)
        body = r.json()
        assert zh in body["detail_zh"] and "\n" not in body["detail"], body
    assert len(store.cases()) == before_cases and len(store.events()) == before_events
    assert store.cases().set_index("case_no").loc[svc.case].geometry.equals(case.geometry)
    # drawn where the officer works: a case, and a house of the 自建房台账 pointing at it
    houses = len(store.houses())
    r = c.post("/api/structures", json={"geometry": to_gj(_free_spot(store, flights, centre))}, headers=off)
    assert r.status_code == 201, r.text
    drawn = store.houses().set_index("house_no")
    assert len(drawn) == houses + 1 and (drawn["source"] == "manual").sum() == 1
    assert drawn.loc[drawn["source"] == "manual", "case_no"].iloc[0] == r.json()["case_no"]


# ---------------------------------------------------------------- the 自建房 census
def test_the_census_tab_the_inspection_form_and_the_api(svc):
    houses = svc.store.houses()
    mine = houses[houses["town"] == svc.town]
    assert len(mine) >= 2
    no, other = mine["house_no"].iloc[0], mine["house_no"].iloc[1]
    off, csrf = _session(svc.app, "off")
    linked = mine[mine["case_no"].notna()].iloc[0]               # a case and its house point at each other
    assert f'href="/houses/{linked["house_no"]}"' in off.get(f"/cases/{linked['case_no']}").text
    page = off.get("/houses").text
    assert "自建房排查" in page and no in page and "附近优先" in page and "高德" in page
    assert 'aria-current="page">两违案件' in off.get("/tasks").text.replace("\n", "")    # the tab beside the cases
    house = off.get(f"/houses/{no}").text
    assert "排查表" in house and 'name="structure"' in house and "砖混" in house and 'data-offline="排查表' in house
    form = {"structure": "框架", "judgement": "存在严重安全隐患", "use": "餐饮", "business": "是", "floors": "3",
            "inspected_on": "2026-11-20", "csrf_token": csrf}
    r = off.post(f"/houses/{no}/inspect", data=form)
    assert r.status_code == 303 and r.headers["location"] == f"/houses/{no}#inspection"
    rec = svc.store.houses(house_no=no).iloc[0]
    assert (rec["status"], rec["hazard"], rec["inspection"]["use"]) == ("hazard", "存在严重安全隐患", "餐饮")
    assert svc.store.house_events(no)["actor"].iloc[-1] == "off"
    page = off.get(f"/houses/{no}").text
    assert "改为：整治中" in page and "停用/封控" in page
    # refusals: one Chinese line, nothing stored
    events = len(svc.store.house_events(no))
    bad = off.post(f"/houses/{no}/inspect", data={**form, "structure": "纸板"})
    assert bad.status_code == 422 and "结构类型：“纸板”不在可选值内" in bad.text
    early = off.post(f"/houses/{no}/status", data={"to": "closed", "note": "x", "csrf_token": csrf})
    assert early.status_code == 409 and "不能改为“已销号”" in early.text
    future = off.post(f"/houses/{no}/inspect", data={**form, "inspected_on": "2999-01-01"})
    assert future.status_code == 422 and "晚于今天" in future.text
    assert len(svc.store.house_events(no)) == events and svc.store.houses(house_no=no)["status"].iloc[0] == "hazard"
    r = off.post(f"/houses/{no}/status", data={"to": "rectifying", "measure": ["停用/封控", "加固"],
                                               "deadline": "2027-01-31", "assignee": "王五", "csrf_token": csrf})
    assert r.status_code == 303 and svc.store.houses(house_no=no)["measures"].iloc[0] == ["停用/封控", "加固"]
    # the JSON API: the same steps, the same refusals
    t = svc.tokens["off"]
    listed = svc.client.get("/api/houses", headers=t).json()
    assert {h["house_no"] for h in listed} == set(mine["house_no"]) and listed[0]["status"] == "registered"
    r = svc.client.post(f"/api/houses/{other}/inspection", headers=t,
                        json={"facts": {"judgement": "未发现安全隐患", "inspected_on": "2026-11-21", "floors": 2}})
    assert r.status_code == 200 and r.json()["status"] == "safe" and r.json()["status_label"] == "未发现隐患"
    r = svc.client.post(f"/api/houses/{no}/status", headers=t, json={"to": "rectified", "on": "2026-12-01"})
    assert r.status_code == 200 and r.json()["rectified_on"] == "2026-12-01"
    r = svc.client.post(f"/api/houses/{no}/status", headers=t, json={"to": "closed"})
    assert r.status_code == 422 and "复核" in r.json().get("detail_zh", r.text)
    xl = svc.client.get("/api/houses.xlsx", headers=t)
    assert xl.status_code == 200 and xl.content[:2] == b"PK"
    # the 统计 page and its xlsx carry the census of the officer's towns beside the 两违 figures
    stats = off.get("/stats").text
    assert "自建房安全排查" in stats and "<th>其中严重隐患</th><td>1</td>" in stats
    import openpyxl
    wb = openpyxl.load_workbook(io.BytesIO(off.get("/stats.xlsx").content))
    census = {r[0]: r[1:] for r in wb["自建房排查"].iter_rows(values_only=True)}
    assert census["排查栋数"] == (2, 2) and census["已完成整治"] == (1, 1)
    # another town's officer neither sees nor changes them
    far = svc.tokens["far"]
    assert svc.client.get("/api/houses", headers=far).json() == []
    assert svc.client.get(f"/api/houses/{no}", headers=far).status_code == 404
    assert svc.client.post(f"/api/houses/{other}/inspection", headers=far,
                           json={"facts": {"judgement": "存在一般安全隐患", "inspected_on": "2026-11-21"}}).status_code == 404
    assert svc.store.houses(house_no=other)["status"].iloc[0] == "safe"
