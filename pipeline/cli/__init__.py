"""The `patrol` command line. It only orchestrates: each command calls one stage.

Heavy libraries are imported inside commands so that `patrol --help` stays quick.
A PatrolError is printed as one line on stderr (exit 2); `--debug` shows the traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pipeline.core.errors import InputError, PatrolError, StoreError, one_line


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", type=click.Path(dir_okay=False), envvar="PATROL_CONFIG",
              help="Settings file (default: config/default.yaml).")
@click.option("--store", help="Store location: a .gpkg file or a postgresql:// URL (env PATROL_STORE).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one setting; repeatable.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="lianwei-patrol")
@click.pass_context
def cli(ctx, config, store, overrides, debug):
    """两违巡查 Lianwei Patrol: drone flights → suspected illegal structures → enforcement cases."""
    ctx.obj = Context(config, store, overrides)
    ctx.meta["debug"] = debug


# ---------------------------------------------------------------- synthetic district
@cli.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--seed", default=1, show_default=True, help="Random seed (same seed, same district).")
@click.option("--size-m", default=400.0, show_default=True, help="Edge of the square district in metres.")
@click.option("--epochs", default=3, show_default=True, help="Flights months apart.")
@click.option("--gsd", "gsd_m", default=0.05, show_default=True, help="Native ground sample distance (m).")
@click.option("--shift-m", default=0.0, show_default=True,
              help="Georeference error of each later flight: shifted by up to this many metres.")
@click.option("--rotate-deg", default=0.0, show_default=True,
              help="… and turned by up to this many degrees about the district's centre.")
def synth(out_dir, seed, size_m, epochs, gsd_m, shift_m, rotate_deg):
    """Generate a synthetic rural district: orthophotos per epoch + parcels, zones, truth."""
    from pipeline.synth import generate_district
    result = generate_district(Path(out_dir), seed=seed, size_m=size_m, epochs=epochs, gsd_m=gsd_m,
                               shift_m=shift_m, rotate_deg=rotate_deg)
    click.echo(f"district written to {result.out_dir}")
    for p in result.orthos:
        click.echo(f"  ortho   {p}")
    click.echo(f"  vectors {result.vectors}")


# ---------------------------------------------------------------- demo
@cli.command()
@click.option("--out", "out_dir", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the district, the store and the reports.")
@click.option("--seed", default=1, show_default=True, help="Seed of the generated district.")
@click.option("--size-m", default=400.0, show_default=True, help="Edge of the district in metres.")
@click.option("--epochs", default=3, show_default=True, help="Flights months apart.")
@pass_ctx
def demo(ctx, out_dir, seed, size_m, epochs):
    """Generate the demo district (unless OUT has one) and run every stage over every epoch."""
    from pipeline.cli.demo import run_demo
    run_demo(ctx, Path(out_dir), seed=seed, size_m=size_m, epochs=epochs, echo=click.echo)


# ---------------------------------------------------------------- store, registry import, flights
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


@cli.group("import")
def import_group():
    """Load the parcel registry or restricted zones into the store."""


def _import_command(kind: str, key: str, what: str):
    @import_group.command(f"{kind}s", help=what)
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--layer", help=f"Layer to read (default: '{kind}s', or the only layer).")
    @click.option("--replace", is_flag=True, help=f"Remove every stored {kind} first (else upsert by {key}).")
    @pass_ctx
    def command(ctx, file, layer, replace):
        from pipeline.ingest import parcels as registry
        kinds = {"kinds": tuple(_ctx_rules(ctx).rules.illegal_land_use.zone_kinds)} if kind == "zone" else {}
        gdf = getattr(registry, f"read_{kind}s")(Path(file), layer, store_crs=ctx.settings.store.crs, **kinds)
        with open_ctx_store(ctx, create=True) as store:
            n = getattr(store, f"import_{kind}s")(gdf, replace=replace)
            total = store.status()["counts"][kind]
        click.echo(f"imported {n} {kind}s from {file} into {store.display_url} ({total} stored)")
    return command


import_parcels_cmd = _import_command("parcel", "parcel_id", "Import parcels (宅基地 registry) from a GeoPackage, "
                                                            "Shapefile or GeoJSON in any CRS.")
import_zones_cmd = _import_command("zone", "zone_id", "Import restricted zones (basic farmland, farmland, red line) "
                                                      "from a vector file.")


@cli.group("db")
def db_group():
    """Create, upgrade and inspect the store."""


@db_group.command("init")
@pass_ctx
def db_init(ctx):
    """Create the store (a GeoPackage file by default) with the newest schema."""
    with open_ctx_store(ctx, create=True) as store:
        st = store.status()
    click.echo(f"store {st['url']} ready: schema version {st['version']}, CRS {st['crs']}")


@db_group.command("migrate")
@pass_ctx
def db_migrate(ctx):
    """Upgrade the store's schema to the newest version (safe to repeat)."""
    with open_ctx_store(ctx, migrate=False) as store:
        before = store.status()["version"]
        after = store.migrate()
    click.echo(f"store {store.display_url}: schema version {before} -> {after}" if after != before
               else f"store {store.display_url}: schema version {after}, up to date")


@db_group.command("status")
@pass_ctx
def db_status(ctx):
    """Schema version and row counts of every table."""
    with open_ctx_store(ctx, migrate=False) as store:
        st = store.status()
    click.echo(f"store    {st['url']} ({st['backend']})")
    click.echo(f"crs      {st['crs']}")
    click.echo(f"schema   version {st['version']} (newest {st['latest_version']})")
    for table, n in st["counts"].items():
        click.echo(f"  {table:<12}{n:>8}")


