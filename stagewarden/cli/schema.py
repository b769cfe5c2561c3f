"""``stagewarden schema``: the JSON Schema of the spec format, for editors and validators."""

from __future__ import annotations

import json

import click

from stagewarden.cli.common import BadInput
from stagewarden.spec import json_schema


@click.command()
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
