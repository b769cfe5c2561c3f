"""The prover: one Z3 check per guarantee, a vacuity check before any "holds", minimal
counterexamples (fewest malicious workers, found by increasing cardinality bounds) and minimal explanations
(deletion-minimised unsat cores over assumption literals).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import z3
from z3 import z3core

from stagewarden.prover import trace as tr
from stagewarden.prover.encoding import CAPABILITY_KINDS, KINDS, SDC, Assumption, Effect, Encoding
from stagewarden.prover.framing import ceil_half
from stagewarden.prover.explain import assumption_ref
from stagewarden.prover.fastz3 import Term, at_least, at_most, conj, disj, holds_in, neg, to_z3
from stagewarden.prover.damage import Damage, Try, damage, units_per_kind
from stagewarden.prover.figure_text import format_comparison, format_pair
from stagewarden.prover.probability import Prob, format_probability, skip_damage
from stagewarden.prover.verdict import HOLDS, UNKNOWN, VACUOUS, VIOLATED, AssumptionRef, Figure, GuaranteeResult, Report
from stagewarden.spec import (
    TAMPERING_CAPABILITIES,
    BoundedDamageGuarantee,
    DataIntegrityGuarantee,
    DetectionGuarantee,
    LivenessGuarantee,
    LoadedSpec,
    NoFramingGuarantee,
    OverheadGuarantee,
    RedundantNeighbourCheck,
    ReplicateCheck,
    RobustAggregationCheck,
    SpotCheck,
    StatisticalCheck,
    probability_fraction,
)

#: Longest a single solver call may spend proving a counterexample minimal or a count maximal
#: (milliseconds); past it the best result so far is kept and marked as not proven optimal.
MINIMALITY_EFFORT_MS = 1500
#: Worlds up to this many workers get canonical (lexicographically first) counterexamples.
CANONICAL_WORKERS = 128
#: Overhead cost constants (fractions of unprotected training).
RECEIPT_COMPUTE = Fraction(1, 100)
STATISTICAL_COMPUTE = Fraction(1, 100)


@dataclass(frozen=True)
class Limits:
    """Solver limits for one guarantee: wall-clock seconds and/or Z3's deterministic resource limit."""

    timeout: float | None = None
    rlimit: int | None = None


class SolverGaveUp(Exception):
    """Z3 answered unknown (time or resource limit, or incompleteness)."""


