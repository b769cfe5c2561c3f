"""The report as a reader sees it, in headless Chromium at 1400 and 800 pixels wide: nothing
scrolls sideways, the modelling notice is shown once per page and in full, the front page
carries the runs' headline, the footer has no empty copyright, pictures load and use the
column's width. A screenshot of every page is written (to ``$STAGEWARDEN_SCREENSHOTS`` when set,
so CI can keep them).

Skipped only where Chromium or chromedriver is missing and neither ``CI`` nor ``STAGEWARDEN_CI``
is set; under CI a missing browser fails.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_report_browser import PNG_MAGIC, start_chromium

WIDTHS = (1400, 800)

#: Every element of a page wider than the room it has (a sideways scroll), as tag.class: widths.
OVERFLOWING = """
const out = [];
if (document.documentElement.scrollWidth > window.innerWidth + 1) {
  out.push('page: ' + document.documentElement.scrollWidth + ' > ' + window.innerWidth);
}
for (const e of document.querySelectorAll('.table-wrapper, pre, .announcement-content, article p, article li')) {
  if (e.scrollWidth > e.clientWidth + 1) {
    out.push(e.tagName + '.' + e.className + ': ' + e.scrollWidth + ' > ' + e.clientWidth);
  }
}
return out;
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium driven by selenium, for the whole module."""
    driver = start_chromium(tmp_path_factory.mktemp("profile"), "--hide-scrollbars")
    try:
        yield driver
    finally:
        driver.quit()


def _shots_folder(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("STAGEWARDEN_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _screenshot(browser: Any, page: Path, width: int, folder: Path) -> Path:
    """Load ``page`` at ``width`` and save a screenshot of all of it."""
    browser.set_window_size(width, 1000)
    browser.get(page.as_uri())
    height = browser.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
    )
    browser.set_window_size(width, min(int(height) + 150, 8000))
    shot = folder / f"{page.parent.parent.name}-{page.stem}-{width}.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == PNG_MAGIC
    return shot


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_pages_fit_the_window(
    browser: Any, demo_report: Path, collusion_report: Path, width: int, tmp_path: Path
) -> None:
    """At 1400 and 800 px no page of either report scrolls sideways, and every picture loads and
    fits its column."""
    folder = _shots_folder(tmp_path)
    for report in (demo_report, collusion_report):
        for page in sorted(report.parent.glob("*.html")):
            _screenshot(browser, page, width, folder)
            overflowing = browser.execute_script(OVERFLOWING)
            assert overflowing == [], f"{page.name} at {width} px: {overflowing}"
            images = browser.execute_script(
                "return Array.from(document.querySelectorAll('article img')).map(i => "
                "[i.src, i.complete && i.naturalWidth > 0, i.getBoundingClientRect().width, "
                "i.closest('article').getBoundingClientRect().width])"
            )
            for src, loaded, shown, column in images:
                assert loaded, f"{page.name}: {src} did not load"
                assert shown <= column + 1, f"{page.name}: {src} is wider than its column"


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_notice_once_and_in_full(browser: Any, demo_report: Path, width: int, tmp_path: Path) -> None:
    """Each page states the software-model notice exactly once, all of it visible (not clipped),
    with a working link to the modelling assumptions; no footer shows an empty copyright."""
    folder = _shots_folder(tmp_path)
    for page in sorted(demo_report.parent.glob("*.html")):
        _screenshot(browser, page, width, folder)
        counts = browser.execute_script(
            "const said = e => e ? e.innerText.split('TEE attestation here is a software model').length - 1 : 0;"
            "return [said(document.querySelector('.announcement')), said(document.querySelector('article'))]"
        )
        # the banner says it; the page body does not say it again (the modelling page, which lists
        # every modelling assumption, is the one place that spells it out once more in its list)
        assert counts == [1, 1 if page.name == "modelling.html" else 0], f"{page.name}: {counts}"
        notice = browser.execute_script(
            "const n = document.querySelector('.stagewarden-notice'); const box = n.closest('.announcement');"
            "return [n.innerText, box.scrollHeight <= box.clientHeight + 1, n.getBoundingClientRect().height > 0,"
            " n.querySelector('a').getAttribute('href')]"
        )
        text, fits, shown, link = notice
        assert "software model" in text and fits and shown, f"{page.name}: notice clipped or hidden"
        assert (demo_report.parent / link.split("#")[0]).is_file() or link.startswith("#"), link
        footer = browser.execute_script("return document.querySelector('footer').innerText")
        assert "©" not in footer and "Copyright" not in footer, f"{page.name}: {footer!r}"


@pytest.mark.slow
def test_front_page_has_the_headline(browser: Any, demo_report: Path, tmp_path: Path) -> None:
    """The index page says what the runs show: the attacked run's catch (check, worker, step, how
    long after the attack began, the response) and that the clean run had none."""
    _screenshot(browser, demo_report, 1400, _shots_folder(tmp_path))
    text = browser.execute_script("return document.querySelector('article').innerText")
    assert "What the runs show" in text
    headline = text.split("What the runs show", 1)[1].split("Summary", 1)[0]
    assert "no attack and no detection in" in headline
    assert "the spot check caught worker s1r0 at step" in headline
    assert re.search(r"(in the step it began|\d+ steps? after it began); then response eject", headline), headline
    assert text.index("What the runs show") < text.index("Summary")


@pytest.mark.slow
def test_sensitivity_plots_use_the_column(browser: Any, demo_report: Path, tmp_path: Path) -> None:
    """Each sensitivity picture is as wide as the text column (at 1400 px), so its labels are legible."""
    page = demo_report.parent / "sensitivity.html"
    _screenshot(browser, page, 1400, _shots_folder(tmp_path))
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('article img')).map(i => "
        "[i.getBoundingClientRect().width, i.closest('article').getBoundingClientRect().width, i.naturalHeight])"
    )
    assert len(sizes) == 2
    for shown, column, natural_height in sizes:
        assert shown >= 0.95 * column
        assert natural_height > 600  # two panels stacked, each a full-width plot
