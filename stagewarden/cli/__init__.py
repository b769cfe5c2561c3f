"""The ``stagewarden`` command line: a thin shell over the library that renders results and maps
them to exit codes (0 ok / holds, 1 violated or findings, 2 bad input, 3 unknown).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from stagewarden._version import __version__
from stagewarden.cli.common import EXIT_BAD_INPUT, BadInput, Choice, CommandGroup, make_console
from stagewarden.spec import LoadedSpec, SpecError, example_names, example_text, json_schema, load_example, load_spec

if TYPE_CHECKING:
    from stagewarden.prover import Report


class BadSpec(BadInput):
    """A spec that does not load: one ``file:line:column: message`` line per problem, exit code 2."""

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


def _load(spec: str | None, example: str | None) -> LoadedSpec:
    if (spec is None) == (example is None):
        raise click.UsageError("give exactly one of SPEC or --example NAME")
    try:
        return load_spec(spec) if spec is not None else load_example(str(example))
    except SpecError as exc:
        raise BadSpec(str(exc)) from None


def _print_warnings(loaded: LoadedSpec) -> None:
    from stagewarden.cli.proving import print_warnings

    print_warnings(make_console(err=True), loaded)


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="stagewarden")
def cli() -> None:
    """Prove what a pipeline-parallel training protocol guarantees against malicious workers.

    Exit codes: 0 ok (every guarantee holds), 1 a guarantee is violated, 2 bad input
    (spec, file or flag), 3 unknown (the solver gave up), 130 interrupted (Ctrl-C).
    """


@cli.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the schema to this file instead of standard output.",
)
def schema(out: str | None) -> None:
    """Print the JSON Schema of the spec format (for editors and validators)."""
    text = json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        from stagewarden.attest.files import atomic_write_text

        try:
            atomic_write_text(out, text)
        except OSError as exc:
            raise BadInput(f"cannot write {out}: {exc.strerror or exc}") from None


@cli.group()
def examples() -> None:
    """List and show the packaged example specs."""


@examples.command("list")
def examples_list() -> None:
    """List the packaged example specs with their descriptions."""
    table = Table("name", "description", box=None)
    for name in example_names():
        description = " ".join(load_example(name).spec.description.split())
        table.add_row(name, description)
    make_console().print(table)


@examples.command("show")
@click.argument("name")
@click.option(
    "--numbered/--plain",
    default=None,
    help="Number the lines, or print the YAML exactly as it is. Default: numbered on a terminal, plain "
    "when standard output is redirected.",
)
def examples_show(name: str, numbered: bool | None) -> None:
    """Print the source of the packaged example NAME.

    On a terminal the lines are numbered and highlighted, to read beside the line numbers that
    verdicts cite. Redirected (``stagewarden examples show demo > spec.yaml``) or with --plain, the
    output is the example's YAML exactly, ready to edit into a spec of your own.
    """
    try:
        text = example_text(name)
    except SpecError as exc:
        raise BadSpec(str(exc)) from None
    terminal = sys.stdout.isatty()
    if numbered is False or (numbered is None and not terminal):
        click.echo(text, nl=not text.endswith("\n"))
    elif terminal:
        make_console().print(Syntax(text, "yaml", line_numbers=True))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            click.echo(f"{number:4d}  {line}")


def _progress_console() -> Console | None:
    console = make_console(err=True)
    return console if console.is_terminal else None


def _run_verify(loaded: LoadedSpec, ids: list[str] | None, timeout: float | None, rlimit: int | None) -> Report:
    from stagewarden.cli.proving import check_guarantee_ids
    from stagewarden.prover import Limits
    from stagewarden.prover import verify as prove

    check_guarantee_ids(loaded, ids)
    console = _progress_console()
    status = console.status("") if console else None

    def progress(gid: str, result: Any) -> None:
        if status is not None and result is None:
            status.update(f"checking guarantee {gid} ...")

    if status is not None:
        with status:
            return prove(loaded, ids, Limits(timeout=timeout, rlimit=rlimit), progress)
    return prove(loaded, ids, Limits(timeout=timeout, rlimit=rlimit), progress)


_SPEC_ARGUMENT = click.argument("spec", required=False, type=click.Path(dir_okay=True))
_EXAMPLE_OPTION = click.option(
    "--example", metavar="NAME", help="Use a packaged example spec instead of a file (see `stagewarden examples list`)."
)
_FORMAT_OPTION = click.option(
    "--format", "fmt", type=Choice(["text", "json"]), default="text", show_default=True, help="Output format."
)
_TIMEOUT_OPTION = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Wall-clock limit per guarantee; a guarantee that runs out is reported unknown.",
)
_RLIMIT_OPTION = click.option(
    "--rlimit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Deterministic Z3 resource limit per solver call (reproducible across machines, unlike --timeout).",
)


@cli.command()
@_SPEC_ARGUMENT
@_EXAMPLE_OPTION
@click.option(
    "--guarantee", "guarantee_ids", multiple=True, metavar="ID", help="Check only this guarantee (repeatable)."
)
@_FORMAT_OPTION
@_TIMEOUT_OPTION
@_RLIMIT_OPTION
def verify(
    spec: str | None,
    example: str | None,
    guarantee_ids: tuple[str, ...],
    fmt: str,
    timeout: float | None,
    rlimit: int | None,
) -> None:
    """Prove or refute every guarantee of SPEC (a YAML or JSON threat-model spec).

    For each guarantee: holds (with the spec assumptions the proof rests on, each with its
    file:line), violated (with an attack trace), unknown (the solver gave up) or vacuous (the
    assumptions contradict each other). Exit code 0 when all hold, 1 when one is violated,
    2 for a bad or contradictory spec, 3 when one is unknown and none violated.
    """
    try:
        loaded = _load(spec, example)
    except BadSpec as exc:
        if fmt != "json":
            raise
        diagnostics = [line for line in exc.message.splitlines() if line]
        click.echo(json.dumps({"version": 1, "error": "bad spec", "diagnostics": diagnostics}, indent=2))
        sys.exit(EXIT_BAD_INPUT)
    from stagewarden.cli.proving import check_guarantee_ids, run_with_progress, verify_job
    from stagewarden.prover import Limits

    ids = list(guarantee_ids) or None
    check_guarantee_ids(loaded, ids)
    sys.exit(run_with_progress(verify_job(loaded, ids, Limits(timeout=timeout, rlimit=rlimit), fmt)))


@cli.command()
@_SPEC_ARGUMENT
@_EXAMPLE_OPTION
@_FORMAT_OPTION
@_TIMEOUT_OPTION
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Write the spec with the defence found to FILE (default: NAME.synthesized.yaml beside SPEC, "
    "or in the working folder for --example).",
)
def synthesize(spec: str | None, example: str | None, fmt: str, timeout: float | None, out: str | None) -> None:
    """Find the cheapest defence under which every guarantee of SPEC holds.

    Keeps the topology, trust, adversary and guarantees, and tries defences (receipts,
    attestation, data commitment, up to two checks, response, standby count) cheapest first
    by the overhead cost model. Prints the `defense:` block ready to paste, its cost and its
    proof, and writes the spec with that defence in place to the file the proof cites (every
    line outside the block keeps its number); or, when nothing in the space works, says why,
    guarantee by guarantee, and writes nothing. Exit code 0 when a defence is found, 1 when none
    exists in the space, 2 for bad input (or a contradictory spec), 3 when the search gave up
    (the solver could not decide some candidates).
    """
    loaded = _load(spec, example)
    from stagewarden.cli.proving import run_with_progress, synthesize_job
    from stagewarden.prover import Limits

    sys.exit(run_with_progress(synthesize_job(loaded, Limits(timeout=timeout), fmt, out)))


def _load_version(argument: str) -> LoadedSpec:
    """A spec file, or a packaged example written ``example:NAME`` (when no such file exists)."""
    import os

    if argument.startswith("example:") and not os.path.exists(argument):
        return _load(None, argument.removeprefix("example:"))
    return _load(argument, None)


@cli.command()
@click.argument("old", type=click.Path(dir_okay=True))
@click.argument("new", type=click.Path(dir_okay=True))
@_FORMAT_OPTION
@_TIMEOUT_OPTION
def diff(old: str, new: str, fmt: str, timeout: float | None) -> None:
    """Compare the verdicts of two versions of a protocol, OLD and NEW (spec files, or
    packaged examples written example:NAME).

    Guarantees are matched by id. Lists every guarantee whose verdict changed, those only one
    version has, and the new attack for each guarantee that became violated. A regression (a
    verdict that got worse: holds, then unknown, then violated; or a guarantee added without a
    proof) gives exit code 1, so the command can gate a change in CI. Exit code 0 when no
    guarantee got worse, 2 for bad input.
    """
    from stagewarden.prover import Limits
    from stagewarden.prover.diff import diff_specs

    old_spec, new_spec = _load_version(old), _load_version(new)
    result = diff_specs(old_spec, new_spec, Limits(timeout=timeout))
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_warnings(old_spec)
        _print_warnings(new_spec)
        from stagewarden.render_diff import print_diff

        print_diff(make_console(), result)
    sys.exit(result.exit_code)


from stagewarden.cli.attest import attest  # noqa: E402  (subcommand groups register after cli exists)
from stagewarden.cli.audit import audit  # noqa: E402
from stagewarden.cli.demo import demo  # noqa: E402
from stagewarden.cli.replay import replay  # noqa: E402
from stagewarden.cli.report import report  # noqa: E402
from stagewarden.cli.train import train  # noqa: E402

cli.add_command(attest)
cli.add_command(audit)
cli.add_command(demo)
cli.add_command(replay)
cli.add_command(report)
cli.add_command(train)


def main() -> None:
    """Entry point of the ``stagewarden`` console script.

    Ctrl-C and file-system errors are handled by the group itself (``CommandGroup``: exit codes
    130 and 2, one line, no traceback), so that they behave the same when tests invoke ``cli``.
    """
    cli.main(prog_name="stagewarden")
