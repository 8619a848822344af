"""`patrol cases …`: the case ledger (台账) — list, show, the lifecycle, assignment, facts, photos, export."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.options import (
    cell,
    check_period,
    open_ctx_store,
    pad,
    pass_ctx,
    report_filters,
    table,
)
from pipeline.core.errors import InputError

# lazy imports: each command imports its stage when it runs, so that `patrol --help` stays quick


@click.group("cases")
def cases_group():
    """The case ledger (台账): list, show, move through the lifecycle, assign."""


@cases_group.command("list")
@report_filters
@click.option("--flag", "flags", multiple=True, type=click.Choice(["new", "grown", "rebuilt", "demolition_seen"]),
              help="Only cases carrying this change flag (repeatable: any of them).")
@click.option("--min-change-confidence", type=click.FloatRange(0, 1),
              help="Only cases whose change was confirmed in the images with at least this confidence.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a GeoJSON FeatureCollection (EPSG:4326), every case field a property.")
@pass_ctx
def cases_list(ctx, status, category, town, village, since, until, flags, min_change_confidence, as_json):
    """One line per case (or GeoJSON with --json)."""
    import json

    import pandas as pd

    from pipeline.cases.casework import cases_geojson, with_change
    since, until = check_period(since, until)
    rules = ctx.settings.rules
    for s in status:
        if s not in rules.lifecycle.states:
            raise click.BadParameter(f"'{s}' is not a status; one of {', '.join(rules.lifecycle.states)}",
                                     param_hint="--status")
    with open_ctx_store(ctx) as store:
        cases = store.cases(status=list(status) or None, category=list(category) or None,
                            town=town, village=village, since=since, until=until)
    cases = with_change(cases, flags, min_change_confidence)
    if as_json:
        click.echo(json.dumps(cases_geojson(cases), ensure_ascii=False, default=str))
        return
    if not len(cases):
        click.echo("no cases")
        return
    head = ["case_no", "status", "category", "stock", "class", "area m²", "town", "village",
            "flags", "change", "last seen", "assignee"]
    rows = [[cell(c["case_no"]), f"{c['status']} {rules.lifecycle.label(c['status'])}",
             cell(c["category"]), cell(c["stock"]), cell(c["detector_class"]), cell(c["area_m2"]),
             cell(c["town"]), cell(c["village"]), cell(c["flags"]),
             "" if pd.isna(c["change_confidence"]) else f"{float(c['change_confidence']):.2f}",
             cell(c["last_seen_at"]), cell(c["assignee"])] for _, c in cases.iterrows()]
    click.echo(table(head, rows))
    click.echo(f"{len(rows)} cases")


@cases_group.command("show")
@click.argument("case_no")
@pass_ctx
def cases_show(ctx, case_no):
    """Every fact of one case and its event history."""
    from pipeline.cases.casework import get_case
    rules = ctx.settings.rules
    with open_ctx_store(ctx) as store:
        c = get_case(store, case_no).iloc[0]
        events = store.events(case_no)
    for key, value in c.items():
        if key == "geometry":
            value = "" if value is None else (f"{value.geom_type}, centroid "
                                              f"{value.centroid.x:.1f} {value.centroid.y:.1f}")
        elif key == "status":
            value = f"{value} {rules.lifecycle.label(value)}"
        elif isinstance(value, dict):
            import json
            value = json.dumps(value, ensure_ascii=False, default=str)
        click.echo(f"{key:<20}{cell(value)}")
    click.echo(f"history ({len(events)} events):")
    for _, e in events.iterrows():
        frm = cell(e["from_status"]) or "-"
        click.echo(f"  {cell(e['at'])}  {pad(cell(e['actor']), 10)}  {frm} -> {cell(e['to_status'])}  "
                   f"{cell(e['note'])}")


@cases_group.command("set-status")
@click.argument("case_no")
@click.argument("status")
@click.option("--note", required=True, help="Why (recorded in the case history).")
@click.option("--actor", default=None, help="Who (default: $USER).")
@click.option("--order-no", help="Order number (with status ordered).")
@click.option("--deadline", help="Deadline YYYY-MM-DD (default: order_deadline_days after today).")
@click.option("--demolished-area", type=float, help="Demolished area m² (default: the case area).")
@pass_ctx
def cases_set_status(ctx, case_no, status, note, actor, order_no, deadline, demolished_area):
    """Move a case to STATUS if the lifecycle table allows it."""
    import getpass

    from pipeline.cases.casework import change_status
    rules = ctx.settings.rules
    if deadline is not None:
        from datetime import date
        try:
            date.fromisoformat(deadline)
        except ValueError:
            raise InputError(f"--deadline '{deadline}' is not a date; use YYYY-MM-DD") from None
    with open_ctx_store(ctx) as store:
        ev = change_status(store, case_no, status, actor or getpass.getuser(), note, rules.lifecycle,
                           order_no=order_no, deadline=deadline, demolished_area_m2=demolished_area)
    click.echo(f"{case_no}: {ev['from_status']} -> {ev['to_status']} "
               f"{rules.lifecycle.label(ev['to_status'])}")


@cases_group.command("assign")
@click.argument("case_no")
@click.argument("officer")
@click.option("--actor", default=None, help="Who assigns (default: $USER).")
@pass_ctx
def cases_assign(ctx, case_no, officer, actor):
    """Make OFFICER responsible for the case."""
    import getpass

    from pipeline.cases.casework import assign_case
    with open_ctx_store(ctx) as store:
        assign_case(store, case_no, officer, actor or getpass.getuser())
    click.echo(f"{case_no}: assigned to {officer}")


@cases_group.command("set")
@click.argument("case_no")
@click.option("--party", help="当事人 (the responsible party).")
@click.option("--phone", help="当事人电话.")
@click.option("--id-number", "id_number", help="当事人身份证号 (18 characters; masked in lists and exports).")
@click.option("--address", help="当事人住址 or the site's address.")
@click.option("--floors", help="层数 (storeys).")
@click.option("--floor-area", "floor_area_m2", help="建筑面积 in m².")
@click.option("--unit", help="责任单位/执法中队.")
@click.option("--remark", help="备注.")
@click.option("--actor", default=None, help="Who records it (default: $USER).")
@pass_ctx
def cases_set(ctx, case_no, actor, **facts):
    """Record what was found on site for the 台账 and the documents (an empty value clears it)."""
    import getpass

    from pipeline.cases.casework import set_facts
    given = {k: v for k, v in facts.items() if v is not None}
    if not given:
        raise click.UsageError("give at least one of --party --phone --id-number --address --floors --floor-area "
                               "--unit --remark")
    with open_ctx_store(ctx) as store:
        ev = set_facts(store, case_no, given, actor or getpass.getuser())
    click.echo(f"{case_no}: {ev['note']}")


@cases_group.command("photo")
@click.argument("case_no")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--note", default="", help="What the photo shows.")
@click.option("--actor", default=None, help="Who took it (default: $USER).")
@pass_ctx
def cases_photo(ctx, case_no, files, note, actor):
    """Attach on-site photos (JPEG with EXIF) or videos (MP4/MOV) to a case."""
    import getpass

    from pipeline.cases.media import add_media
    with open_ctx_store(ctx) as store:
        for f in files:
            try:
                data = Path(f).read_bytes()
            except OSError as e:
                raise InputError(f"{Path(f).name}: cannot be read ({e.strerror}); check the path") from None
            row = add_media(store, ctx.settings, case_no, data, Path(f).name, actor or getpass.getuser(), note)
            where = f"{row['distance_m']:.0f} m from the case" if row["distance_m"] is not None else "no position"
            click.echo(f"{case_no}: {row['kind']} {row['filename']} ({where}{', FAR' if row['far'] else ''}) "
                       f"sha256 {row['sha256'][:16]}")


@cases_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["xlsx", "csv", "geojson", "kml", "kmz", "gpkg"]),
              help="File format (default: from the --out suffix).")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="File to write.")
@report_filters
@pass_ctx
def cases_export(ctx, fmt, out_file, status, category, town, village, since, until):
    """Write the case list as xlsx, csv (UTF-8 BOM), GeoJSON, KML/KMZ or GeoPackage."""
    from pipeline.report.lists import export_cases
    since, until = check_period(since, until)
    rules = ctx.settings.rules
    with open_ctx_store(ctx) as store:
        cases = store.cases(status=list(status) or None, category=list(category) or None, town=town,
                            village=village, since=since, until=until)
        evidence = store.evidence()
        path = export_cases(cases, Path(out_file), fmt, lang=ctx.settings.report.language, rules=rules,
                            evidence=evidence, crs=store.crs, columns=ctx.settings.ledger.columns, store=store)
    click.echo(f"{len(cases)} cases written to {path}")


COMMANDS = [cases_group]