@cli.group("flights")
def flights_group():
    """Registered flights and their processing status."""


@flights_group.command("list")
@click.option("--status", type=click.Choice(["uploaded", "processing", "done", "failed"]),
              help="Only flights in this status.")
@pass_ctx
def flights_list(ctx, status):
    """One line per flight: id, capture time, status, GSD, team, path."""
    with open_ctx_store(ctx) as store:
        flights = store.list_flights(status)
    if not len(flights):
        click.echo("no flights")
        return
    for _, f in flights.iterrows():
        when = "" if f["captured_at"] is None or str(f["captured_at"]) == "NaT" else f["captured_at"]
        gsd = "" if f["gsd_m"] != f["gsd_m"] else f"{f['gsd_m']:.3f} m"
        team = "" if f["team"] != f["team"] or f["team"] is None else f["team"]
        click.echo(f"{f['flight_id']}  {str(when):<19}  {f['status']:<10}  {gsd:<8}  {team}  {f['path']}")


@flights_group.command("show")
@click.argument("flight_id")
@pass_ctx
def flights_show(ctx, flight_id):
    """Every field of one flight and its detection count."""
    with open_ctx_store(ctx) as store:
        f = store.get_flight(flight_id)
        if f is None:
            raise InputError(f"flight {flight_id} is not in {store.url}; see `patrol flights list`")
        n = len(store.detections(flight_id))
    for key, value in f.items():
        if key == "footprint":
            value = "" if value is None else f"{value.geom_type}, {value.area:,.0f} m²"
        click.echo(f"{key:<14}{'' if value is None else value}")
    click.echo(f"{'detections':<14}{n}")
    from pipeline.ingest.flight import manifest_summary
    for key, value in manifest_summary(f):
        click.echo(f"{key:<14}{value}")


# ---------------------------------------------------------------- cases
def _ctx_rules(ctx: Context):
    return ctx.settings.rules


def _width(text: str) -> int:
    import unicodedata
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if v != v else f"{v:,.1f}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    s = str(v)
    return "" if s == "NaT" else s.removesuffix(" 00:00:00")


@cli.group("cases")
def cases_group():
    """The case ledger (台账): list, show, move through the lifecycle, assign."""


def _report_filters(f):
    """--status/--category/--town/--village/--from/--to, shared by cases list/export and report."""
    for opt in reversed([
        click.option("--status", multiple=True, help="Only cases in this status (repeatable)."),
        click.option("--category", multiple=True, help="Only this category (repeatable)."),
        click.option("--town", help="Only cases in this town."),
        click.option("--village", help="Only cases in this village."),
        click.option("--from", "since", help="Only cases first seen on or after this date (YYYY-MM-DD)."),
        click.option("--to", "until", help="Only cases first seen before this date (YYYY-MM-DD)."),
    ]):
        f = opt(f)
    return f


def _check_dates(*values):
    from datetime import date
    for v in values:
        if v is not None:
            try:
                date.fromisoformat(v)
            except ValueError:
                raise InputError(f"'{v}' is not a date; use YYYY-MM-DD") from None


@cases_group.command("list")
@_report_filters
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

    from pipeline.cases.track import cases_geojson
    _check_dates(since, until)
    rules = _ctx_rules(ctx)
    for s in status:
        if s not in rules.lifecycle.states:
            raise click.BadParameter(f"'{s}' is not a status; one of {', '.join(rules.lifecycle.states)}",
                                     param_hint="--status")
    with open_ctx_store(ctx) as store:
        cases = store.cases(status=list(status) or None, category=list(category) or None,
                            town=town, village=village, since=since, until=until)
    if flags:
        cases = cases[cases["flags"].map(lambda f: bool(set(f or []) & set(flags)))]
    if min_change_confidence is not None:
        cases = cases[cases["change_confidence"].astype(float).fillna(-1) >= min_change_confidence]
    if as_json:
        click.echo(json.dumps(cases_geojson(cases), ensure_ascii=False, default=str))
        return
    if not len(cases):
        click.echo("no cases")
        return
    head = ["case_no", "status", "category", "stock", "class", "area m²", "town", "village",
            "flags", "change", "last seen", "assignee"]
    rows = [[_cell(c["case_no"]), f"{c['status']} {rules.lifecycle.label(c['status'])}",
             _cell(c["category"]), _cell(c["stock"]), _cell(c["detector_class"]), _cell(c["area_m2"]),
             _cell(c["town"]), _cell(c["village"]), _cell(c["flags"]),
             "" if pd.isna(c["change_confidence"]) else f"{float(c['change_confidence']):.2f}",
             _cell(c["last_seen_at"]), _cell(c["assignee"])] for _, c in cases.iterrows()]
    widths = [max(_width(r[i]) for r in [head] + rows) for i in range(len(head))]
    for r in [head] + rows:
        click.echo("  ".join(_pad(x, w) for x, w in zip(r, widths)).rstrip())
    click.echo(f"{len(rows)} cases")


@cases_group.command("show")
@click.argument("case_no")
@pass_ctx
def cases_show(ctx, case_no):
    """Every fact of one case and its event history."""
    from pipeline.cases.track import get_case
    rules = _ctx_rules(ctx)
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
        click.echo(f"{key:<20}{_cell(value)}")
    click.echo(f"history ({len(events)} events):")
    for _, e in events.iterrows():
        frm = _cell(e["from_status"]) or "-"
        click.echo(f"  {_cell(e['at'])}  {_pad(_cell(e['actor']), 10)}  {frm} -> {_cell(e['to_status'])}  "
                   f"{_cell(e['note'])}")


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
    from pipeline.cases.track import change_status
    rules = _ctx_rules(ctx)
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
    from pipeline.cases.track import assign_case
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
    from pipeline.cases.track import set_facts
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


