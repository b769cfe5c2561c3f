"""The spec a command is given (SPEC, or ``--example NAME``): loading it with one
``file:line:column`` line per problem, printing its warnings, and checking the guarantee ids named
on the command line against it."""

from __future__ import annotations

import difflib

import click
from rich.console import Console

from stagewarden.cli.common import BadInput, BadSpec, make_console
from stagewarden.spec import LoadedSpec, SpecError, load_example, load_spec


def load_spec_or_example(spec: str | None, example: str | None) -> LoadedSpec:
    """The spec file ``spec`` or the packaged example ``example`` (exactly one of them given).

    Raises:
        click.UsageError: Both or neither are given.
        BadSpec: The spec does not load (exit code 2, one line per problem).
    """
    if (spec is None) == (example is None):
        raise click.UsageError("give exactly one of SPEC or --example NAME")
    try:
        return load_spec(spec) if spec is not None else load_example(str(example))
    except SpecError as exc:
        raise BadSpec(str(exc)) from None


def warnings_json(loaded: LoadedSpec) -> list[dict[str, str]]:
    """The spec's warnings as the JSON outputs list them."""
    return [{"location": str(w.location), "message": w.message} for w in loaded.warnings]


def print_warnings(console: Console, loaded: LoadedSpec) -> None:
    """The spec's warnings, one ``file:line:column: warning: ...`` line each."""
    for warning in loaded.warnings:
        console.print(f"[yellow]{warning.location}: warning:[/] {warning.message}", markup=True)


def print_warnings_to_stderr(loaded: LoadedSpec) -> None:
    """The spec's warnings on standard error, where they stay out of the command's output."""
    print_warnings(make_console(err=True), loaded)


def check_guarantee_ids(loaded: LoadedSpec, ids: list[str] | None) -> None:
    """Raise :class:`BadInput` (with a hint) for a guarantee id that the spec does not have."""
    known = [g.id for g in loaded.spec.guarantees]
    for gid in ids or []:
        if gid not in known:
            close = difflib.get_close_matches(gid, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise BadInput(f"{loaded.file} has no guarantee '{gid}'{hint}; its guarantees are: {', '.join(known)}")
