"""The web service (`patrol serve`): flight upload for patrol teams, map review and case
work for officers, over the same store. ``create_app(settings, detector=None)`` builds the
FastAPI app; ``serve(settings, host, port)`` runs it with uvicorn."""
from __future__ import annotations


def create_app(settings, **kw):
    # lazy: loads fastapi, geopandas, jinja2, pandas, shapely only when used
    from pipeline.service.app import create_app as _create
    return _create(settings, **kw)


def serve(settings, host=None, port=None, **kw):
    # lazy: loads fastapi, geopandas, jinja2, pandas, shapely only when used
    from pipeline.service.app import serve as _serve
    return _serve(settings, host, port, **kw)
