"""``stagewarden synthesize``: the cheapest defence under which every guarantee of a spec holds."""

from __future__ import annotations

import sys

import click

from stagewarden.cli.common import EXAMPLE_OPTION, FORMAT_OPTION, SPEC_ARGUMENT, TIMEOUT_OPTION
from stagewarden.cli.proving import run_with_progress, synthesize_job
from stagewarden.cli.spec_input import load_spec_or_example


@click.command()
@SPEC_ARGUMENT
@EXAMPLE_OPTION
@FORMAT_OPTION
@TIMEOUT_OPTION
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
    loaded = load_spec_or_example(spec, example)
    from stagewarden.prover import Limits

    sys.exit(run_with_progress(synthesize_job(loaded, Limits(timeout=timeout), fmt, out)))
