"""The `patrol` command line. It only orchestrates: each command calls one stage.

Heavy libraries are imported inside commands so that `patrol --help` stays quick.
A PatrolError is printed as one line on stderr (exit 2); `--debug` shows the traceback.
"""
from __future__ import annotations

import sys

import click

from pipeline.cli import admin, cases, flights, houses, models, reports
from pipeline.cli.options import Context
from pipeline.core.errors import PatrolError, one_line


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


for _module in (flights, cases, houses, models, reports, admin):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


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
