"""The run settings of the spec named on the command line (``--spec FILE`` or ``--example NAME``),
which ``stagewarden train`` starts from before its own flags override them."""

from __future__ import annotations

from typing import Any

from stagewarden.cli.common import BadInput


def load_spec_settings(path: str | None, example: str | None) -> dict[str, Any]:
    """The run settings a spec (a file, or a packaged example) determines: topology and defence,
    where they map onto the runtime (:func:`stagewarden.spec_settings.spec_settings`, which the
    conformance check expects too).

    Raises:
        BadInput: Both are given, or the spec does not load.
    """
    from stagewarden.spec import SpecError, load_example, load_spec
    from stagewarden.spec_settings import spec_settings

    if path is not None and example is not None:
        raise BadInput("give --spec FILE or --example NAME, not both")
    try:
        loaded = load_spec(path) if path is not None else load_example(str(example))
    except SpecError as exc:
        raise BadInput(str(exc)) from None
    return spec_settings(loaded)
