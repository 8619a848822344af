"""docs/DATA.md and geodata/ agree with pipeline/ingest/parcels.py: the documented columns are the
ones the reader requires / knows, and the sample files import as they are."""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.ingest.parcels import (
    PARCEL_OPTIONAL,
    PARCEL_REQUIRED,
    ZONE_OPTIONAL,
    ZONE_REQUIRED,
    read_parcels,
    read_zones,
)

ROOT = Path(__file__).resolve().parents[2]


def columns(doc: Path, section: str) -> dict[str, list[str]]:
    """{'required': [...], 'optional': [...]} of the table under the heading ``## <section>…``."""
    out: dict[str, list[str]] = {"required": [], "optional": []}
    inside = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line[3:].lower().startswith(section)
        elif inside and (m := re.match(r"^\|\s*`(\w+)`\s*\|\s*(required|optional|yes|no)\s*\|", line)):
            out["required" if m.group(2) in ("required", "yes") else "optional"].append(m.group(1))
    return out


def test_documented_columns_match_the_registry_reader():
    for doc in (ROOT / "docs" / "DATA.md", ROOT / "geodata" / "SCHEMA.md"):
        p, z = columns(doc, "parcels"), columns(doc, "zones")
        assert p == {"required": list(PARCEL_REQUIRED), "optional": list(PARCEL_OPTIONAL)}, doc
        assert z == {"required": list(ZONE_REQUIRED), "optional": list(ZONE_OPTIONAL)}, doc


def test_sample_files_import():
    parcels = read_parcels(ROOT / "geodata" / "example_parcels.geojson", store_crs="EPSG:4547")
    zones = read_zones(ROOT / "geodata" / "example_zones.geojson", store_crs="EPSG:4547")
    assert list(parcels["parcel_id"]) == ["420116151291JC00001", "420116151291JC00002", "420116151291JC00003"]
    assert parcels["owner"].iloc[0] == "李明涛" and "BSM" in parcels.columns
    assert sorted(zones["kind"]) == ["basic_farmland", "ecological_redline", "farmland"]
    # the zones (EPSG:4490) land next to the parcels (EPSG:4547) after reprojection
    assert zones.distance(parcels.union_all()).max() < 100
    for path in (ROOT / "geodata").glob("*.geojson"):
        assert path.stat().st_size < 10_000, f"{path.name}: keep the samples tiny"


def _guide_commands(text: str) -> list[str]:
    """`patrol …` command lines of the fenced code blocks (continuation lines joined)."""
    out, block, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            block.append(line)
    joined = "\n".join(block).replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.split("#")[0].strip()
        m = re.search(r"(?:^|(?<=\s)|(?<=bin/))patrol (.*)", line)
        if m:
            out.append("patrol " + m.group(1))
    return out


def test_documented_commands_exist():
    """Every `patrol …` line in the guides names a real command with real options."""
    import shlex

    import click

    from pipeline.cli import cli
    docs = [ROOT / "docs" / n for n in ("USER_GUIDE.md", "DATA.md")] + [ROOT / "geodata" / "SCHEMA.md"]
    seen = 0
    for doc in docs:
        for line in _guide_commands(doc.read_text(encoding="utf-8")):
            words = shlex.split(line)[1:]
            cmd: click.Command = cli
            opts = {o for p in cli.params for o in p.opts}
            rest = []
            while words:
                w = words.pop(0)
                if isinstance(cmd, click.Group) and not w.startswith("-"):
                    assert w in cmd.commands, f"{doc.name}: `{line}`: no command '{w}'"
                    cmd = cmd.commands[w]
                    opts |= {o for p in cmd.params for o in p.opts}
                elif isinstance(cmd, click.Group):         # a global option (and its value)
                    assert w.split("=")[0] in opts, f"{doc.name}: `{line}`: no option '{w}'"
                    if w in ("--config", "--store", "--set"):
                        words.pop(0)
                else:
                    rest.append(w)
            assert not isinstance(cmd, click.Group), f"{doc.name}: `{line}` names a group, not a command"
            for w in rest:
                if w.startswith("--"):
                    assert w.split("=")[0] in opts, f"{doc.name}: `{line}`: no option '{w}'"
            seen += 1
    assert seen >= 30
