"""Which checks may catch a tampered unit and when they are in force (docs/semantics.rst, "When a
check detects a tampered unit"): per worker, capability and unit kind, the list of
:class:`~stagewarden.prover.units.Effect` that the level formulas read, with covering checkers,
genuine inputs and present checkers as Z3 terms.
"""

from __future__ import annotations

from collections.abc import Callable

import z3

from stagewarden.prover.dynamics import Occupancy
from stagewarden.prover.fastz3 import Term, conj, disj, neg, to_z3
from stagewarden.prover.levels import DetectionLevels
from stagewarden.prover.peer import vacancy_view
from stagewarden.prover.units import (
    KIND_CAPABILITY,
    ONE,
    SDC,
    ZERO,
    Effect,
    spec_fraction,
    worker_kinds_of,
)
from stagewarden.prover.world import World
from stagewarden.spec import (
    RedundantNeighbourCheck,
    ReplicateCheck,
    SpotCheck,
    StatisticalCheck,
)


class CheckEffects(DetectionLevels):
    """The check effects of an :class:`~stagewarden.prover.encoding.Encoding` (a base class of
    it), built from its spec facts and occupancy summary and cached per worker role."""

    world: World
    occupancy: Occupancy
    mal: list[z3.BoolRef]
    cap: dict[str, Term]
    receipts: Term
    attestation: Term
    data_commitment: Term
    coord_trusted: Term
    tee_compromise: Term
    check_present: dict[int, Term]
    via_coord: dict[int, Term]
    via_up: dict[int, Term]
    vf: dict[int, dict[str, Term]]

    def _init_effects(self) -> None:
        """The caches, and the terms every unit's effects share (once the checks are encoded)."""
        spec = self.spec
        self._covers: dict[int, Term] = {}
        self._not_covers: dict[int, Term] = {}
        self._effects: dict[tuple[object, ...], list[Effect]] = {}
        self._tamperable: dict[tuple[int, str], Term] = {}
        self._catchable: dict[tuple[bool, bool, bool], Term] = {}
        self._linkage = conj([self.receipts, self.coord_trusted])
        self._via_coord_trusted = {i: conj([v, self.coord_trusted]) for i, v in self.via_coord.items()}
        self._spot_trusted: dict[int, Term] = {}
        self._spot_peer: dict[int, Term] = {}
        self._statistical: dict[int, Term] = {}
        for i, check in enumerate(spec.defense.checks):
            present = self.check_present[i]
            if isinstance(check, SpotCheck):
                vf = self.vf[i]
                trusted = disj(
                    [
                        conj([vf["coordinator"], self.coord_trusted]),
                        conj([vf["tee"], self.attestation, neg(self.tee_compromise)]),
                    ]
                )
                self._spot_trusted[i] = conj([present, self.receipts, trusted])
                self._spot_peer[i] = conj([present, self.receipts, vf["peer"]])
            elif isinstance(check, StatisticalCheck):
                self._statistical[i] = conj([present, self.coord_trusted])

    def worker_kinds(self, w: int) -> tuple[tuple[str, str], ...]:
        """(capability, kind) pairs a malicious occupant of position ``w`` could tamper with."""
        return worker_kinds_of(self.world.workers[w].stage == 0, self.spec.topology.steps >= 2)

    def catchable(self, w: int, certain: bool) -> Term:
        """A malicious occupant of position ``w`` can get a tampered unit detected, with
        probability > 0, or with certainty when ``certain`` (nobody covers for it and its inputs
        are genuine: it wants to be caught)."""
        # Cooperative effects depend only on the position's role (see ``effects``).
        stage, _ = self.world.slot_of(w)
        key = (certain, stage <= self.world.stages - 2, stage == 0)
        cached = self._catchable.get(key)
        if cached is None:
            parts = []
            for c, kind in self.worker_kinds(w):
                effects = self.effects(w, c, kind, cooperative=True)
                reach = neg(self.level(effects, "lt", ONE)) if certain else neg(self.level(effects, "le", ZERO))
                parts.append(conj([self.cap[c], reach]))
            cached = self._catchable[key] = disj(parts)
        return cached

    def covers(self, checker: int, target: int) -> Term:
        """``checker`` is malicious and colludes with ``target``."""
        if checker == target:
            return False
        cached = self._covers.get(checker)
        if cached is None:
            cached = self._covers[checker] = conj([self.occupancy.occupied_malicious[checker], self.collusion])
        return cached

    def not_covers(self, checker: int, target: int) -> Term:
        """The negation of :meth:`covers` (cached per checker)."""
        if checker == target:
            return True
        cached = self._not_covers.get(checker)
        if cached is None:
            cached = self._not_covers[checker] = neg(self.covers(checker, target))
        return cached

    def malicious_computing(self) -> list[z3.BoolRef]:
        """Per computing position: it has a malicious occupant at some point of the run."""
        return [to_z3(self.occupancy.occupied_malicious[i]) for i in self.world.computing]

    def checks_of(self, cls: type) -> list[tuple[int, object]]:
        """Indices and objects of the checks of one scheme."""
        return [(i, c) for i, c in enumerate(self.spec.defense.checks) if isinstance(c, cls)]

    def genuine_input(self, i: int, w: int) -> Term:
        """Whether the redundant_neighbour check ``i`` recomputes worker ``w``'s unit from the real input."""
        if self.receipts is True:
            return True  # the disjunction below folds to True
        s, r = self.world.slot_of(w)
        parts: list[Term] = [self.receipts, self._via_coord_trusted[i]]
        if s >= 1:
            parts.append(conj([self.via_up[i], self.not_covers(self.world.primary(s - 1, r), w)]))
        else:
            parts.append(conj([self.via_up[i], self.coord_trusted]))
            parts.append(self.data_commitment)
        return disj(parts)

    def effects(self, w: int, capability: str, kind: str, cooperative: bool = False) -> list[Effect]:
        """The checks that may catch worker ``w``'s ``kind`` unit tampered with ``capability``.

        With ``cooperative`` the checkers do not cover and inputs are genuine (the adversary
        wants to be caught, as when it forces a response). Cached per arguments.
        """
        # The effects read the capability only as one of these roles and the kind only as
        # whether it is the last update or an activation/gradient: units alike in those share
        # one list (and so one level formula), as a worker's forward and backward units do.
        role = capability if capability in (SDC, "equivocate", "poison_data") else "tamper"
        key: tuple[object, ...] = (w, role, kind == "L", kind in ("F", "B"))
        if role == "equivocate":
            # Equivocation is caught by the receipts' linkage alone, whoever equivocates: every
            # worker shares one list (and one level formula per threshold).
            key = ("equivocate",)
        elif cooperative:
            # Without covering and with genuine inputs a unit's effects depend only on its
            # capability, its kind and whether its stage has a downstream checker (every slot
            # has the same number of copies, and no term names a worker): workers of the same
            # role share one list, and so one level formula (``level`` caches by list).
            s, _ = self.world.slot_of(w)
            key = ("cooperative", s <= self.world.stages - 2, capability, kind)
        cached = self._effects.get(key)
        if cached is None:
            cached = self._effects[key] = self._build_effects(w, capability, kind, cooperative)
        return cached

    def _build_effects(self, w: int, capability: str, kind: str, cooperative: bool) -> list[Effect]:
        spec, world = self.spec, self.world
        shift = 0
        if capability == SDC:
            capability, shift = KIND_CAPABILITY[kind], 1
        s, r = world.slot_of(w)
        out: list[Effect] = []
        covers: Callable[[int, int], Term] = (lambda a, b: False) if cooperative else self.covers
        not_covers: Callable[[int, int], Term] = (lambda a, b: True) if cooperative else self.not_covers
        if capability == "equivocate":
            out.append(Effect("receipt linkage", None, ONE, self._linkage))
            return out
        if capability == "poison_data":
            parts: list[Term] = [self.coord_trusted]
            for i, _ in self.checks_of(RedundantNeighbourCheck):
                checker = world.primary(1, r)
                parts.append(
                    conj([self.check_present[i], self._checker_there(checker, cooperative), not_covers(checker, w)])
                )
            for i, _ in self.checks_of(ReplicateCheck):
                parts.append(conj([self.check_present[i], self._not_all_cover(w, covers, cooperative)]))
            out.append(Effect("batch proof", None, ONE, conj([self.data_commitment, disj(parts)])))
        for i, check in enumerate(spec.defense.checks):
            present = self.check_present[i]
            if isinstance(check, RedundantNeighbourCheck) and capability != "poison_data":
                # The last update has no later forward pass for the neighbour's copy to expose it.
                if s <= world.stages - 2 and kind != "L":
                    checker = world.primary(s + 1, r)
                    genuine = True if cooperative else self.genuine_input(i, w)
                    there = self._checker_there(checker, cooperative)
                    out.append(
                        Effect("redundant_neighbour", i, ONE, conj([present, there, not_covers(checker, w), genuine]))
                    )
            elif isinstance(check, SpotCheck) and capability != "poison_data":
                rate = spec_fraction(check.rate)
                out.append(Effect("spot_check", i, rate, self._spot_trusted[i]))
                peer = self._spot_peer[i]
                out.append(
                    Effect(
                        "spot_check (peer)",
                        i,
                        rate if cooperative else None,
                        peer,
                        rate=rate,
                        shift=shift,
                        replica=None if cooperative or peer is False else vacancy_view(self._encoding, r),
                    )
                )
            elif isinstance(check, ReplicateCheck):
                out.append(Effect("replicate", i, ONE, conj([present, self._not_all_cover(w, covers, cooperative)])))
            elif isinstance(check, StatisticalCheck) and kind in ("F", "B") and capability != "poison_data":
                if check.min_deviation == 0 or cooperative:
                    out.append(Effect("statistical", i, spec_fraction(check.power), self._statistical[i]))
        return out

    def _checker_there(self, checker: int, cooperative: bool) -> Term:
        """The ``redundant_neighbour`` checker's position is occupied while the checked unit runs.
        Its vacancy matters only where another copy of its slot keeps the replica running (a
        vacant single-copy slot halts the replica: no unit of it is computed meanwhile), and a
        cooperative worker times its unit for when the checker is there."""
        if cooperative or not self.occupancy.active:
            return True
        present = self.occupancy.present
        others = [present[o] for o in self.world.slots[self.world.slot_of(checker)] if o != checker]
        return disj([present[checker], neg(disj(others))])

    def _not_all_cover(self, w: int, covers: Callable[[int, int], Term], cooperative: bool = False) -> Term:
        """Some other copy of ``w``'s slot is occupied and does not cover for it (a cooperative
        worker times its tamper for when the other copies are there)."""
        present = self.occupancy.present
        return disj(
            [
                conj([True if cooperative else present[o], neg(covers(o, w))])
                for o in self.world.slots[self.world.slot_of(w)]
                if o != w
            ]
        )

    def tamperable(self, w: int, capability: str) -> Term:
        """Worker ``w`` is malicious and may use ``capability`` on its units."""
        worker = self.world.workers[w]
        if not worker.computing:
            return False
        if capability == "poison_data" and worker.stage != 0:
            return False
        key = (w, capability)
        cached = self._tamperable.get(key)
        if cached is None:
            cached = self._tamperable[key] = conj([self.occupancy.acting[w], self.cap[capability]])
        return cached
