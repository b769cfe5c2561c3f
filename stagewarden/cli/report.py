"""``stagewarden report``: build the Sphinx security report of a spec, with or without runs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from stagewarden.cli.common import EXAMPLE_OPTION, EXIT_OK, SPEC_ARGUMENT, BadInput, Choice, make_console
from stagewarden.cli.proving import prove_with_status
from stagewarden.cli.spec_input import load_spec_or_example, print_warnings_to_stderr


@click.command()
@SPEC_ARGUMENT
@EXAMPLE_OPTION
@click.option(
    "--run",
    "runs",
    multiple=True,
    type=click.Path(),
    metavar="RUN_DIR",
    help="A run directory of `stagewarden train` or `stagewarden demo` to report on (repeatable).",
)
@click.option(
    "--replay",
    "replays",
    multiple=True,
    type=click.Path(),
    metavar="OUT",
    help="The --out folder of `stagewarden replay` (its replay.json and two runs) to report on (repeatable).",
)
@click.option(
    "--calibration",
    type=click.Path(),
    metavar="FILE",
    default=None,
    help="A result file of `benchmarks/detection_calibration.py --json` for the calibration page.",
)
@click.option(
    "--paper",
    type=click.Path(),
    metavar="FILE",
    default=None,
    help="A result file of `benchmarks/paper_reproduction.py` (its figure beside it) for the paper-reproduction page.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="The report folder; an earlier report there is replaced.  [default: ./stagewarden-report-<spec name>]",
)
@click.option(
    "--format",
    "fmt",
    type=Choice(["html", "singlehtml"]),
    default="html",
    show_default=True,
    help="One page per section (html) or everything on one page (singlehtml).",
)
def report(
    spec: str | None,
    example: str | None,
    runs: tuple[str, ...],
    replays: tuple[str, ...],
    calibration: str | None,
    paper: str | None,
    out: str | None,
    fmt: str,
) -> None:
    """Build the security report of SPEC (and of the run directories given with --run).

    Proves every guarantee, then writes and builds a Sphinx site: the summary of verdicts, the
    attack trace of each violated guarantee (table and swimlane picture), the spec lines each
    proof rests on, the topology and who-checks-whom graph, detection and damage probability
    against the spot-check rate and the adversary's budget, and the threat taxonomy. With runs:
    attestation table, receipt audit, spot checks, detection timeline, loss curves, throughput
    and overhead, and the observed detection latency beside the predicted one. Prints the path
    of the index page. With --replay: the replayed counterexample, its prediction, the attack
    under the spec's defence and under the proposed one (both runs also join the run pages).
    With --calibration: the benchmark's predicted against observed detection figures. With
    --paper: the seed paper's experiment as benchmarks/paper_reproduction.py measured it.

    Exit codes: 0 the report was built (whatever the verdicts), 2 bad input (spec, run
    directory, replay, calibration file, --out) or a build that failed.
    """
    from stagewarden.prover import Limits
    from stagewarden.report import ReportError, build_report

    loaded = load_spec_or_example(spec, example)
    print_warnings_to_stderr(loaded)
    for run in runs:
        if not Path(run).is_dir():
            what = "is a file, not a run directory" if Path(run).exists() else "no such run directory"
            raise BadInput(f"--run {run}: {what}")
    target = Path(out) if out is not None else Path.cwd() / f"stagewarden-report-{loaded.spec.name}"
    console = make_console(err=True)
    verdicts = prove_with_status(loaded, None, Limits())
    status = console.status("") if console.is_terminal else None

    def progress(message: str) -> None:
        if status is not None:
            status.update(message + " ...")

    try:
        if status is not None:
            with status:
                index = build_report(
                    loaded, runs, target, fmt, verdicts, progress, replays=replays, calibration=calibration, paper=paper
                )
        else:
            index = build_report(
                loaded, runs, target, fmt, verdicts, replays=replays, calibration=calibration, paper=paper
            )
    except ReportError as exc:
        raise BadInput(exc.message) from None
    click.echo(str(index))
    sys.exit(EXIT_OK)
