"""What the command modules share: the context (settings loaded once), the store it names, the
filter options of the case commands, dates, and text tables."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.core.errors import InputError, StoreError
from pipeline.core.values import day_after

# lazy imports: each command imports its stage when it runs, so that `patrol --help` stays quick


class Context:
    """What every command gets: the settings, loaded once on first use."""

    def __init__(self, config: str | None, store: str | None, overrides: tuple[str, ...]):
        self.config_path = config
        self.overrides = {}
        if store:
            self.overrides["store.url"] = store
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"'{item}' is not section.key=value", param_hint="--set")
            self.overrides[key.strip()] = value
        self._settings = None

    @property
    def settings(self):
        if self._settings is None:
            from pipeline.core.config import load_settings
            self._settings = load_settings(self.config_path, self.overrides)
        return self._settings


pass_ctx = click.make_pass_decorator(Context)


def open_ctx_store(ctx: Context, migrate: bool = True, create: bool = False):
    """The store named by the settings (``--store`` / PATROL_STORE / store.url). An embedded store
    must exist already unless ``create`` (db init, import, ingest, run, users add): a mistyped
    path must not answer from a new empty store."""
    from pipeline.store import open_store
    s = ctx.settings
    if not create and "://" not in s.store.url and not Path(s.store.url).expanduser().exists():
        raise StoreError(f"store {s.store.url} does not exist; check --store (or create it with "
                         f"`patrol db init`)")
    return open_store(s.store.url, s.store.crs, case_prefix=s.district.case_prefix, migrate=migrate)


def text_width(text: str) -> int:
    import unicodedata
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - text_width(text))


def cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else f"{v:,.1f}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    s = str(v)
    return "" if s == "NaT" else s.removesuffix(" 00:00:00")


def report_filters(f):
    """--status/--category/--town/--village/--from/--to, shared by cases list/export and report."""
    for opt in reversed([
        click.option("--status", multiple=True, help="Only cases in this status (repeatable)."),
        click.option("--category", multiple=True, help="Only this category (repeatable)."),
        click.option("--town", help="Only cases in this town."),
        click.option("--village", help="Only cases in this village."),
        click.option("--from", "since", help="Only cases first seen on or after this date (YYYY-MM-DD)."),
        click.option("--to", "until", help="Only cases first seen on or before this date (YYYY-MM-DD)."),
    ]):
        f = opt(f)
    return f


def check_period(since: str | None, to: str | None) -> tuple[str | None, str | None]:
    """``--from`` / ``--to`` (both days included) checked; returns (since, the day after ``to``)."""
    check_dates(since, to)
    if since and to and since > to:
        raise InputError(f"--from {since} is after --to {to}; give a period that starts before it ends")
    return since, day_after(to)


def check_dates(*values):
    from datetime import date
    for v in values:
        if v is not None:
            try:
                date.fromisoformat(v)
            except ValueError:
                raise InputError(f"'{v}' is not a date; use YYYY-MM-DD") from None


def split_pair(text: str) -> tuple[str, str]:
    ortho, sep, labels = text.rpartition(":")
    if not sep or not ortho or not labels:
        raise click.BadParameter(f"'{text}' is not ORTHO:LABELS", param_hint="--real")
    return ortho, labels


def figure(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def ask_password(password: str | None) -> str:
    return password or click.prompt("password", hide_input=True, confirmation_prompt=True)


def table(head: list[str], rows: list[list[str]]) -> str:
    """Rows under a header in columns padded to the widest cell (Chinese counted double)."""
    widths = [max(text_width(r[i]) for r in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(pad(x, w) for x, w in zip(r, widths)).rstrip() for r in [head] + rows)
