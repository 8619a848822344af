"""The views the pages and the API share: labels in the service's language, missing values blank."""
from __future__ import annotations

import pandas as pd

from pipeline.core.config import load_settings
from pipeline.service.views import case_summary, flight_row, history_rows, upload_info


def test_a_case_reads_in_chinese_with_missing_values_blank():
    rules = load_settings().rules
    c = {"case_no": "LW2026-000001", "status": "suspected", "category": "illegal_construction", "town": "东山镇",
         "area_m2": 123.456, "stock": "new_build", "change_confidence": float("nan"), "reasons": {"priority": "high"},
         "first_seen_at": pd.Timestamp("2026-03-14 10:20")}
    v = case_summary(c, "zh", rules)
    assert v["status_label"] == rules.lifecycle.label("suspected") and v["area_m2"] == 123.5
    assert v["category_label"] == "违法建设" and v["stock_label"] == "新建" and v["change_confidence"] is None
    assert v["first_seen_at"] == "2026-03-14" and v["assignee"] == "" and v["priority"] == "high"
    events = pd.DataFrame([{"at": pd.Timestamp("2026-03-14 10:20"), "actor": "system", "from_status": None,
                            "to_status": "suspected", "note": "航次 f1：新发现"}])
    h = history_rows(events, "zh", rules)
    assert h[0]["actor"] == "系统" and h[0]["from_label"] == "" and h[0]["to_label"] == rules.lifecycle.label("suspected")


def test_a_flight_row_shows_the_file_name_not_the_stored_path_and_its_queue():
    f = {"flight_id": "abc", "status": "uploaded", "path": "/srv/patrol/uploads/abc_ortho.tif", "gsd_m": float("nan")}
    row = flight_row(f, None)
    assert row["file"] == "abc_ortho.tif" and row["queue"] == "nightly" and row["gsd_m"] is None
    assert flight_row({**f, "status": "done"}, "running")["queue"] == "running"
    info = {"upload_id": "u1", "filename": "o.tif", "size": 10, "offset": 10, "created": "2026-12-07"}
    assert upload_info(info, 4096) == {**info, "chunk_size": 4096, "complete": True}
