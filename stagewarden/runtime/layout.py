"""Where every worker of a run sits: stages, data-parallel replicas, ``replicate`` copies and the
*slots* they make, numbered the way ranks and worker ids are assigned.

A run has ``S`` stages and ``P = R x k`` *pipelines*: ``R`` data-parallel replicas (each trains on
its own shard of every batch), each computed ``k`` times when ``verification: replicate`` applies
(``k = 1`` otherwise). Pipeline ``p`` belongs to replica ``p // k`` and is its copy ``p % k``;
the copies of one replica read the same data, start from the same weights and apply the same
aggregated update, so honest copies agree bit for bit on every unit. A *slot* is one
``(stage, pipeline)`` position, numbered ``q = p x S + s``: slot ``q`` is served at start by rank
``q + 1``, and standby ``j`` by rank ``S x P + 1 + j``. With one replica and no copies a slot is
a stage, and every number is what a single pipeline uses.

Receipts and signed headers name a slot's pipeline in their ``replica`` field: it tells the
offline audit which receipts link up (the units of one pipeline), whether or not the pipeline
is a copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection


@dataclasses.dataclass(frozen=True)
class Layout:
    """The shape of a run's worker positions.

    Attributes:
        stages: Pipeline stages ``S``.
        replicas: Data-parallel replicas ``R``.
        copies: ``replicate`` copies ``k`` of every replica (1: no ``replicate``).
    """

    stages: int
    replicas: int = 1
    copies: int = 1

    @property
    def pipelines(self) -> int:
        """Pipelines ``P = R x k``."""
        return self.replicas * self.copies

    @property
    def slots(self) -> int:
        """Slots ``S x P``: the workers that compute at start."""
        return self.stages * self.pipelines

    def slot(self, stage: int, pipeline: int) -> int:
        """The slot of ``stage`` in ``pipeline``."""
        return pipeline * self.stages + stage

    def stage(self, slot: int) -> int:
        """The stage of ``slot``."""
        return slot % self.stages

    def pipeline(self, slot: int) -> int:
        """The pipeline of ``slot``."""
        return slot // self.stages

    def replica(self, slot: int) -> int:
        """The data-parallel replica of ``slot`` (whose data shard it reads)."""
        return self.pipeline(slot) // self.copies

    def copy(self, slot: int) -> int:
        """Which copy of its replica ``slot``'s pipeline is (0 without ``replicate``)."""
        return self.pipeline(slot) % self.copies

    def is_last(self, slot: int) -> bool:
        """Whether ``slot`` holds the last stage (it computes the loss)."""
        return self.stage(slot) == self.stages - 1

    def at(self, slot: int, stage: int) -> int:
        """The slot of ``stage`` in ``slot``'s pipeline."""
        return self.slot(stage, self.pipeline(slot))

    def of_stage(self, stage: int) -> list[int]:
        """Every slot of ``stage``, in pipeline order."""
        return [self.slot(stage, p) for p in range(self.pipelines)]

    def of_pipeline(self, pipeline: int) -> list[int]:
        """Every slot of ``pipeline``, in stage order."""
        return [self.slot(s, pipeline) for s in range(self.stages)]

    def copies_of(self, slot: int) -> list[int]:
        """The slots computing the same units as ``slot`` (itself included): its stage in every
        copy of its replica."""
        r, s = self.replica(slot), self.stage(slot)
        return [self.slot(s, r * self.copies + c) for c in range(self.copies)]

    def group(self, slot: int, computing: Collection[int]) -> list[int]:
        """The slots whose gradient contributions ``slot`` aggregates, in replica order: itself
        for its own replica and, for every other replica with a computing slot of its stage, that
        replica's first computing copy (the copies of a replica commit to the same contribution,
        so one copy per replica is the replica's; a group never counts a replica twice, and every
        copy of a stage aggregates the same replicas even after a copy has left the run)."""
        s, own = self.stage(slot), self.replica(slot)
        out = []
        for r in range(self.replicas):
            if r == own:
                out.append(slot)
                continue
            first = next((q for q in self.copies_of(self.slot(s, r * self.copies)) if q in computing), None)
            if first is not None:
                out.append(first)
        return out

    def audience(self, slot: int, computing: Collection[int]) -> list[int]:
        """The computing slots whose :meth:`group` takes ``slot``'s contribution (itself excluded):
        whom it sends its contribution to."""
        s = self.stage(slot)
        return [q for q in self.of_stage(s) if q != slot and q in computing and slot in self.group(q, computing)]

    def worker_id(self, slot: int) -> str:
        """The id of the worker placed in ``slot`` at start: ``s<stage>r<replica>``, with
        ``c<copy>`` appended when replicas have copies."""
        base = f"s{self.stage(slot)}r{self.replica(slot)}"
        return f"{base}c{self.copy(slot)}" if self.copies > 1 else base

    def name(self, slot: int) -> str:
        """The slot as people write it: ``stage:replica``, with ``.copy`` when replicas have copies."""
        base = f"{self.stage(slot)}:{self.replica(slot)}"
        return f"{base}.{self.copy(slot)}" if self.copies > 1 else base
