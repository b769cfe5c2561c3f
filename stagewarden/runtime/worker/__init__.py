"""A stage worker: attests at start, runs its stage's schedule each step, signs receipts and
answers the coordinator's requests (commit, fetch, update).

The package's modules, each one job:

* :mod:`~stagewarden.runtime.worker.service`: the process,
  :class:`~stagewarden.runtime.worker.service.StageWorker`: attest, then a table of message
  type to handler;
* :mod:`~stagewarden.runtime.worker.step`: the schedule interpreter, one method per action over
  a :class:`~stagewarden.runtime.worker.step.StepState`, and the update;
* :mod:`~stagewarden.runtime.worker.state`: the stage's weights and optimizer, the records of
  its steps, checkpoints loaded; :mod:`~stagewarden.runtime.worker.grads`: the gradient buffers;
* :mod:`~stagewarden.runtime.worker.signing`: receipts and transfer headers;
  :mod:`~stagewarden.runtime.worker.peers`: the other stages' ranks, ids and keys, and the route;
* :mod:`~stagewarden.runtime.worker.neighbour`: the redundant-neighbour relay and check;
* :mod:`~stagewarden.runtime.worker.hooks`: the fault-injection hooks of the tests, read once;
  the attack plan's behaviour is :mod:`stagewarden.runtime.attacks`;
* :mod:`~stagewarden.runtime.protocol.ids` (shared with the coordinator): the ids of workers, standbys and devices.
"""

from __future__ import annotations

from stagewarden.runtime.data import batches_for
from stagewarden.runtime.protocol.ids import COORDINATOR, device_id_for, standby_id_for, worker_id_for
from stagewarden.runtime.worker.hooks import (
    CRASH_ENV,
    HOSTILE_ENV,
    HOSTILE_MESSAGES,
    NUMERICS_ENV,
    TAMPER_MEASUREMENT_ENV,
    TestHooks,
)
from stagewarden.runtime.worker.service import StageWorker
from stagewarden.runtime.worker.state import StepRecord

# the coordinator's re-execution reads the run's data through this name

__all__ = [
    "COORDINATOR",
    "CRASH_ENV",
    "HOSTILE_ENV",
    "HOSTILE_MESSAGES",
    "NUMERICS_ENV",
    "TAMPER_MEASUREMENT_ENV",
    "StageWorker",
    "StepRecord",
    "TestHooks",
    "batches_for",
    "device_id_for",
    "standby_id_for",
    "worker_id_for",
]
