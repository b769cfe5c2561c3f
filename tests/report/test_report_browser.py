"""The built report in headless Chromium: every page renders without console errors and with all
its pictures loaded; a screenshot is saved.

Skipped only where Chromium or chromedriver is missing and neither ``CI`` nor ``STAGEWARDEN_CI``
is set (``.ci/run`` sets ``STAGEWARDEN_CI=1`` and installs them); under CI a missing browser fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1300,1600",
)


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    reason = "headless Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI") or os.environ.get("STAGEWARDEN_CI"):
        pytest.fail(reason + "; under CI this test must run")
    pytest.skip(reason)


def start_chromium(profile: Path, *extra_flags: str) -> Any:
    """A headless Chromium driven by selenium that keeps the browser console's log (skips or
    fails as :func:`_browser` says when Chromium is missing)."""
    chromium, driver_path = _browser()
    pytest.importorskip("selenium", reason="selenium is a test extra: pip install -e '.[test]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for flag in (*FLAGS, *extra_flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.mark.slow
def test_report_renders_in_chromium(demo_report: Path, tmp_path: Path) -> None:
    """Each page loads without SEVERE console messages, its images decode, and the notice is shown."""
    browser = start_chromium(tmp_path / "profile")
    from selenium.webdriver.common.by import By

    try:
        pages = sorted(p.name for p in demo_report.parent.glob("*.html"))
        assert "runs.html" in pages and "guarantees.html" in pages
        for page in pages:
            browser.get((demo_report.parent / page).as_uri())
            errors = [entry for entry in browser.get_log("browser") if entry.get("level") == "SEVERE"]
            assert errors == [], f"{page}: {errors}"
            broken = browser.execute_script(
                "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);"
            )
            assert broken == [], f"{page}: images that did not load: {broken}"
            notice = browser.find_element(By.CSS_SELECTOR, ".stagewarden-notice")
            assert notice.is_displayed() and "software model" in notice.text
        browser.get(demo_report.as_uri())
        shot = tmp_path / "report-index.png"
        assert browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    assert shot.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(shot) as image:
        image.load()
        assert image.width >= 1000