# ---------------------------------------------------------------- detection
@cli.command()
@click.argument("ortho", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Detections file: .gpkg (layer 'detections') or .parquet (GeoParquet).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False),
              help="Weights (.pt or .onnx); default: detector.model in the settings.")
@click.option("--force", is_flag=True, help="Run on imagery outside the model's GSD range (detector.gsd_range_m).")
@pass_ctx
def detect(ctx, ortho, out, model_path, force):
    """Detect structures on one orthophoto (any CRS) and write them in the store CRS."""
    from pipeline.detection.detect import Detector, detect_ortho, write_detections
    from pipeline.ingest import check_gsd
    from pipeline.ingest.raster import shown
    from pipeline.detection.tiling import ground_pixel_size, open_raster
    settings = ctx.settings
    with open_raster(ortho) as src:     # a bad ortho fails before the model loads
        gsd = max(ground_pixel_size(src))
    forced = check_gsd(shown(ortho), gsd, settings, force)
    if forced:
        click.echo(f"note: outside the model's GSD range, run because of --force ({forced})", err=True)
    detector = Detector.from_settings(settings, model_path)
    gdf = detect_ortho(Path(ortho), settings, detector=detector)
    write_detections(gdf, Path(out))
    counts = gdf["class_name"].value_counts().to_dict()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    click.echo(f"{len(gdf)} detections ({summary}) written to {out}")


# ---------------------------------------------------------------- training data, training, evaluation
def _split_pair(text: str) -> tuple[str, str]:
    ortho, sep, labels = text.rpartition(":")
    if not sep or not ortho or not labels:
        raise click.BadParameter(f"'{text}' is not ORTHO:LABELS", param_hint="--real")
    return ortho, labels


@cli.group("dataset")
def dataset_group():
    """Build YOLO training data: synthetic scenes and labelled real flights."""


@dataset_group.command("build")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--scenes", default=100, show_default=True, help="Synthetic training scenes.")
@click.option("--val-scenes", default=20, show_default=True, help="Synthetic validation scenes (other seeds).")
@click.option("--seed", default=1, show_default=True, help="First scene seed (train seed…, then val).")
@click.option("--size-m", default=128.0, show_default=True, help="Edge of each scene in metres.")
@click.option("--chip-px", default=640, show_default=True, help="Chip edge in pixels.")
@click.option("--real", multiple=True, metavar="ORTHO:LABELS", help="A labelled real flight for training; repeatable.")
@click.option("--real-val", multiple=True, metavar="ORTHO:LABELS", help="A labelled real flight for validation.")
@click.option("--real-stride", type=int, default=None, help="Step between real training chips (px; default chip edge).")
@click.option("--suite", "suite_dir", type=click.Path(file_okay=False),
              help="Also every training crop of the real-imagery suite in this folder (laid out like "
                   "../shared/realdata; roles from --manifest): evaluation crops and parts are never chipped.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Suite manifest (default: config/realdata_suite.yaml).")
@click.option("--coarse", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of scenes rendered at a coarse native GSD (0.15-0.30 m) and resampled to the "
                   "processing GSD, as the tiler resamples a coarse survey.")
@click.option("--l-houses/--no-l-houses", default=True, show_default=True,
              help="Houses with a second wing (L / T plan) among the scenes' houses.")
@click.option("--terraces", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of village blocks built as rows of adjoining houses, each roof its own structure "
                   "(dense settlements, old village cores).")
@pass_ctx
def dataset_build(ctx, out_dir, scenes, val_scenes, seed, size_m, chip_px, real, real_val, real_stride,
                  suite_dir, manifest, coarse, l_houses, terraces):
    """Render randomised synthetic scenes (split by scene) and import real flights into OUT."""
    from pipeline.model.evaluate import DEFAULT_SUITE, read_suite
    from pipeline.model.train import build_dataset
    suite_real = []
    if suite_dir:
        if not Path(suite_dir).is_dir():
            raise InputError(f"suite folder {Path(suite_dir).name} not found; pass the folder of the labelled real areas")
        for c in read_suite(manifest or DEFAULT_SUITE):
            if c["role"] == "train":
                suite_real.append((Path(suite_dir) / c["ortho"], Path(suite_dir) / c["truth"], c["holdout"]))
    res = build_dataset(Path(out_dir), scenes=scenes, val_scenes=val_scenes, seed=seed, size_m=size_m,
                        chip_px=chip_px, real=[_split_pair(r) for r in real] + suite_real,
                        real_val=[_split_pair(r) for r in real_val], gsd_m=ctx.settings.processing.gsd_m,
                        real_stride_px=real_stride, coarse=(coarse, 0.15, 0.30) if coarse else None,
                        l_houses=l_houses, terraces=terraces)
    for split in ("train", "val"):
        st = res[split]
        click.echo(f"{split}: {st.chips} chips, {st.boxes} boxes "
                   + ", ".join(f"{k} {v}" for k, v in st.per_class.items()))
    click.echo(f"dataset {Path(out_dir) / 'data.yaml'}")