class Prover:
    """Checks the guarantees of one loaded spec."""

    def __init__(self, loaded: LoadedSpec, limits: Limits | None = None, dynamics: bool = True) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.limits = limits or Limits()
        self.dynamics = dynamics
        self._removals: Prover | None = None
        self.enc = Encoding(loaded, concrete=True, dynamics=dynamics)
        self._other_state: dict[str, Any] | None = None
        self._deadline: float | None = None
        self._vacuity: list[Assumption] | None | bool = None
        self.last_minimal = True
        self._base: z3.Solver | None = None
        self._guards: dict[object, z3.BoolRef] = {}
        self._goal_guards: dict[object, tuple[z3.BoolRef, Term]] = {}
        self._decl_cache: dict[int, list[object]] = {}
        self._term_cache: dict[tuple[str | None, Fraction], list[Term]] = {}
        self._unmasked_cache: Term | None = None

    # -- encodings --------------------------------------------------------------------------

    _STATE = ("enc", "_term_cache", "_unmasked_cache", "_base", "_guards", "_goal_guards")

    @contextmanager
    def _symbolic(self) -> Iterator[None]:
        """Switch to the symbolic encoding (built on first use) and its caches and solver.

        Verdicts, counterexamples and counts come from the concrete encoding; explanations
        (unsat cores over assumption literals) and the vacuity check need the symbolic one."""
        if self.enc.concrete is False:
            yield
            return
        mine = {name: getattr(self, name) for name in self._STATE}
        if self._other_state is None:
            sym = Encoding(self.loaded, dynamics=self.dynamics)
            self._other_state = {"enc": sym, "_term_cache": {}, "_unmasked_cache": None,
                                 "_base": None, "_guards": {}, "_goal_guards": {}}
        for name, value in self._other_state.items():
            setattr(self, name, value)
        try:
            yield
        finally:
            self._other_state = {name: getattr(self, name) for name in self._STATE}
            for name, value in mine.items():
                setattr(self, name, value)

    # -- solver plumbing --------------------------------------------------------------------

    def _remaining_ms(self) -> int | None:
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise SolverGaveUp(f"timeout: the per-guarantee limit of {self.limits.timeout} s was reached")
        return max(1, int(left * 1000))

    def _configure(self, solver: z3.Solver | z3.Optimize) -> None:
        ms = self._remaining_ms()
        if ms is not None:
            solver.set("timeout", ms)
        if self.limits.rlimit is not None:
            solver.set("rlimit", self.limits.rlimit)

    def _solver(self) -> z3.Solver:
        """The shared solver holding every constraint of the encoding (built once per
        guarantee on the concrete form, once per spec on the symbolic one; goals are added
        behind guard literals, so the budget's cardinality constraint is encoded once).

        The concrete form runs on the SAT-based finite-domain solver. The symbolic form, whose
        queries are unsat-core extractions under the assumption literals, does too in worlds of
        up to ``CANONICAL_WORKERS`` workers (so that small specs keep their explanations, core
        order included); in larger worlds it runs on Z3's default solver, which translates the
        large guarded goals far faster (measured: the ``no_framing`` core at 1024x8 in 0.05 s
        instead of 1.2 s). Every query is exact either way; only the core found may differ."""
        if self._base is None:
            z3.set_param("sat.cardinality.solver", True)
            small = len(self.enc.mal) <= CANONICAL_WORKERS
            self._base = z3.SolverFor("QF_FD") if self.enc.concrete or small else z3.Solver()
            self._base.add(self.enc.all_constraints())
        self._configure(self._base)
        return self._base

    def _reset_solver(self) -> None:
        """Start the guarantee on a fresh solver of the concrete encoding: the constraints
        themselves are small (the goals are what is large), and a solver that carries the
        learnt clauses, phases and abandoned searches of earlier guarantees can take
        seconds on a query that a fresh one answers at once."""
        self._base = None
        self._guards = {}
        self._goal_guards = {}

    def _guard(self, goal: Term) -> z3.BoolRef:
        """A literal that switches ``goal`` on in the shared solver (added once per goal; goals
        stay in the solver, inert while their literal is not assumed, so nothing is popped)."""
        key = goal if isinstance(goal, bool) else goal.get_id()
        entry = self._goal_guards.get(key)
        if entry is None:
            guard = z3.Bool(f"goal!{len(self._goal_guards)}")
            self._solver().add(z3.Implies(guard, to_z3(goal)))
            # Keep the goal alive: Z3 reuses the ids of freed terms.
            entry = self._goal_guards[key] = (guard, goal)
        return entry[0]

    def _check(self, goal: Term, literals: list[z3.BoolRef] | None = None, want: str = "") -> tuple[z3.CheckSatResult, Any]:
        """Check ``goal`` under the assumption literals; return the result and, as asked, the
        model (``want="model"``) or the unsat core (``want="core"``)."""
        guard = self._guard(goal)
        solver = self._solver()
        result = solver.check(guard, *(self.enc.literals() if literals is None else literals))
        if result == z3.unknown:
            raise SolverGaveUp(solver.reason_unknown())
        extra: Any = None
        if want == "model" and result == z3.sat:
            extra = solver.model()
        elif want == "core" and result == z3.unsat:
            extra = [lit for lit in solver.unsat_core() if not str(lit).startswith("goal!")]
        return result, extra

    def _sat(self, goal: Term) -> z3.ModelRef | None:
        result, model = self._check(goal, want="model")
        return model if result == z3.sat else None

    def _sat_aside(self, goal: Term) -> bool:
        """Whether ``goal`` is satisfiable, asked of a throwaway solver so that the shared
        solver's history (and with it the placements later searches find) stays as it was."""
        solver = z3.SolverFor("QF_FD")
        solver.add(self.enc.all_constraints())
        solver.add(to_z3(goal))
        self._configure(solver)
        result = solver.check(*self.enc.literals())
        if result == z3.unknown:
            raise SolverGaveUp(solver.reason_unknown())
        return result == z3.sat

    def _minimal_core(self, goal: Term, effort: bool = False) -> list[Assumption] | None:
        """A minimal set of assumptions under which ``goal`` is unsatisfiable (deletion-based).

        With ``effort`` every solver call is capped at ``MINIMALITY_EFFORT_MS``: None when even
        the first core cannot be had, and a literal whose removal cannot be decided in time is
        kept (the core stays valid; ``self.core_minimal`` records that it may not be minimal).
        """
        self.core_minimal = True
        by_name = {str(a.literal): a for a in self.enc.assumptions}
        guard = self._guard(goal)
        solver = self._solver()

        def check(literals: list[z3.BoolRef]) -> z3.CheckSatResult:
            if effort:
                return self._bounded_check(solver, guard, *literals)
            result = solver.check(guard, *literals)
            if result == z3.unknown:
                raise SolverGaveUp(solver.reason_unknown())
            return result

        result = check(self.enc.literals())
        if result == z3.unknown:
            return None
        assert result == z3.unsat
        core = [by_name[str(lit)] for lit in solver.unsat_core() if str(lit) in by_name]
        index = 0
        while index < len(core):
            trial = core[:index] + core[index + 1 :]
            result = check([a.literal for a in trial])
            if result == z3.unsat:
                core = trial
            else:
                if result == z3.unknown:
                    self.core_minimal = False
                index += 1
        return core

    def _minimal_model(self, goal: Term, extra_objective: list[Term] | None = None, lower_bound: int = 0) -> z3.ModelRef:
        """A model of ``goal`` with the fewest malicious workers, then the fewest
        ``extra_objective`` terms. Counterexamples are small, so the search goes up from zero
        malicious workers with cardinality bounds on the SAT-based finite-domain solver (Z3's
        ``Optimize`` proved far slower on these cardinality problems). Each bound that would
        prove minimality gets at most ``MINIMALITY_EFFORT_MS``; when one runs out the best model
        so far is returned and ``self.last_minimal`` says that minimality is not proven."""
        guard = self._guard(goal)
        self.last_minimal = True
        model = self._least(guard, [], self.enc.mal, "malicious", lower_bound)
        model = self._canonical(guard, model)
        if extra_objective:
            fewest = len(self._malicious(model))
            cap = self._cardinality_guard(self.enc.mal, fewest, "malicious")
            model = self._least(guard, [cap], [to_z3(t) for t in extra_objective], f"extra{len(self._guards)}")
        return model

    def _canonical(self, guard: z3.BoolRef, model: z3.ModelRef) -> z3.ModelRef:
        """For small worlds, the lexicographically first placement of the same size (workers in
        index order), so that the counterexample does not depend on the solver's history."""
        if len(self.enc.mal) > CANONICAL_WORKERS:
            return model
        size = len(self._malicious(model))
        solver = self._solver()
        fixed: list[z3.BoolRef] = [self._cardinality_guard(self.enc.mal, size, "malicious")]
        chosen = 0
        for var in self.enc.mal:
            if chosen == size:
                fixed.append(z3.Not(var))
                continue
            if self._bounded_check(solver, guard, *fixed, var, *self.enc.literals()) == z3.sat:
                fixed.append(var)
                chosen += 1
            else:
                fixed.append(z3.Not(var))
        if self._bounded_check(solver, guard, *fixed, *self.enc.literals()) == z3.sat:
            return solver.model()
        return model

    def _cardinality_guard(self, terms: list[z3.BoolRef], k: int, name: str) -> z3.BoolRef:
        key = (name, k)
        guard = self._guards.get(key)
        if guard is None:
            guard = z3.Bool(f"goal!atmost-{name}-{k}")
            self._solver().add(z3.Implies(guard, at_most(terms, k)))
            self._guards[key] = guard
        return guard

    def _bounded_check(self, solver: z3.Solver, *assumptions: z3.BoolRef) -> z3.CheckSatResult:
        """A check that may take at most ``MINIMALITY_EFFORT_MS`` (and what the limits leave)."""
        ms = self._remaining_ms()
        solver.set("timeout", MINIMALITY_EFFORT_MS if ms is None else min(ms, MINIMALITY_EFFORT_MS))
        try:
            return solver.check(*assumptions)
        finally:
            self._configure(solver)
            if self._remaining_ms() is None:
                solver.set("timeout", 4294967295)

    def _least(self, guard: z3.BoolRef, extra: list[z3.BoolRef], terms: list[z3.BoolRef], name: str, lower_bound: int = 0) -> z3.ModelRef:
        """The model (goal ``guard`` on) with the fewest true ``terms``: any model first, then
        bounds growing from ``lower_bound`` by doubling steps below its count, then binary search. A bound that cannot be
        refuted within the effort limit is skipped and minimality is marked unproven."""
        solver = self._solver()
        literals = self.enc.literals()

        def count(m: z3.ModelRef) -> int:
            if terms is self.enc.mal:
                return len(self._malicious(m))
            return sum(1 for t in terms if z3.is_true(m.eval(t, model_completion=True)))

        result = solver.check(guard, *extra, *literals)
        if result != z3.sat:
            raise SolverGaveUp(solver.reason_unknown() if result == z3.unknown else "the goal became unsatisfiable")
        best = solver.model()
        high = count(best)
        # ``lower_bound`` is proven by the caller (a counting argument), so no probe goes below it.
        low, step = min(lower_bound, high), 1
        while low < high:
            probe = min(low + step - 1, high - 1) if step < high - low else (low + high) // 2
            bound = self._cardinality_guard(terms, probe, name)
            result = self._bounded_check(solver, guard, *extra, bound, *literals)
            if result == z3.unknown and terms is self.enc.mal:
                # Too hard in general: look for a smaller placement inside the best one found.
                inside = set(self._malicious(best))
                outside = [z3.Not(m) for i, m in enumerate(self.enc.mal) if i not in inside]
                result = self._bounded_check(solver, guard, *extra, bound, *outside, *literals)
                if result == z3.unsat:
                    result = z3.unknown  # refuted only within the subset: not a proof
            if result == z3.sat:
                best = solver.model()
                high = count(best)
                step = max(1, (high - low) // 2)
            else:
                if result == z3.unknown:
                    self.last_minimal = False
                low = probe + 1
                step *= 2
        return best

    def _malicious(self, model: z3.ModelRef) -> list[int]:
        """Indices of the workers malicious in ``model`` (unassigned counts as honest)."""
        ctx, ref = model.ctx.ref(), model.model
        out = []
        for i, decl in enumerate(self._mal_decls()):
            value = z3core.Z3_model_get_const_interp(ctx, ref, decl)
            if value and z3core.Z3_get_bool_value(ctx, value) == 1:
                out.append(i)
        return out

    def _mal_decls(self) -> list[object]:
        decls = self._decl_cache.get(id(self.enc))
        if decls is None:
            decls = self._decl_cache[id(self.enc)] = [m.decl().ast for m in self.enc.mal]
        return decls

    def _malicious_computing(self, model: z3.ModelRef) -> int:
        return sum(1 for i in self._malicious(model) if self.enc.world.workers[i].computing)

    # -- entry points ---------------------------------------------------------------------

    def vacuity(self) -> list[Assumption] | None:
        """None when an honest run is possible under the assumptions; otherwise the
        contradictory assumptions (a minimal core)."""
        if self._vacuity is None:
            with self._symbolic():
                honest_run = conj([neg(m) for m in self.enc.mal] + [neg(c) for c in self.enc.crash])
                result, _ = self._check(honest_run)
                self._vacuity = False if result == z3.sat else (self._minimal_core(honest_run) or [])
        return None if self._vacuity is False else self._vacuity  # type: ignore[return-value]

    def check(self, guarantee_id: str) -> GuaranteeResult:
        """The verdict for one guarantee."""
        guarantee = next(g for g in self.spec.guarantees if g.id == guarantee_id)
        if isinstance(guarantee, LivenessGuarantee) and self.dynamics:
            # Liveness counts removals and standby entries in closed form (its own rules on the
            # semantics page); the per-position summary would only slow its counting down.
            if self._removals is None:
                self._removals = Prover(self.loaded, self.limits, dynamics=False)
            return self._removals.check(guarantee_id)
        started = time.monotonic()
        self._deadline = started + self.limits.timeout if self.limits.timeout else None
        try:
            contradiction = self.vacuity()
            if contradiction is not None:
                result = GuaranteeResult(
                    guarantee.id, guarantee.kind, VACUOUS,
                    "the spec's assumptions contradict each other: no honest run is possible",
                    assumptions=[assumption_ref(self.enc, a) for a in contradiction],
                )
            else:
                handler: Callable[[object], GuaranteeResult] = {
                    DetectionGuarantee: self._detection,
                    BoundedDamageGuarantee: self._bounded_damage,
                    NoFramingGuarantee: self._no_framing,
                    LivenessGuarantee: self._liveness,
                    DataIntegrityGuarantee: self._data_integrity,
                    OverheadGuarantee: self._overhead,
                }[type(guarantee)]  # type: ignore[assignment]
                self.last_minimal = True
                self._reset_solver()
                result = handler(guarantee)
                if result.trace is not None and result.kind not in ("bounded_damage", "overhead"):
                    result.trace["#meta"]["minimal"] = self.last_minimal
                    if not self.last_minimal:
                        result.notes.append("the counterexample is valid but was not proven to use the fewest malicious workers within the effort limit")
        except SolverGaveUp as exc:
            reason = self._explain_give_up(str(exc) or "unknown")
            result = GuaranteeResult(guarantee.id, guarantee.kind, UNKNOWN, f"the solver gave up: {reason}", reason=reason)
        finally:
            self._deadline = None
        result.seconds = time.monotonic() - started
        result.notes = self._notes(guarantee) + result.notes
        return result

    def _explain_give_up(self, reason: str) -> str:
        limits = []
        if self.limits.timeout is not None:
            limits.append(f"--timeout {self.limits.timeout:g} s")
        if self.limits.rlimit is not None:
            limits.append(f"--rlimit {self.limits.rlimit}")
        if limits and ("cancel" in reason or "timeout" in reason or "resource" in reason):
            return f"a solver limit was reached ({' / '.join(limits)}; z3: {reason})"
        return f"z3 answered unknown: {reason}" if not reason.startswith("timeout") else reason

    def _notes(self, guarantee: object) -> list[str]:
        notes = []
        if self.spec.trust.tee and not self.spec.defense.attestation and not isinstance(guarantee, OverheadGuarantee):
            notes.append("trust.tee is only a claim without defense.attestation: the prover treats those workers as untrusted")
        return notes

    # -- shared pieces ----------------------------------------------------------------------

    def _holds(self, guarantee: object, build_goal: Callable[[], Term], summary: str, **extra: object) -> GuaranteeResult:
        """A holds verdict, explained by a minimal core of the violation goal, rebuilt on the
        symbolic encoding (where every spec fact is guarded by an assumption literal)."""
        with self._symbolic():
            core = self._minimal_core(build_goal(), effort=True)
            refs = [assumption_ref(self.enc, a) for a in core or []]
        result = GuaranteeResult(
            guarantee.id, guarantee.kind, HOLDS, summary,  # type: ignore[attr-defined]
            assumptions=refs, **extra,  # type: ignore[arg-type]
        )
        if core is None:
            result.notes.append("the verdict is proven, but the assumptions it rests on could not be isolated within the effort limit")
        elif not self.core_minimal:
            result.notes.append("the listed assumptions suffice for the proof but were not all shown to be necessary within the effort limit")
        return result

    def _adversary_goal(self) -> Term:
        return disj(self.enc.malicious_computing())

    def _trivial(self, guarantee: object, extra: Callable[[], Term] | None = None) -> GuaranteeResult | None:
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

    def _local_workers(self) -> list[int]:
        """The computing workers a goal about a single unit or victim must look at: replica 0's
        when replicas are alike, else all."""
        world = self.enc.world
        return [w for w in world.computing if not self._replicas_alike or world.workers[w].replica == 0]

    def _targets(self, capabilities: list[str]) -> list[tuple[int, str, str]]:
        out = []
        computing = self._local_workers()
        for c in capabilities:
            kinds = CAPABILITY_KINDS[c][:1] if c == "equivocate" else CAPABILITY_KINDS[c]
            for w in computing:
                if c == "poison_data" and self.enc.world.workers[w].stage != 0:
                    continue
                out.extend((w, c, kind) for kind in kinds)
        return out

    def _level_goal(self, targets: list[tuple[int, str, str]], op: str, threshold: Fraction, sdc: bool) -> Term:
        enc = self.enc
        parts = [conj([enc.tamperable(w, c), enc.level(enc.effects(w, c, kind), op, threshold)]) for w, c, kind in targets]
        if sdc:
            sdc_parts = [
                conj([neg(enc.mal[w]), enc.level(enc.effects(w, SDC, k), op, threshold)])
                for w in enc.world.computing for k in KINDS
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
            effects += [enc.effects(w, SDC, k) for w in enc.world.computing if enc.world.workers[w].replica == 0 for k in KINDS]
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

    def _describe_unit(self, model: z3.ModelRef, targets: list[tuple[int, str, str]], op: str, threshold: Fraction, sdc: bool) -> tuple[int, str, str, list[Effect], bool]:
        """The (worker, capability, kind) that reaches the level in ``model``."""
        enc = self.enc
        for w, c, kind in targets:
            if holds_in(model, conj([enc.tamperable(w, c), enc.level(enc.effects(w, c, kind), op, threshold)])):
                return w, c, kind, enc.effects(w, c, kind), False
        if sdc:
            for w in enc.world.computing:
                for k in KINDS:
                    effects = enc.effects(w, SDC, k)
                    if holds_in(model, conj([neg(enc.mal[w]), enc.level(effects, op, threshold)])):
                        return w, SDC, k, effects, True
        raise AssertionError("the model reaches the level through no unit")

    # -- detection ------------------------------------------------------------------------

    def _detection(self, g: DetectionGuarantee) -> GuaranteeResult:
        spec, enc = self.spec, self.enc
        of = list(g.of) if g.of is not None else [c for c in TAMPERING_CAPABILITIES if c in spec.adversary.capabilities]
        bound = probability_fraction(g.probability)
        sdc_possible = self._sat(enc.sdc) is not None
        if bound == 0:
            return GuaranteeResult(g.id, g.kind, HOLDS, "holds: a detection probability of at least 0 needs no proof", trivially=True)
        trivial = self._trivial(g, lambda: self.enc.sdc)
        if trivial is not None:
            return trivial
        targets = self._targets(of)
        goal = self._level_goal(targets, "lt", bound, sdc_possible)
        levels = self._levels(targets, sdc_possible)
        if self._sat(goal) is None:
            result = self._holds(g, lambda: self._level_goal(targets, "lt", bound, sdc_possible),
                                 f"holds: every tampered unit in scope is detected with probability >= {format_probability(float(bound))}")
            above = [lv for lv in levels if lv >= bound]
            if above and self._sat(self._level_goal(targets, "le", above[-1], sdc_possible)) is not None:
                worst = self._min_level(above, lambda lv: self._level_goal(targets, "le", lv, sdc_possible))
                result.figure = Figure("detection probability", float(worst), float(bound), ">=", exact=_exact(worst), bound_exact=_exact(bound))
                shown_worst, shown_bound = format_pair(worst, bound)
                result.summary = f"holds: every tampered unit in scope is detected with probability >= {shown_bound} (worst case {shown_worst})"
            return result
        candidates = [lv for lv in levels if lv < bound]
        worst = self._min_level(candidates, lambda lv: self._level_goal(targets, "le", lv, sdc_possible)) if candidates else bound
        level_goal = self._level_goal(targets, "le", worst, sdc_possible)
        model = self._minimal_model(level_goal)
        w, c, kind, effects, is_sdc = self._describe_unit(model, targets, "le", worst, sdc_possible)
        m = self._malicious_computing(model)
        d, rows = enc.effect_values(model, effects, m)
        trace = tr.detection_trace(self, model, g, w, c, kind, rows, d, bound, is_sdc)
        who = enc.world.workers[w].name
        if not is_sdc and tr.holder_name(self, model, w) != who:
            who = f"{tr.holder_name(self, model, w)} (a standby worker in position {who})"
        what = "silent data corruption of" if is_sdc else f"{c} on"
        summary = (f"violated: {what} a {tr.KIND_NAMES[kind]} unit of worker {who} is detected with probability "
                   f"{format_comparison(d, '<', bound)}")
        return GuaranteeResult(g.id, g.kind, VIOLATED, summary, trace=trace,
                               figure=Figure("detection probability", float(d), float(bound), ">=", exact=_exact(d), bound_exact=_exact(bound)))

    # -- bounded damage ---------------------------------------------------------------------

    def _unmasked(self) -> Term:
        enc, world = self.enc, self.enc.world
        masks = [i for i, c in enumerate(self.spec.defense.checks) if isinstance(c, RobustAggregationCheck)]
        if not masks:
            return True
        if self._unmasked_cache is None:
            occ = enc.occupancy.occupied_malicious
            touched = [to_z3(disj([occ[w] for s in range(world.stages) for w in world.slots[(s, r)]])) for r in range(world.replicas)]
            need = ceil_half(world.replicas)
            self._unmasked_cache = disj([neg(enc.check_present[masks[0]]), at_least(touched, need)])
        return self._unmasked_cache

    def _worker_kinds(self, w: int) -> list[tuple[str, str]]:
        """(capability, kind) pairs a malicious worker could tamper with."""
        return self.enc.worker_kinds(w)

    def _kind_level(self, w: int, kind: str, op: str, lv: Fraction) -> Term:
        enc = self.enc
        parts: list[Term] = []
        for c, k in self._worker_kinds(w):
            if k != kind:
                continue
            tamperable = enc.tamperable(w, c)
            if tamperable is not False:  # skip building the level of a capability not held
                parts.append(conj([tamperable, enc.level(enc.effects(w, c, kind), op, lv)]))
        return disj(parts)

    def _worker_level(self, w: int, op: str, lv: Fraction) -> Term:
        return disj([self._kind_level(w, kind, op, lv) for kind in KINDS])

    def _tries(self, model: z3.ModelRef) -> list[tuple[Try, dict[str, object]]]:
        """The tries of the run summarised by ``model``: every position's malicious original
        occupant, and every malicious standby worker that entered a position, with its levels."""
        enc = self.enc
        units = units_per_kind(self.spec)
        m = self._malicious_computing(model)
        occ = enc.occupancy
        standby_names = iter(self._entered_standby_names(model))
        out: list[tuple[Try, dict[str, object]]] = []
        for w in enc.world.computing:
            holders: list[str] = []
            name = enc.world.workers[w].name
            if holds_in(model, enc.mal[w]):
                holders.append(name)
            entered = occ.entered_malicious.get(w)
            if entered is not None and holds_in(model, entered):
                holders.append(f"{next(standby_names, 'standby')} (entered {name})")
            if not holders:
                continue
            kind_d: dict[str, Fraction] = {}
            kind_cap: dict[str, str] = {}
            for c, kind in self._worker_kinds(w):
                if not holds_in(model, enc.tamperable(w, c)):
                    continue
                d, _ = enc.effect_values(model, enc.effects(w, c, kind), m)
                if kind not in kind_d or d < kind_d[kind]:
                    kind_d[kind], kind_cap[kind] = d, c
            if not kind_d:
                continue
            for holder in holders:
                attempt = Try(holder, kind_d, units)
                row: dict[str, object] = {
                    "worker": holder, "detection": float(attempt.weakest), "units": attempt.weakest_units(),
                    "kinds": {x: {"capability": kind_cap[x], "detection": float(d), "units": units[x]} for x, d in kind_d.items()},
                }
                out.append((attempt, row))
        return out

    def _entered_standby_names(self, model: z3.ModelRef) -> list[str]:
        """Names of the malicious standby workers in ``model``, in index order (they enter the
        positions with a malicious entry, in position order)."""
        world = self.enc.world
        return [world.workers[w].name for w in world.standby_workers if holds_in(model, self.enc.mal[w])]

    def _damage_of(self, model: z3.ModelRef, k: int) -> tuple[Damage, list[dict[str, object]]]:
        """The damage probability of the run summarised by ``model`` (semantics page formulas)."""
        tries = self._tries(model)
        rows = [row for _, row in tries]
        if not holds_in(model, self._unmasked()) or not tries:
            return Damage(Prob.of(Fraction(0))), rows
        return damage([t for t, _ in tries], self.spec.defense.response, k), rows

    def _bounded_damage(self, g: BoundedDamageGuarantee) -> GuaranteeResult:
        enc, spec = self.enc, self.spec
        k = g.max_undetected
        bound = 1 - probability_fraction(g.probability)  # the damage probability may not exceed this
        if bound >= 1:
            return GuaranteeResult(g.id, g.kind, HOLDS, "holds: a probability of 0 needs no proof", trivially=True)
        trivial = self._trivial(g)
        if trivial is not None:
            return trivial
        computing = enc.world.computing
        unmasked = self._unmasked()
        # "Some unit stays below certain detection" is a goal about one unit: with replicas
        # alike, replica 0's workers stand for all (the masking condition is symmetric too).
        local = self._local_workers()
        any_damage = conj([unmasked, disj([self._worker_level(w, "lt", Fraction(1)) for w in local])])
        if self._sat(any_damage) is None:
            return self._holds(g, lambda: conj([self._unmasked(), disj([self._worker_level(w, "lt", Fraction(1)) for w in self._local_workers()])]),
                               "holds: every tampered unit is detected or masked, so none stays undetected",
                               figure=Figure("Pr[more than K undetected]", 0.0, float(bound), "<=", exact="0"))
        targets = [(w, c, kind) for w in computing for c, kind in self._worker_kinds(w)]
        levels = [lv for lv in self._levels(targets, False) if lv < 1]
        skip_mode = "rollback" not in spec.defense.response and "eject" not in spec.defense.response
        # Dominating counts: the most malicious workers that can reach each level (per kind in skip mode).
        groups: list[tuple[str | None, Fraction]] = [(kind, lv) for lv in levels for kind in (KINDS if skip_mode else (None,))]
        counts: dict[tuple[str | None, Fraction], int] = {}
        best_models: list[z3.ModelRef] = []
        unproven = False
        for kind, lv in groups:
            # Whether any worker reaches the level at all is a question about one unit: with
            # replicas alike replica 0's workers answer it, and the terms of every worker are
            # built only for levels that some worker reaches.
            local = self._local_workers()
            reach = [self._kind_level(w, kind, "le", lv) if kind else self._worker_level(w, "le", lv) for w in local]
            if len(local) < len(computing) and not self._sat_aside(conj([unmasked, disj(reach)])):
                counts[(kind, lv)] = 0
                continue
            n, model, exact = self._maximise(self._level_terms(kind, lv), conj([unmasked, self._budget_bound(self._level_terms(kind, lv))]))
            counts[(kind, lv)] = n
            unproven = unproven or not exact
            if model is not None:
                best_models.append(model)
        bound_prob = self._dominating_damage(counts, k)
        verdict_cmp = bound_prob.compare(bound)
        if verdict_cmp is not None and verdict_cmp <= 0:
            # Holds: no placement exceeds the per-level maxima; explain why they are bounded.
            def exceed() -> Term:
                return conj([self._unmasked(), disj([conj([self._budget_bound(self._level_terms(kind, lv)), _at_least(self._level_terms(kind, lv), n + 1)])
                                                     for (kind, lv), n in counts.items()])])

            result = self._holds(g, exceed, f"holds: the best adversary leaves more than {k} undetected units with probability "
                                 f"at most {format_comparison(bound_prob, '<=', bound)}",
                                 figure=Figure("Pr[more than K undetected]", bound_prob.value, float(bound), "<=", exact=_exact(bound_prob.exact), bound_exact=_exact(bound)))
            result.assumptions += [assumption_ref(enc, a) for a in enc.assumptions if a.key in self._response_keys() and a.key not in {x.key for x in result.assumptions}]
            return result
        # Find the worst concrete placement: the joint dominating one, else the best found.
        # A placement found while counting that already attains every count is a joint one;
        # and when a count is only an unrefuted upper bound (its search ran out of effort), the
        # joint query asks for at least that many workers, which the count's own search could
        # not find within the same effort: it is skipped, and the placements found decide.
        candidates = list(best_models)
        attained = any(all(holds_in(cand, _at_least(self._level_terms(kind, lv), n)) for (kind, lv), n in counts.items() if n > 0)
                       for cand in best_models)
        if not attained and not unproven:
            joint = conj([unmasked] + [_at_least(self._level_terms(kind, lv), n) for (kind, lv), n in counts.items() if n > 0])
            solver = self._solver()
            if self._bounded_check(solver, self._guard(joint), *self.enc.literals()) == z3.sat:
                candidates.insert(0, solver.model())
        best: tuple[Damage, list[dict[str, object]], z3.ModelRef] | None = None
        for cand in candidates:
            found, rows = self._damage_of(cand, k)
            if best is None or found.prob.value > best[0].prob.value:
                best = (found, rows, cand)
        assert best is not None
        found, rows, model = best
        prob = found.prob
        if not found.tight and found.lower is not None and found.prob.compare(bound) == 1 and found.lower.compare(bound) != 1:
            return GuaranteeResult(g.id, g.kind, UNKNOWN,
                                   f"unknown: the retry bound {format_comparison(prob, 'exceeds', bound)} but the strategy it "
                                   f"assumes may not exist; the best attained strategy reaches {found.lower}",
                                   figure=Figure("Pr[more than K undetected]", prob.value, float(bound), "<="), reason="probability bound not tight")
        cmp = prob.compare(bound)
        figure = Figure("Pr[more than K undetected]", prob.value, float(bound), "<=", exact=_exact(prob.exact), bound_exact=_exact(bound))
        if cmp is None or cmp <= 0:
            return GuaranteeResult(g.id, g.kind, UNKNOWN,
                                   f"unknown: the dominating bound {format_comparison(bound_prob, 'exceeds', bound)} but the worst placement found reaches only {prob}",
                                   figure=figure, reason="probability bound not tight")
        trace = tr.damage_trace(self, model, g, rows, prob, bound)
        summary = (f"violated: the adversary leaves more than {k} undetected units with probability "
                   f"{format_comparison(prob, '>', bound)}")
        return GuaranteeResult(g.id, g.kind, VIOLATED, summary, figure=figure, trace=trace)

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
            occ = self.enc.occupancy
            for w in self.enc.world.computing:
                level = self._kind_level(w, kind, "le", lv) if kind else self._worker_level(w, "le", lv)
                terms.append(level)
                # A malicious standby entering after a malicious original is a second try there.
                second = occ.extra_try(w, self.enc.mal[w])
                if second is not False and level is not False:
                    terms.append(conj([second, level]))
            self._term_cache[cache_key] = terms
        return self._term_cache[cache_key]

    def _response_keys(self) -> set[str]:
        """The response assumptions a damage proof rests on: rollback and eject where present
        (together they give one attempt per try), else every response listed."""
        response = self.spec.defense.response
        keys = {f"response:{r}" for r in ("rollback", "eject") if r in response}
        return keys or {f"response:{r}" for r in response}

    def _maximise(self, terms: list[Term], base: Term) -> tuple[int, z3.ModelRef | None, bool]:
        """The largest number of ``terms`` that one placement makes true (binary search over
        cardinality bounds; each term needs a malicious worker, so the budget bounds it), a
        placement with the most found, and whether the count is exact (else it is an upper
        bound that could not be refuted within the effort limit)."""
        model = self._sat(conj([base, disj(terms)]))
        if model is None:
            return 0, None, True
        live = [to_z3(t) for t in terms if t is not False]
        base_guard = self._guard(base)
        solver = self._solver()
        low = sum(1 for t in terms if holds_in(model, t))
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
                low = sum(1 for t in terms if holds_in(model, t))
            elif result == z3.unsat:
                high = mid - 1
            else:
                # Not refuted in time: keep the sound upper bound ``high``.
                return high, model, False
        return low, model, True

    def _dominating_damage(self, counts: dict[tuple[str | None, Fraction], int], k: int) -> Prob:
        """An upper bound on the damage: tries placed at the best levels the counts allow, every
        unit a try can tamper with at its level."""
        spec = self.spec
        units = units_per_kind(spec)
        held = [c for c in TAMPERING_CAPABILITIES if c in spec.adversary.capabilities]
        kinds = {kind for c in held for kind in CAPABILITY_KINDS[c]}
        max_units = sum(units[kind] for kind in kinds)
        response = spec.defense.response
        if "rollback" in response or "eject" in response:
            vector = _dominating_vector({lv: n for (kind, lv), n in counts.items()})
            tries = [Try(f"bound {i}", {"all": lv}, {"all": max_units}) for i, lv in enumerate(vector)]
            return damage(tries, response, k).prob
        trials = []
        for kind in KINDS:
            vector = _dominating_vector({lv: n for (kd, lv), n in counts.items() if kd == kind})
            trials += [(lv, units[kind]) for lv in vector]
        return skip_damage(trials, k)

    # -- no framing ---------------------------------------------------------------------------

    def framing_mechanisms(self, replica: int | None = None) -> list[tuple[str, int, list[int], Term]]:
        """Every way an honest worker can be blamed: (mechanism, victim, framers, condition).

        With ``replica`` only victims in that replica are listed.
        """
        world = self.enc.world
        return [(f.mechanism, f.victim, list(f.framers), f.condition) for f in self.enc.framings
                if replica is None or world.workers[f.victim].replica == replica]

    def _no_framing(self, g: NoFramingGuarantee) -> GuaranteeResult:
        scope = 0 if self._replicas_alike else None
        mechanisms = self.framing_mechanisms(scope)
        goal = disj([cond for *_, cond in mechanisms])
        if self._sat(goal) is None:
            trivial = self._trivial(g)
            if trivial is not None:
                return trivial
            return self._holds(g, lambda: disj([cond for *_, cond in self.framing_mechanisms(scope)]), "holds: no honest worker can be blamed")
        model = self._minimal_model(goal)
        mechanism, victim, attackers = next(
            (name, v, a) for name, v, a, cond in mechanisms if holds_in(model, cond)
        )
        trace = tr.framing_trace(self, model, g, mechanism, victim, attackers)
        name = self.enc.world.workers[victim].name
        return GuaranteeResult(g.id, g.kind, VIOLATED, f"violated: honest worker {name} can be blamed ({mechanism})", trace=trace)

    # -- liveness ---------------------------------------------------------------------------

    def _catchable(self, w: int, certain: bool) -> Term:
        return self.enc.catchable(w, certain)

    def liveness_goal(self) -> tuple[Term, dict[str, Any]]:
        """The liveness violation formula and its named parts (for the trace)."""
        enc, world = self.enc, self.enc.world
        eject, skip = enc.response["eject"], enc.response["skip_stage"]
        withhold = enc.cap["withhold"]
        computing = world.computing
        certain = disj([conj([enc.mal[w], self._catchable(w, True)]) for w in computing])
        withholder = conj([withhold, disj([enc.mal[w] for w in computing])])
        stall = conj([neg(eject), neg(skip), disj([withholder, certain])])
        removable = {w: conj([enc.mal[w], eject, disj([withhold, self._catchable(w, False)])]) for w in computing}
        any_slot = disj([self._catchable(world.primary(s, 0), False) for s in range(world.stages)])
        standby_removable = [conj([enc.mal[w], eject, disj([withhold, any_slot])]) for w in world.standby_workers]
        hit = {r: disj([removable[w] for s in range(world.stages) for w in world.slots[(s, r)]]) for r in range(world.replicas)}
        flexible = [(to_z3(t), 1) for t in standby_removable if t is not False] + [(c, 1) for c in enc.crash]
        framed: dict[int, Term] = {}
        for r in range(world.replicas):
            framed[r] = conj([eject, disj([cond for *_, cond in self.framing_mechanisms(r)])])
        any_framed = disj(list(framed.values()))
        replicas = world.replicas
        # Framing empties its replicas and eats the standby pool; every other replica needs a removal.
        with_framing = conj([any_framed, _pb_ge(flexible + [(to_z3(disj([framed[r], hit[r]])), 1) for r in range(replicas)], replicas)])
        # Otherwise: removals >= R + K (sum a_r + F - K >= R), and flexible ones cover replicas without a_r.
        removals = [(to_z3(t), 1) for t in removable.values() if t is not False]
        without = conj([neg(any_framed), _pb_ge(removals + flexible + [(b, -1) for b in enc.standby], replicas),
                        _pb_ge(flexible + [(to_z3(hit[r]), 1) for r in range(replicas) if hit[r] is not False], replicas)])
        empty = disj([with_framing, without])
        # Implied by the budget (each removal term needs its own malicious worker); stated so that
        # the solver refutes too-large removal counts by cardinality instead of by search.
        empty = conj([empty, self._budget_bound(list(removable.values()) + standby_removable)])
        return disj([stall, empty]), {"stall": stall, "withholder": withholder, "certain": certain, "framed": framed,
                                      "removable": removable, "standby_removable": standby_removable, "empty": empty}

    def _liveness(self, g: LivenessGuarantee) -> GuaranteeResult:
        goal, parts = self.liveness_goal()
        if self._sat(goal) is None:
            return self._holds(g, lambda: self.liveness_goal()[0], "holds: every stage of some replica keeps a worker and no step can be stalled forever")
        # Without a stall or framing, every removal beyond the crashes needs its own malicious
        # worker, and R + K removals are needed: a lower bound that spares a hard refutation.
        lower = 0
        if self._sat(parts["stall"]) is None and self._sat(disj(list(parts["framed"].values()))) is None:
            lower = max(0, self.enc.world.replicas + self.spec.topology.standby - self.spec.adversary.faults.crash)
        model = self._minimal_model(goal, extra_objective=list(self.enc.crash), lower_bound=lower)
        trace = tr.liveness_trace(self, model, g, parts)
        return GuaranteeResult(g.id, g.kind, VIOLATED, "violated: " + trace["#meta"]["description"], trace=trace)

    # -- data integrity ----------------------------------------------------------------------

    def _data_integrity(self, g: DataIntegrityGuarantee) -> GuaranteeResult:
        enc = self.enc
        targets = self._targets(["poison_data"])
        goal = self._level_goal(targets, "lt", Fraction(1), False)
        if self._sat(goal) is None:
            trivial = self._trivial(g)
            if trivial is not None:
                return trivial
            return self._holds(g, lambda: self._level_goal(targets, "lt", Fraction(1), False), "holds: every batch that reaches the model is proven against the committed data")
        model = self._minimal_model(goal)
        w, c, kind, effects, _ = self._describe_unit(model, targets, "lt", Fraction(1), False)
        d, rows = enc.effect_values(model, effects, self._malicious_computing(model))
        trace = tr.detection_trace(self, model, g, w, c, kind, rows, d, Fraction(1), False)
        return GuaranteeResult(g.id, g.kind, VIOLATED, f"violated: stage-0 worker {enc.world.workers[w].name} can feed a poisoned batch undetected", trace=trace)

    # -- overhead ------------------------------------------------------------------------------

    def overhead_costs(self) -> list[tuple[str, tuple[str | int, ...], Fraction, Fraction]]:
        """The cost model's items: (what, spec path, extra compute, extra memory)."""
        spec = self.spec
        stages = spec.topology.stages
        items: list[tuple[str, tuple[str | int, ...], Fraction, Fraction]] = []
        for i, check in enumerate(spec.defense.checks):
            path: tuple[str | int, ...] = ("defense", "checks", i)
            if isinstance(check, RedundantNeighbourCheck):
                share = Fraction(stages - 1, stages)
                items.append((f"redundant_neighbour: {stages - 1} of {stages} stages computed twice", path, share, share))
            elif isinstance(check, SpotCheck):
                items.append((f"spot_check re-executes {check.rate} of the units", path, Fraction(str(check.rate)), Fraction(0)))
            elif isinstance(check, ReplicateCheck):
                items.append((f"replicate: {check.factor} copies of every unit", path, Fraction(check.factor - 1), Fraction(check.factor - 1)))
            elif isinstance(check, StatisticalCheck):
                items.append(("statistical detector on messages", path, STATISTICAL_COMPUTE, Fraction(0)))
        if spec.defense.receipts:
            items.append(("receipts: hashing and signing every unit", ("defense", "receipts"), RECEIPT_COMPUTE, Fraction(0)))
        return items

    def _overhead(self, g: OverheadGuarantee) -> GuaranteeResult:
        items = self.overhead_costs()
        compute = sum((c for _, _, c, _ in items), Fraction(0))
        memory = sum((m for _, _, _, m in items), Fraction(0))
        limit_c = Fraction(str(g.max_compute))
        limit_m = Fraction(str(g.max_memory)) if g.max_memory is not None else None
        breakdown = [{"item": what, "location": _line_of(self.loaded, path), "compute": float(c), "memory": float(m)} for what, path, c, m in items]
        over_c = compute > limit_c
        over_m = limit_m is not None and memory > limit_m
        figure = Figure("extra compute", float(compute), float(limit_c), "<=", exact=_exact(compute), bound_exact=_exact(limit_c))
        refs = [AssumptionRef(f"cost:{n}", f"{what}: +{float(c):.3g} compute, +{float(m):.3g} memory", _line_of(self.loaded, path)) for n, (what, path, c, m) in enumerate(items)]
        if over_c or over_m:
            which = []
            if over_c:
                which.append(f"extra compute {format_comparison(compute, '>', limit_c, 'cost')}")
            if over_m:
                which.append(f"extra memory {format_comparison(memory, '>', limit_m, 'cost')}")  # type: ignore[arg-type]
            trace = {"#meta": tr.meta(self, g, "; ".join(which)),
                     "params": tr.params(self.spec), "malicious": [], "vars": [], "states": [], "costs": breakdown,
                     "outcome": {"compute": float(compute), "memory": float(memory), "max_compute": float(limit_c),
                                 "max_memory": None if limit_m is None else float(limit_m)}}
            return GuaranteeResult(g.id, g.kind, VIOLATED, "violated: " + "; ".join(which), figure=figure, trace=trace, assumptions=refs)
        summary = f"holds: extra compute {format_comparison(compute, '<=', limit_c, 'cost')}"
        if limit_m is not None:
            summary += f", extra memory {format_comparison(memory, '<=', limit_m, 'cost')}"
        return GuaranteeResult(g.id, g.kind, HOLDS, summary, figure=figure, assumptions=refs)


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


def _dominating_vector(counts: dict[Fraction, int]) -> list[Fraction]:
    """Levels of the dominating placement: ``n_l`` workers at levels <= l for each level l."""
    vector: list[Fraction] = []
    for lv in sorted(counts):
        while len(vector) < counts[lv]:
            vector.append(lv)
    return vector


def _line_of(loaded: LoadedSpec, path: tuple[str | int, ...]) -> str:
    location = loaded.source.value(path)
    return f"{location.file}:{location.line}"


def _exact(value: Fraction | None) -> str | None:
    if value is None:
        return None
    if value.denominator.bit_length() > 256:
        return None
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


def verify(loaded: LoadedSpec, guarantee_ids: list[str] | None = None, limits: Limits | None = None,
           progress: Callable[[str, GuaranteeResult | None], None] | None = None) -> Report:
    """Check the guarantees of a loaded spec (all of them, or those in ``guarantee_ids``)."""
    prover = Prover(loaded, limits)
    ids = guarantee_ids or [g.id for g in loaded.spec.guarantees]
    results = []
    for gid in ids:
        if progress:
            progress(gid, None)
        result = prover.check(gid)
        results.append(result)
        if progress:
            progress(gid, result)
    return Report(loaded.file, loaded.spec.name, results)
