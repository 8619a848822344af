"""Dispatch and deadlines: who works which case, what is overdue, and the daily digest.

``digest`` gathers, as of a day, the open cases past their deadline (逾期), those due within
``dispatch.due_soon_days`` (即将到期) and the suspected cases found within
``dispatch.new_within_hours`` (新发现), each with its officer; ``officer_tasks`` is one
officer's list. ``send_digest`` posts the digest to ``dispatch.webhook_url`` as an
enterprise-chat robot message (WeCom / DingTalk markdown, or plain JSON), retrying a
failed post; a failure is one line, never a traceback.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd

from pipeline.core.errors import ConfigError, PatrolError
from pipeline.core.geo import navigation_links, to_wgs84_points
from pipeline.report.common import CATEGORIES, label, status_label, text

ATTEMPTS = 3
RETRY_S = 1.0
MAX_LISTED = 20


def _item(c: dict, rules, today: pd.Timestamp) -> dict[str, Any]:
    deadline = pd.Timestamp(c["deadline"]).normalize() if not pd.isna(c.get("deadline")) else None
    return {"case_no": c["case_no"], "town": text(c.get("town")), "village": text(c.get("village")),
            "status": text(c.get("status")), "status_label": status_label(c.get("status"), "zh", rules),
            "category_label": label(CATEGORIES, c.get("category"), "zh"),
            "assignee": text(c.get("assignee")), "deadline": deadline.date().isoformat() if deadline is not None else "",
            "days": (today - deadline).days if deadline is not None else None,
            "area_m2": None if pd.isna(c.get("area_m2")) else round(float(c["area_m2"]), 1)}


def digest(store, rules, settings, today: date | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The day's digest: ``overdue`` (days = days past the deadline), ``due_soon`` (days =
    -days left), ``new`` suspected cases, ``by_officer`` counts; lists sorted most urgent first."""
    lc = rules.lifecycle
    d = settings.dispatch
    day = pd.Timestamp(today or date.today()).normalize()
    now_t = pd.Timestamp(now or datetime.now())
    cases = store.cases()
    open_ = cases[cases["status"].isin(lc.open)]
    items = [_item(c, rules, day) for c in open_.to_dict("records")]
    overdue = sorted([i for i in items if i["days"] is not None and i["days"] > 0], key=lambda i: -i["days"])
    due_soon = sorted([i for i in items if i["days"] is not None and -d.due_soon_days <= i["days"] <= 0],
                      key=lambda i: -i["days"])
    first = pd.to_datetime(cases["first_seen_at"], errors="coerce").fillna(
        pd.to_datetime(cases["created_at"], errors="coerce"))
    fresh = cases[(cases["status"] == lc.initial) & (first >= now_t - timedelta(hours=d.new_within_hours))]
    new = [_item(c, rules, day) for c in fresh.to_dict("records")]
    by: dict[str, dict[str, int]] = {}
    for key, rows in (("overdue", overdue), ("due_soon", due_soon), ("new", new)):
        for i in rows:
            by.setdefault(i["assignee"] or "", {"overdue": 0, "due_soon": 0, "new": 0})[key] += 1
    return {"date": day.date().isoformat(), "district": settings.district.name, "overdue": overdue,
            "due_soon": due_soon, "new": new, "by_officer": dict(sorted(by.items()))}


QUEUE_STATES = {"overdue": "逾期", "due_soon": "即将到期", "ordered": "限期中", "to_check": "待核查", "open": "在办"}


def work_queue(cases, rules, settings, today: date | None = None) -> dict[str, Any]:
    """An officer's 待办: the open ``cases`` ordered by what needs doing (overdue, most days
    first; then by deadline; then by priority; then suspected cases, newest first), each with
    its WGS84 point and 导航 links; ``counts`` per queue state."""
    lc = rules.lifecycle
    day = pd.Timestamp(today or date.today()).normalize()
    open_ = cases[cases["status"].isin(lc.open)]
    ll: Any = to_wgs84_points(open_, str(open_.crs)) if len(open_) else []
    items = []
    for (lon, lat), c in zip(ll, open_.to_dict("records")):
        i = _item(c, rules, day)
        pr = c.get("reasons", {}).get("priority") if isinstance(c.get("reasons"), dict) else None
        i["priority"] = float(pr) if isinstance(pr, (int, float)) else 0.0
        i["first_seen_at"] = text(c.get("first_seen_at"))[:10]
        days = i["days"]
        i["state"] = ("overdue" if days is not None and days > 0 else
                      "due_soon" if days is not None and days >= -settings.dispatch.due_soon_days else
                      "ordered" if days is not None else "to_check" if c.get("status") == lc.initial else "open")
        i.update(lon=round(float(lon), 7), lat=round(float(lat), 7), nav=navigation_links(lon, lat, c["case_no"]))
        items.append(i)
    rank = {"overdue": 0, "due_soon": 1, "ordered": 2, "open": 3, "to_check": 4}
    def seen(i: dict) -> float:
        return pd.Timestamp(i["first_seen_at"]).timestamp() if i["first_seen_at"] else 0.0
    items.sort(key=lambda i: (rank[i["state"]], -(i["days"] or 0) if i["state"] == "overdue" else 0,
                              i["deadline"] or "9999", -i["priority"], -seen(i), i["case_no"]))
    counts = {k: sum(1 for i in items if i["state"] == k) for k in QUEUE_STATES}
    return {"items": items, "counts": counts, "labels": QUEUE_STATES}


