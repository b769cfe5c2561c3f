"""What a worker knows of the other stages' workers: their ranks, ids and attested receipt keys,
and who talks to whom in the current computation (:class:`Peers`)."""

from __future__ import annotations

from stagewarden.attest.headers import TransferKind
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.route import Route
from stagewarden.runtime.transport import Expected


class Peers:
    """The coordinator's map of stages to ranks, worker ids and receipt keys, as this worker
    last heard it, and the route of the current computation.

    Args:
        config: The run configuration (the tensors' shapes).
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.layout = config.layout
        self.run_id = ""
        self.slot: int | None = None
        """This worker's slot (``None`` for a standby that holds none)."""
        self.keys: dict[int, bytes] = {}
        """The receipt keys of this worker's pipeline, by stage."""
        self.ids: dict[int, str] = {}
        """The worker ids of this worker's pipeline, by stage."""
        self.ranks: dict[int, int] = {}
        """The ranks of this worker's pipeline, by stage."""
        self.group: list[tuple[int, str, bytes]] = []
        """The rank, worker id and receipt key of every slot whose contribution this worker
        aggregates (:meth:`~stagewarden.runtime.layout.Layout.group`, itself included), in replica
        order."""
        self.audience: list[int] = []
        """The ranks this worker sends its contribution to (:meth:`~stagewarden.runtime.layout.Layout.audience`)."""
        self._maps: tuple[dict[int, bytes], dict[int, str], dict[int, int]] = ({}, {}, {})
        self.route = Route(config.stages)
        """Who each stage talks to in the current computation (another route when a stage is bypassed)."""

    def place(self, slot: int | None) -> None:
        """This worker now holds ``slot`` (at start, or a standby given one)."""
        self.slot = slot
        self._derive()

    def update(self, keys: dict[int, bytes], ids: dict[int, str], ranks: dict[int, int]) -> None:
        """Take a new map of slots to receipt keys, worker ids and ranks (at admission, after an eject)."""
        self._maps = (dict(keys), dict(ids), dict(ranks))
        self._derive()

    def _derive(self) -> None:
        keys, ids, ranks = self._maps
        self.keys, self.ids, self.ranks, self.group, self.audience = {}, {}, {}, [], []
        if self.slot is None:
            return
        for stage in range(self.layout.stages):
            q = self.layout.at(self.slot, stage)
            if q in ranks:
                self.keys[stage], self.ids[stage], self.ranks[stage] = keys[q], ids[q], ranks[q]
        computing = set(ranks)
        if self.slot not in computing:  # no map that places this worker yet
            return
        self.group = [(ranks[q], ids[q], keys[q]) for q in self.layout.group(self.slot, computing)]
        self.audience = [ranks[q] for q in self.layout.audience(self.slot, computing)]

    def neighbour(self, stage: int, kind: TransferKind, incoming: bool) -> int:
        """The stage ``stage`` receives from (``incoming``) or sends to, for a transfer ``kind``,
        on the current computation's route (past a bypassed stage)."""
        return self.route.neighbour(stage, kind, incoming)

    def transfer(
        self, step: int, mb: int, kind: TransferKind, sender: int, receiver: int, token_ids: bool = False
    ) -> Expected:
        """What the transfer ``sender -> receiver`` (or a relayed copy of it) must be (token ids:
        stage 0's input)."""
        c = self.config
        shape = (c.batch_size, c.model.block_size)
        return Expected(
            run_id=self.run_id,
            sender=self.ids[sender],
            sender_key=self.keys[sender],
            sender_stage=sender,
            receiver_stage=receiver,
            step=step,
            micro_batch=mb,
            kind=kind,
            dtype="int64" if token_ids else "float32",
            shape=shape if token_ids else (*shape, c.model.n_embd),
        )

    def expected(self, stage: int, step: int, mb: int, kind: TransferKind) -> Expected:
        """What a transfer to ``stage`` from its neighbour on the route must be."""
        return self.transfer(step, mb, kind, self.neighbour(stage, kind, incoming=True), stage)
