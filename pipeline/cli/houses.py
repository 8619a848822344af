"""`patrol houses …`: the building register of the self-built housing census (自建房台账)."""
from __future__ import annotations

import click

from pipeline.cli.options import cell, open_ctx_store, pad, pass_ctx, table

# lazy imports: each command imports its stage when it runs, so that `patrol --help` stays quick


@click.group("houses")
def houses_group():
    """The building register (自建房台账): every building the flights show, one record per 栋."""


@houses_group.command("list")
@click.option("--town", help="Only this town (乡镇).")
@click.option("--village", help="Only this village (村).")
@click.option("--gone", "only_gone", is_flag=True, help="Only records a later flight no longer saw (疑已拆除).")
@pass_ctx
def houses_list(ctx, town, village, only_gone):
    """One line per register record."""
    with open_ctx_store(ctx) as store:
        houses = store.houses(town=town, village=village)
    if only_gone:
        houses = houses[houses["gone_flight"].notna()]
    if not len(houses):
        click.echo("no houses")
        return
    head = ["house_no", "status", "town", "village", "owner", "area m²", "floors", "flights", "last seen",
            "gone on", "case"]
    rows = [[cell(h["house_no"]), cell(h["status"]), cell(h["town"]), cell(h["village"]), cell(h["owner"]),
             cell(h["area_m2"]), cell(h["floors"]), str(len(h["flights"] or [])), cell(h["last_seen_at"]),
             cell(h["gone_flight"]), cell(h["case_no"])] for _, h in houses.iterrows()]
    click.echo(table(head, rows))
    click.echo(f"{len(rows)} houses")


@houses_group.command("show")
@click.argument("house_no")
@pass_ctx
def houses_show(ctx, house_no):
    """Every fact of one register record and its history."""
    from pipeline.cases.houses import get_house
    with open_ctx_store(ctx) as store:
        h = get_house(store, house_no).iloc[0]
        events = store.house_events(house_no)
    for key, value in h.items():
        if key == "geometry":
            value = "" if value is None else (f"{value.geom_type}, centroid "
                                              f"{value.centroid.x:.1f} {value.centroid.y:.1f}")
        click.echo(f"{key:<20}{cell(value)}")
    click.echo(f"history ({len(events)} events):")
    for _, e in events.iterrows():
        click.echo(f"  {cell(e['at'])}  {pad(cell(e['actor']), 10)}  {cell(e['note'])}")


@houses_group.command("inspect")
@click.argument("house_no")
@click.option("--fact", "facts", multiple=True, metavar="KEY=VALUE", required=True,
              help="One field of the 排查 form (config/census.yaml), e.g. judgement=存在一般安全隐患; repeatable.")
@click.option("--actor", default=None, help="Who inspected (default: $USER).")
@pass_ctx
def houses_inspect(ctx, house_no, facts, actor):
    """Record the 排查 form of HOUSE_NO: it becomes 存在隐患 or 未发现隐患 by its 初判."""
    import getpass

    from pipeline.cases.houses import inspect_house
    pairs = {}
    for f in facts:
        key, sep, value = f.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"'{f}' is not KEY=VALUE", param_hint="--fact")
        pairs[key.strip()] = value
    census = ctx.settings.census
    with open_ctx_store(ctx) as store:
        rec = inspect_house(store, census, house_no, pairs, actor or getpass.getuser())
    click.echo(f"{house_no}: {rec['status']} {census.lifecycle.label(rec['status'])} ({rec['hazard']})")


@houses_group.command("set-status")
@click.argument("house_no")
@click.argument("status")
@click.option("--measure", "measures", multiple=True, help="整治措施 (with rectifying; repeatable).")
@click.option("--deadline", help="整改期限 YYYY-MM-DD (with rectifying).")
@click.option("--assignee", help="The person responsible (with rectifying).")
@click.option("--on", "on", help="The day the step happened, YYYY-MM-DD (default: today).")
@click.option("--note", default="", help="What was found (required to close: the recheck).")
@click.option("--actor", default=None, help="Who (default: $USER).")
@pass_ctx
def houses_set_status(ctx, house_no, status, measures, deadline, assignee, on, note, actor):
    """Move HOUSE_NO through rectification: rectifying, rectified, closed (销号)."""
    import getpass

    from pipeline.cases.houses import set_house_status
    census = ctx.settings.census
    with open_ctx_store(ctx) as store:
        rec = set_house_status(store, census, house_no, status, actor or getpass.getuser(), note=note,
                               measures=measures, deadline=deadline, assignee=assignee, on=on)
    click.echo(f"{house_no}: {rec['status']} {census.lifecycle.label(rec['status'])}")


@houses_group.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The register workbook (.xlsx).")
@click.option("--town", help="Only this town (乡镇).")
@click.option("--village", help="Only this village (村).")
@pass_ctx
def houses_export(ctx, out, town, village):
    """The register (自建房台账) as xlsx, in the columns of config/census.yaml's register_columns."""
    from pathlib import Path

    from pipeline.core.errors import InputError
    from pipeline.report.register import write_register_xlsx
    if not out.lower().endswith(".xlsx"):
        raise InputError(f"--out {out} must end in .xlsx; the register is a workbook")
    with open_ctx_store(ctx) as store:
        houses = store.houses(town=town, village=village)
    title = f"{ctx.settings.district.name} 自建房安全排查台账"
    path = write_register_xlsx(houses, ctx.settings.census, Path(out), title)
    click.echo(f"{len(houses)} houses written to {path}")


@houses_group.command("form")
@click.argument("house_no")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The PDF to write.")
@pass_ctx
def houses_form(ctx, house_no, out):
    """The 自建房安全排查表 of HOUSE_NO as PDF (template config/documents/census_form.html)."""
    from pathlib import Path

    from pipeline.report.census_form import write_census_form
    with open_ctx_store(ctx) as store:
        path = write_census_form(store, ctx.settings, house_no, Path(out))
    click.echo(f"排查表 {house_no} written to {path}")


COMMANDS = [houses_group]
