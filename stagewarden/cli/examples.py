"""``stagewarden examples``: list the packaged example specs and print their sources."""

from __future__ import annotations

import sys

import click
from rich.syntax import Syntax
from rich.table import Table

from stagewarden.cli.common import BadSpec, make_console
from stagewarden.spec import SpecError, example_names, example_text, load_example


@click.group()
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