@dataset_group.command("import")
@click.argument("ortho", type=click.Path(dir_okay=False))
@click.argument("labels", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True)
@click.option("--class-column", help="Column with the class (default: class_name/class/condition if present).")
@click.option("--default-class", default="building", show_default=True, help="Class of unlabelled polygons.")
@click.option("--layer", help="Layer of the label file.")
@click.option("--chip-px", default=640, show_default=True, help="Chip edge in pixels.")
@click.option("--stride", "stride_px", type=int, default=None, help="Step between chips (px; default chip edge).")
@pass_ctx
def dataset_import(ctx, ortho, labels, out_dir, split, class_column, default_class, layer, chip_px, stride_px):
    """Import a labelled flight (ORTHO any CRS + LABELS polygons) as chips at the processing GSD."""
    from pipeline.model.train import import_labelled
    st = import_labelled(ortho, labels, out_dir, gsd_m=ctx.settings.processing.gsd_m, chip_px=chip_px,
                         split=split, stride_px=stride_px, class_column=class_column,
                         default_class=default_class, layer=layer)
    click.echo(f"{split}: {st.chips} chips, {st.boxes} boxes from {st.footprints} footprints → {out_dir}")


@dataset_group.command("from-reviews")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--since", help="Only flights captured on or after this date (YYYY-MM-DD).")
@click.option("--flights", "flight_ids", multiple=True, help="Only these flights (repeatable).")
@pass_ctx
def dataset_from_reviews_cmd(ctx, out_dir, since, flight_ids):
    """Chips from the officers' verdicts: confirmed, lawful and drawn cases labelled (corrected
    outlines), false positives as background, unjudged detections painted over; the frozen
    evaluation flights to val."""
    from pipeline.model.review_data import dataset_from_reviews
    _check_dates(since)
    with open_ctx_store(ctx) as store:
        summary = dataset_from_reviews(store, ctx.settings, Path(out_dir), since=since,
                                       flights=list(flight_ids) or None)
    click.echo(f"{len(summary['flights'])} reviewed flights: {summary['positives']} positives, "
               f"{summary['negatives']} false positives, {summary['excluded_detections']} unjudged detections "
               f"painted over; chips train {summary['chips'].get('train', 0)}, val {summary['chips'].get('val', 0)}")
    held = ", ".join(f + (" (part)" if r else "") for f, r in summary["evaluation_set"]["flights"].items())
    click.echo(f"evaluation flights (never trained on): {held}")
    click.echo(f"dataset {Path(out_dir) / 'data.yaml'}")


@cli.command("train")
@click.option("--from-reviews", "from_reviews", type=click.Path(file_okay=False),
              help="Fine-tune the active model on this `dataset from-reviews` folder and register a candidate.")
@click.option("--device", help="With --from-reviews: cpu (default) or a CUDA index.")
@click.option("--data", type=click.Path(), help="Dataset folder or data.yaml (default: from the training config).")
@click.option("--epochs", type=int, help="Epochs (default: from the training config).")
@click.option("--resume", is_flag=True, help="Resume the interrupted run from its last.pt.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Start from these weights (fine-tuning).")
@click.option("--pretrained", type=click.Path(dir_okay=False),
              help="Initialise from a detection checkpoint of another task (e.g. COCO YOLO11n): matching "
                   "tensors transfer, the class and angle outputs start fresh.")
@click.option("--name", help="Run name under the project folder.")
@click.option("--hours", type=float, help="Time budget: fit the epochs and LR schedule into this many hours.")
@click.option("--train-config", type=click.Path(dir_okay=False), help="Training settings (default: config/train.yaml).")
@click.option("--ship", "ship_to", type=click.Path(dir_okay=False),
              help="After training, copy best.pt here (optimizer stripped) and export .onnx beside it.")
@click.option("--ship-only", is_flag=True, help="Skip training; ship the run's best.pt.")
@pass_ctx
def train_cmd(ctx, from_reviews, device, data, epochs, resume, weights, pretrained, name, hours, train_config,
              ship_to, ship_only):
    """Train the detector with ultralytics on a dataset from `patrol dataset`."""
    from pipeline.model.train import load_train_config, ship_model, train
    if from_reviews:
        import getpass

        from pipeline.model.registry import train_candidate
        with open_ctx_store(ctx) as store:
            row = train_candidate(store, ctx.settings, Path(from_reviews), actor=getpass.getuser(), epochs=epochs,
                                  device=device)
        click.echo(f"candidate {row['version']} (parent {row['parent']}, {row['data']['epochs']} epochs, "
                   f"{row['data']['train_s']} s); next: patrol model compare {row['version']}")
        return
    if ship_only:
        cfg = load_train_config(train_config, {"name": name})
        run_dir = Path(cfg["project"]) / cfg["name"]
    else:
        run_dir = train(train_config, data=data, epochs=epochs, resume=resume, weights=weights, name=name,
                        hours=hours, pretrained=pretrained)
    click.echo(f"run {run_dir}")
    if ship_to:
        pt, onnx = ship_model(run_dir / "weights" / "best.pt", Path(ship_to), imgsz=ctx.settings.processing.tile_px)
        click.echo(f"shipped {pt} and {onnx}")


@cli.group("model")
def model_group():
    """The model registry: list, compare, promote, roll back (docs/MODELS.md)."""


def _figure(v) -> str:
    return "—" if v is None else f"{v:.3f}"


@model_group.command("list")
@pass_ctx
def model_list(ctx):
    """Registered models, the active one marked."""
    from pipeline.model.registry import listing
    with open_ctx_store(ctx) as store:
        rows = listing(store, ctx.settings)
    for r in rows:
        comp = (r.get("metrics") or {}).get("comparison") or {}
        mark = "*" if r["state"] == "active" else " "
        gate = "" if not comp else (" passes" if comp.get("passes") else " refused") + f" vs {comp.get('active')}"
        click.echo(f"{mark} {r['version']:<24} {r['state']:<10} parent {r.get('parent') or '—':<22}{gate}")


