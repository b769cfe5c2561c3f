"""The concrete world a spec describes: computing slots, their workers, standby workers, and the
who-checks-whom graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from stagewarden.spec import (
    RedundantNeighbourCheck,
    ReplicateCheck,
    Spec,
    SpotCheck,
    parse_worker,
)


@dataclass(frozen=True)
class Worker:
    """One worker: a copy of a computing slot ``stage:replica``, or a standby worker."""

    index: int
    name: str
    stage: int | None = None
    replica: int | None = None
    copy: int = 0
    standby: int | None = None

    @property
    def computing(self) -> bool:
        """Whether the worker computes a slot (as opposed to waiting on standby)."""
        return self.stage is not None


@dataclass
class World:
    """Every worker of a spec's topology, indexed for the encoding."""

    spec: Spec
    workers: list[Worker] = field(default_factory=list)
    slots: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    standby_workers: list[int] = field(default_factory=list)
    #: Worker index by name, built on first lookup.
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    #: Indices of the computing workers, in order (set by :meth:`build`).
    _computing: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, spec: Spec) -> World:
        """Lay out the slots (``S x R``, each with ``k`` copies) and the standby workers.

        A prover builds one encoding of a spec or more (concrete and symbolic, per guarantee
        kind), each from this world: the last one built is returned again for the same spec
        object (a world is never changed once built)."""
        if _LAST_BUILT and _LAST_BUILT[0].spec is spec:
            return _LAST_BUILT[0]
        world = cls(spec=spec)
        k = spec.replication_factor
        for r in range(spec.topology.replicas):
            for s in range(spec.topology.stages):
                members = []
                for j in range(k):
                    name = f"{s}:{r}" if j == 0 else f"{s}:{r}#{j}"
                    worker = Worker(len(world.workers), name, stage=s, replica=r, copy=j)
                    world.workers.append(worker)
                    members.append(worker.index)
                world.slots[(s, r)] = members
        for i in range(spec.topology.standby):
            worker = Worker(len(world.workers), f"standby:{i}", standby=i)
            world.workers.append(worker)
            world.standby_workers.append(worker.index)
        world._computing = [w.index for w in world.workers if w.computing]
        _LAST_BUILT[:] = [world]
        return world

    @property
    def stages(self) -> int:
        """Number of stages S."""
        return self.spec.topology.stages

    @property
    def replicas(self) -> int:
        """Number of replicas R."""
        return self.spec.topology.replicas

    @property
    def computing(self) -> list[int]:
        """Indices of every computing worker (the same list on every call: do not change it)."""
        return self._computing

    def primary(self, stage: int, replica: int) -> int:
        """Index of the primary worker of slot ``stage:replica``."""
        return self.slots[(stage, replica)][0]

    def slot_of(self, index: int) -> tuple[int, int]:
        """The slot of a computing worker."""
        worker = self.workers[index]
        assert worker.stage is not None and worker.replica is not None
        return worker.stage, worker.replica

    def covered(self, ref: int | str) -> list[int]:
        """Workers covered by a trust entry (a stage, or a ``stage:replica`` slot)."""
        stage, replica = parse_worker(ref)
        replicas = range(self.replicas) if replica is None else [replica]
        return [i for r in replicas for i in self.slots[(stage, r)]]

    def by_name(self, name: str) -> Worker:
        """The worker called ``name``."""
        if len(self._index) != len(self.workers):
            self._index = {worker.name: worker.index for worker in self.workers}
        return self.workers[self._index[name]]


#: The world :meth:`World.build` made last (one at most, so that no spec is kept alive for long).
_LAST_BUILT: list[World] = []


def check_graph(spec: Spec) -> nx.DiGraph:
    """The who-checks-whom graph of a spec at slot level.

    Nodes are slots ``"s:r"`` plus ``"coordinator"`` (and ``"peer"`` / ``"tee"`` verifiers where
    used); an edge ``checker -> checked`` carries the check's scheme. Data-flow edges between
    adjacent stages carry ``scheme="dataflow"``.
    """
    graph = nx.DiGraph()
    stages, replicas = spec.topology.stages, spec.topology.replicas
    for r in range(replicas):
        for s in range(stages):
            graph.add_node(f"{s}:{r}", stage=s, replica=r)
        for s in range(stages - 1):
            graph.add_edge(f"{s}:{r}", f"{s + 1}:{r}", scheme="dataflow")
    for check in spec.defense.checks:
        for r in range(replicas):
            for s in range(stages):
                slot = f"{s}:{r}"
                if isinstance(check, RedundantNeighbourCheck) and s <= stages - 2:
                    graph.add_edge(f"{s + 1}:{r}", slot, scheme=check.scheme)
                elif isinstance(check, SpotCheck):
                    graph.add_edge(check.verifier, slot, scheme=check.scheme)
                elif isinstance(check, ReplicateCheck):
                    graph.add_edge(slot, slot, scheme=check.scheme)
                elif check.scheme == "statistical":
                    graph.add_edge("coordinator", slot, scheme=check.scheme)
    return graph
