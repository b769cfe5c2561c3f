"""The report builds without Sphinx warnings and shows every section; builds are atomic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from stagewarden.prover import verify
from stagewarden.report import ReportError, build_report
from stagewarden.report import build as build_module
from stagewarden.report.modelling import TEE_NOTICE
from stagewarden.spec import example_names, load_example

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _html(index: Path, page: str) -> str:
    return (index.parent / page).read_text(encoding="utf-8")


def _plain(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


@pytest.mark.slow
@pytest.mark.parametrize("name", example_names())
def test_every_example_builds_without_warnings(name: str, tmp_path: Path) -> None:
    """Every packaged example gives a report (a Sphinx warning would raise ReportError)."""
    index = build_report(load_example(name), [], tmp_path / "report")
    assert index.is_file()
    for guarantee in load_example(name).spec.guarantees:
        assert f'id="guarantee-{guarantee.id}"' in _html(index, "guarantees.html")


def test_index_has_summary_of_every_guarantee(demo_report: Path) -> None:
    """The front page has the summary table with verdict, bound vs achieved and assumptions."""
    text = _plain(_html(demo_report, "index.html"))
    for header in ("guarantee", "verdict", "bound vs achieved", "rests on (spec assumptions)"):
        assert header in text
    report = verify(load_example("demo"))
    for result in report.guarantees:
        assert result.id in text
    assert "achieved 1.97e-07, needs &lt;= 1e-06" in _html(demo_report, "index.html")
    assert 'href="spec.html#spec-line-28"' in _html(demo_report, "index.html")


def test_every_page_states_the_software_model(demo_report: Path) -> None:
    """Each HTML page carries the notice that TEE attestation is a software model."""
    pages = sorted(demo_report.parent.glob("*.html"))
    assert len(pages) >= 9
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "stagewarden-notice" in html, page.name
        assert " ".join(TEE_NOTICE.split()[:6]) in _plain(html), page.name


def test_violated_guarantee_has_trace_table_and_swimlane(collusion_report: Path) -> None:
    """A violated guarantee shows the trace's states, its malicious workers and a swimlane picture."""
    html = _html(collusion_report, "guarantees.html")
    text = _plain(html)
    assert "The attack trace, state by state" in text
    assert "1:0" in text and "covers" in text and "tamper_activations" in text
    assert 'src="_images/trace-integrity.png"' in html
    assert (collusion_report.parent / "_downloads").is_dir()


def test_holding_guarantee_links_its_spec_lines(demo_report: Path) -> None:
    """The assumptions of a holding guarantee link to anchors on the spec page, which exist."""
    guarantees = _html(demo_report, "guarantees.html")
    spec = _html(demo_report, "spec.html")
    targets = set(re.findall(r'href="spec.html#(spec-line-\d+)"', guarantees))
    assert targets
    for target in targets:
        assert f'id="{target}"' in spec
    assert "hll" in spec  # emphasised lines of the full listing


def test_other_sections(demo_report: Path) -> None:
    """Topology, sensitivity, taxonomy and modelling pages have their content."""
    assert 'src="_images/topology.png"' in _html(demo_report, "topology.html")
    sensitivity = _html(demo_report, "sensitivity.html")
    assert "sensitivity-rate.png" in sensitivity and "sensitivity-budget.png" in sensitivity
    taxonomy = _plain(_html(demo_report, "taxonomy.html"))
    for family in ("Hardware threats", "Data threats", "Model threats"):
        assert family in taxonomy
    assert "Signatures cannot be forged" in _plain(_html(demo_report, "modelling.html"))


def test_run_sections(demo_report: Path) -> None:
    """With runs: attestation table, audit, spot checks, timeline, loss, throughput, latency."""
    run = _plain(_html(demo_report, "run-2.html"))
    for text in (
        "Attestation",
        "sim-device-2",
        "UpToDate",
        "affirming; signature valid",
        "Receipt audit",
        "is clean",
        "324 receipts",
        "Spot checks",
        "Detection timeline",
        "s1r0",
    ):
        assert text in run, text
    runs = _plain(_html(demo_report, "runs.html"))
    for text in (
        "Loss curves",
        "Throughput and overhead",
        "Predicted vs observed detection",
        "predicted mean",
        "observed latency",
    ):
        assert text in runs, text
    assert 'src="_images/loss.png"' in _html(demo_report, "runs.html")
    assert 'src="_images/latency.png"' in _html(demo_report, "runs.html")
    assert "No completed run without security" in runs
    assert "reverse on stage 1 from step 2" in runs


def test_pictures_are_valid_png(demo_report: Path) -> None:
    """Every picture of the report is a PNG that Pillow reads in full."""
    images = sorted((demo_report.parent / "_images").glob("*.png"))
    names = {p.name for p in images}
    assert {"topology.png", "loss.png", "latency.png", "sensitivity-rate.png", "sensitivity-budget.png"} <= names
    for path in images:
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
            assert image.width > 100 and image.height > 100


def test_singlehtml(tmp_path: Path) -> None:
    """The singlehtml format puts every section on the index page."""
    index = build_report(load_example("tee-attested"), [], tmp_path / "one", "singlehtml")
    text = _plain(index.read_text(encoding="utf-8"))
    for section in ("Summary", "Guarantees", "The spec", "Threat taxonomy", "Modelling assumptions"):
        assert section in text


def test_failed_build_leaves_target_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that fails keeps the earlier report and leaves no temporary folder behind."""
    out = tmp_path / "report"
    build_report(load_example("tee-attested"), [], out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def fail(source: Path, target: Path, builder: str) -> None:
        raise ReportError("boom")

    monkeypatch.setattr(build_module, "sphinx_build", fail)
    with pytest.raises(ReportError, match="boom"):
        build_report(load_example("demo"), [], out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_rebuild_replaces_and_foreign_folder_is_refused(tmp_path: Path) -> None:
    """An earlier report is replaced; a folder with other content is refused."""
    out = tmp_path / "report"
    build_report(load_example("tee-attested"), [], out)
    build_report(load_example("tee-unattested"), [], out)
    assert "tee-unattested" in (out / "index.html").read_text(encoding="utf-8")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError, match="holds no earlier report"):
        build_report(load_example("tee-attested"), [], foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_bad_run_dir_is_a_report_error(tmp_path: Path) -> None:
    """A run directory without a summary is refused with a message naming it."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="empty"):
        build_report(load_example("demo"), [tmp_path / "empty"], tmp_path / "report")
    assert not (tmp_path / "report").exists()