@model_group.command("compare")
@click.argument("candidate")
@pass_ctx
def model_compare(ctx, candidate):
    """CANDIDATE and the active model side by side on the frozen evaluation set."""
    import getpass

    from pipeline.model.registry import compare
    with open_ctx_store(ctx) as store:
        res = compare(store, ctx.settings, candidate, actor=getpass.getuser())
    click.echo(f"{'part':<12} {'':<10} {'recall':>8} {'precision':>10}")
    for part, both in res["parts"].items():
        for who in ("active", "candidate"):
            m = both[who]
            click.echo(f"{part:<12} {who:<10} {_figure(m.get('recall')):>8} {_figure(m.get('precision')):>10}")
    click.echo(f"{candidate} {'passes the gate' if res['passes'] else 'fails the gate'} (margin "
               f"{res['margin']:g} against {res['active']})")


@model_group.command("promote")
@click.argument("candidate")
@pass_ctx
def model_promote(ctx, candidate):
    """Make CANDIDATE the active model if it passes the gate."""
    import getpass

    from pipeline.model.registry import promote
    with open_ctx_store(ctx) as store:
        res = promote(store, ctx.settings, candidate, actor=getpass.getuser())
    click.echo(f"{candidate} is the active model (was {res['active']})")


@model_group.command("rollback")
@pass_ctx
def model_rollback(ctx):
    """Return to the model that was active before the current one."""
    import getpass

    from pipeline.model.registry import rollback
    with open_ctx_store(ctx) as store:
        row = rollback(store, ctx.settings, actor=getpass.getuser())
    click.echo(f"{row['version']} is the active model again")


@cli.command("evaluate")
@click.option("--ortho", type=click.Path(dir_okay=False), help="Ortho to detect on (any CRS, RGB or RGBA).")
@click.option("--truth", type=click.Path(dir_okay=False), help="Footprints to score against (any vector file).")
@click.option("--truth-layer", help="Layer of the truth file (a district.gpkg: truth).")
@click.option("--epoch", type=int, help="Only truth rows of this epoch (district truth layer).")
@click.option("--classes", help="Comma-separated classes to score (default: all).")
@click.option("--iou", default=0.5, show_default=True, help="IoU for a match.")
@click.option("--envelopes", is_flag=True,
              help="Compare against each footprint's axis-aligned envelope (for axis-aligned box models).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Weights (default: detector.model).")
@click.option("--suite", "suite_dir", type=click.Path(file_okay=False),
              help="Instead: every labelled real area of this folder (laid out like ../shared/realdata).")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="With --suite: which crop of each area is for evaluation (default config/realdata_suite.yaml).")
@click.option("--roles", default="eval", show_default=True, help="With --suite: crops of these roles (eval,train).")
@click.option("--scenes", type=int, help="Instead: this many held-out generated scenes (ultralytics mAP).")
@click.option("--seed", default=1_000_000, show_default=True, help="First seed of the held-out scenes.")
@click.option("--exclude-data", type=click.Path(file_okay=False), help="Refuse seeds used by this dataset.")
@click.option("--size-m", default=128.0, show_default=True, help="With --scenes: scene side in metres.")
@click.option("--chip-px", type=int, help="With --scenes: chip size (default: processing.tile_px).")
@click.option("--l-houses/--no-l-houses", default=True, show_default=True,
              help="With --scenes: houses with a second wing (L / T plan) among them; --no-l-houses draws "
                   "the scenes of the figures made before (2026-11-26).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures as JSON.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a Markdown report.")
