"""Building a report: write the Sphinx project into a temporary folder next to the target, build
it with Sphinx (every warning is a failure), then move the result into place. A failed build
leaves the target as it was."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from stagewarden.attest.files import publish_dir
from stagewarden.prover import Report, verify
from stagewarden.report import calibration_pages, pages, replay_pages, run_pages
from stagewarden.report.attestation_kinds import tee_notice
from stagewarden.report.calibration import Calibration, read_calibration
from stagewarden.report.errors import ReportError
from stagewarden.report.headline import headline_section
from stagewarden.report.paper import PaperReproduction, paper_page, read_paper
from stagewarden.report.replays import ReplayData, read_replay
from stagewarden.report.runs import RunData, read_run
from stagewarden.spec import LoadedSpec

FORMATS = ("html", "singlehtml")
#: A file every report folder holds, so that a rebuild may replace it (and nothing else).
MARKER = ".stagewarden-report"

_CONF = '''"""Sphinx configuration of a stagewarden security report (generated)."""
project = {project!r}
author = "stagewarden"
extensions = []
root_doc = "index"
nitpicky = True
templates_path = ["_templates"]
html_theme = "furo"
html_title = {project!r}
html_show_sourcelink = False
html_copy_source = False
html_show_copyright = False
html_static_path = ["_static"]
html_css_files = ["stagewarden.css"]
html_context = {{"stagewarden_notice": {notice!r}}}
html_theme_options = {{"announcement": "stagewarden-notice"}}  # the text comes from _templates/page.html
'''


def write_project(
    folder: Path,
    loaded: LoadedSpec,
    report: Report,
    runs: Sequence[RunData],
    replays: Sequence[ReplayData] = (),
    calibration: Calibration | None = None,
    paper: PaperReproduction | None = None,
) -> None:
    """Write the report's Sphinx project (conf.py, pages, pictures) into ``folder``; the runs of
    ``replays`` join ``runs`` on the run pages."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_templates").mkdir(exist_ok=True)
    (folder / "_static").mkdir(exist_ok=True)
    templates = resources.files("stagewarden.report").joinpath("templates")
    for name, where in (("page.html", "_templates"), ("stagewarden.css", "_static")):
        (folder / where / name).write_text(templates.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    every_run = list(runs) + [run for replay in replays for run in replay.runs]
    notice = tee_notice(every_run)  # what the runs' verified results show, on every page
    project = f"Security report: {loaded.spec.name}"
    (folder / "conf.py").write_text(_CONF.format(project=project, notice=notice), encoding="utf-8")
    ctx = pages.Context(loaded, report, folder)
    writers = {
        "guarantees": pages.guarantees_page,
        "spec": pages.spec_page,
        "topology": pages.topology_page,
        "sensitivity": pages.sensitivity_page,
        "taxonomy": pages.taxonomy_page,
    }
    for name, write in writers.items():
        (folder / f"{name}.rst").write_text(write(ctx), encoding="utf-8")
    contents = list(writers)
    if every_run:
        contents += run_pages.write_runs(ctx, every_run)
    if replays:
        docs = {id(run): name for run, name in zip(every_run, run_pages.page_names(every_run), strict=True)}
        (folder / "replays.rst").write_text(replay_pages.replays_page(ctx, list(replays), docs), encoding="utf-8")
        contents.append("replays")
    if calibration is not None:
        (folder / "calibration.rst").write_text(calibration_pages.calibration_page(ctx, calibration), encoding="utf-8")
        contents.append("calibration")
    if paper is not None:
        (folder / "paper.rst").write_text(paper_page(ctx, paper), encoding="utf-8")
        contents.append("paper")
    (folder / "modelling.rst").write_text(pages.modelling_page(notice), encoding="utf-8")
    contents.append("modelling")
    index = pages.index_page(
        ctx,
        [str(r.path) for r in runs],
        contents,
        replays=[str(r.path) for r in replays],
        calibration=str(calibration.path) if calibration is not None else None,
        headline=headline_section(every_run, run_pages.page_names(every_run)),
    )
    (folder / "index.rst").write_text(index, encoding="utf-8")


def sphinx_build(source: Path, target: Path, builder: str) -> None:
    """Build ``source`` into ``target`` in this process; any Sphinx warning raises :class:`ReportError`."""
    from sphinx.application import Sphinx
    from sphinx.util.docutils import docutils_namespace, patch_docutils

    status, warnings = io.StringIO(), io.StringIO()
    try:
        # As sphinx-build does: docutils' registries are restored afterwards, so that several
        # reports (or a report inside another Sphinx build) can be built in one process.
        with patch_docutils(str(source)), docutils_namespace():
            app = Sphinx(
                str(source),
                str(source),
                str(target),
                str(source / "_doctrees"),
                builder,
                status=status,
                warning=warnings,
                freshenv=True,
                warningiserror=False,
            )
            app.build(force_all=True)
    except Exception as exc:  # Sphinx raises many types; all mean the same to the caller
        raise ReportError(f"Sphinx could not build the report: {exc}") from exc
    if warnings.getvalue().strip() or app.statuscode:
        raise ReportError(
            "Sphinx warned while building the report (a bug in the report generator):\n" + warnings.getvalue().strip()
        )


def _check_target(out: Path) -> None:
    for folder in out.parents:
        if folder.exists():
            if not folder.is_dir():
                raise ReportError(f"--out {out}: {folder} is a file, not a directory")
            break
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ReportError(f"--out {out} exists, is not empty and holds no earlier report; choose another directory")


def build_report(
    loaded: LoadedSpec,
    runs: Sequence[str | Path] = (),
    out: str | Path = "stagewarden-report",
    builder: str = "html",
    report: Report | None = None,
    progress: Callable[[str], None] | None = None,
    replays: Sequence[str | Path] = (),
    calibration: str | Path | None = None,
    paper: str | Path | None = None,
) -> Path:
    """Build the security report of ``loaded`` (and of the given run directories) into ``out``.

    Args:
        loaded: the spec.
        runs: run directories of ``stagewarden train`` or ``stagewarden demo``.
        out: the report folder; replaced when it holds an earlier report, refused when it holds anything else.
        builder: ``html`` (a page per section) or ``singlehtml`` (one page).
        report: the prover's verdicts, when already computed (else the prover runs).
        progress: called with a short message before each phase.
        replays: output folders of ``stagewarden replay`` (or their ``replay.json``); each gets a
            section on the replays page, and its two runs join the run pages.
        calibration: a result file of ``benchmarks/detection_calibration.py --json``, for the
            calibration page.
        paper: a result file of ``benchmarks/paper_reproduction.py``, for the paper-reproduction
            page (its figure too, when it lies beside the file).

    Returns:
        The path of the report's index page.

    Raises:
        ReportError: a run directory, replay or calibration file cannot be read or is malformed,
            ``out`` is not usable, or the build failed.
    """
    if builder not in FORMATS:
        raise ReportError(f"format must be one of {', '.join(FORMATS)}, not {builder!r}")
    say = progress or (lambda message: None)
    target = Path(out).absolute()
    _check_target(target)
    say("reading the run directories and auditing them")
    data = [read_run(r) for r in runs]
    replayed = [read_replay(r) for r in replays]
    calibrated = read_calibration(calibration) if calibration is not None else None
    reproduced = read_paper(paper) if paper is not None else None
    every_run = data + [run for replay in replayed for run in replay.runs]
    names = [d.name for d in every_run]
    for d in every_run:
        if names.count(d.name) > 1:  # two runs called clean/: name them by their parent folder too
            d.name = f"{d.path.parent.name}/{d.path.name}"
    if report is None:
        say("proving the spec")
        report = verify(loaded)
    made = next((f for f in reversed(target.parents) if not f.exists()), None)  # the first folder to create
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as exc:
        _remove_created(made)
        raise ReportError(f"--out {target}: cannot create it: {exc.strerror or exc}") from None
    try:
        say("writing the report and its pictures")
        write_project(work / "source", loaded, report, data, replayed, calibrated, reproduced)
        say("building it with Sphinx")
        sphinx_build(work / "source", work / "html", builder)
        (work / "html" / MARKER).write_text(
            "a stagewarden security report; rebuilding replaces this folder\n", encoding="utf-8"
        )
        publish_dir(work / "html", target)
    except BaseException:  # a failure or Ctrl-C: leave no half-built folder, not even an empty parent
        shutil.rmtree(work, ignore_errors=True)
        _remove_created(made)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return target / "index.html"


def _remove_created(folder: Path | None) -> None:
    """Remove ``folder``, made by this build for ``--out`` (so it holds nothing of anyone else's)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
