"""Run settings whose defaults come from measurements, in a module without torch so that the
command line can show them without loading it."""

from __future__ import annotations

#: The default steps between verified checkpoints. ``benchmarks/checkpoint_interval.py`` measures
#: one checkpoint's cost on the runtime-overhead benchmark's job (its slowest round at a
#: checkpoint after every step) and divides it over the interval: the smallest candidate under 2%
#: of training time was 10 (1.9%, at the target within the noise), and the runtime-overhead
#: benchmark's own measurement of a checkpoint after every step (a quarter of a step) puts 10 at
#: 2.5%; 20 is under 2% by both (1.0% and 1.2%). See the benchmarks page, "Checkpoint interval".
DEFAULT_CHECKPOINT_EVERY = 20

#: The default number of times one step is recomputed after detections before the run stops (so a
#: step is computed at most four times). A response that routes around the tampering stage
#: (``skip_stage``, or ``rollback``/``eject`` without a standby) needs one recomputation; more are
#: only needed by a response that recomputes the same path (``restart``) against an attacker that
#: fires on a fraction of the computations.
DEFAULT_MAX_RECOMPUTATIONS = 3
#: The most recomputations of one step a run may allow (a bound on a step's cost, not a default).
MAX_RECOMPUTATIONS_LIMIT = 1000
