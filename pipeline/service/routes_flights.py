"""Patrol teams' pages: their flights (admins: process now) and the resumable upload page."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from pipeline.service.context import Auth, Service, admin, patrol, service

router = APIRouter(include_in_schema=False)


@router.get("/flights", response_class=HTMLResponse)
def flights_page(request: Request, a: Auth = Depends(patrol), svc: Service = Depends(service)):
    return svc.render(request, "flights.html", {"flights": svc.visible_flights(a.user),
                                                "process_now": svc.settings.service.process_now and a.user.is_admin})


@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request, a: Auth = Depends(patrol), svc: Service = Depends(service)):
    return svc.render(request, "upload.html", {"max_mb": svc.settings.service.max_upload_mb,
                                               "chunk_bytes": svc.uploads.chunk_bytes})


@router.post("/flights/{flight_id}/process")
def process_form(flight_id: str, a: Auth = Depends(admin), svc: Service = Depends(service)):
    svc.start_processing(a.user, flight_id)
    return RedirectResponse("/flights", status_code=303)
