"""`patrol synth|demo|import|flights|ingest|run|detect|nightly`: data in, flights through the stages."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.options import open_ctx_store, pass_ctx
from pipeline.core.errors import InputError, PatrolError, one_line

# lazy imports: each command imports its stage when it runs, so that `patrol --help` stays quick


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--seed", default=1, show_default=True, help="Random seed (same seed, same district).")
@click.option("--size-m", default=400.0, show_default=True, help="Edge of the square district in metres.")
@click.option("--epochs", default=3, show_default=True, help="Flights months apart.")
@click.option("--gsd", "gsd_m", default=0.05, show_default=True, help="Native ground sample distance (m).")
@click.option("--shift-m", default=0.0, show_default=True,
              help="Georeference error of each later flight: shifted by up to this many metres.")
@click.option("--rotate-deg", default=0.0, show_default=True,
              help="… and turned by up to this many degrees about the district's centre.")
@click.option("--dsm-gsd", "dsm_gsd_m", default=0.25, show_default=True,
              help="Ground pixel of each epoch's DSM and DTM (m); 0: none.")
def synth(out_dir, seed, size_m, epochs, gsd_m, shift_m, rotate_deg, dsm_gsd_m):
    """Generate a synthetic rural district: orthophotos, DSM and DTM per epoch + parcels, zones, truth."""
    from pipeline.synth import generate_district
    if dsm_gsd_m and not 0.05 <= dsm_gsd_m <= 2.0:
        raise InputError(f"DSM ground pixel {dsm_gsd_m} m is out of range; choose --dsm-gsd between 0.05 and 2, or 0")
    result = generate_district(Path(out_dir), seed=seed, size_m=size_m, epochs=epochs, gsd_m=gsd_m,
                               shift_m=shift_m, rotate_deg=rotate_deg, dsm_gsd_m=dsm_gsd_m or None)
    click.echo(f"district written to {result.out_dir}")
    for p in result.orthos:
        click.echo(f"  ortho   {p}")
        if dsm_gsd_m:
            click.echo(f"  heights {p.with_name(p.stem + '_dsm.tif')}, {p.with_name(p.stem + '_dtm.tif')}")
    click.echo(f"  vectors {result.vectors}")


@click.command()
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


@click.group("import")
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
        kinds = {"kinds": tuple(ctx.settings.rules.rules.illegal_land_use.zone_kinds)} if kind == "zone" else {}
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


@click.group("flights")
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


@click.command()
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
    from pipeline.detection.tiling import ground_pixel_size, open_raster
    from pipeline.ingest import check_gsd
    from pipeline.ingest.raster import shown
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
    if detector.choice is not None:
        click.echo(f"inference: {detector.choice.text()}", err=True)


@click.command("nightly")
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

    from pipeline.core.disk import collect_garbage
    from pipeline.process.nightly import run_nightly
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


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--team", help="Patrol team that flew it (recorded on the flight).")
@click.option("--each", is_flag=True,
              help="A batch: every PATH is its own flight (default: all PATHs are one flight).")
@click.option("--force", is_flag=True,
              help="Register imagery outside the model's GSD range (detector.gsd_range_m); the flight records it.")
@click.option("--dsm", type=click.Path(dir_okay=False, path_type=Path),
              help="The flight's DSM (float GeoTIFF of heights, docs/HEIGHTS.md); found in a folder/zip without it.")
@click.option("--dtm", type=click.Path(dir_okay=False, path_type=Path),
              help="The flight's DTM (terrain); without it the ground is filtered out of the DSM.")
@pass_ctx
def ingest_cmd(ctx, paths, team, each, force, dsm, dtm):
    """Register a flight: an ortho GeoTIFF, the orthos of one split export (a folder or several
    paths), or a folder/zip of drone photos, with its DSM (and DTM) when it has one. Prints the
    flight id; refused files are listed at the end (exit 1 when any was refused). `patrol run`/
    `patrol nightly` take it from there."""
    from pipeline.core.values import is_missing
    from pipeline.ingest.flight import Refusal
    from pipeline.ingest.raster import shown
    from pipeline.process.run import register_flight

    groups = [[p] for p in paths] if each else [list(paths)]
    refused: list[Refusal] = []
    registered = 0
    with open_ctx_store(ctx, create=True) as store:
        for group in groups:
            mine: list[Refusal] = []
            notes: list[str] = []
            try:
                f = register_flight(store, group if len(group) > 1 else group[0], ctx.settings, team=team,
                                    refused=mine, notes=notes, force=force, dsm=dsm, dtm=dtm)
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
            if not is_missing(f.get("dsm")):
                click.echo(f"heights: DSM {shown(Path(f['dsm']).name)}"
                           + (f", DTM {shown(Path(f['dtm']).name)}" if not is_missing(f.get("dtm"))
                              else " (ground filtered out of it)"), err=True)
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


@click.command("run")
@click.argument("flight")
@click.option("--team", help="Patrol team, when FLIGHT is a path registered now.")
@click.option("--force", is_flag=True, help="Process again even if the flight is done (never duplicates), and "
              "run imagery outside the model's GSD range (detector.gsd_range_m; the flight records it).")
@click.option("--dsm", type=click.Path(dir_okay=False, path_type=Path),
              help="With a FLIGHT path: its DSM (float GeoTIFF of heights, docs/HEIGHTS.md).")
@click.option("--dtm", type=click.Path(dir_okay=False, path_type=Path), help="With a FLIGHT path: its DTM.")
@pass_ctx
def run_cmd(ctx, flight, team, force, dsm, dtm):
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
            record = register_flight(store, flight, ctx.settings, team=team, force=force, dsm=dsm, dtm=dtm)
            click.echo(f"flight {record['flight_id']} ({flight})")
        res = process_flight(store, record["flight_id"], ctx.settings, force=force)
    finally:
        store.close()
    if res.skipped:
        click.echo(f"flight {res.flight_id} is already done; --force processes it again")
    else:
        click.echo(f"flight {res.flight_id}: {res.detections} detections, {res.findings} findings, "
                   f"{res.new_cases} new cases, {res.events} case events")
        if res.heights:
            h = res.heights
            click.echo(f"heights: {h['measured']} measured, {h['flat_dropped']} flat dropped, "
                       f"{h['found_by_height']} found by height, {h.get('storey_added', 0)} storey added (加层)")


COMMANDS = [synth, demo, import_group, flights_group, detect, nightly_cmd, ingest_cmd, run_cmd]
