"""Lianwei Patrol (两违巡查): drone flights → detections → findings → cases → reports."""
from pipeline.core.errors import PatrolError

__version__ = "0.1.0"
__all__ = ["PatrolError", "__version__"]
