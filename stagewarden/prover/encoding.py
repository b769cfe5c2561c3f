"""Compilation of a spec into Z3: one Boolean per worker (is it malicious), one variable per spec
fact, and an assumption literal guarding every fact, so that an unsat core names the spec lines a
proof rests on.

The rules implemented here are those of the documentation page "The prover's model"
(docs/semantics.rst). Units are never unrolled: a worker's units of one kind are alike to the
adversary, so the encoding reasons per worker and per unit kind, and the horizon enters only
through the closed-form probabilities.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import z3

from stagewarden.prover.dynamics import Occupancy, build_occupancy, crash_limit, standby_limit, vacancy_constraints
from stagewarden.prover.fastz3 import ModelView, Term, at_most, boolean, conj, disj, holds_in, neg, to_z3
from stagewarden.prover.framing import Framing, build_framings
from stagewarden.prover.peer import (
    colluding_condition,
    peer_value,
    vacancy_view,
    vacant_honest,
    vacant_seen_from,
    verifier_condition,
)
from stagewarden.prover.probability import detection_probability
from stagewarden.prover.world import World
from stagewarden.spec import (
    CAPABILITIES,
    TAMPERING_CAPABILITIES,
    LoadedSpec,
    RedundantNeighbourCheck,
    ReplicateCheck,
    RobustAggregationCheck,
    SpotCheck,
    StatisticalCheck,
    probability_fraction,
)
from stagewarden.spec.source import Path

#: Unit kinds: forward, backward, update.
#: ``U`` is every update but the horizon's last, ``L`` the last update (which no later forward
#: pass shows to a ``redundant_neighbour`` checker).
KINDS = ("F", "B", "U", "L")
#: Which unit kinds each tampering capability acts on.
CAPABILITY_KINDS: dict[str, tuple[str, ...]] = {
    "tamper_activations": ("F",),
    "tamper_gradients": ("B",),
    "tamper_weights": ("U", "L"),
    "poison_data": ("F",),
    "equivocate": ("F", "B"),
}
#: Capabilities as verb phrases, for explanations.
_VERB = {
    "tamper_activations": "tamper with activations",
    "tamper_gradients": "tamper with gradients",
    "tamper_weights": "tamper with weights",
    "poison_data": "poison data",
    "equivocate": "equivocate",
    "withhold": "withhold its work",
    "false_accuse": "falsely accuse others",
}
#: Pseudo-capability for silent data corruption of an honest worker's unit.
SDC = "silent_corruption"
#: Capability whose rules silent corruption of each unit kind follows.
KIND_CAPABILITY = {"F": "tamper_activations", "B": "tamper_gradients", "U": "tamper_weights", "L": "tamper_weights"}
#: (capability, kind) pairs a malicious worker could tamper with, by whether it is in stage 0
#: (only stage 0 can poison data) and whether the horizon has updates before the last (with one
#: step the only update is the last one: there is no ``U`` unit).
_WORKER_KINDS = {
    (first, updates): tuple(
        (c, kind)
        for c in TAMPERING_CAPABILITIES
        if c != "poison_data" or first
        for kind in CAPABILITY_KINDS[c]
        if kind != "U" or updates
    )
    for first in (False, True)
    for updates in (False, True)
}
#: Shared constants, so that the effect signatures of many workers hold the same objects.
_ONE = Fraction(1)
_ZERO = Fraction(0)


@dataclass(frozen=True)
class Assumption:
    """One spec fact the encoding may rely on, with the literal that switches it on."""

    key: str
    text: str
    path: Path
    literal: z3.BoolRef


@dataclass(frozen=True)
class Effect:
    """A check that may catch a tampered unit: its name, detection value and when it is in force.

    ``value`` is None for a peer spot check, whose value depends on the placement
    (``rate`` and ``peer`` give what is needed to compute it).
    """

    label: str
    check: int | None
    value: Fraction | None
    expr: Term
    rate: Fraction = _ZERO
    #: 1 when the unit's worker is honest (silent corruption): a peer verifier is then drawn
    #: from workers among which all ``m`` malicious ones are.
    shift: int = 0
    #: For a peer check, the replica of the checked unit when a vacancy can halt it (the
    #: vacancies its value counts depend on it: :func:`stagewarden.prover.peer.vacant_seen_from`).
    replica: int | None = None

    @property
    def peer(self) -> bool:
        """Whether the value depends on how many workers are malicious."""
        return self.value is None


#: The checks on a unit, one per effect: (fixed detection value, or None for a peer check whose
#: value depends on how many workers are malicious; the peer's rate; its shift; its replica).
_Signature = tuple[tuple[Fraction | None, Fraction, int, int | None], ...]
#: A set of effects that makes a unit good: (the chosen fixed effects, the peer effect that
#: completes them or None, the condition under which that peer does).
_GoodSet = tuple[tuple[int, ...], tuple[int, ...], Term | None]


@functools.lru_cache(maxsize=1024)
def _frac(value: float) -> Fraction:
    return Fraction(str(value))


class Encoding:
    """The Z3 compilation of one spec.

    With ``concrete`` every spec fact is a Python constant rather than a guarded variable: the
    formulas then fold down to constraints over the workers alone, which the solver decides and
    optimises far faster. The symbolic form (the default) is what unsat cores over assumption
    literals need; both forms describe the same world, worker for worker.
    """

    def __init__(
        self, loaded: LoadedSpec, concrete: bool = False, dynamics: bool = True, second_tries: bool = True
    ) -> None:
        self.concrete = concrete
        #: Whether positions that only a second try can change carry their variable (only
        #: bounded_damage counts tries; for the other guarantees those positions never matter).
        self.second_tries = second_tries
        #: Whether positions may change hands (liveness reasons about removals in closed form
        #: and leaves the summary out).
        self.dynamics = dynamics
        self.loaded = loaded
        self.spec = spec = loaded.spec
        self.world = world = World.build(spec)
        self.n_computing = len(world.computing)
        self.mal = [boolean(f"mal[{w.name}]") for w in world.workers]
        self.facts: list[z3.BoolRef] = []  # constraints that hold whatever is assumed
        self.guarded: list[z3.BoolRef] = []  # Implies(literal, fact)
        self.assumptions: list[Assumption] = []
        d = spec.defense
        self.receipts = self._feature_bool(
            "receipts",
            d.receipts,
            ("defense", "receipts"),
            "signed receipts for every unit and signed inter-stage messages",
            "no signed receipts",
        )
        self.attestation = self._feature_bool(
            "attestation",
            d.attestation,
            ("defense", "attestation"),
            "receipt keys bound to attested identities",
            "no attestation",
        )
        self.data_commitment = self._feature_bool(
            "data_commitment",
            d.data_commitment,
            ("defense", "data_commitment"),
            "training data committed, stage 0 proves every batch",
            "no data commitment",
        )
        self.coord_trusted = self._feature_bool(
            "coordinator_trusted",
            spec.trust.coordinator == "trusted",
            ("trust", "coordinator"),
            "the coordinator is trusted",
            "the coordinator is untrusted",
        )
        adv = spec.adversary
        self.collusion = self._feature_bool(
            "collusion",
            adv.collusion,
            ("adversary", "collusion"),
            "malicious workers collude",
            "malicious workers do not collude (a malicious checker checks honestly)",
        )
        self.tee_compromise = self._feature_bool(
            "tee_compromise",
            adv.tee_compromise,
            ("adversary", "tee_compromise"),
            "TEE workers may be malicious",
            "TEEs are not compromised",
        )
        self.sdc = self._feature_bool(
            "silent_corruption",
            probability_fraction(adv.faults.silent_corruption) > 0,
            ("adversary", "faults", "silent_corruption"),
            "honest units may be silently corrupted",
            "no silent data corruption",
        )
        self.cap = {
            c: self._feature_bool(
                f"capability:{c}",
                c in adv.capabilities,
                ("adversary", "capabilities"),
                f"the adversary can {_VERB[c]}",
                f"the adversary cannot {_VERB[c]}",
            )
            for c in CAPABILITIES
        }
        self.response = {
            r: self._feature_bool(
                f"response:{r}",
                r in d.response,
                ("defense", "response"),
                f"the response includes {r}",
                f"the response does not include {r}",
            )
            for r in ("eject", "rollback", "skip_stage", "restart")
        }
        if not concrete:
            self.facts.append(z3.Or(list(self.response.values())))
        self._good_cache: dict[object, list[_GoodSet]] = {}
        self._covers: dict[int, Term] = {}
        self._not_covers: dict[int, Term] = {}
        self._signatures: dict[int, tuple[int, _Signature]] = {}
        self._signature_ids: dict[tuple[tuple[int, int, int, int | None], ...], tuple[int, _Signature]] = {}
        self._signature_numbers: dict[_Signature, int] = {}
        self._templates: dict[tuple[int, str, int, int], list[_GoodSet]] = {}
        self._effects: dict[tuple[object, ...], list[Effect]] = {}
        self._levels: dict[tuple[int, str, int, int], Term] = {}
        self._tamperable: dict[tuple[int, str], Term] = {}
        self._encode_checks()
        self._encode_workers()
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
        self._catchable: dict[tuple[bool, bool, bool], Term] = {}
        self._framings: list[Framing] | None = None
        if self.occupancy.active:
            framed: dict[int, list[Term]] = {}
            full = set(self.occupancy.vacated) - self.occupancy.light
            for f in self._framings_of(full) if full and self.response["eject"] is not False else []:
                framed.setdefault(f.victim, []).append(f.ejection)
            self.facts += vacancy_constraints(
                self, lambda w: self.catchable(w, False), lambda w: disj(framed.get(w, []))
            )

    @property
    def framings(self) -> list[Framing]:
        """Every way an honest worker can be blamed (built once)."""
        if self._framings is None:
            self._framings = build_framings(self)
        return self._framings

    def _framings_of(self, victims: set[int]) -> list[Framing]:
        """The framings of some victims (all of them built at once when most are wanted)."""
        if self._framings is not None or 2 * len(victims) > len(self.world.computing):
            return [f for f in self.framings if f.victim in victims]
        return build_framings(self, victims)

    def worker_kinds(self, w: int) -> tuple[tuple[str, str], ...]:
        """(capability, kind) pairs a malicious occupant of position ``w`` could tamper with."""
        return _WORKER_KINDS[(self.world.workers[w].stage == 0, self.spec.topology.steps >= 2)]

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
                reach = neg(self.level(effects, "lt", _ONE)) if certain else neg(self.level(effects, "le", _ZERO))
                parts.append(conj([self.cap[c], reach]))
            cached = self._catchable[key] = disj(parts)
        return cached

    # -- facts and assumptions ----------------------------------------------------------

    def _assume(self, key: str, text: str, path: Path, fact: Term) -> z3.BoolRef:
        literal = z3.Bool(f"A[{key}]")
        self.assumptions.append(Assumption(key, text, path, literal))
        if self.concrete:
            if fact is not True:
                self.facts.append(to_z3(fact))
        else:
            self.guarded.append(z3.Implies(literal, to_z3(fact)))
        return literal

    def _feature_bool(self, key: str, value: bool, path: Path, yes: str, no: str) -> Term:
        if self.concrete:
            self._assume(key, yes if value else no, path, True)
            return value
        var = z3.Bool(f"f[{key}]")
        self._assume(key, yes if value else no, path, var if value else z3.Not(var))
        return var

    def _feature(self, name: str, value: bool) -> Term:
        """A spec fact: a constant in concrete mode, else a fresh variable."""
        return value if self.concrete else z3.Bool(name)

    def _encode_checks(self) -> None:
        spec = self.spec
        self.check_present: dict[int, Term] = {}
        self.via_coord: dict[int, Term] = {}
        self.via_up: dict[int, Term] = {}
        self.vf: dict[int, dict[str, Term]] = {}
        self.referee: dict[int, Term] = {}
        for i, check in enumerate(spec.defense.checks):
            path: Path = ("defense", "checks", i)
            present = self._feature(f"f[check{i}]", True)
            self.check_present[i] = present
            self._assume(f"check:{i}", _describe_check(check), path, present)
            if isinstance(check, RedundantNeighbourCheck):
                is_c, is_u = check.input_via == "coordinator", check.input_via == "upstream"
                via_c, via_u = (
                    self._feature(f"f[check{i}.via_coordinator]", is_c),
                    self._feature(f"f[check{i}.via_upstream]", is_u),
                )
                self.via_coord[i], self.via_up[i] = via_c, via_u
                fact: Term = True
                if not self.concrete:
                    self.facts.append(z3.Not(z3.And(to_z3(via_c), to_z3(via_u))))
                    fact = z3.And(to_z3(via_c) == is_c, to_z3(via_u) == is_u)
                self._assume(
                    f"check:{i}.input_via",
                    f"the checker's input comes from the {check.input_via.replace('_', ' ')}",
                    (*path, "input_via"),
                    fact,
                )
            elif isinstance(check, SpotCheck):
                vf = {
                    name: self._feature(f"f[check{i}.verifier_{name}]", name == check.verifier)
                    for name in ("coordinator", "tee", "peer")
                }
                self.vf[i] = vf
                if not self.concrete:
                    self.facts.append(z3.PbEq([(to_z3(v), 1) for v in vf.values()], 1))
                self._assume(
                    f"check:{i}.verifier",
                    f"sampled units are re-executed by the {check.verifier}",
                    (*path, "verifier"),
                    vf[check.verifier],
                )
            elif isinstance(check, ReplicateCheck):
                is_ref = check.resolve == "referee"
                ref = self._feature(f"f[check{i}.referee]", is_ref)
                self.referee[i] = ref
                self._assume(
                    f"check:{i}.resolve",
                    f"disagreements are resolved by {check.resolve}",
                    (*path, "resolve"),
                    ref if is_ref else neg(ref),
                )

    def _encode_workers(self) -> None:
        spec, world = self.spec, self.world
        budget = spec.malicious_budget
        self.budget_literal = self._assume(
            "budget",
            f"at most {budget} malicious worker{'s' if budget != 1 else ''}",
            ("adversary", "max_malicious"),
            at_most(self.mal, budget) if self.mal else z3.BoolVal(True),
        )
        for i, ref in enumerate(spec.trust.honest):
            covered = world.covered(ref)
            self._assume(
                f"honest:{i}",
                f"{_slot_text(ref)} honest",
                ("trust", "honest", i),
                z3.And([z3.Not(self.mal[w]) for w in covered]),
            )
        for i, ref in enumerate(spec.trust.tee):
            covered = world.covered(ref)
            protected = conj([self.attestation, neg(self.tee_compromise)])
            self._assume(
                f"tee:{i}",
                f"{_slot_text(ref)} in a TEE",
                ("trust", "tee", i),
                disj([neg(protected), conj([neg(self.mal[w]) for w in covered])]),
            )
        # Crashes and the standby pool, for liveness, in unary: crash[j] = "at least j+1 workers
        # crash", standby[j] = "standby worker j exists". More than R + K crashes never help.
        self.occupancy: Occupancy = build_occupancy(self)
        limit = min(len(world.workers), world.replicas + spec.topology.standby)
        self.crash = [z3.Bool(f"crash[{j}]") for j in range(limit)]
        self.facts += [z3.Implies(self.crash[j + 1], self.crash[j]) for j in range(limit - 1)]
        allowed = spec.adversary.faults.crash
        self._assume(
            "crash",
            f"at most {allowed} crashed worker{'s' if allowed != 1 else ''}",
            ("adversary", "faults", "crash"),
            to_z3(conj([z3.Not(self.crash[allowed]) if allowed < limit else True, crash_limit(self)])),
        )
        self.standby = [z3.Bool(f"standby[{j}]") for j in range(spec.topology.standby)]
        self.facts += [z3.Implies(self.standby[j + 1], self.standby[j]) for j in range(len(self.standby) - 1)]
        count = spec.topology.standby
        self._assume(
            "standby",
            f"{count} standby worker{'s' if count != 1 else ''}",
            ("topology", "standby"),
            to_z3(conj([z3.And(self.standby) if self.standby else True, standby_limit(self)])),
        )
        for w in world.standby_workers:
            worker = world.workers[w]
            assert worker.standby is not None
            self.facts.append(z3.Implies(self.mal[w], self.standby[worker.standby]))

    # -- helpers ------------------------------------------------------------------------

    def all_constraints(self) -> list[z3.BoolRef]:
        """Every constraint (facts and guarded assumptions)."""
        return self.facts + self.guarded

    def literals(self) -> list[z3.BoolRef]:
        """Every assumption literal (none matter in the concrete form, where facts are constants)."""
        return [] if self.concrete else [a.literal for a in self.assumptions]

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

    # -- when a check catches a unit -------------------------------------------------------

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
        if cooperative:
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
            out.append(Effect("receipt linkage", None, _ONE, self._linkage))
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
            out.append(Effect("batch proof", None, _ONE, conj([self.data_commitment, disj(parts)])))
        for i, check in enumerate(spec.defense.checks):
            present = self.check_present[i]
            if isinstance(check, RedundantNeighbourCheck) and capability != "poison_data":
                # The last update has no later forward pass for the neighbour's copy to expose it.
                if s <= world.stages - 2 and kind != "L":
                    checker = world.primary(s + 1, r)
                    genuine = True if cooperative else self.genuine_input(i, w)
                    there = self._checker_there(checker, cooperative)
                    out.append(
                        Effect("redundant_neighbour", i, _ONE, conj([present, there, not_covers(checker, w), genuine]))
                    )
            elif isinstance(check, SpotCheck) and capability != "poison_data":
                rate = _frac(check.rate)
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
                        replica=None if cooperative or peer is False else vacancy_view(self, r),
                    )
                )
            elif isinstance(check, ReplicateCheck):
                out.append(Effect("replicate", i, _ONE, conj([present, self._not_all_cover(w, covers, cooperative)])))
            elif isinstance(check, StatisticalCheck) and kind in ("F", "B") and capability != "poison_data":
                if check.min_deviation == 0 or cooperative:
                    out.append(Effect("statistical", i, _frac(check.power), self._statistical[i]))
        return out

    def _checker_there(self, checker: int, cooperative: bool) -> Term:
        """The ``redundant_neighbour`` checker's position is occupied while the checked unit runs.
        Its vacancy matters only where another copy of its slot keeps the replica running (a
        vacant single-copy slot halts the replica: no unit of it is computed meanwhile), and a
        cooperative worker times its unit for when the checker is there."""
        if cooperative:
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

    def peer_value(self, rate: Fraction, malicious: int, colluding: bool, vacant: int = 0) -> Fraction:
        """Detection value of a peer spot check with ``malicious`` malicious computing workers
        and ``vacant`` other positions vacant (:mod:`stagewarden.prover.peer`)."""
        return peer_value(self.n_computing, rate, malicious, colluding, vacant)

    def level(self, effects: list[Effect], op: str, threshold: Fraction) -> Term:
        """Formula: the unit's detection probability is ``< threshold`` (op "lt") or
        ``<= threshold`` (op "le"), given which effects are in force."""
        level_key = (id(effects), op, threshold.numerator, threshold.denominator)
        known = self._levels.get(level_key)
        if known is not None:
            return known
        entry = self._signatures.get(id(effects))
        if entry is None:
            # Hashing fractions is slow; most workers share the very same value objects, so
            # look the signature up by object identity first (the entry keeps them alive).
            by_identity = tuple((id(e.value), id(e.rate), e.shift, e.replica) for e in effects)
            entry = self._signature_ids.get(by_identity)
            if entry is None:
                signature = tuple((e.value, e.rate, e.shift, e.replica) for e in effects)
                number = self._signature_numbers.setdefault(signature, len(self._signature_numbers))
                entry = self._signature_ids[by_identity] = (number, signature)
            self._signatures[id(effects)] = entry
        key = (entry[0], op, threshold.numerator, threshold.denominator)
        templates = self._templates.get(key)
        if templates is None:
            templates = self._templates[key] = self._good_sets(entry[1], op, threshold)
        clauses: list[Term] = []
        for chosen, peer_indices, peer_condition in templates:
            parts: list[Term] = [effects[j].expr for j in chosen]
            if peer_indices:
                parts += [effects[j].expr for j in peer_indices]
                parts.append(True if peer_condition is None else peer_condition)
            clauses.append(neg(conj(parts)))
        # Effect lists live as long as the encoding (cached in ``_effects``), so ids are stable.
        result = self._levels[level_key] = conj(clauses)
        return result

    def _good_sets(self, signature: _Signature, op: str, threshold: Fraction) -> list[_GoodSet]:
        """The minimal sets of effects that make a unit good (detection not below the threshold),
        for effects with the given values; cached, since many workers share a signature."""
        key = (signature, op, threshold)
        cached = self._good_cache.get(key)
        if cached is not None:
            return cached

        def bad(d: Fraction) -> bool:
            return d < threshold if op == "lt" else d <= threshold

        fixed_values = {j: entry[0] for j, entry in enumerate(signature) if entry[0] is not None}
        fixed = list(fixed_values)
        peers = [j for j, entry in enumerate(signature) if entry[0] is None]
        out: list[_GoodSet] = []
        minimal_good: list[frozenset[int]] = []
        for size in range(len(fixed) + 1):
            for combo in itertools.combinations(fixed, size):
                chosen = frozenset(combo)
                if any(g <= chosen for g in minimal_good):
                    continue
                d = detection_probability(fixed_values[j] for j in combo)
                if not bad(d):
                    minimal_good.append(chosen)
                    out.append((combo, (), None))
                    continue
                # Peer checks of one unit share its replica, shift and the placement they read,
                # so any set of them that is in force together counts at once.
                for count in range(1, len(peers) + 1):
                    for together in itertools.combinations(peers, count):
                        rates = [signature[j][1] for j in together]
                        _, _, shift, replica = signature[together[0]]
                        condition = self._peer_good(rates, shift, replica, d, bad)
                        if condition is not None:
                            out.append((combo, together, condition))
        self._good_cache[key] = out
        return out

    def _peer_good(
        self,
        rates: list[Fraction],
        shift: int,
        replica: int | None,
        d_others: Fraction,
        bad: Callable[[Fraction], bool],
    ) -> Term | None:
        """Condition (on collusion, the number of malicious workers and the vacancies seen from
        ``replica``) under which adding peer checks of the given rates to checks of combined
        value ``d_others`` makes the unit good; None if never."""

        def good_at(m: int, colluding: bool, vacant: int = 0) -> bool:
            miss = 1 - d_others
            for rate in rates:
                miss *= 1 - self.peer_value(rate, m + shift, colluding, vacant)
            return not bad(1 - miss)

        conditions: list[Term] = [
            conj([neg(self.collusion), verifier_condition(self, lambda v: good_at(1, False, v), replica)])
        ]
        # With collusion the value falls as m (malicious computing workers, the unit's own worker
        # included when it is malicious) and the vacant honest positions grow.
        conditions.append(
            conj([self.collusion, colluding_condition(self, shift, lambda m, v: good_at(m, True, v), replica)])
        )
        combined = disj(conditions)
        return None if combined is False else combined

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

    def effect_values(
        self, model: z3.ModelRef | ModelView, effects: Iterable[Effect], malicious: int
    ) -> tuple[Fraction, list[tuple[Effect, bool, Fraction]]]:
        """Evaluate the effects in a model: the unit's detection probability and each effect's
        state and value."""
        colluding = holds_in(model, self.collusion)
        rows = []
        values = []
        for e in effects:
            on = holds_in(model, e.expr)
            if e.value is not None:
                value = e.value
            else:
                vacant = sum(1 for t in vacant_seen_from(self, e.replica) if holds_in(model, t))
                value = self.peer_value(e.rate, malicious + e.shift, colluding, vacant)
            rows.append((e, on, value))
            if on:
                values.append(value)
        return detection_probability(values), rows

    def _possible(self, effect: Effect) -> bool:
        """Whether an effect can be in force under the spec as written (a spot check's effect
        for a verifier other than the one the spec names cannot)."""
        if effect.check is None or not effect.label.startswith("spot_check"):
            return True
        check = self.spec.defense.checks[effect.check]
        is_peer = getattr(check, "verifier", None) == "peer"
        return is_peer == effect.label.endswith("(peer)")

    def all_levels(self, effects_list: Iterable[list[Effect]], max_malicious: int) -> list[Fraction]:
        """Every detection probability a unit can have, sorted (for the worst-case search)."""
        levels: set[Fraction] = set()
        seen: set[tuple[object, ...]] = set()
        for effects in effects_list:
            effects = [e for e in effects if self._possible(e)]
            fixed = [e.value for e in effects if e.value is not None]
            peers = [e for e in effects if e.peer]
            # Units of many workers share their values: each distinct set adds its levels once.
            key = (*fixed, None, *((p.rate, p.shift) for p in peers))
            if key in seen:
                continue
            seen.add(key)
            for size in range(len(fixed) + 1):
                for combo in itertools.combinations(fixed, size):
                    base = detection_probability(combo)
                    levels.add(base)
                    for count in range(1, len(peers) + 1):
                        for together in itertools.combinations(peers, count):
                            levels.update(self._peer_levels(base, together, max_malicious))
        return sorted(levels)

    def _peer_levels(self, base: Fraction, peers: tuple[Effect, ...], max_malicious: int) -> set[Fraction]:
        """The detection probabilities of checks of combined value ``base`` with the ``peers``
        in force too, over the placements they can read."""
        out: set[Fraction] = set()
        for m in _sample_counts(max_malicious):
            for colluding in (False, True):
                for vacant in [0, *_sample_counts(len(vacant_honest(self)))]:
                    miss = 1 - base
                    for peer in peers:
                        miss *= 1 - self.peer_value(peer.rate, m + peer.shift, colluding, vacant)
                    out.add(1 - miss)
        return out


def _sample_counts(limit: int) -> list[int]:
    if limit <= 64:
        return list(range(1, max(limit, 1) + 1))
    step = max(1, limit // 64)
    return sorted(set(list(range(1, 65)) + list(range(1, limit + 1, step)) + [limit]))


def _slot_text(ref: int | str) -> str:
    return f"stage {ref} is" if isinstance(ref, int) else f"worker {ref} is"


def _describe_check(check: object) -> str:
    if isinstance(check, RedundantNeighbourCheck):
        return "redundant_neighbour check: stage s+1 recomputes stage s"
    if isinstance(check, SpotCheck):
        return f"spot_check at rate {check.rate} by the {check.verifier}"
    if isinstance(check, ReplicateCheck):
        return f"replicate check with factor {check.factor}"
    if isinstance(check, StatisticalCheck):
        return f"statistical check (power {check.power}, min deviation {check.min_deviation})"
    if isinstance(check, RobustAggregationCheck):
        return f"robust aggregation ({check.rule})"
    return "check"
