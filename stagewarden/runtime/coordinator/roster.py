"""Who serves each slot (a stage of one pipeline, :class:`~stagewarden.runtime.layout.Layout`):
the workers and standbys by id and rank, their attested keys and receipt-chain heads, the
hand-over of a slot to a standby, and the pipelines taken out of the run."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from stagewarden.attest.files import atomic_write_text
from stagewarden.runtime.coordinator.context import WORKERS_FILE, RunContext
from stagewarden.runtime.protocol import Assign, Ranks, Release, send_message
from stagewarden.runtime.protocol.ids import standby_id_for
from stagewarden.runtime.responses import (
    ResponsePlan,
)


class Roster:
    """Slot -> worker and rank, the standbys, and every admitted worker's attested key.

    With one pipeline a slot is a stage.

    Attributes:
        layout: Where the run's slots sit (stages, replicas, copies).
        slot_ids: The worker id serving each slot.
        standby_ids: Every standby's worker id, by standby index.
        slot_ranks: The rank serving each slot (``slot + 1`` until a standby takes it).
        free_standbys: The standby indices that serve no slot yet.
        released: The ranks sent home.
        benched: Worker ids that failed and do not serve again.
        replacements: The standbys that took a slot (``worker``, ``by``, ``stage``, ``from_step``).
        retired: The pipelines taken out of the run (a worker of theirs was convicted with no
            standby left to take its slot); their workers are sent home.
        keys: Each admitted worker's attested receipt key.
        prev: Each worker's receipt-chain head (the digest its next receipt must continue).
        chain_heads: On resume: each worker's last logged receipt digest.
        processes: Each admitted worker's process row for ``workers.json``.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        config = ctx.config
        self.layout = layout = config.layout
        self.slot_ids = [layout.worker_id(q) for q in range(layout.slots)]
        self.standby_ids = [standby_id_for(k) for k in range(config.standby)]
        self.slot_ranks = [q + 1 for q in range(layout.slots)]
        self.free_standbys = list(range(config.standby))
        self.released: set[int] = set()
        self.benched: list[str] = []
        self.replacements: list[dict[str, Any]] = []
        self.retired: set[int] = set()
        self._computing_cache: tuple[frozenset[int], frozenset[int]] | None = None
        self.keys: dict[str, bytes] = {}
        self.prev: dict[str, bytes] = {}
        self.chain_heads: dict[str, bytes] = {}
        self.processes: dict[str, dict[str, Any]] = {}

    def rank_of(self, slot: int) -> int:
        """The rank of the worker now serving ``slot`` (``slot + 1`` until a standby takes it)."""
        return self.slot_ranks[slot]

    @property
    def slots(self) -> list[int]:
        """Every slot of every pipeline still in the run, in order (the slots that compute)."""
        return [q for q in range(self.layout.slots) if self.layout.pipeline(q) not in self.retired]

    def stage_slots(self, stage: int) -> list[int]:
        """The computing slots of ``stage``, in pipeline order."""
        return [q for q in self.layout.of_stage(stage) if self.layout.pipeline(q) not in self.retired]

    def group(self, slot: int) -> list[int]:
        """The computing slots whose contributions ``slot`` aggregates (itself included), in
        replica order (:meth:`~stagewarden.runtime.layout.Layout.group`)."""
        return self.layout.group(slot, self._computing())

    def _computing(self) -> frozenset[int]:
        """:attr:`slots` as a set, kept until a pipeline is retired (asked for every slot of a step)."""
        retired = frozenset(self.retired)
        if self._computing_cache is None or self._computing_cache[0] != retired:
            self._computing_cache = (retired, frozenset(self.slots))
        return self._computing_cache[1]

    def standby_rank(self, index: int) -> int:
        """The rank of standby worker ``index``."""
        return self.layout.slots + 1 + index

    def members(self) -> dict[int, bytes]:
        """The ranks the watchdog watches: every computing slot's worker and every free standby."""
        members = {self.rank_of(q): self.keys[self.slot_ids[q]] for q in self.slots if self.slot_ids[q] in self.keys}
        for k in self.free_standbys:
            wid = self.standby_ids[k]
            if wid in self.keys:
                members[self.standby_rank(k)] = self.keys[wid]
        return {r: k for r, k in members.items() if r not in self.released}

    def slot_maps(self) -> tuple[dict[int, bytes], dict[int, str], dict[int, int]]:
        """Every computing slot's attested receipt key, worker id and rank, as
        :class:`~stagewarden.runtime.protocol.requests.Admitted` and
        :class:`~stagewarden.runtime.protocol.requests.Ranks` announce them."""
        slots = self.slots
        keys = {q: self.keys[self.slot_ids[q]] for q in slots}
        return keys, {q: self.slot_ids[q] for q in slots}, {q: self.rank_of(q) for q in slots}

    def worker_at(self, rank: int) -> tuple[str, int | None]:
        """The worker id and slot (``None``: a standby) of ``rank``."""
        for q in range(self.layout.slots):
            if self.rank_of(q) == rank:
                return self.slot_ids[q], q
        index = rank - self.layout.slots - 1
        return self.standby_ids[index], None

    def write_workers(self) -> None:
        """Write ``workers.json``: the coordinator's and each serving worker's id, stage, role, rank,
        process id and host (for operators; removed when the run ends)."""
        serving = [self.slot_ids[q] for q in self.slots]
        serving += [self.standby_ids[k] for k in self.free_standbys]
        rows = []
        for wid in serving:
            row = dict(self.processes.get(wid, {"worker": wid}))
            slot = self.slot_ids.index(wid) if wid in self.slot_ids else None
            stage = None if slot is None else self.layout.stage(slot)
            replica = None if slot is None else self.layout.replica(slot)
            row.update(stage=stage, replica=replica, role="stage" if stage is not None else "standby")
            rows.append(row)
        coordinator = {
            "worker": "coordinator",
            "stage": None,
            "role": "coordinator",
            "rank": 0,
            "pid": os.getpid(),
            "host": socket.gethostname()[:255],
        }
        body = {"run_id": self.ctx.run_id, "session": self.ctx.session, "workers": [coordinator, *rows]}
        atomic_write_text(self.ctx.run_dir / WORKERS_FILE, json.dumps(body, indent=2, sort_keys=True) + "\n")

    def hand_over(self, slot: int, standby: str) -> int:
        """Release the worker of ``slot``, tell ``standby`` to take the slot and send every
        computing worker the new map of slots to ranks, worker ids and attested keys; return the
        standby's rank."""
        index = self.standby_ids.index(standby)
        self.free_standbys.remove(index)
        convict_rank = self.rank_of(slot)
        send_message(self.ctx.transport, convict_rank, Release())
        self.released.add(convict_rank)
        rank = self.standby_rank(index)
        send_message(self.ctx.transport, rank, Assign(slot))
        self.slot_ranks[slot] = rank
        self.slot_ids[slot] = standby
        self.announce()
        return rank

    def retire(self, pipeline: int) -> None:
        """Take ``pipeline`` out of the run: send its workers home and every remaining worker the
        new map of slots."""
        self.retired.add(pipeline)
        for q in self.layout.of_pipeline(pipeline):
            rank = self.rank_of(q)
            if rank not in self.released:
                send_message(self.ctx.transport, rank, Release())
                self.released.add(rank)
        self.announce()

    def announce(self) -> None:
        """Send every computing worker the map of slots, and rewrite ``workers.json``."""
        ranks = Ranks(*self.slot_maps())
        for q in self.slots:
            send_message(self.ctx.transport, self.rank_of(q), ranks)
        self.write_workers()

    def add_replacement(self, worker: str, by: str, slot: int, from_step: int) -> int:
        """Record that ``by`` serves ``slot`` from ``from_step`` on in place of ``worker``; the
        slot's pipeline."""
        pipeline = self.layout.pipeline(slot)
        self.replacements.append(
            {"worker": worker, "by": by, "stage": self.layout.stage(slot), "from_step": from_step, "replica": pipeline}
        )
        return pipeline

    def record_replacement(self, plan: ResponsePlan, step: int, rank: int) -> None:
        assert plan.standby is not None and plan.checkpoint_step is not None
        s = plan.stage
        slot = self.slot_ids.index(plan.standby)
        pipeline = self.add_replacement(plan.convict, plan.standby, slot, plan.checkpoint_step)
        extra = {"replica": pipeline} if pipeline else {}
        self.ctx.events.write(
            "ejected",
            **extra,
            worker=plan.convict,
            stage=s,
            standby=plan.standby,
            rank=rank,
            detected_step=step,
            from_step=plan.checkpoint_step,
        )
