"""Compilation of a spec into Z3: one Boolean per worker (is it malicious), one variable per spec
fact, and an assumption literal guarding every fact, so that an unsat core names the spec lines a
proof rests on.

The rules implemented here are those of the documentation page "The prover's model"
(docs/semantics.rst). Units are never unrolled: a worker's units of one kind are alike to the
adversary, so the encoding reasons per worker and per unit kind, and the horizon enters only
through the closed-form probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import z3

from stagewarden.prover.dynamics import Occupancy, build_occupancy, crash_limit, standby_limit, vacancy_constraints
from stagewarden.prover.effects import CheckEffects
from stagewarden.prover.fastz3 import Term, at_most, boolean, conj, disj, neg, to_z3
from stagewarden.prover.framing import Framing, build_framings
from stagewarden.prover.units import CAPABILITY_KINDS, KIND_CAPABILITY, KINDS, SDC, Effect
from stagewarden.prover.world import World
from stagewarden.spec import (
    CAPABILITIES,
    LoadedSpec,
    RedundantNeighbourCheck,
    ReplicateCheck,
    RobustAggregationCheck,
    SpotCheck,
    StatisticalCheck,
    probability_fraction,
)
from stagewarden.spec.source import Path

#: What other modules import from here (the unit kinds and effects live in
#: :mod:`stagewarden.prover.units`).
__all__ = ["CAPABILITY_KINDS", "KINDS", "KIND_CAPABILITY", "SDC", "Assumption", "Effect", "Encoding"]

#: The placement variables of the world laid out last (see :func:`placement_variables`).
_LAST_PLACEMENT: list[tuple[World, list[z3.BoolRef]]] = []


def placement_variables(world: World) -> list[z3.BoolRef]:
    """``mal[name]`` per worker of ``world``. Z3 makes one constant of a name, so every encoding
    of a world (concrete and symbolic) has the same ones; they are made once per world, since
    making 131,072 of them takes seconds. The list is shared: never change it."""
    if _LAST_PLACEMENT and _LAST_PLACEMENT[0][0] is world:
        return _LAST_PLACEMENT[0][1]
    variables = [boolean(f"mal[{w.name}]") for w in world.workers]
    _LAST_PLACEMENT[:] = [(world, variables)]
    return variables


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


@dataclass(frozen=True)
class Assumption:
    """One spec fact the encoding may rely on, with the literal that switches it on."""

    key: str
    text: str
    path: Path
    literal: z3.BoolRef


class Encoding(CheckEffects):
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
        self.mal = placement_variables(world)
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
        self._init_levels()
        self._encode_checks()
        self._encode_workers()
        self._init_effects()
        self._framings: list[Framing] | None = None
        self._replica_framings: dict[int, list[Framing]] = {}
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

    def framings_in(self, replica: int) -> list[Framing]:
        """The framings whose victim is in ``replica``: built for that replica's victims alone
        (once) unless every framing is built already, so that a goal about one replica, as when
        replicas are alike, does not build the others' (seven eighths of them at 16384x8)."""
        if self._framings is not None:
            return [f for f in self._framings if self.world.workers[f.victim].replica == replica]
        known = self._replica_framings.get(replica)
        if known is None:
            victims = {w for w in self.world.computing if self.world.workers[w].replica == replica}
            known = self._replica_framings[replica] = build_framings(self, victims)
        return known

    def _framings_of(self, victims: set[int]) -> list[Framing]:
        """The framings of some victims (all of them built at once when most are wanted)."""
        if self._framings is not None or 2 * len(victims) > len(self.world.computing):
            return [f for f in self.framings if f.victim in victims]
        return build_framings(self, victims)

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

    def all_constraints(self) -> list[z3.BoolRef]:
        """Every constraint (facts and guarded assumptions)."""
        return self.facts + self.guarded

    def literals(self) -> list[z3.BoolRef]:
        """Every assumption literal (none matter in the concrete form, where facts are constants)."""
        return [] if self.concrete else [a.literal for a in self.assumptions]


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