@pass_ctx
def evaluate_cmd(ctx, ortho, truth, truth_layer, epoch, classes, iou, envelopes, model_path, suite_dir, manifest,
                 roles, scenes, seed, exclude_data, size_m, chip_px, l_houses, json_path, report_path):
    """Precision/recall/F1 at IoU 0.5 on an ortho with truth, on a suite of real areas, or mAP on
    held-out generated scenes."""
    from pipeline.model import evaluate as ev
    if suite_dir:
        if not Path(suite_dir).is_dir():
            raise InputError(f"suite folder {suite_dir} not found; pass the folder of the labelled real areas")
        res = ev.evaluate_suite(suite_dir, ctx.settings, manifest or ev.DEFAULT_SUITE,
                                roles=[r.strip() for r in roles.split(",") if r.strip()], model=model_path, iou=iou)
        text = ev.suite_markdown(res, "patrol evaluate --suite " + Path(suite_dir).name)
        click.echo(text)
        if json_path:
            ev.write_json(res, json_path)
            click.echo(f"json {json_path}")
        if report_path:
            Path(report_path).parent.mkdir(parents=True, exist_ok=True)
            Path(report_path).write_text(text, encoding="utf-8")
            click.echo(f"report {report_path}")
        return
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if names:
        unknown = [c for c in names if c not in ctx.settings.detector.classes]
        if unknown:
            raise InputError(f"class {unknown[0]} is not one of {', '.join(ctx.settings.detector.classes)}")
    if scenes:
        m = ev.evaluate_scenes(Path(model_path) if model_path else ctx.settings.model_path.with_suffix(".pt"),
                               scenes=scenes, seed=seed, exclude_data=exclude_data, size_m=size_m,
                               chip_px=chip_px or ctx.settings.processing.tile_px, l_houses=l_houses)
        click.echo(f"mAP50 {m['mAP50']:.3f}  mAP50-95 {m['mAP50-95']:.3f}  "
                   f"({m['chips']} chips, {m['objects']} objects, seeds {seed}…{seed + scenes - 1})")
        for c, v in m["per_class_yolo"].items():
            click.echo(f"  {c:<20} P {v['precision']:.3f}  R {v['recall']:.3f}  mAP50 {v['mAP50']:.3f}")
    else:
        if not ortho or not truth:
            raise InputError("evaluate needs --ortho and --truth (or --scenes N); pass them")
        m = ev.evaluate_ortho(ortho, truth, ctx.settings, classes=names, model=model_path, iou=iou,
                              truth_layer=truth_layer, epoch=epoch, envelope=envelopes)
        click.echo(f"precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  "
                   f"(tp {m['tp']}, fp {m['fp']}, fn {m['fn']}; IoU ≥ {iou})")
        cov = m["coverage"]
        click.echo(f"footprints found {cov['found_recall']:.3f} ({cov['found']} of {m['n_truth']} at least half "
                   f"covered by a detection); detections on a footprint {cov['on_target_precision']:.3f}")
        for c, v in m.get("per_class", {}).items():
            click.echo(f"  {c:<20} P {v['precision']:.3f}  R {v['recall']:.3f}  F1 {v['f1']:.3f}  "
                       f"(tp {v['tp']}, fp {v['fp']}, fn {v['fn']})")
    if json_path:
        out = m if scenes else {k: m[k] for k in ("precision", "recall", "f1", "tp", "fp", "fn")} | m
        ev.write_json(out, json_path)
        click.echo(f"json {json_path}")
    if report_path:
        ev.write_report(m, report_path)
        click.echo(f"report {report_path}")


# ---------------------------------------------------------------- reports (issue 5)
@cli.command("report")
@click.option("--flight", "flight_id", help="Report this flight (default: the whole district).")
@click.option("--out", "out_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the map, lists, evidence and statistics.")
@_report_filters
@pass_ctx
def report_cmd(ctx, flight_id, out_dir, status, category, town, village, since, until):
    """Offline map, case lists, evidence sheets and statistics for a flight or the district."""
    from pipeline.report import write_reports
    _check_dates(since, until)
    states = _ctx_rules(ctx).lifecycle.states
    for s in status:
        if s not in states:
            raise click.BadParameter(f"'{s}' is not a status; one of {', '.join(states)}", param_hint="--status")
    with open_ctx_store(ctx) as store:
        paths = write_reports(store, ctx.settings, Path(out_dir), flight_id, status=list(status) or None,
                              category=list(category) or None, town=town, village=village,
                              since=since, until=until)
    for name, path in paths.items():
        click.echo(f"{name:<28}{path}")


@cli.command("stats")
@click.option("--from", "since", help="Count what happened on or after this date (YYYY-MM-DD).")
@click.option("--to", "until", help="Count what happened before this date (YYYY-MM-DD).")
@click.option("--out", "out_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder for stats.md, stats.xlsx and stats.png.")
@pass_ctx
def stats_cmd(ctx, since, until, out_dir):
    """Campaign figures reported upward, by the date each action happened: 本期 and 累计,
    整改率, 销号率, by month, town, village and category."""
    from pipeline.report.stats import write_stats
    _check_dates(since, until)
    with open_ctx_store(ctx) as store:
        paths = write_stats(store, ctx.settings, ctx.settings.rules, Path(out_dir), since, until)
    click.echo(paths["stats_md"].read_text(encoding="utf-8"))
    for name, path in paths.items():
        click.echo(f"{name:<12}{path}")


@cases_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["xlsx", "csv", "geojson", "kml", "kmz", "gpkg"]),
              help="File format (default: from the --out suffix).")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="File to write.")
@_report_filters
@pass_ctx
def cases_export(ctx, fmt, out_file, status, category, town, village, since, until):
    """Write the case list as xlsx, csv (UTF-8 BOM), GeoJSON, KML/KMZ or GeoPackage."""
    from pipeline.report.lists import export_cases
    _check_dates(since, until)
    rules = _ctx_rules(ctx)
    with open_ctx_store(ctx) as store:
        cases = store.cases(status=list(status) or None, category=list(category) or None, town=town,
                            village=village, since=since, until=until)
        evidence = store.evidence()
        path = export_cases(cases, Path(out_file), fmt, lang=ctx.settings.report.language, rules=rules,
                            evidence=evidence, crs=store.crs, columns=ctx.settings.ledger.columns, store=store)
    click.echo(f"{len(cases)} cases written to {path}")


# ---------------------------------------------------------------- housekeeping
@cli.command("gc")
@pass_ctx
def gc_cmd(ctx):
    """Remove what no flight needs: unpackings a killed or refused ingest left, abandoned uploads."""
    from pipeline.core.disk import collect_garbage
    done = collect_garbage(ctx.settings)
    click.echo(f"removed {done['partial_unpackings']} unfinished unpackings and {done['abandoned_uploads']} "
               f"abandoned uploads ({done['bytes'] / 2**20:,.1f} MiB)")


# ---------------------------------------------------------------- web service (issue 8)
@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: service.host).")
@click.option("--port", default=None, type=int, help="Port (default: service.port).")
@click.option("--truth-layer", type=click.Path(dir_okay=False),
              help="TEST/DEMO ONLY: flights processed from the web take their detections from this "
                   "generated district.gpkg's truth layer instead of the model.")
