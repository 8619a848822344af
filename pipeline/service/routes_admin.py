"""The admins' pages: web service accounts."""
from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from pipeline.errors import InputError
from pipeline.service import auth as A
from pipeline.service.context import Auth, Service, admin, service

router = APIRouter(include_in_schema=False)


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, a: Auth = Depends(admin), svc: Service = Depends(service)):
    return svc.render(request, "users.html", {"users": A.list_users(svc.store), "roles": A.ROLES})


@router.post("/admin/users")
def users_add(a: Auth = Depends(admin), username: str = Form(..., max_length=100),
              password: str = Form(..., max_length=500), role: str = Form(..., max_length=20),
              towns: str = Form("", max_length=2000), display_name: str = Form("", max_length=200),
              svc: Service = Depends(service)):
    A.add_user(svc.store, username, password, role, re.split(r"[,，;\s]+", towns), display_name)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{username}/unlock")
def users_unlock(username: str, a: Auth = Depends(admin), svc: Service = Depends(service)):
    A.unlock(svc.store, username)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{username}/disable")
def users_disable(username: str, a: Auth = Depends(admin), disabled: int = Form(1), svc: Service = Depends(service)):
    if username == a.user.username:
        raise InputError("you cannot disable your own account; ask another admin")
    A.set_disabled(svc.store, username, bool(disabled))
    return RedirectResponse("/admin/users", status_code=303)
