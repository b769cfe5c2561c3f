"""The prover: compiles a threat-model spec to Z3 and returns a verdict for every guarantee
(holds, violated, unknown or vacuous), with attack traces and explanations."""

from stagewarden.prover.prover import Limits, Prover, verify
from stagewarden.prover.verdict import (
    HOLDS,
    UNKNOWN,
    VACUOUS,
    VERDICT_FORMAT_VERSION,
    VIOLATED,
    AssumptionRef,
    Figure,
    GuaranteeResult,
    Report,
)
from stagewarden.prover.world import World, check_graph

__all__ = [
    "HOLDS",
    "UNKNOWN",
    "VACUOUS",
    "VERDICT_FORMAT_VERSION",
    "VIOLATED",
    "AssumptionRef",
    "Figure",
    "GuaranteeResult",
    "Limits",
    "Prover",
    "Report",
    "World",
    "check_graph",
    "verify",
]
