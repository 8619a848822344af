"""The JSON API (bearer tokens from ``POST /api/token``): flights, resumable uploads, cases."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from pipeline.core.errors import PatrolError
from pipeline.process.run import register_flight
from pipeline.service.context import (
    FLIGHT_ID_RE,
    Auth,
    HTTPProblem,
    Service,
    StatusChange,
    admin,
    anyone,
    officer,
    patrol,
    service,
)

router = APIRouter(prefix="/api")


class UploadCreate(BaseModel):
    filename: str = Field(..., min_length=1, max_length=255, description="the file's name (sanitised)")
    size: int = Field(..., ge=1, le=2**50, description="its size in bytes")


@router.get("/flights", tags=["flights"], summary="Flights and their status (patrol: their own)")
def api_flights(a: Auth = Depends(patrol), svc: Service = Depends(service)) -> list[dict]:
    return svc.visible_flights(a.user)


@router.get("/flights/{flight_id}", tags=["flights"], summary="One flight and its status")
def api_flight(flight_id: str, a: Auth = Depends(patrol), svc: Service = Depends(service)) -> dict:
    if not re.match(FLIGHT_ID_RE, flight_id):
        raise HTTPProblem(404, f"flight {flight_id} not found")
    return svc.one_flight(a.user, flight_id)


@router.post("/flights/{flight_id}/process", tags=["flights"], status_code=202,
             summary="Process the flight now, in the background (admin)")
def api_process(flight_id: str, a: Auth = Depends(admin), svc: Service = Depends(service)) -> dict:
    return svc.start_processing(a.user, flight_id)


@router.post("/uploads", tags=["uploads"], status_code=201,
             summary="Start a resumable upload of an orthophoto (GeoTIFF) or a zip holding one")
def api_upload_create(body: UploadCreate, a: Auth = Depends(patrol), svc: Service = Depends(service)) -> dict:
    return svc.upload_info(svc.uploads.create(body.filename, body.size, a.user.username))


@router.get("/uploads/{upload_id}", tags=["uploads"], summary="Bytes received so far (resume from offset)")
def api_upload_get(upload_id: str, a: Auth = Depends(patrol), svc: Service = Depends(service)) -> dict:
    return svc.upload_info(svc.uploads.get(upload_id, a.user.username, a.user.is_admin))


@router.put("/uploads/{upload_id}", tags=["uploads"], summary="Send the next chunk (raw bytes) at `offset`",
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def api_upload_put(request: Request, upload_id: str, offset: int = Query(..., ge=0, le=2**50),
                         a: Auth = Depends(patrol), svc: Service = Depends(service)) -> dict:
    info = await svc.uploads.write_chunk(upload_id, a.user.username, offset, request.stream(), a.user.is_admin)
    return svc.upload_info(info)


@router.post("/uploads/{upload_id}/finish", tags=["uploads"],
             summary="Check the complete upload with the ingest checks and register its flight")
def api_upload_finish(upload_id: str, a: Auth = Depends(patrol), svc: Service = Depends(service)) -> dict:
    path = svc.uploads.finish(upload_id, a.user.username, a.user.is_admin)
    try:
        flight = register_flight(svc.store, path, svc.settings, team=a.user.username)
    except PatrolError as e:                       # the refusal names the file as the uploader named it
        path.unlink(missing_ok=True)
        raise type(e)(str(e).replace(f"{upload_id}_", ""),
                      zh=e.zh.replace(f"{upload_id}_", "") if e.zh else None) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if path.suffix.lower() == ".zip":                        # unpacked into ingest.work_dir
        path.unlink(missing_ok=True)
    elif Path(flight["path"]).resolve() != path.resolve():   # uploaded before: that file stays the flight's
        path.unlink(missing_ok=True)
    return svc.one_flight(a.user, flight["flight_id"]) if (a.user.is_admin or flight.get("team") == a.user.username) \
        else {"flight_id": flight["flight_id"], "status": flight["status"]}


@router.get("/cases", tags=["cases"], summary="Cases of your towns/villages (filter, search)")
def api_cases(a: Auth = Depends(officer), status: str | None = Query(None, max_length=40),
              town: str | None = Query(None, max_length=100), q: str | None = Query(None, max_length=200),
              svc: Service = Depends(service)) -> list[dict]:
    rows = [svc.case_summary(c) for c in svc.scoped_cases(a.user, status=status, town=town).to_dict("records")]
    if q:
        ql = q.lower()
        rows = [r for r in rows if any(ql in str(v).lower() for v in r.values())]
    return rows


@router.get("/cases/{case_no}", tags=["cases"], summary="One case: facts, rule reasons, history, allowed next states")
def api_case(case_no: str, a: Auth = Depends(officer), svc: Service = Depends(service)) -> dict:
    return svc.case_detail(a.user, case_no)


@router.post("/cases/{case_no}/media", tags=["cases"], status_code=201,
             summary="Attach an on-site photo (JPEG with EXIF, PNG) or video (MP4/MOV) to the case (multipart `file`; "
                     "optional `note`, and the device's `lat`/`lon` for a photo without GPS)")
def api_case_media(case_no: str, a: Auth = Depends(officer), file: UploadFile = File(...),
                   note: str = Form("", max_length=2000), lat: str = Form("", max_length=30),
                   lon: str = Form("", max_length=30), svc: Service = Depends(service)) -> dict:
    return svc.add_media(a.user, case_no, svc.read_media(file), file.filename or "photo", note, lon, lat)


class GroundReport(BaseModel):
    lat: float = Field(..., ge=-90, le=90, description="WGS84 latitude of the structure")
    lon: float = Field(..., ge=-180, le=180, description="WGS84 longitude")
    detector_class: str = Field("building", max_length=40, description="kind of structure (rules.yaml classes)")
    area_m2: float = Field(50.0, ge=4, le=100_000, description="its size as seen (m²)")
    note: str = Field(..., min_length=1, max_length=4000, description="what was found")


@router.post("/reports", tags=["cases"], status_code=201,
             summary="地面巡查上报: a structure found on the ground becomes a case (same rules, same tracking); "
                     "attach photos with POST /api/cases/{case_no}/media")
def api_ground_report(body: GroundReport, a: Auth = Depends(anyone), svc: Service = Depends(service)) -> dict:
    return svc.ground_report(a.user, body.lat, body.lon, body.detector_class, body.area_m2, body.note)


@router.post("/cases/{case_no}/status", tags=["cases"], summary="Move the case to its next lifecycle state with a note")
def api_case_status(case_no: str, body: StatusChange, a: Auth = Depends(officer),
                    svc: Service = Depends(service)) -> dict:
    return svc.apply_status(a.user, case_no, body)


@router.get("/cases.{fmt}", tags=["cases"], summary="Download the case list (xlsx, csv, geojson, kml, kmz, gpkg)",
            response_class=FileResponse)
def api_export(fmt: Literal["xlsx", "csv", "geojson", "kml", "kmz", "gpkg"], a: Auth = Depends(officer),
               status: str | None = Query(None, max_length=40), svc: Service = Depends(service)):
    return svc.export(a.user, fmt, status)


class Outline(BaseModel):
    geometry: dict = Field(..., description="GeoJSON Polygon in WGS84, drawn on the map")
    detector_class: str = Field("building", max_length=40, description="kind of structure (rules.yaml classes)")
    note: str = Field("", max_length=4000, description="what the officer saw")


@router.post("/cases/{case_no}/outline", tags=["cases"],
             summary="轮廓修正: replace the case's outline with the one drawn (the model's box was wrong)")
def api_case_outline(case_no: str, body: Outline, a: Auth = Depends(officer), svc: Service = Depends(service)) -> dict:
    return svc.redraw_outline(a.user, case_no, body.geometry)


@router.post("/structures", tags=["cases"], status_code=201,
             summary="人工补录: a structure the model missed, drawn on a flight's ortho, becomes a case (source manual)")
def api_draw_structure(body: Outline, a: Auth = Depends(officer), svc: Service = Depends(service)) -> dict:
    return svc.draw_structure(a.user, body.geometry, body.detector_class, body.note)
