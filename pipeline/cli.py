"""The `patrol` command line. It only orchestrates: each command calls one stage.

Heavy libraries are imported inside commands so that `patrol --help` stays quick.
A PatrolError is printed as one line on stderr (exit 2); `--debug` shows the traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.errors import PatrolError


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
            from pipeline.config import load_settings
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
def synth(out_dir, seed, size_m, epochs, gsd_m):
    """Generate a synthetic rural district: orthophotos per epoch + parcels, zones, truth."""
    from pipeline.synth import generate_district
    result = generate_district(Path(out_dir), seed=seed, size_m=size_m, epochs=epochs, gsd_m=gsd_m)
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
    from pipeline.demo import run_demo
    run_demo(ctx, Path(out_dir), seed=seed, size_m=size_m, epochs=epochs, echo=click.echo)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: one clear line for a PatrolError, never a traceback."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="patrol", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
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


if __name__ == "__main__":
    sys.exit(main())
