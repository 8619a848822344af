"""The console script: help everywhere, one-line errors, no tracebacks."""
import subprocess
import sys

import click

from pipeline.cli import cli


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


def test_help_on_every_command():
    from click.testing import CliRunner
    runner = CliRunner()
    paths = list(_commands(cli))
    assert ("synth",) in paths and ("demo",) in paths
    for path in [()] + paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_patrol_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--config", str(tmp_path / "x.yaml"),
                           "demo", "--out", str(tmp_path / "d")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config file")
    assert "Traceback" not in proc.stderr
