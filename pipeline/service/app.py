"""The web service: FastAPI app with server-rendered pages (Jinja2) and a JSON API. Routers by
user: ``routes_auth`` (sign in/out, token), ``routes_flights`` (patrol teams), ``routes_review``
(officers), ``routes_work`` (tasks, dispatch, statistics), ``routes_houses`` (the 自建房 census),
``routes_admin`` (accounts),
``routes_api`` (``/api``, spec at ``/api/openapi.json``); they share ``context.Service``. Every route but the login and the token needs an account."""
from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pipeline.core.disk import os_error_line
from pipeline.core.errors import PatrolError, TransitionError
from pipeline.service import (
    routes_admin,
    routes_api,
    routes_auth,
    routes_flights,
    routes_houses,
    routes_review,
    routes_work,
)
from pipeline.service.auth import LoginRefused
from pipeline.service.context import HTTPProblem, Service, is_api
from pipeline.service.uploads import UploadNotFound, UploadTooLarge

log = logging.getLogger("pipeline.service")


def create_app(settings, *, detector: Any = None, store=None) -> FastAPI:
    """The service over the store of ``settings``; ``detector`` (a tile detector of
    ``pipeline.detection.detectors``, or a loaded model) replaces the model built from the settings."""
    svc = Service.start(settings, detector, store)
    app = FastAPI(title="Lianwei Patrol 两违巡查", version="1",
                  description="Flight upload, case review and case work. Bearer tokens from POST /api/token.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.svc = svc
    app.state.settings, app.state.store, app.state.processor, app.state.uploads = \
        settings, svc.store, svc.processor, svc.uploads
    statuses = {HTTPProblem: None, UploadTooLarge: 413, UploadNotFound: 404, TransitionError: 409,
                LoginRefused: 429, PatrolError: 422}
    for kind, status in statuses.items():
        app.add_exception_handler(kind, _handler(svc, status))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        if is_api(request):
            return JSONResponse({"detail": jsonable_errors(e)}, status_code=422)
        return svc.problem(request, 422, "the form or the address is not valid; go back and check it",
                           zh="表单或网址不正确，请返回检查")

    @app.exception_handler(OSError)
    async def _os(request: Request, e: OSError):
        log.error("%s %s: %s", request.method, request.url.path, e)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        return svc.problem(request, 507 if full else 500, os_error_line(e, "the request"),
                           zh="服务器磁盘已满，请通知管理员" if full else "服务器读写出错，请稍后重试或通知管理员")

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return svc.problem(request, 500, "the service failed on this request (the administrator's log has "
                                         "the details); try again later",
                           zh="服务出错（详情见管理员日志），请稍后重试")

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return svc.problem(request, 404, "not found", zh="未找到")

    @app.exception_handler(405)
    async def _method(request: Request, e):
        return svc.problem(request, 405, "method not allowed", zh="不支持此操作")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    for router in (routes_auth.router, routes_flights.router, routes_review.router, routes_work.router,
                   routes_houses.router, routes_admin.router, routes_api.router, routes_houses.api):
        app.router.routes.extend(router.routes)             # flat: app.routes lists every route
    return app


def _handler(svc: Service, status: int | None):
    """An exception handler answering with ``status`` (an HTTPProblem's own when None)."""
    async def handle(request: Request, e: Exception):
        if isinstance(e, HTTPProblem) and status is None:
            return svc.problem(request, e.status, e.message, e.headers, zh=e.zh)
        return svc.problem(request, status or 500, str(e), zh=getattr(e, "zh", None))
    return handle


def jsonable_errors(e: RequestValidationError) -> list[dict]:
    return [{"loc": [str(x) for x in err.get("loc", ())], "msg": str(err.get("msg", "")),
             "type": str(err.get("type", ""))} for err in e.errors()]


def serve(settings, host: str | None = None, port: int | None = None, detector: Any = None) -> None:
    """Run the service with uvicorn (blocking)."""
    import uvicorn
    app = create_app(settings, detector=detector)
    uvicorn.run(app, host=host or settings.service.host, port=int(port or settings.service.port),
                log_level="warning", access_log=False, proxy_headers=False)
