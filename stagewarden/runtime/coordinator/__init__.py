"""The coordinator (rank 0): the engine and the collaborators it wires, one job per module.

========================= ===================================================================
module                    job
========================= ===================================================================
``engine``                :class:`~.engine.Coordinator`: runs the steps, wires the collaborators
``context``               the run context every collaborator shares, the event log, constants
``roster``                stage -> worker and rank, standbys, attested keys, hand-over
``ledger``                the weights and optimizer state each stage must hold
``admission``             attestation and admission, tolerance calibration
``commitments``           collecting and verifying a step's commitments
``checks``                link, weights-chain and neighbour checks; the spot-check draw
``reexecution``           re-executing sampled or accused units and comparing
``accusations``           signed detections
``recovery``              eject / rollback / restart / skip_stage
``checkpoints``           writing, pruning and restoring verified checkpoints
``faults``                the watchdog and blame for failed receives
``resume``                rebuilding state from an interrupted run directory
``tally``                 the run's account: ``summary.json`` and ``metrics.csv``
``wire``                  the tensors workers announce: dtypes, size limit, digests
``errors``                how a run ends other than by completing
========================= ===================================================================
"""

from stagewarden.runtime.coordinator.commitments import StepCommit
from stagewarden.runtime.coordinator.context import (
    DETECTION_DOMAIN,
    EVENTS_FILE,
    EXIT_RESUMABLE,
    FETCH_CHECK_ENV,
    KEYS_SUFFIX,
    METRICS_FILE,
    WORKERS_FILE,
    EventLog,
)
from stagewarden.runtime.coordinator.engine import AfterUpdate, Coordinator
from stagewarden.runtime.coordinator.errors import AdmissionRefused, ResumeError, RunFailed, RunInterrupted
from stagewarden.runtime.coordinator.reexecution import FetchedUnit

__all__ = [
    "DETECTION_DOMAIN",
    "EVENTS_FILE",
    "EXIT_RESUMABLE",
    "FETCH_CHECK_ENV",
    "KEYS_SUFFIX",
    "METRICS_FILE",
    "WORKERS_FILE",
    "AdmissionRefused",
    "AfterUpdate",
    "Coordinator",
    "EventLog",
    "FetchedUnit",
    "ResumeError",
    "RunFailed",
    "RunInterrupted",
    "StepCommit",
]
