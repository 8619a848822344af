"""Signing in and out (pages and the API token), the home redirect, static assets, the spec."""
from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from pipeline.core import accounts
from pipeline.service import auth as A
from pipeline.service.context import STATIC, Auth, HTTPProblem, Service, anyone, service

router = APIRouter()


class TokenRequest(BaseModel):
    username: str = Field(..., max_length=100)
    password: str = Field(..., max_length=500)


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def safe_next(nxt: str) -> str:
    """Only a local path (no scheme, no //host) may follow the login."""
    if not isinstance(nxt, str) or not re.fullmatch(r"/(?![/\\])[\x21-\x7e]*", nxt) or "\\" in nxt:
        return "/"
    return nxt


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request, next: str = "/", error: str = "", svc: Service = Depends(service)):
    token = svc.signer.login_csrf()
    resp = svc.render(request, "login.html", {"next": safe_next(next), "login_csrf": token, "error": error[:200]})
    resp.set_cookie(A.LOGIN_CSRF_COOKIE, token, httponly=True, samesite="lax", max_age=3600,
                    secure=svc.settings.service.secure_cookies)
    return resp


@router.post("/login", include_in_schema=False)
def login(request: Request, username: str = Form("", max_length=100), password: str = Form("", max_length=500),
          csrf_token: str = Form("", max_length=500), next: str = Form("/", max_length=2000),
          svc: Service = Depends(service)):
    if not svc.signer.check_login_csrf(request.cookies.get(A.LOGIN_CSRF_COOKIE), csrf_token):
        raise HTTPProblem(403, "the login form expired (CSRF token missing); reload the page and sign in")
    user = svc.guard.authenticate(svc.store, username, password, _address(request))
    if user is None:
        return RedirectResponse(f"/login?error=1&next={quote(safe_next(next), safe='')}", status_code=303)
    cookie, _ = svc.signer.session(user)
    resp = RedirectResponse(safe_next(next), status_code=303)
    resp.set_cookie(A.SESSION_COOKIE, cookie, httponly=True, samesite="lax", path="/",
                    max_age=int(svc.settings.service.session_hours * 3600), secure=svc.settings.service.secure_cookies)
    resp.delete_cookie(A.LOGIN_CSRF_COOKIE)
    return resp


@router.post("/logout", include_in_schema=False)
def logout(a: Auth = Depends(anyone), svc: Service = Depends(service)):
    accounts.end_sessions(svc.store, a.user.username)          # the cookie is void on the server too
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(A.SESSION_COOKIE, path="/")
    return resp


@router.get("/", include_in_schema=False)
def home(a: Auth = Depends(anyone)):
    return RedirectResponse("/flights" if a.user.role == "patrol" else "/review", status_code=303)


@router.get("/static/{name}", include_in_schema=False)
def static(name: str, a: Auth = Depends(anyone)):
    p = STATIC / name
    if not re.match(r"^[a-z_\-]+\.(js|css)$", name) or not p.is_file():
        raise HTTPProblem(404, "not found", zh="未找到")
    return FileResponse(p, headers={"Cache-Control": "private, max-age=300"})


@router.get("/sw.js", include_in_schema=False)
def service_worker(a: Auth = Depends(anyone)):
    """The offline page keeper, served from the root so its scope is the whole site."""
    return FileResponse(STATIC / "sw.js", media_type="text/javascript",
                        headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"})


@router.get("/api/openapi.json", include_in_schema=False)
def openapi_spec(request: Request, a: Auth = Depends(anyone)):
    return JSONResponse(request.app.openapi())


@router.post("/api/token", tags=["auth"], summary="Exchange a user name and password for a bearer token")
def api_token(request: Request, body: TokenRequest, svc: Service = Depends(service)) -> dict:
    user = svc.guard.authenticate(svc.store, body.username, body.password, _address(request))
    if user is None:
        raise HTTPProblem(401, "wrong user name or password, or the account is disabled",
                          {"WWW-Authenticate": "Bearer"})
    return {"access_token": svc.signer.token(user), "token_type": "bearer",
            "expires_in": int(svc.settings.service.token_hours * 3600)}


@router.get("/api/me", tags=["auth"], summary="The signed-in account")
def api_me(a: Auth = Depends(anyone)) -> dict:
    return a.user.public()
