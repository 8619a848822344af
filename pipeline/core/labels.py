"""Names of the detector's classes in Chinese and English: shared by the case history
(``track``) and every report (``report.common`` re-exports them)."""
from __future__ import annotations

CLASSES: dict[str, tuple[str, str]] = {
    "building": ("建筑", "Building"),
    "steel_shed": ("彩钢棚", "Steel shed"),
    "under_construction": ("在建", "Under construction"),
    "greenhouse": ("大棚", "Greenhouse"),
}