def _line(i: dict, kind: str) -> str:
    who = i["assignee"] or "未分派"
    when = (f"逾期 {i['days']} 天" if kind == "overdue" else
            f"{-i['days']} 天后到期" if kind == "due_soon" and i["days"] < 0 else "今日到期" if kind == "due_soon"
            else i["category_label"])
    return f"- {i['case_no']} {i['town']}{i['village']} {i['status_label']} {when}（{who}）"


def digest_markdown(dg: dict) -> str:
    """The digest as chat markdown, Chinese first."""
    lines = [f"**两违巡查日报 · {dg['district']} · {dg['date']}**",
             f"逾期未办 {len(dg['overdue'])} 件，3 日内到期 {len(dg['due_soon'])} 件，新发现疑似 {len(dg['new'])} 件"]
    for key, title in (("overdue", "逾期未办"), ("due_soon", "即将到期"), ("new", "新发现疑似")):
        rows = dg[key]
        if not rows:
            continue
        lines += ["", f"**{title}**"] + [_line(i, key) for i in rows[:MAX_LISTED]]
        if len(rows) > MAX_LISTED:
            lines.append(f"- …另有 {len(rows) - MAX_LISTED} 件")
    if not (dg["overdue"] or dg["due_soon"] or dg["new"]):
        lines += ["", "今日无逾期、无即将到期、无新发现。"]
    return "\n".join(lines)


def webhook_body(dg: dict, fmt: str) -> dict:
    md = digest_markdown(dg)
    if fmt == "wecom":                       # 企业微信群机器人
        return {"msgtype": "markdown", "markdown": {"content": md}}
    if fmt == "dingtalk":                    # 钉钉群机器人
        return {"msgtype": "markdown", "markdown": {"title": f"两违巡查日报 {dg['date']}", "text": md}}
    return {"text": md, "digest": dg}


def send_digest(dg: dict, settings) -> str:
    """Post the digest to the configured webhook; returns one line saying what happened."""
    d = settings.dispatch
    if not d.webhook_url:
        raise PatrolError("dispatch.webhook_url is not set; set it to the chat robot's URL to send the digest")
    body = json.dumps(webhook_body(dg, d.webhook_format), ensure_ascii=False).encode("utf-8")
    where = check_webhook(d.webhook_url, d.allowed_hosts)
    err = ""
    deadline = time.monotonic() + d.timeout_s
    for attempt in range(ATTEMPTS):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        outcome = _post_within(d.webhook_url, body, left)
        if outcome is None:
            err = f"no answer within {d.timeout_s:g} s (dispatch.timeout_s)"
            break
        kind, value = outcome
        if kind == "reply":
            code = _robot_error(value)
            if code is None:
                return f"digest of {dg['date']} sent to {where}"
            err = f"the robot answered {code}"
            break                            # the robot refused it: sending again will not help
        err = value
        if kind == "redirect":
            break
        time.sleep(min(RETRY_S * (attempt + 1), max(0.0, deadline - time.monotonic())))
    raise PatrolError(f"digest not sent to {where}: {err}; check dispatch.webhook_url and the network")


def check_webhook(url: str, allowed_hosts: list[str]) -> str:
    """The webhook's address without its query (the robot's key), once it is an http(s) URL to one of
    ``dispatch.allowed_hosts``; ConfigError (one line) otherwise."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"dispatch.webhook_url must be an http(s) address of the chat robot, not "
                          f"'{parts.scheme or url.split(':')[0]}:'; set the robot's URL")
    if parts.hostname.lower() not in {h.lower() for h in allowed_hosts}:
        raise ConfigError(f"dispatch.webhook_url's host {parts.hostname} is not in dispatch.allowed_hosts "
                          f"({', '.join(allowed_hosts)}); add it there if it is the bureau's robot")
    return where


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, "redirect", headers, fp)


def _post_within(url: str, body: bytes, seconds: float) -> tuple[str, str] | None:
    """POST ``body``, following no redirect; ("reply", its first 4 KiB), ("redirect" | "error", why), or
    None when no whole answer came within ``seconds`` (the try is left behind: a daemon thread)."""
    import queue
    import threading

    out: queue.Queue = queue.Queue()

    def post():
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.build_opener(_NoRedirect).open(req, timeout=seconds) as r:
                out.put(("reply", r.read(4096).decode("utf-8", "replace")))
        except urllib.error.HTTPError as e:
            out.put(("redirect", f"it redirects (HTTP {e.code}); give the robot's own address")
                    if 300 <= e.code < 400 else ("error", f"HTTP {e.code}"))
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
            out.put(("error", f"cannot reach it ({getattr(e, 'reason', e)})"))

    threading.Thread(target=post, daemon=True).start()
    try:
        return out.get(timeout=seconds)
    except queue.Empty:
        return None


def _robot_error(reply: str) -> str | None:
    """WeCom/DingTalk answer 200 with {"errcode": n}; nonzero is a refusal."""
    try:
        data = json.loads(reply)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("errcode") not in (None, 0):
        return f"errcode {data.get('errcode')} {text(data.get('errmsg'))}".strip()
    return None
