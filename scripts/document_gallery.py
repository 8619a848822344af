"""Page 1 of every enforcement document of one case as PNG, for docs/img.

    python scripts/document_gallery.py demo/patrol.gpkg docs/img [--case LW2025-000012]

Prints each kind for the case (re-printing what is already issued, so the store keeps one
number per kind), renders page 1 with pdftoppm (poppler-utils) at 60 dpi and writes
``docs/img/document_<kind>.png``; prints each document's number, the seconds it took to print
(a re-print renders from the stored fields) and its size. Without --case: the first ordered case."""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from pipeline.core.config import load_settings
from pipeline.core.rules import load_rules
from pipeline.report.documents import KINDS, print_document
from pipeline.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--case")
    ap.add_argument("--dpi", type=int, default=60)
    a = ap.parse_args()
    settings = load_settings(overrides={"store.url": a.store})
    rules = load_rules(settings.rules_path)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    with open_store(settings.store.url, settings.store.crs) as store:
        cases = store.cases()
        case_no = a.case or cases.loc[cases["status"] == "ordered", "case_no"].iloc[0]
        with tempfile.TemporaryDirectory() as tmp:
            for kind in KINDS:
                t = time.perf_counter()
                row, pdf, _ = print_document(store, settings, rules, kind, case_no, "gallery")
                took = time.perf_counter() - t
                path = Path(tmp) / f"{kind}.pdf"
                path.write_bytes(pdf)
                stem = a.out_dir / f"document_{kind}"
                subprocess.run(["pdftoppm", "-r", str(a.dpi), "-png", "-singlefile", "-f", "1", "-l", "1",
                                str(path), str(stem)], check=True)
                print(f"{row['doc_no']}\t{took:.2f} s\t{len(pdf) / 1024:.0f} KiB\t{stem}.png")


if __name__ == "__main__":
    main()
