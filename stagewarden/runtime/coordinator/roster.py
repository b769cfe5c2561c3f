"""Who serves each stage: the workers and standbys by id and rank, their attested keys and
receipt-chain heads, and the hand-over of a stage to a standby."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from stagewarden.attest.files import atomic_write_text
from stagewarden.runtime.coordinator.context import WORKERS_FILE, RunContext
from stagewarden.runtime.protocol import Assign, Ranks, Release, send_message
from stagewarden.runtime.protocol.ids import standby_id_for, worker_id_for
from stagewarden.runtime.responses import (
    ResponsePlan,
)


class Roster:
    """Stage -> worker and rank, the standbys, and every admitted worker's attested key.

    Attributes:
        stage_ids: The worker id serving each stage.
        standby_ids: Every standby's worker id, by standby index.
        stage_ranks: The rank serving each stage (``stage + 1`` until a standby takes it).
        free_standbys: The standby indices that serve no stage yet.
        released: The ranks sent home.
        benched: Worker ids that failed and do not serve again.
        replacements: The standbys that took a stage (``worker``, ``by``, ``stage``, ``from_step``).
        keys: Each admitted worker's attested receipt key.
        prev: Each worker's receipt-chain head (the digest its next receipt must continue).
        chain_heads: On resume: each worker's last logged receipt digest.
        processes: Each admitted worker's process row for ``workers.json``.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        config = ctx.config
        self.stage_ids = [worker_id_for(s) for s in range(config.stages)]
        self.standby_ids = [standby_id_for(k) for k in range(config.standby)]
        self.stage_ranks = [s + 1 for s in range(config.stages)]
        self.free_standbys = list(range(config.standby))
        self.released: set[int] = set()
        self.benched: list[str] = []
        self.replacements: list[dict[str, Any]] = []
        self.keys: dict[str, bytes] = {}
        self.prev: dict[str, bytes] = {}
        self.chain_heads: dict[str, bytes] = {}
        self.processes: dict[str, dict[str, Any]] = {}

    def rank_of(self, stage: int) -> int:
        """The rank of the worker now serving ``stage`` (``stage + 1`` until a standby takes it)."""
        return self.stage_ranks[stage]

    def standby_rank(self, index: int) -> int:
        """The rank of standby worker ``index``."""
        return self.ctx.config.stages + 1 + index

    def members(self) -> dict[int, bytes]:
        """The ranks the watchdog watches: every stage's worker and every free standby."""
        members = {self.rank_of(s): self.keys[w] for s, w in enumerate(self.stage_ids) if w in self.keys}
        for k in self.free_standbys:
            wid = self.standby_ids[k]
            if wid in self.keys:
                members[self.standby_rank(k)] = self.keys[wid]
        return {r: k for r, k in members.items() if r not in self.released}

    def stage_maps(self) -> tuple[dict[int, bytes], dict[int, str], dict[int, int]]:
        """Every stage's attested receipt key, worker id and rank, as
        :class:`~stagewarden.runtime.protocol.requests.Admitted` and
        :class:`~stagewarden.runtime.protocol.requests.Ranks` announce them."""
        keys = {s: self.keys[wid] for s, wid in enumerate(self.stage_ids)}
        return keys, dict(enumerate(self.stage_ids)), {s: self.rank_of(s) for s in range(self.ctx.config.stages)}

    def worker_at(self, rank: int) -> tuple[str, int | None]:
        """The worker id and stage (``None``: a standby) of ``rank``."""
        for s in range(self.ctx.config.stages):
            if self.rank_of(s) == rank:
                return self.stage_ids[s], s
        index = rank - self.ctx.config.stages - 1
        return self.standby_ids[index], None

    def write_workers(self) -> None:
        """Write ``workers.json``: the coordinator's and each serving worker's id, stage, role, rank,
        process id and host (for operators; removed when the run ends)."""
        serving = [self.stage_ids[s] for s in range(self.ctx.config.stages)]
        serving += [self.standby_ids[k] for k in self.free_standbys]
        rows = []
        for wid in serving:
            row = dict(self.processes.get(wid, {"worker": wid}))
            stage = self.stage_ids.index(wid) if wid in self.stage_ids else None
            row.update(stage=stage, role="stage" if stage is not None else "standby")
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

    def hand_over(self, s: int, standby: str) -> int:
        """Release the worker of stage ``s``, tell ``standby`` to take the stage and send every stage
        the new map of stages to ranks, worker ids and attested keys; return the standby's rank."""
        index = self.standby_ids.index(standby)
        self.free_standbys.remove(index)
        convict_rank = self.rank_of(s)
        send_message(self.ctx.transport, convict_rank, Release())
        self.released.add(convict_rank)
        rank = self.standby_rank(index)
        send_message(self.ctx.transport, rank, Assign(s))
        self.stage_ranks[s] = rank
        self.stage_ids[s] = standby
        ranks = Ranks(*self.stage_maps())
        for t in range(self.ctx.config.stages):
            send_message(self.ctx.transport, self.rank_of(t), ranks)
        self.write_workers()
        return rank

    def record_replacement(self, plan: ResponsePlan, step: int, rank: int) -> None:
        assert plan.standby is not None and plan.checkpoint_step is not None
        s = plan.stage
        self.replacements.append(
            {"worker": plan.convict, "by": plan.standby, "stage": s, "from_step": plan.checkpoint_step}
        )
        self.ctx.events.write(
            "ejected",
            worker=plan.convict,
            stage=s,
            standby=plan.standby,
            rank=rank,
            detected_step=step,
            from_step=plan.checkpoint_step,
        )
