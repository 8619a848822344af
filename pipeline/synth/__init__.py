"""Seeded procedural rural district (orthophotos + parcels/zones/truth) and training scenes."""
from pipeline.synth.district import DistrictResult, generate_district
from pipeline.synth.layout import CLASSES
from pipeline.synth.preview import save_previews
from pipeline.synth.randomisation import Randomisation
from pipeline.synth.scene import Scene, render_scene

__all__ = ["CLASSES", "DistrictResult", "Randomisation", "Scene", "generate_district", "render_scene",
           "save_previews"]
