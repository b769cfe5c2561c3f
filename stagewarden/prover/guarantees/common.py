"""Pieces every guarantee check shares (docs/semantics.rst, "Guarantees")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import z3

from stagewarden.prover.encoding import CAPABILITY_KINDS, KINDS, SDC, Effect
from stagewarden.prover.explain import assumption_ref
from stagewarden.prover.fastz3 import (
    ModelView,
    Term,
    at_least,
    at_most,
    conj,
    constant_name,
    disj,
    holds_in,
    neg,
    to_z3,
    true_constants,
)
from stagewarden.prover.session import SolverSession
from stagewarden.prover.verdict import HOLDS, GuaranteeResult
from stagewarden.spec import (
    LoadedSpec,
    RobustAggregationCheck,
)
from stagewarden.spec.model import Guarantee


class GuaranteeChecks(SolverSession):
    """What the checks of every guarantee kind share: explained "holds" verdicts, trivial
    verdicts, unit targets and detection levels, and the counting of tries by level."""

    # -- shared pieces ----------------------------------------------------------------------

    def _holds(
        self, guarantee: Guarantee, build_goal: Callable[[], Term], summary: str, **extra: Any
    ) -> GuaranteeResult:
        """A holds verdict, explained by a minimal core of the violation goal, rebuilt on the
        symbolic encoding (where every spec fact is guarded by an assumption literal)."""
        with self._symbolic():
            core = self._minimal_core(build_goal(), effort=True)
            refs = [assumption_ref(self.enc, a) for a in core or []]
        result = GuaranteeResult(
            guarantee.id,
            guarantee.kind,
            HOLDS,
            summary,
            assumptions=refs,
            **extra,
        )
        if core is None:
            result.notes.append(
                "the verdict is proven, but the assumptions it rests on could not be isolated within the effort limit"
            )
        elif not self.core_minimal:
            result.notes.append(
                "the listed assumptions suffice for the proof but were not all shown to be necessary "
                "within the effort limit"
            )
        return result

    def _adversary_goal(self) -> Term:
        return disj(self.enc.malicious_computing())

    def _trivial(self, guarantee: Guarantee, extra: Callable[[], Term] | None = None) -> GuaranteeResult | None:
        """Holds trivially when no placement gives the adversary a computing worker."""

        def goal() -> Term:
            return self._adversary_goal() if extra is None else disj([self._adversary_goal(), extra()])

        if self._sat(goal()) is not None:
            return None
        result = self._holds(guarantee, goal, "holds trivially: the adversary can control no computing worker")
        result.trivially = True
        return result

    @property
    def _replicas_alike(self) -> bool:
        """Whether every replica looks the same to the adversary: trust entries name whole
        stages only, so any attack in one replica maps onto replica 0 by renaming replicas
        (also with any assumption dropped). Local goals then only need replica 0's units."""
        return all(isinstance(ref, int) for ref in [*self.spec.trust.honest, *self.spec.trust.tee])

    def framing_mechanisms(self, replica: int | None = None) -> list[tuple[str, int, list[int], Term]]:
        """Every way an honest worker can be blamed: (mechanism, victim, framers, condition).

        With ``replica`` only victims in that replica are listed.
        """
        framings = self.enc.framings if replica is None else self.enc.framings_in(replica)
        return [(f.mechanism, f.victim, list(f.framers), f.condition) for f in framings]

    def _local_workers(self) -> list[int]:
        """The computing workers a goal about a single unit or victim must look at: replica 0's
        when replicas are alike, else all."""
        world = self.enc.world
        return [w for w in world.computing if not self._replicas_alike or world.workers[w].replica == 0]

    @property
    def _horizon_kinds(self) -> tuple[str, ...]:
        """The unit kinds the horizon has: with one step its only update is the last one, so
        there is no ``U`` unit for a counterexample to name."""
        return KINDS if self.spec.topology.steps >= 2 else tuple(k for k in KINDS if k != "U")

    def _targets(self, capabilities: Sequence[str]) -> list[tuple[int, str, str]]:
        out: list[tuple[int, str, str]] = []
        computing = self._local_workers()
        for c in capabilities:
            kinds = CAPABILITY_KINDS[c][:1] if c == "equivocate" else CAPABILITY_KINDS[c]
            kinds = tuple(k for k in kinds if k in self._horizon_kinds)
            for w in computing:
                if c == "poison_data" and self.enc.world.workers[w].stage != 0:
                    continue
                out.extend((w, c, kind) for kind in kinds)
        return out

    def _level_goal(self, targets: list[tuple[int, str, str]], op: str, threshold: Fraction, sdc: bool) -> Term:
        enc = self.enc
        parts = [
            conj([enc.tamperable(w, c), enc.level(enc.effects(w, c, kind), op, threshold)]) for w, c, kind in targets
        ]
        if sdc:
            sdc_parts = [
                conj([neg(enc.mal[w]), enc.level(enc.effects(w, SDC, k), op, threshold)])
                for w in enc.world.computing
                for k in self._horizon_kinds
                if not self._replicas_alike or enc.world.workers[w].replica == 0
            ]
            parts.append(conj([enc.sdc, disj(sdc_parts)]))
        return disj(parts)

    def _levels(self, targets: list[tuple[int, str, str]], sdc: bool) -> list[Fraction]:
        """Candidate detection levels, from the targets of replica 0 (replicas look alike)."""
        enc = self.enc
        sample = [(w, c, k) for w, c, k in targets if enc.world.workers[w].replica == 0]
        effects = [enc.effects(w, c, k) for w, c, k in sample]
        if sdc:
            effects += [
                enc.effects(w, SDC, k)
                for w in enc.world.computing
                if enc.world.workers[w].replica == 0
                for k in self._horizon_kinds
            ]
        return enc.all_levels(effects, max(1, self.spec.malicious_budget))

    def _min_level(self, candidates: list[Fraction], goal_at: Callable[[Fraction], Term]) -> Fraction:
        """The smallest candidate level some placement reaches (binary search; the last
        candidate is known to be reachable)."""
        low, high = 0, len(candidates) - 1
        while low < high:
            mid = (low + high) // 2
            if self._sat(goal_at(candidates[mid])) is not None:
                high = mid
            else:
                low = mid + 1
        return candidates[low]

    def _describe_unit(
        self, model: z3.ModelRef, targets: list[tuple[int, str, str]], op: str, threshold: Fraction, sdc: bool
    ) -> tuple[int, str, str, list[Effect], bool]:
        """The (worker, capability, kind) that reaches the level in ``model``."""
        enc = self.enc
        for w, c, kind in targets:
            if holds_in(model, conj([enc.tamperable(w, c), enc.level(enc.effects(w, c, kind), op, threshold)])):
                return w, c, kind, enc.effects(w, c, kind), False
        if sdc:
            for w in enc.world.computing:
                for k in self._horizon_kinds:
                    effects = enc.effects(w, SDC, k)
                    if holds_in(model, conj([neg(enc.mal[w]), enc.level(effects, op, threshold)])):
                        return w, SDC, k, effects, True
        raise AssertionError("the model reaches the level through no unit")

    def _unmasked(self) -> Term:
        enc, world = self.enc, self.enc.world
        masks = [i for i, c in enumerate(self.spec.defense.checks) if isinstance(c, RobustAggregationCheck)]
        if not masks:
            return True
        if self._unmasked_cache is None:
            occ = enc.occupancy.occupied_malicious
            touched = [
                to_z3(disj([occ[w] for s in range(world.stages) for w in world.slots[(s, r)]]))
                for r in range(world.replicas)
            ]
            check = self.spec.defense.checks[masks[0]]
            assert isinstance(check, RobustAggregationCheck)
            need = check.masks(world.replicas) + 1  # one corrupted replica more than the rule outvotes
            self._unmasked_cache = disj([neg(enc.check_present[masks[0]]), at_least(touched, need)])
        return self._unmasked_cache

    def _worker_kinds(self, w: int) -> tuple[tuple[str, str], ...]:
        """(capability, kind) pairs a malicious worker could tamper with."""
        return self.enc.worker_kinds(w)

    def _kind_level(self, w: int, kind: str, op: str, lv: Fraction) -> Term:
        key = (w, kind, op, lv.numerator, lv.denominator)  # hashing a Fraction is slow
        known = self._level_cache.get(key)
        if known is None:
            known = self._level_cache[key] = self._build_level(w, (kind,), op, lv)
        return known

    def _build_level(self, w: int, kinds: tuple[str, ...], op: str, lv: Fraction) -> Term:
        """Some unit of one of ``kinds`` that ``w``'s malicious occupant can tamper with is at the
        level. Units whose capability term and effect list are the same objects (a worker's
        forward and backward units, mostly) give the same disjunct, built once."""
        enc = self.enc
        parts: list[Term] = []
        seen: set[tuple[int, int]] = set()
        for c, k in self._worker_kinds(w):
            if k not in kinds:
                continue
            tamperable = enc.tamperable(w, c)
            if tamperable is False:  # skip building the level of a capability not held
                continue
            effects = enc.effects(w, c, k)
            # Both objects live in the encoding's caches, so their ids stay theirs.
            pair = (id(tamperable), id(effects))
            if pair not in seen:
                seen.add(pair)
                parts.append(conj([tamperable, enc.level(effects, op, lv)]))
        return disj(parts)

    def _worker_level(self, w: int, op: str, lv: Fraction) -> Term:
        key = (w, None, op, lv.numerator, lv.denominator)
        known = self._level_cache.get(key)
        if known is None:
            known = self._level_cache[key] = self._build_level(w, KINDS, op, lv)
        return known

    def _budget_bound(self, terms: list[Term]) -> Term:
        """``AtMost(terms, B)`` under the budget assumption, for terms that each need a distinct
        malicious worker: implied by the encoding, and it spares the solver pigeonhole search."""
        live = [to_z3(t) for t in terms if t is not False]
        budget = self.spec.malicious_budget
        if len(live) <= budget:
            return True
        bound = at_most(live, budget)
        if self.enc.concrete:
            return bound
        return disj([neg(self.enc.budget_literal), bound])

    def _level_terms(self, kind: str | None, lv: Fraction) -> list[Term]:
        """Per computing worker: it is malicious and reaches detection level ``lv`` (on ``kind``,
        or on its weakest kind when ``kind`` is None)."""
        cache_key = (kind, lv)
        if cache_key not in self._term_cache:
            terms: list[Term] = []
            owners: list[int] = []
            occ = self.enc.occupancy
            for w in self.enc.world.computing:
                level = self._kind_level(w, kind, "le", lv) if kind else self._worker_level(w, "le", lv)
                terms.append(level)
                owners.append(w)
                # A malicious standby entering after a malicious original is a second try there.
                second = occ.extra_try(w, self.enc.mal[w])
                if second is not False and level is not False:
                    terms.append(conj([second, level]))
                    owners.append(w)
            self._term_cache[cache_key] = terms
            self._term_owners[cache_key] = owners
        return self._term_cache[cache_key]

    def _count_level_terms(self, model: z3.ModelRef, kind: str | None, lv: Fraction) -> int:
        """How many of :meth:`_level_terms` hold in ``model``. Each term needs a malicious
        occupant of its position (the original or an entered standby worker), so only the
        positions the model gives one are evaluated."""
        terms = self._level_terms(kind, lv)
        owners = self._term_owners[(kind, lv)]
        acting = self._malicious_positions(model)
        view = ModelView(model)
        return sum(1 for t, w in zip(terms, owners, strict=True) if w in acting and view.holds(t))

    def _malicious_positions(self, model: z3.ModelRef) -> set[int]:
        """Positions whose original occupant, or a standby worker that entered them, is malicious
        in ``model``."""
        out = set(self._malicious(model))
        entered = self.enc.occupancy.entered_malicious
        if entered:
            true = true_constants(model)
            out.update(w for w, var in entered.items() if constant_name(var) in true)
        return out

    def _maximise(self, kind: str | None, lv: Fraction, base: Term) -> tuple[int, z3.ModelRef | None, bool]:
        """The largest number of the level's terms (:meth:`_level_terms`) that one placement
        makes true (binary search over cardinality bounds; each term needs a malicious worker,
        so the budget bounds it), a placement with the most found, and whether the count is
        exact (else it is an upper bound that could not be refuted within the effort limit)."""
        terms = self._level_terms(kind, lv)
        model = self._sat(conj([base, disj(terms)]))
        if model is None:
            return 0, None, True
        live = [to_z3(t) for t in terms if t is not False]
        base_guard = self._guard(base)
        solver = self._solver()
        low = self._count_level_terms(model, kind, lv)
        high = min(len(live), self.spec.malicious_budget)
        name = f"max{len(self._guards)}"
        while low < high:
            mid = (low + high + 1) // 2
            key = (name, "atleast", mid)
            guard = self._guards.get(key)
            if guard is None:
                guard = self._guards[key] = z3.Bool(f"goal!{name}-{mid}")
                solver.add(z3.Implies(guard, at_least(live, mid)))
            result = self._bounded_check(solver, base_guard, guard, *self.enc.literals())
            if result == z3.sat:
                model = solver.model()
                low = self._count_level_terms(model, kind, lv)
            elif result == z3.unsat:
                high = mid - 1
            else:
                # Not refuted in time: keep the sound upper bound ``high``.
                return high, model, False
        return low, model, True


def _pb_ge(weighted: list[tuple[z3.BoolRef, int]], bound: int) -> Term:
    """Pseudo-Boolean ``sum(weight * term) >= bound``."""
    if not weighted:
        return bound <= 0
    return z3.PbGe(weighted, bound)


def _at_least(terms: list[Term], n: int) -> Term:
    """At least ``n`` of the terms hold."""
    if n <= 0:
        return True
    live = [to_z3(t) for t in terms if t is not False]
    if len(live) < n:
        return False
    return at_least(live, n)


def _line_of(loaded: LoadedSpec, path: tuple[str | int, ...]) -> str:
    location = loaded.source.value(path)
    return f"{location.file}:{location.line}"


def _exact(value: Fraction | None) -> str | None:
    if value is None:
        return None
    if value.denominator.bit_length() > 256:
        return None
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)
