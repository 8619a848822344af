"""Seeded procedural rural district (orthophotos + parcels/zones/truth) and training scenes.

Names are imported on first use, so training scenes (`render_scene`) render without the raster
stack (rasterio) that the district writer needs — e.g. on a bare GPU training machine.
"""
from importlib import import_module

_WHERE = {"DistrictResult": "district", "generate_district": "district", "CLASSES": "parts",
          "save_previews": "preview", "Randomisation": "randomisation", "Scene": "scene",
          "render_scene": "scene"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline.synth' has no attribute {name!r}")
    return getattr(import_module(f"pipeline.synth.{_WHERE[name]}"), name)
