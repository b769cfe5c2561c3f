"""The file ``stagewarden synthesize`` writes: the spec with the defence it found in place, under
the name its proof cites (:func:`stagewarden.prover.defense_text.proof_file`), so that every
``file:line`` of the printed proof is a line of a file on disk."""

from __future__ import annotations

from stagewarden.attest.files import atomic_write_text
from stagewarden.prover.synthesis import FOUND, SynthesisResult


class OutputError(Exception):
    """The synthesized spec could not be written (the message names the file and why)."""


def write_synthesized_spec(result: SynthesisResult) -> str | None:
    """Write the spec with the chosen defence to ``result.proof_file``, atomically (replacing an
    earlier one); return that path, or None when no defence was found (nothing is written).

    Raises:
        OutputError: the file cannot be written.
    """
    if result.status != FOUND or result.spec_text is None or result.proof_file is None:
        return None
    path = str(result.proof_file)
    try:
        atomic_write_text(path, str(result.spec_text))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
