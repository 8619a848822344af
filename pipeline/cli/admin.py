"""`patrol db|users|serve|gc`: the store, accounts, the web service, disk housekeeping."""
from __future__ import annotations

import click

from pipeline.cli.options import ask_password, open_ctx_store, pass_ctx

# lazy imports: each command imports its stage when it runs, so that `patrol --help` stays quick


@click.group("db")
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


@click.command("gc")
@pass_ctx
def gc_cmd(ctx):
    """Remove what no flight needs: unpackings a killed or refused ingest left, abandoned uploads."""
    from pipeline.core.disk import collect_garbage
    done = collect_garbage(ctx.settings)
    click.echo(f"removed {done['partial_unpackings']} unfinished unpackings and {done['abandoned_uploads']} "
               f"abandoned uploads ({done['bytes'] / 2**20:,.1f} MiB)")


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: service.host).")
@click.option("--port", default=None, type=int, help="Port (default: service.port).")
@click.option("--truth-layer", type=click.Path(dir_okay=False),
              help="TEST/DEMO ONLY: flights processed from the web take their detections from this "
                   "generated district.gpkg's truth layer instead of the model.")
@pass_ctx
def serve(ctx, host, port, truth_layer):
    """Run the web service: upload for patrol teams, map review and case work for officers."""
    from pipeline.core.disk import collect_garbage
    from pipeline.detection.detectors import TruthTileDetector
    from pipeline.service import serve as run_service
    s = ctx.settings
    collect_garbage(s)
    detector = TruthTileDetector(truth_layer, s.detector.classes) if truth_layer else None
    click.echo(f"serving {s.store.url} on http://{host or s.service.host}:{port or s.service.port}/ (Ctrl-C stops)")
    run_service(s, host, port, detector=detector)


@click.group("users")
def users_group():
    """Accounts of the web service: patrol (upload), officer (cases of their towns), admin."""


@users_group.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["patrol", "officer", "admin"]), required=True)
@click.option("--town", "towns", multiple=True, help="Town or village an officer works on (repeatable).")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--password", envvar="PATROL_NEW_PASSWORD", help="Password (else asked; env PATROL_NEW_PASSWORD).")
@pass_ctx
def users_add(ctx, username, role, towns, display_name, password):
    """Create an account."""
    from pipeline.core.accounts import add_user
    with open_ctx_store(ctx, create=True) as store:
        u = add_user(store, username, ask_password(password), role, list(towns), display_name)
    click.echo(f"user {u.username} ({u.role}{': ' + ', '.join(u.towns) if u.towns else ''}) added")


@users_group.command("passwd")
@click.argument("username")
@click.option("--password", envvar="PATROL_NEW_PASSWORD", help="New password (else asked).")
@pass_ctx
def users_passwd(ctx, username, password):
    """Set a new password (ends the account's sessions and API tokens)."""
    from pipeline.core.accounts import set_password
    with open_ctx_store(ctx) as store:
        set_password(store, username, ask_password(password))
    click.echo(f"password of {username} changed")


@users_group.command("list")
@pass_ctx
def users_list(ctx):
    """One line per account: name, role, towns/villages, active or disabled."""
    from pipeline.core.accounts import list_users
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
    from pipeline.core.accounts import set_disabled
    with open_ctx_store(ctx) as store:
        set_disabled(store, username, not enable)
    click.echo(f"user {username} {'enabled' if enable else 'disabled'}")


@users_group.command("unlock")
@click.argument("username")
@pass_ctx
def users_unlock(ctx, username):
    """Lift the lockout of an account locked after too many failed sign-ins."""
    from pipeline.core.accounts import unlock
    with open_ctx_store(ctx) as store:
        unlock(store, username)
    click.echo(f"user {username} unlocked")


COMMANDS = [db_group, gc_cmd, serve, users_group]
