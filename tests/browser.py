"""Headless Debian chromium for the page tests (Playwright with executable_path; never
`playwright install`): one launch helper shared by tests/report/test_report.py and test_service_e2e.py."""
from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def launch_chromium(playwright):
    """A headless chromium browser from Playwright's sync API object."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
