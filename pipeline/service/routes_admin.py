"""The admins' pages: web service accounts, and the model registry (active model, candidates and
their figures, promote and roll back)."""
from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from pipeline.core import accounts
from pipeline.core.errors import InputError
from pipeline.model.active import active_model
from pipeline.model.registry import compare, listing, promote, rollback
from pipeline.service.context import Auth, Service, admin, service

router = APIRouter(include_in_schema=False)


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, a: Auth = Depends(admin), svc: Service = Depends(service)):
    return svc.render(request, "users.html", {"users": accounts.list_users(svc.store), "roles": accounts.ROLES})


@router.post("/admin/users")
def users_add(a: Auth = Depends(admin), username: str = Form(..., max_length=100),
              password: str = Form(..., max_length=500), role: str = Form(..., max_length=20),
              towns: str = Form("", max_length=2000), display_name: str = Form("", max_length=200),
              svc: Service = Depends(service)):
    accounts.add_user(svc.store, username, password, role, re.split(r"[,，;\s]+", towns), display_name)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{username}/unlock")
def users_unlock(username: str, a: Auth = Depends(admin), svc: Service = Depends(service)):
    accounts.unlock(svc.store, username)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{username}/disable")
def users_disable(username: str, a: Auth = Depends(admin), disabled: int = Form(1), svc: Service = Depends(service)):
    if username == a.user.username:
        raise InputError("you cannot disable your own account; ask another admin")
    accounts.set_disabled(svc.store, username, bool(disabled))
    return RedirectResponse("/admin/users", status_code=303)


def _figures(comparison: dict) -> list[dict]:
    """A comparison's parts as rows: part, recall and precision of both models."""
    parts = {"reviewed": "审核航次", "generated": "生成场景", "real": "真实影像"}
    rows = []
    for part, both in (comparison.get("parts") or {}).items():
        c, a = both.get("candidate") or {}, both.get("active") or {}
        rows.append({"part": parts.get(part, part), "recall": (a.get("recall"), c.get("recall")),
                     "precision": (a.get("precision"), c.get("precision"))})
    return rows


@router.get("/admin/models", response_class=HTMLResponse)
def models_page(request: Request, a: Auth = Depends(admin), svc: Service = Depends(service)):
    rows = listing(svc.store, svc.settings)
    for r in rows:
        comp = (r.get("metrics") or {}).get("comparison") or {}
        r["figures"], r["passes"] = _figures(comp), comp.get("passes")
    events = svc.store.model_events().tail(20).iloc[::-1].to_dict("records")
    return svc.render(request, "models.html", {"models": rows, "active": active_model(svc.store, svc.settings),
                                               "events": events})


@router.post("/admin/models/{version}/compare")
def models_compare(version: str, a: Auth = Depends(admin), svc: Service = Depends(service)):
    compare(svc.store, svc.settings, version, actor=a.user.username)
    return RedirectResponse("/admin/models", status_code=303)


@router.post("/admin/models/{version}/promote")
def models_promote(version: str, a: Auth = Depends(admin), expected_active: str = Form(..., max_length=100),
                   svc: Service = Depends(service)):
    promote(svc.store, svc.settings, version, actor=a.user.username, expected_active=expected_active)
    return RedirectResponse("/admin/models", status_code=303)


@router.post("/admin/models/rollback")
def models_rollback(a: Auth = Depends(admin), svc: Service = Depends(service)):
    rollback(svc.store, svc.settings, actor=a.user.username)
    return RedirectResponse("/admin/models", status_code=303)
