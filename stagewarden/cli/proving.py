"""Proving for the commands: ``verify`` and ``synthesize`` prove in a child process that Ctrl-C
stops at once (:mod:`stagewarden.interruptible`), with progress on standard error while it runs
and the result printed only once it is complete, so that an interrupted command prints none of it;
``report`` and ``demo`` prove in process, with the same progress, and go on with the verdicts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from stagewarden.cli.common import EXIT_BAD_INPUT, make_console
from stagewarden.cli.spec_input import print_warnings, warnings_json
from stagewarden.interruptible import CommandOutput, Job, run_interruptibly
from stagewarden.spec import LoadedSpec

if TYPE_CHECKING:
    from stagewarden.prover import Limits, Report


def _captured(err: bool, draw: Callable[[Console], None]) -> str:
    """What ``draw`` prints on the command's console (standard output, or error), as text."""
    console = make_console(err=err)
    with console.capture() as capture:
        draw(console)
    return capture.get()


def _rendered(loaded: LoadedSpec, fmt: str, result: Any, draw: Callable[[Console], None]) -> CommandOutput:
    """The output of a verdict or synthesis ``result``: JSON with the warnings inside, or the
    warnings on standard error and ``draw``'s text on standard output."""
    if fmt == "json":
        payload = result.to_json()
        payload["warnings"] = warnings_json(loaded)
        return CommandOutput(json.dumps(payload, indent=2) + "\n", "", result.exit_code)
    warnings = _captured(True, lambda console: print_warnings(console, loaded))
    return CommandOutput(_captured(False, draw), warnings, result.exit_code)


def verify_job(loaded: LoadedSpec, ids: list[str] | None, limits: Limits, fmt: str) -> Job:
    """The job of ``verify``: prove the guarantees ``ids`` (all when None) and render the report."""

    def job(progress: Callable[[str], None]) -> CommandOutput:
        from stagewarden.prover import verify as prove
        from stagewarden.render import print_report

        def guarantee_started(gid: str, result: Any) -> None:
            if result is None:
                progress(f"checking guarantee {gid} ...")

        report = prove(loaded, ids, limits, guarantee_started)
        return _rendered(loaded, fmt, report, lambda console: print_report(console, report))

    return job


def synthesize_job(loaded: LoadedSpec, limits: Limits, fmt: str, out: str | None = None) -> Job:
    """The job of ``synthesize``: search the defence space, write the spec with the defence found
    (to ``out``, or where :func:`~stagewarden.prover.defense_text.proof_file` says) and render the result."""

    def job(progress: Callable[[str], None]) -> CommandOutput:
        from stagewarden.prover.synthesis import synthesize as find_defence
        from stagewarden.render_synthesis import print_synthesis
        from stagewarden.synthesis_output import OutputError, write_synthesized_spec

        def candidate_tried(count: int, candidate: Any) -> None:
            if count % 25 == 1:
                progress(f"trying candidate {count}: {candidate.describe()}")

        result = find_defence(loaded, limits, progress=candidate_tried, proof_name=out)
        try:  # the spec with the defence, under the name its proof cites
            written = write_synthesized_spec(result)
        except OutputError as exc:
            return CommandOutput("", f"error: {exc}\n", EXIT_BAD_INPUT)
        return _rendered(loaded, fmt, result, lambda console: print_synthesis(console, result, written))

    return job


def run_with_progress(job: Job) -> int:
    """Run ``job`` in a child process, show its progress on a terminal, print its output; returns
    its exit code. Ctrl-C raises :class:`KeyboardInterrupt` before anything of the output is printed."""
    console = make_console(err=True)
    status = console.status("") if console.is_terminal else None
    started = False

    def show(line: str) -> None:
        nonlocal started
        if status is None:
            return
        if not started:  # started after the fork: the child inherits no spinner thread
            status.start()
            started = True
        status.update(line)

    try:
        output = run_interruptibly(job, show)
    finally:
        if status is not None and started:
            status.stop()
    if output.stderr:
        click.echo(output.stderr, err=True, nl=False)
    click.echo(output.stdout, nl=False)
    return output.exit_code


def prove_with_status(loaded: LoadedSpec, ids: list[str] | None, limits: Limits) -> Report:
    """Prove the guarantees ``ids`` (all when None) in this process, the guarantee being checked
    shown on a terminal's standard error; returns the verdicts."""
    from stagewarden.prover import verify as prove

    console = make_console(err=True)
    status = console.status("") if console.is_terminal else None

    def progress(gid: str, result: Any) -> None:
        if status is not None and result is None:
            status.update(f"checking guarantee {gid} ...")

    if status is not None:
        with status:
            return prove(loaded, ids, limits, progress)
    return prove(loaded, ids, limits, progress)