@pass_ctx
def serve(ctx, host, port, truth_layer):
    """Run the web service: upload for patrol teams, map review and case work for officers."""
    from pipeline.detection.detectors import TruthTileDetector
    from pipeline.service import serve as run_service
    from pipeline.core.disk import collect_garbage
    s = ctx.settings
    collect_garbage(s)
    detector = TruthTileDetector(truth_layer, s.detector.classes) if truth_layer else None
    click.echo(f"serving {s.store.url} on http://{host or s.service.host}:{port or s.service.port}/ (Ctrl-C stops)")
    run_service(s, host, port, detector=detector)


@cli.command("docs")
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
    rules = _ctx_rules(ctx)
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


@cli.command("digest")
@click.option("--date", "day", help="The day of the digest (YYYY-MM-DD; default: today).")
@click.option("--send", is_flag=True, help="Post it to dispatch.webhook_url (the chat robot).")
@pass_ctx
def digest_cmd(ctx, day, send):
    """The daily digest: overdue cases, cases due soon, new suspected cases, by officer;
    printed, and with --send posted to the chat robot (run it from cron each morning)."""
    from datetime import date as _date

    from pipeline.cases.dispatch import digest, digest_markdown, send_digest
    _check_dates(day)
    with open_ctx_store(ctx) as store:
        dg = digest(store, _ctx_rules(ctx), ctx.settings, today=_date.fromisoformat(day) if day else None)
    click.echo(digest_markdown(dg))
    if send:
        click.echo(send_digest(dg, ctx.settings))


@cli.group("users")
def users_group():
    """Accounts of the web service: patrol (upload), officer (cases of their towns), admin."""


def _ask_password(password: str | None) -> str:
    return password or click.prompt("password", hide_input=True, confirmation_prompt=True)


@users_group.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["patrol", "officer", "admin"]), required=True)
@click.option("--town", "towns", multiple=True, help="Town or village an officer works on (repeatable).")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--password", envvar="PATROL_NEW_PASSWORD", help="Password (else asked; env PATROL_NEW_PASSWORD).")
@pass_ctx
def users_add(ctx, username, role, towns, display_name, password):
    """Create an account."""
    from pipeline.service.auth import add_user
    with open_ctx_store(ctx, create=True) as store:
        u = add_user(store, username, _ask_password(password), role, list(towns), display_name)
    click.echo(f"user {u.username} ({u.role}{': ' + ', '.join(u.towns) if u.towns else ''}) added")


@users_group.command("passwd")
@click.argument("username")
@click.option("--password", envvar="PATROL_NEW_PASSWORD", help="New password (else asked).")
@pass_ctx
def users_passwd(ctx, username, password):
    """Set a new password (ends the account's sessions and API tokens)."""
    from pipeline.service.auth import set_password
    with open_ctx_store(ctx) as store:
        set_password(store, username, _ask_password(password))
    click.echo(f"password of {username} changed")


@users_group.command("list")
@pass_ctx
def users_list(ctx):
    """One line per account: name, role, towns/villages, active or disabled."""
    from pipeline.service.auth import list_users
    with open_ctx_store(ctx) as store:
        for u in list_users(store):
            state = "disabled" if u.disabled else "active"
            click.echo(f"{u.username}\t{u.role}\t{','.join(u.towns) or '-'}\t{state}\t{u.display_name}")


@users_group.command("disable")
@click.argument("username")
@click.option("--enable", is_flag=True, help="Enable the account again instead.")
@pass_ctx
def users_disable(ctx, username, enable):
    """Disable an account (its sessions and tokens stop working at once)."""
    from pipeline.service.auth import set_disabled
    with open_ctx_store(ctx) as store:
        set_disabled(store, username, not enable)
    click.echo(f"user {username} {'enabled' if enable else 'disabled'}")


@users_group.command("unlock")
@click.argument("username")
@pass_ctx
def users_unlock(ctx, username):
    """Lift the lockout of an account locked after too many failed sign-ins."""
    from pipeline.service.auth import unlock
    with open_ctx_store(ctx) as store:
        unlock(store, username)
    click.echo(f"user {username} unlocked")


# ---------------------------------------------------------------- nightly batch (issue 9)
@cli.command("nightly")
@click.option("--flights", "flight_ids", multiple=True, metavar="ID[,ID…]",
              help="Only these flights (repeatable or comma-separated; default: every uploaded flight "
                   "and every interrupted one).")
@click.option("--workers", type=int, help="Start a local Dask cluster of N worker processes.")
@click.option("--scheduler", metavar="tcp://HOST:PORT", help="Use the Dask cluster of this scheduler.")
@click.option("--summary", "summary_dir", type=click.Path(file_okay=False),
              help="Folder for the run summary (JSON + Markdown; default: nightly/ beside the store).")
@click.option("--checkpoints", type=click.Path(file_okay=False),
              help="Folder for tile checkpoints (default: <store>.checkpoints beside an embedded store).")
@click.option("--chunk-tiles", default=16, show_default=True, help="Tiles per task and per checkpoint.")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False),
              help="Also write each finished flight's reports to DIR/<flight_id>/.")
@click.option("--force", is_flag=True, help="Redo given flights even when already done.")
@click.option("--truth-layer", type=click.Path(dir_okay=False),
              help="TEST/DEMO ONLY: take detections from this generated district.gpkg's truth layer "
                   "instead of the model (same tiles, checkpoints and workers).")
