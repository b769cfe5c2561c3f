"""The largest sizes a spec may declare.

The prover builds one solver variable per worker and evaluates closed forms over the horizon, so
each size is bounded where memory and time stay small; a spec beyond a limit is refused when it
is loaded, at the offending key, instead of exhausting memory later. The JSON Schema carries the
same maxima.
"""

from __future__ import annotations

#: ``topology.stages``: pipeline stages S.
MAX_STAGES = 65_536
#: ``topology.replicas``: data-parallel replicas R.
MAX_REPLICAS = 65_536
#: ``topology.standby``: spare workers.
MAX_STANDBY = 65_536
#: ``topology.microbatches``: micro-batches per optimizer step.
MAX_MICROBATCHES = 1_000_000
#: ``topology.steps``: the horizon H in optimizer steps (it enters closed forms only).
MAX_STEPS = 1_000_000_000
#: ``defense.checkpoint_every``: steps between verified checkpoints.
MAX_CHECKPOINT_EVERY = MAX_STEPS
#: A ``replicate`` check's ``factor`` k: workers computing every unit.
MAX_REPLICATION_FACTOR = 64
#: A ``bounded_damage`` guarantee's ``max_undetected`` K.
MAX_UNDETECTED = 1_000_000
#: Every worker the adversary could occupy: S x R x k computing workers plus standby.
MAX_WORKERS = 131_072
