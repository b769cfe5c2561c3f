"""Conformance of a training run to its threat-model spec: does the run directory show the system
the prover reasoned about, and did it keep the promises the prover says hold?

:func:`check_conformance` compares a run directory (``summary.json``, ``events.jsonl`` and the
offline audit's findings) with a loaded spec and returns a :class:`ConformanceReport`:

1. configuration: every setting the spec determines (stages, replicas, micro-batches, standby,
   horizon, receipts, attestation, checks and spot-check rate, response, checkpoints) against
   the run's configuration; a departure that can weaken a guarantee is an error, one that leaves
   the run at least as protected (a higher rate, extra standby) a warning;
2. attestation: with ``defense.attestation`` every worker of the run has attestation results and
   the audit rejected none of them;
3. spot checks: the sampled fraction of the eligible units against the spec's rate, within an exact
   two-sided Clopper-Pearson interval (99.9% by default), and each logged sample recomputed from
   the revealed secret as the coordinator draws it;
4. responses: every detection was answered by a response the spec lists, carried out;
5. guarantees: each guarantee the prover says holds, against what the run shows (see
   :func:`stagewarden.guarantee_observation.observe_guarantees`), or the reason it cannot be
   checked from a run.

Each check is a module of this package (:mod:`~stagewarden.conformance.configuration`,
:mod:`~stagewarden.conformance.attestation`, :mod:`~stagewarden.conformance.sampling`,
:mod:`~stagewarden.conformance.responses`, and :mod:`~stagewarden.conformance.check`, which also
runs them all) over the run read once (:mod:`~stagewarden.conformance.run`); the outcome's types
are in :mod:`~stagewarden.conformance.findings`.
"""

from stagewarden.conformance.attestation import ATTESTATION_CODES
from stagewarden.conformance.check import check_conformance
from stagewarden.conformance.findings import (
    ConformanceCode,
    ConformanceError,
    ConformanceFinding,
    ConformanceReport,
    RateObservation,
)
from stagewarden.conformance.sampling import RATE_CONFIDENCE

__all__ = [
    "ATTESTATION_CODES",
    "RATE_CONFIDENCE",
    "ConformanceCode",
    "ConformanceError",
    "ConformanceFinding",
    "ConformanceReport",
    "RateObservation",
    "check_conformance",
]
