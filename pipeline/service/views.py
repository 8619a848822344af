"""The views the pages and the API both show: a flight's row, an upload's state, a case's summary,
its history and its on-site media, as plain dicts (Chinese labels when ``report.language`` is zh)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.cases.change import registration_note
from pipeline.report.common import CATEGORIES, STOCK, label, status_label, text


def flight_row(f: dict, queue_state: str | None) -> dict:
    """A flight as the 航线 page and the API list it; ``queue_state``: the processor's state of it."""
    return {"flight_id": f["flight_id"], "captured_at": text(f.get("captured_at")), "team": text(f.get("team")),
            "status": text(f.get("status")), "error": text(f.get("error")), "error_zh": text(f.get("error_zh")),
            "registration": registration_note(f.get("registration")), "forced": text(f.get("forced")),
            "processed_at": text(f.get("processed_at")),
            "gsd_m": f.get("gsd_m") if pd.notna(f.get("gsd_m")) else None,
            "model_version": text(f.get("model_version")), "file": Path(text(f.get("path"))).name,
            "queue": queue_state or ("nightly" if f.get("status") == "uploaded" else "")}


def upload_info(info: dict, chunk_bytes: int) -> dict:
    """A resumable upload's state (how far it got, the chunk size to send)."""
    return {k: info[k] for k in ("upload_id", "filename", "size", "offset", "created")} | \
        {"chunk_size": chunk_bytes, "complete": info["offset"] == info["size"]}


def case_summary(c: dict, lang: str, rules) -> dict:
    """One case as the lists show it."""
    pr = c.get("reasons", {}).get("priority") if isinstance(c.get("reasons"), dict) else None
    return {"case_no": c["case_no"], "status": text(c.get("status")),
            "status_label": status_label(c.get("status"), lang, rules),
            "category": text(c.get("category")), "category_label": label(CATEGORIES, c.get("category"), lang),
            "town": text(c.get("town")), "village": text(c.get("village")), "owner": text(c.get("owner")),
            "area_m2": None if pd.isna(c.get("area_m2")) else round(float(c["area_m2"]), 1),
            "priority": text(pr), "first_seen_at": text(c.get("first_seen_at"))[:10],
            "assignee": text(c.get("assignee")), "deadline": text(c.get("deadline"))[:10],
            "stock_label": label(STOCK, c.get("stock"), lang) if text(c.get("stock")) else "",
            "change_confidence": None if pd.isna(c.get("change_confidence")) else
            round(float(c["change_confidence"]), 2)}


def history_rows(events: pd.DataFrame, lang: str, rules) -> list[dict]:
    """A case's history, oldest first, with the statuses' labels."""
    return [{"at": text(e["at"]), "actor": "系统" if e["actor"] == "system" and lang == "zh" else text(e["actor"]),
             "from_status": text(e["from_status"]), "to_status": text(e["to_status"]),
             "from_label": status_label(e["from_status"], lang, rules) if text(e["from_status"]) else "",
             "to_label": status_label(e["to_status"], lang, rules), "note": text(e["note"])}
            for e in events.to_dict("records")]


def media_rows(media: pd.DataFrame) -> list[dict[str, Any]]:
    """A case's on-site photos and videos with their links."""
    return [{"media_id": m["media_id"], "kind": m["kind"], "filename": text(m["filename"]),
             "taken_at": text(m["taken_at"])[:16], "lon": None if pd.isna(m["lon"]) else float(m["lon"]),
             "lat": None if pd.isna(m["lat"]) else float(m["lat"]), "position_source": text(m["position_source"]),
             "distance_m": None if pd.isna(m["distance_m"]) else float(m["distance_m"]), "far": bool(m["far"]),
             "sha256": m["sha256"], "actor": text(m["actor"]), "note": text(m["note"]),
             "url": f"/media/{m['media_id']}", "original_url": f"/media/{m['media_id']}/original"}
            for m in media.to_dict("records")]