@pass_ctx
def nightly_cmd(ctx, flight_ids, workers, scheduler, summary_dir, checkpoints, chunk_tiles, reports_dir, force,
                truth_layer):
    """Process every new flight (oldest first), safely twice, resumably; exit 1 if any failed."""
    import re

    from pipeline.process import run_nightly
    from pipeline.core.disk import collect_garbage
    ids = [i for v in flight_ids for i in re.split(r"[,\s]+", v) if i]
    settings = ctx.settings
    collect_garbage(settings)
    with open_ctx_store(ctx) as store:
        summary = run_nightly(store, settings, ids or None, workers=workers, scheduler=scheduler,
                              checkpoints=checkpoints, chunk_tiles=chunk_tiles, truth=truth_layer,
                              reports=reports_dir, force=force, echo=click.echo)
        if summary_dir is None:
            summary_dir = (Path(store.url).parent / "nightly") if store.backend == "gpkg" else Path("nightly")
    json_path, md_path = summary.write(summary_dir)
    click.echo("")
    click.echo(summary.markdown().rstrip())
    click.echo(f"\nsummary: {json_path} and {md_path}")
    if summary.failed:
        raise click.exceptions.Exit(1)


# ---------------------------------------------------------------- ingest (issue 7)
@cli.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--team", help="Patrol team that flew it (recorded on the flight).")
@click.option("--each", is_flag=True,
              help="A batch: every PATH is its own flight (default: all PATHs are one flight).")
@click.option("--force", is_flag=True,
              help="Register imagery outside the model's GSD range (detector.gsd_range_m); the flight records it.")
@pass_ctx
def ingest_cmd(ctx, paths, team, each, force):
    """Register a flight: an ortho GeoTIFF, the orthos of one split export (a folder or several
    paths), or a folder/zip of drone photos. Prints the flight id; refused files are listed at
    the end (exit 1 when any was refused). `patrol run`/`patrol nightly` take it from there."""
    from pipeline.ingest.flight import Refusal
    from pipeline.ingest.raster import shown
    from pipeline.process.run import register_flight
    from pipeline.core.values import is_missing

    groups = [[p] for p in paths] if each else [list(paths)]
    refused: list[Refusal] = []
    registered = 0
    with open_ctx_store(ctx, create=True) as store:
        for group in groups:
            mine: list[Refusal] = []
            notes: list[str] = []
            try:
                f = register_flight(store, group if len(group) > 1 else group[0], ctx.settings, team=team,
                                    refused=mine, notes=notes, force=force)
            except PatrolError as e:
                refused.append(Refusal(", ".join(shown(p) for p in group), one_line(e), one_line(e.zh or e)))
                refused.extend(mine)
                continue
            refused.extend(mine)
            registered += 1
            for note in notes:
                click.echo(f"note: {note}", err=True)
            gsd = f"{f['gsd_m']:.3f} m" if f.get("gsd_m") == f.get("gsd_m") and f.get("gsd_m") else "?"
            click.echo(f"registered {f['flight_id']}: {f.get('source')}, captured {f.get('captured_at')}, "
                       f"GSD {gsd}, status {f['status']}, {shown(f['path'])}", err=True)
            if not is_missing(f.get("forced")):
                click.echo(f"note: outside the model's GSD range, registered because of --force ({f['forced']})",
                           err=True)
            click.echo(f["flight_id"])
    lines = list(dict.fromkeys(r.reason if r.file in r.reason else f"{r.file}: {r.reason}" for r in refused))
    if len(lines) == 1 and not registered:                 # the one file given: one line
        click.echo(f"error: {lines[0]}", err=True)
        raise click.exceptions.Exit(2)
    if lines:
        click.echo(f"refused {len(lines)}:", err=True)
        for line in lines:
            click.echo(f"  {line}", err=True)
        raise click.exceptions.Exit(1 if registered else 2)


@cli.command("run")
@click.argument("flight")
@click.option("--team", help="Patrol team, when FLIGHT is a path registered now.")
@click.option("--force", is_flag=True, help="Process again even if the flight is done (never duplicates), and "
              "run imagery outside the model's GSD range (detector.gsd_range_m; the flight records it).")
@pass_ctx
def run_cmd(ctx, flight, team, force):
    """Run one flight through ingest → tile → detect → match → track.

    FLIGHT is a flight id (see `patrol flights list`) or a path to register first."""
    from pipeline.process.run import process_flight, register_flight

    store = open_ctx_store(ctx, create=True)
    try:
        record = store.get_flight(flight)
        if record is None:
            if not Path(flight).exists():
                raise PatrolError(f"'{flight}' is neither a flight id in {ctx.settings.store.url} nor a "
                                  f"file; see `patrol flights list` or give the ortho's path")
            record = register_flight(store, flight, ctx.settings, team=team, force=force)
            click.echo(f"flight {record['flight_id']} ({flight})")
        res = process_flight(store, record["flight_id"], ctx.settings, force=force)
    finally:
        store.close()
    if res.skipped:
        click.echo(f"flight {res.flight_id} is already done; --force processes it again")
    else:
        click.echo(f"flight {res.flight_id}: {res.detections} detections, {res.findings} findings, "
                   f"{res.new_cases} new cases, {res.events} case events")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: one clear line for a PatrolError, never a traceback."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        rv = cli.main(args=args, prog_name="patrol", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool):      # ctx.exit(n) / Exit(n) in a command
            return rv
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as e:          # a mistyped option or value: one line too
        cmd = e.ctx.command_path if e.ctx is not None else "patrol"
        click.echo(f"error: {one_line(e.format_message())} (see `{cmd} --help`)", err=True)
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"error: {one_line(e.format_message())}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except PatrolError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


