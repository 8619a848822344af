"""`patrol report|stats|docs|digest`: maps and lists, campaign statistics, numbered documents, the digest."""
from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.cli.options import check_dates, check_period, open_ctx_store, pass_ctx, report_filters

# lazy imports: each command imports its stage when it runs, so that `patrol --help` stays quick


@click.command("report")
@click.option("--flight", "flight_id", help="Report this flight (default: the whole district).")
@click.option("--out", "out_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the map, lists, evidence and statistics.")
@report_filters
@pass_ctx
def report_cmd(ctx, flight_id, out_dir, status, category, town, village, since, until):
    """Offline map, case lists, evidence sheets and statistics for a flight or the district."""
    from pipeline.report import write_reports
    since, until = check_period(since, until)
    states = ctx.settings.rules.lifecycle.states
    for s in status:
        if s not in states:
            raise click.BadParameter(f"'{s}' is not a status; one of {', '.join(states)}", param_hint="--status")
    with open_ctx_store(ctx) as store:
        paths = write_reports(store, ctx.settings, Path(out_dir), flight_id, status=list(status) or None,
                              category=list(category) or None, town=town, village=village,
                              since=since, until=until)
    for name, path in paths.items():
        click.echo(f"{name:<28}{path}")


@click.command("stats")
@click.option("--from", "since", help="Count what happened on or after this date (YYYY-MM-DD).")
@click.option("--to", "until", help="Count what happened up to and including this date (YYYY-MM-DD).")
@click.option("--out", "out_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder for stats.md, stats.xlsx and stats.png.")
@pass_ctx
def stats_cmd(ctx, since, until, out_dir):
    """Campaign figures reported upward, by the date each action happened: 本期 and 累计,
    整改率, 销号率, by month, town, village and category."""
    from pipeline.report.stats import write_stats
    since, until = check_period(since, until)
    with open_ctx_store(ctx) as store:
        paths = write_stats(store, ctx.settings, ctx.settings.rules, Path(out_dir), since, until)
    click.echo(paths["stats_md"].read_text(encoding="utf-8"))
    for name, path in paths.items():
        click.echo(f"{name:<12}{path}")


@click.command("docs")
@click.argument("kind", type=click.Choice(["sheet", "inspection", "stop_notice", "demolition_notice", "recheck",
                                           "list"]))
@click.argument("case_no", required=False)
@click.option("--out", "out_path", type=click.Path(), help="PDF file (one case) or folder (--town/--village/--status).")
@click.option("--town", help="Every case of this town.")
@click.option("--village", help="Every case of this village.")
@click.option("--status", multiple=True, help="Every case in this status (repeatable).")
@click.option("--new", "new", is_flag=True, help="Issue a new number even if the case has this document already.")
@click.option("--actor", default=lambda: os.environ.get("USER", "cli"), show_default="$USER",
              help="Who issues it (recorded on the case).")
@pass_ctx
def docs_cmd(ctx, kind, case_no, out_path, town, village, status, new, actor):
    """Numbered enforcement documents as PDF: sheet (证据单), inspection (现场检查笔录),
    stop_notice (责令停止违法行为通知书), demolition_notice (限期拆除（改正）通知书), recheck
    (复查记录). A case's document prints again with its number unless --new; `docs list`
    shows what was issued."""
    from pipeline.report.documents import check_templates, kind_label, print_document, write_pdf
    if kind == "list":
        with open_ctx_store(ctx) as store:
            docs = store.documents(case_no=case_no)
        for d in docs.to_dict("records"):
            click.echo(f"{d['doc_no']}\t{kind_label(d['kind'])}\t{d['case_no']}\t{d['issued_at']}\t{d['actor']}\t"
                       f"sha256 {d['file_hash'][:16]}")
        return
    batch = bool(town or village or status)
    if not out_path:
        raise click.UsageError("give --out FILE.pdf (one case) or --out FOLDER (--town/--village/--status)")
    if batch == bool(case_no):
        raise click.UsageError("give either CASE_NO or --town/--village/--status, not both or neither")
    check_templates(ctx.settings)
    rules = ctx.settings.rules
    with open_ctx_store(ctx) as store:
        nos = [case_no] if case_no else list(store.cases(status=list(status) or None, town=town,
                                                         village=village)["case_no"])
        if batch and not nos:
            raise click.UsageError("no case matches --town/--village/--status")
        for no in nos:
            row, pdf, identical = print_document(store, ctx.settings, rules, kind, no, actor, new=new)
            target = Path(out_path) / f"{no}_{kind}.pdf" if batch else Path(out_path)
            write_pdf(target, pdf)
            click.echo(f"{row['doc_no']}\t{no}\t{target}")
            if not identical:
                click.echo(f"note: the template of {kind} changed since {row['doc_no']} was issued; this print "
                           f"differs from the issued PDF (sha256 {row['file_hash'][:16]})", err=True)


@click.command("digest")
@click.option("--date", "day", help="The day of the digest (YYYY-MM-DD; default: today).")
@click.option("--send", is_flag=True, help="Post it to dispatch.webhook_url (the chat robot).")
@pass_ctx
def digest_cmd(ctx, day, send):
    """The daily digest: overdue cases, cases due soon, new suspected cases, by officer;
    printed, and with --send posted to the chat robot (run it from cron each morning)."""
    from datetime import date as _date

    from pipeline.cases.dispatch import digest, digest_markdown, send_digest
    check_dates(day)
    with open_ctx_store(ctx) as store:
        dg = digest(store, ctx.settings.rules, ctx.settings, today=_date.fromisoformat(day) if day else None)
    click.echo(digest_markdown(dg))
    if send:
        click.echo(send_digest(dg, ctx.settings))


COMMANDS = [report_cmd, stats_cmd, docs_cmd, digest_cmd]
