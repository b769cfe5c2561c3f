"""``stagewarden verify``: prove or refute every guarantee of a spec."""

from __future__ import annotations

import json
import sys

import click

from stagewarden.cli.common import (
    EXAMPLE_OPTION,
    EXIT_BAD_INPUT,
    FORMAT_OPTION,
    RLIMIT_OPTION,
    SPEC_ARGUMENT,
    TIMEOUT_OPTION,
    BadSpec,
)
from stagewarden.cli.proving import run_with_progress, verify_job
from stagewarden.cli.spec_input import check_guarantee_ids, load_spec_or_example


@click.command()
@SPEC_ARGUMENT
@EXAMPLE_OPTION
@click.option(
    "--guarantee", "guarantee_ids", multiple=True, metavar="ID", help="Check only this guarantee (repeatable)."
)
@FORMAT_OPTION
@TIMEOUT_OPTION
@RLIMIT_OPTION
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
        loaded = load_spec_or_example(spec, example)
    except BadSpec as exc:
        if fmt != "json":
            raise
        diagnostics = [line for line in exc.message.splitlines() if line]
        click.echo(json.dumps({"version": 1, "error": "bad spec", "diagnostics": diagnostics}, indent=2))
        sys.exit(EXIT_BAD_INPUT)
    from stagewarden.prover import Limits

    ids = list(guarantee_ids) or None
    check_guarantee_ids(loaded, ids)
    sys.exit(run_with_progress(verify_job(loaded, ids, Limits(timeout=timeout, rlimit=rlimit), fmt)))
