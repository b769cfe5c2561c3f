"""The ``stagewarden`` command line: a thin shell over the library that renders results and maps
them to exit codes (0 ok / holds, 1 violated or findings, 2 bad input, 3 unknown).

This module only assembles the command group: each command lives in a module of its own
(``stagewarden.cli.<command>``), and what several commands share lives in
:mod:`stagewarden.cli.common`, :mod:`stagewarden.cli.spec_input`, :mod:`stagewarden.cli.proving`
and :mod:`stagewarden.cli.spec_settings`, which never import a command module or this package.
"""

from __future__ import annotations

import click

from stagewarden._version import __version__

# The command modules are bound here, not their commands (which share their names), so that
# ``stagewarden.cli.<name>`` stays the module for anyone who patches or imports inside it.
from stagewarden.cli import (
    attest,
    attest_dcap,
    audit,
    demo,
    diff,
    examples,
    replay,
    report,
    schema,
    synthesize,
    train,
    verifier,
    verify,
)
from stagewarden.cli.common import CommandGroup

__all__ = ["cli", "main"]


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="stagewarden")
def cli() -> None:
    """Prove what a pipeline-parallel training protocol guarantees against malicious workers.

    Exit codes: 0 ok (every guarantee holds), 1 a guarantee is violated, 2 bad input
    (spec, file or flag), 3 unknown (the solver gave up), 130 interrupted (Ctrl-C).
    """


attest.attest.add_command(attest_dcap.verify_quote)
attest.attest.add_command(attest_dcap.fetch_collateral)
for command in (
    schema.schema,
    examples.examples,
    verify.verify,
    synthesize.synthesize,
    diff.diff,
    attest.attest,
    audit.audit,
    demo.demo,
    replay.replay,
    report.report,
    train.train,
    verifier.verifier,
):
    cli.add_command(command)


def main() -> None:
    """Entry point of the ``stagewarden`` console script.

    Ctrl-C and file-system errors are handled by the group itself (``CommandGroup``: exit codes
    130 and 2, one line, no traceback), so that they behave the same when tests invoke ``cli``.
    """
    cli.main(prog_name="stagewarden")
