"""What a reader of a forwarded report meets: the theme and footer, one modelling notice per page,
the runs' headline on the front page, run labels split into name, attack and defence, a note
where two loss curves coincide, the attacker's window on the timeline, the overhead verdict in
words, and the unpinned verifier key explained once instead of on every run page."""

from __future__ import annotations

import dataclasses
import re
import shutil
from html import unescape
from pathlib import Path

import pytest
from conftest import RECORDED, RECORDED_RUNS

from stagewarden.report import build_report
from stagewarden.report.pages import outcome_text
from stagewarden.report.run_figures import attack_windows, coinciding_losses
from stagewarden.report.runs import RunData, read_run
from stagewarden.spec import load_example


def _plain(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _page(report: Path, name: str) -> str:
    return (report.parent / name).read_text(encoding="utf-8")


def _article(html: str) -> str:
    """The page's own text, without the banner, navigation and footer around it."""
    return _plain(html.split('<article role="main"', 1)[1].split("</article>", 1)[0])


def test_reading_theme_and_footer(demo_report: Path) -> None:
    """The report uses Furo, a theme built for reading, and no page shows an empty copyright."""
    for page in sorted(demo_report.parent.glob("*.html")):
        html = page.read_text(encoding="utf-8")
        assert "furo" in html, page.name
        footer = _plain(html.split("<footer>", 1)[1])
        assert "©" not in footer and "Copyright" not in footer, page.name


def test_index_states_the_notice_once_and_leads_with_the_runs(demo_report: Path) -> None:
    """The front page has the software-model notice in its banner only, and says what the runs
    show (the catch, its check, step and response) before the verdict table."""
    html = _page(demo_report, "index.html")
    assert _plain(html).count("TEE attestation here is a software model") == 1
    body = _article(html)
    assert "software model" not in body
    headline = body.split("What the runs show", 1)[1].split("Summary", 1)[0]
    assert "clean (receipts, attestation, spot check 0.05, response eject): no attack and no detection in 5 steps" in (
        headline
    )
    assert (
        "the spot check caught worker s1r0 at step 3, micro-batch 2 (forward unit), 1 step after it began; "
        "then response eject, s1r0 ejected, standby standby0 took stage 1" in headline
    )


def test_run_labels_are_name_attack_and_defence(demo_report: Path) -> None:
    """The runs table gives each run its short name, its attack and its defence in their own columns."""
    runs = _article(_page(demo_report, "runs.html"))
    assert "run attack defence status detections directory" in runs
    assert "attacked reverse on stage 1 from step 2 receipts, attestation, spot check 0.05, response eject" in runs
    assert "[attacked]" not in runs
    run_page = _article(_page(demo_report, "run-2.html"))
    assert "Attack: reverse on stage 1 from step 2. Defence: receipts, attestation, spot check 0.05" in run_page


def test_unpinned_key_is_explained_once(demo_report: Path) -> None:
    """The runs page explains the unpinned verifier key with the command that pins it; the run
    pages link there and leave the warning out of their findings."""
    runs = _article(_page(demo_report, "runs.html"))
    assert runs.count("VERIFIER_KEY_UNPINNED") == 1
    assert "stagewarden audit RUN_DIR --verifier-key VERIFIER_PUBLIC_KEY_HEX" in runs
    for name in ("run-1.html", "run-2.html"):
        html = _page(demo_report, name)
        assert "VERIFIER_KEY_UNPINNED" not in html
        assert 'href="runs.html#pin-verifier-key"' in html
        assert "0 warning(s)" in _article(html)


def test_overhead_verdict_in_words(collusion_report: Path) -> None:
    """A violated overhead guarantee is a cost, not an attack, and its outcome reads as words and
    rounded figures, not Python values."""
    text = _article(_page(collusion_report, "guarantees.html"))
    cheap = text.split("cheap (overhead): violated", 1)[1]
    assert cheap.lstrip(" ¶").startswith("violated: extra compute 0.833 > 0.25")
    assert "Cost. extra compute 0.833 > 0.25" in cheap and "Attack." not in cheap
    assert "Outcome. extra compute 0.8333, extra memory 0.8333, allowed extra compute 0.25, " in cheap
    assert "None" not in cheap and "0.8333333" not in cheap and " = " not in cheap


def test_outcome_text() -> None:
    """Outcome values: numbers to 4 significant digits, a missing bound named as such."""
    assert outcome_text({"compute": 5 / 6, "max_memory": None, "required": 1.0}) == (
        "extra compute 0.8333, allowed extra memory: no bound, required 1"
    )


def _with_losses(run: RunData, losses: list[float]) -> RunData:
    metrics = [dict(row, loss=loss) for row, loss in zip(run.metrics, losses, strict=True)]
    return dataclasses.replace(run, metrics=metrics)


def test_coinciding_losses() -> None:
    """Identical curves coincide from step 0; curves that meet later coincide from where they
    meet; curves that end apart, or share only the last step, do not."""
    clean = read_run(RECORDED_RUNS[0])
    losses = [row["loss"] for row in clean.metrics]
    assert coinciding_losses(clean, clean) == 0
    assert coinciding_losses(clean, _with_losses(clean, [9.0, 9.0, *losses[2:]])) == 2
    assert coinciding_losses(clean, _with_losses(clean, [*losses[:-1], 1.0])) is None
    assert coinciding_losses(clean, _with_losses(clean, [9.0] * (len(losses) - 1) + losses[-1:])) is None


@pytest.mark.slow
def test_coinciding_curves_get_a_note(tmp_path: Path) -> None:
    """Two runs with the same losses: the runs page says their curves coincide and why."""
    first, second = tmp_path / "a" / "clean", tmp_path / "b" / "clean"
    for target in (first, second):
        shutil.copytree(RECORDED / "clean", target)
    index = build_report(load_example("demo"), [first, second], tmp_path / "report")
    runs = _article(_page(index, "runs.html")).replace("( ", "(")
    assert "Note: the curves of a/clean and b/clean coincide (b/clean is drawn on top)" in runs
    assert "they record the same loss at every step" in runs


def test_attacker_window_has_width() -> None:
    """The attacker's band runs from the attack's first step to its detection, at least one step
    wide, even where the response restored a step before the attack began; an attack that starts
    after the run ended has no band."""
    attacked = read_run(RECORDED_RUNS[1])
    assert attack_windows(attacked, 5) == [(1, 1.5, 3.5)]
    plan = dict(attacked.config["attack"], start=3)
    later = dataclasses.replace(attacked, config=dict(attacked.config, attack=plan))
    detections = [dataclasses.replace(d, step=4) for d in attacked.detections]
    rolled_back = dataclasses.replace(later, training=later.training.model_copy(update={"detections": detections}))
    assert attack_windows(rolled_back, 5) == [(1, 2.5, 4.5)]
    assert attack_windows(later, 3) == []
    assert attack_windows(read_run(RECORDED_RUNS[0]), 5) == []


def test_headline_of_a_missed_attack_and_of_a_false_alarm() -> None:
    """An attack nothing caught is said to be not detected; a detection in a run without an
    attack is called a false alarm."""
    from stagewarden.report.headline import run_headline

    clean, attacked = (read_run(path) for path in RECORDED_RUNS)
    missed = dataclasses.replace(
        attacked, training=attacked.training.model_copy(update={"detections": [], "responses": []})
    )
    assert run_headline(missed).startswith(
        "the attack (reverse on stage 1 from step 2) was **not detected** in 5 steps"
    )
    alarm = dataclasses.replace(clean, training=clean.training.model_copy(update={"detections": attacked.detections}))
    assert "with no attack mounted, the spot check caught worker s1r0 at step 3" in run_headline(alarm)
    assert "a **false alarm**" in run_headline(alarm)
