"""``stagewarden diff``: compare the verdicts of two versions of a protocol, to gate a change in CI."""

from __future__ import annotations

import json
import os
import sys

import click

from stagewarden.cli.common import FORMAT_OPTION, TIMEOUT_OPTION, make_console
from stagewarden.cli.spec_input import load_spec_or_example, print_warnings_to_stderr
from stagewarden.spec import LoadedSpec


def _load_version(argument: str) -> LoadedSpec:
    """A spec file, or a packaged example written ``example:NAME`` (when no such file exists)."""
    if argument.startswith("example:") and not os.path.exists(argument):
        return load_spec_or_example(None, argument.removeprefix("example:"))
    return load_spec_or_example(argument, None)


@click.command()
@click.argument("old", type=click.Path(dir_okay=True))
@click.argument("new", type=click.Path(dir_okay=True))
@FORMAT_OPTION
@TIMEOUT_OPTION
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
        print_warnings_to_stderr(old_spec)
        print_warnings_to_stderr(new_spec)
        from stagewarden.render_diff import print_diff

        print_diff(make_console(), result)
    sys.exit(result.exit_code)
