"""Sign-in hardening (issue 22): backoff per account and per address, lockout with an admin
unlock, bounded password checks, logout that ends the session on the server, Secure cookies."""
from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient
from makers import GOOD, make_app, token


def form_login(client, user="adm", password=GOOD):
    page = client.get("/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": csrf, "next": "/"})


def test_failed_sign_ins_back_off_per_account_and_per_address(small_district_store, tmp_path):
    app, c = make_app(small_district_store, tmp_path)
    for _ in range(3):
        assert token(c, password="wrong-one").status_code == 401
    r = token(c)                                  # the right password, too soon: refused unchecked
    assert r.status_code == 429 and "wait" in r.json()["detail"]
    time.sleep(2.2)
    assert token(c).status_code == 200            # after the wait it works, and the count starts again
    # one address trying many names is held back as well
    for name in ("li", "zhao", "qian"):
        assert token(c, name, "guess-guess").status_code == 401
    assert token(c, "wang", "officer-pass-1").status_code == 429
    app.state.store.close()


def test_lockout_after_n_failures_until_an_admin_unlocks(small_district_store, tmp_path):
    from pipeline.core import accounts

    app, c = make_app(small_district_store, tmp_path, login_backoff_after=100, login_lockout_after=4)
    for _ in range(4):
        assert token(c, "wang", "not-it-at-all").status_code == 401
    r = token(c, "wang", "officer-pass-1")
    assert r.status_code == 429 and "locked" in r.json()["detail"] and "unlock" in r.json()["detail"]
    assert accounts.get_user(app.state.store, "wang").locked
    assert form_login(c).status_code == 303                 # an admin unlocks it on the users page
    page = c.get("/admin/users").text
    assert "已锁定" in page and "/admin/users/wang/unlock" in page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert c.post("/admin/users/wang/unlock", data={"csrf_token": csrf}).status_code == 303
    assert token(c, "wang", "officer-pass-1").status_code == 200
    assert not accounts.get_user(app.state.store, "wang").locked
    app.state.store.close()


def test_password_checks_are_bounded_so_a_flood_cannot_starve_users(small_district_store, tmp_path):
    app, c = make_app(small_district_store, tmp_path, password_checks=1)
    guard = app.state.svc.guard
    assert guard._checks.acquire(timeout=1)       # a check in flight holds the only slot
    try:
        r = token(c)
        assert r.status_code == 429 and "busy" in r.json()["detail"]
    finally:
        guard._checks.release()
    assert token(c).status_code == 200
    app.state.store.close()


def test_logout_ends_the_session_on_the_server(small_district_store, tmp_path):
    app, c = make_app(small_district_store, tmp_path)
    assert form_login(c).status_code == 303
    cookie = c.cookies.get("patrol_session")
    page = c.get("/review")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    time.sleep(1.1)                               # sessions are stamped to the second
    assert c.post("/logout", data={"csrf_token": csrf}).status_code == 303
    other = TestClient(app, follow_redirects=False)
    other.cookies.set("patrol_session", cookie)   # the old cookie, kept by someone
    r = other.get("/review")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert form_login(other).status_code == 303 and other.get("/review").status_code == 200   # a new one works
    app.state.store.close()


@pytest.mark.parametrize("secure", [True, False])
def test_cookies_are_secure_behind_https(small_district_store, tmp_path, secure):
    app, _ = make_app(small_district_store, tmp_path, secure_cookies=secure)
    c = TestClient(app, follow_redirects=False, base_url="https://testserver")     # behind HTTPS
    login_page = c.get("/login")
    r = form_login(c)
    cookies = [h for k, h in r.headers.multi_items() if k == "set-cookie"]
    session = next(h for h in cookies if h.startswith("patrol_session="))
    assert ("secure" in session.lower()) == secure
    assert ("secure" in login_page.headers["set-cookie"].lower()) == secure
    app.state.store.close()
