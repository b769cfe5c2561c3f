"""The solver session of one spec: its concrete and symbolic encodings, the shared solver
with goals behind guard literals, unsat cores, minimal and canonical models, counts under
effort limits, and the vacuity check.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

import z3
from z3 import z3core

from stagewarden.prover.dynamics import SYMBOLIC_DYNAMICS_WORKERS
from stagewarden.prover.encoding import Assumption, Encoding
from stagewarden.prover.fastz3 import Term, at_most, conj, constant_name, neg, to_z3, true_constants
from stagewarden.spec import (
    LoadedSpec,
)

if TYPE_CHECKING:
    from stagewarden.prover.prover import Prover

#: Longest a single solver call may spend proving a counterexample minimal or a count maximal
#: (milliseconds); past it the best result so far is kept and marked as not proven optimal.
MINIMALITY_EFFORT_MS = 1500
#: A search for a smaller counterexample stops after this many bounds ran out of effort: where
#: one bound is too hard, the next ones mostly are too, and on a loaded machine the search
#: otherwise spends a minute at 16384x8 on timeouts alone.
MINIMALITY_GIVE_UPS = 3
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
    #: How many placements times positions the ``liveness`` state search may enumerate before
    #: the larger-world methods take over (None: its default,
    #: ``stagewarden.prover.liveness_search.PLACEMENT_LIMIT``). Lowering it makes small
    #: worlds take the paths large ones do.
    liveness_search_placements: int | None = None


class SolverGaveUp(Exception):
    """Z3 answered unknown (time or resource limit, or incompleteness)."""


class SolverSession:
    """One spec's encodings and the solver that decides their goals: guards, cores, minimal and
    canonical models, counts, and the effort limits."""

    def __init__(
        self, loaded: LoadedSpec, limits: Limits | None = None, dynamics: bool = True, second_tries: bool = False
    ) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.limits = limits or Limits()
        self.dynamics = dynamics
        self.second_tries = second_tries
        #: Sessions on other encodings that some guarantee kinds are checked on, by
        #: (dynamics, second_tries).
        self._sessions: dict[tuple[bool, bool], Prover] = {}
        self.enc = Encoding(loaded, concrete=True, dynamics=dynamics, second_tries=second_tries)
        self._other_state: dict[str, Any] | None = None
        self._deadline: float | None = None
        self._vacuity: list[Assumption] | Literal[False] | None = None
        self.last_minimal = True
        self._base: z3.Solver | None = None
        self._guards: dict[object, z3.BoolRef] = {}
        self._goal_guards: dict[object, tuple[z3.BoolRef, Term]] = {}
        self._decl_cache: dict[int, list[object]] = {}
        self._term_cache: dict[tuple[str | None, Fraction], list[Term]] = {}
        #: Per level: for each of its terms, the position whose malicious occupant it needs.
        self._term_owners: dict[tuple[str | None, Fraction], list[int]] = {}
        #: A worker's level term, by (worker, kind or None for its weakest kind, op, level's
        #: numerator and denominator).
        self._level_cache: dict[tuple[int, str | None, str, int, int], Term] = {}
        self._unmasked_cache: Term | None = None
        self._last_malicious: tuple[z3.ModelRef, Encoding, list[int]] | None = None

    # -- encodings --------------------------------------------------------------------------

    _STATE = (
        "enc",
        "_term_cache",
        "_term_owners",
        "_level_cache",
        "_unmasked_cache",
        "_base",
        "_guards",
        "_goal_guards",
    )

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
            sym = Encoding(self.loaded, dynamics=self.dynamics, second_tries=self.second_tries)
            self._other_state = {
                "enc": sym,
                "_term_cache": {},
                "_term_owners": {},
                "_level_cache": {},
                "_unmasked_cache": None,
                "_base": None,
                "_guards": {},
                "_goal_guards": {},
            }
        for name, value in self._other_state.items():
            setattr(self, name, value)
        try:
            yield
        finally:
            self._other_state = {name: getattr(self, name) for name in self._STATE}
            for name, value in mine.items():
                setattr(self, name, value)

    def _kinds_share_encoding(self) -> bool:
        """Whether the encodings of every guarantee kind (with and without second tries, with
        and without the dynamics summary) are this one: where no position can change hands in
        a way a check notices, the summary is left out of all of them, and in worlds larger
        than ``SYMBOLIC_DYNAMICS_WORKERS`` the symbolic form follows the same rule. The kinds
        then share one session (one encoding, one framing list, one set of level terms)."""
        return not self.enc.occupancy.active and len(self.enc.world.workers) > SYMBOLIC_DYNAMICS_WORKERS

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

    def _check(
        self, goal: Term, literals: list[z3.BoolRef] | None = None, want: str = ""
    ) -> tuple[z3.CheckSatResult, Any]:
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
        return bool(result == z3.sat)

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
        index = gave_up = 0
        while index < len(core):
            if gave_up >= self._give_ups:
                self.core_minimal = False
                break
            trial = core[:index] + core[index + 1 :]
            result = check([a.literal for a in trial])
            if result == z3.unsat:
                core = trial
            else:
                if result == z3.unknown:
                    self.core_minimal = False
                    gave_up += 1
                index += 1
        return core

    @property
    def _give_ups(self) -> int:
        """How many refinement queries of one search may run out of effort before it stops:
        ``MINIMALITY_GIVE_UPS``, but one in worlds beyond ``CANONICAL_WORKERS`` workers, where
        a query that runs out once is followed by others that do (each costs the whole effort
        limit, 1.5 s of the 16384x8 benchmark's time, whatever the machine's load)."""
        return MINIMALITY_GIVE_UPS if len(self.enc.mal) <= CANONICAL_WORKERS else 1

    def _minimal_model(
        self, goal: Term, extra_objective: list[Term] | None = None, lower_bound: int = 0
    ) -> z3.ModelRef:
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
        elif self.enc.occupancy.active and len(self.enc.mal) <= CANONICAL_WORKERS:
            # The fewest run events for that placement: a counterexample lists only the crashes,
            # ejections, framings and entries it needs.
            chosen = set(self._malicious(model))
            placement = [m if i in chosen else z3.Not(m) for i, m in enumerate(self.enc.mal)]
            events = list(self.enc.occupancy.vacated.values()) + list(self.enc.occupancy.entered.values())
            model = self._least(guard, placement, events, "events")
            count = sum(1 for e in events if z3.is_true(model.eval(e, model_completion=True)))
            fixed = [*placement, self._cardinality_guard(events, count, "events")]
            model = self._first_run(guard, fixed, [(e, False) for e in self._run_variables()], model)
        return model

    def _run_variables(self) -> list[z3.BoolRef]:
        """The occupancy summary's variables in a fixed order: which positions were vacated and
        entered, then how (crash, outvote) and by whom (a malicious standby worker)."""
        occupancy = self.enc.occupancy
        return [
            *occupancy.vacated.values(),
            *occupancy.entered.values(),
            *occupancy.entered_malicious.values(),
            *occupancy.crashed.values(),
            *occupancy.outvoted.values(),
        ]

    def _first_run(
        self, guard: z3.BoolRef, fixed: list[z3.BoolRef], choices: list[tuple[z3.BoolRef, bool]], model: z3.ModelRef
    ) -> z3.ModelRef:
        """The model of ``guard`` under ``fixed`` that sets the ``choices`` variables, in order,
        to their preferred value wherever it can: the lexicographically first run, so that a
        counterexample's run does not depend on the solver's history. ``model`` is kept when a
        choice cannot be decided within the effort limit."""
        solver = self._solver()
        literals = self.enc.literals()
        fixed = list(fixed)
        for var, preferred in choices:
            first, second = (var, z3.Not(var)) if preferred else (z3.Not(var), var)
            if self._bounded_check(solver, guard, *fixed, first, *literals) == z3.sat:
                fixed.append(first)
            elif self._bounded_check(solver, guard, *fixed, second, *literals) == z3.sat:
                fixed.append(second)
            else:
                return model
        if self._bounded_check(solver, guard, *fixed, *literals) == z3.sat:
            return solver.model()
        return model

    def _fullest_model(self, goal: Term) -> z3.ModelRef | None:
        """For worlds of up to ``CANONICAL_WORKERS`` workers, a model of ``goal`` that does not
        depend on the solver's history and gives the adversary the most: as many malicious
        workers as the goal allows, the lexicographically first such placement, every malicious
        standby worker's entry made where it can be and every other run event left out where it
        can be. None when ``goal`` is unsatisfiable or undecided within the effort limit."""
        guard = self._guard(goal)
        solver = self._solver()
        literals = self.enc.literals()
        if self._bounded_check(solver, guard, *literals) != z3.sat:
            return None
        model = solver.model()
        for size in range(min(self.spec.malicious_budget, len(self.enc.mal)), len(self._malicious(model)), -1):
            key = ("fullest", size)
            at_least_size = self._guards.get(key)
            if at_least_size is None:
                at_least_size = self._guards[key] = z3.Bool(f"goal!atleast-malicious-{size}")
                solver.add(z3.Implies(at_least_size, z3.AtLeast(*self.enc.mal, size)))
            if self._bounded_check(solver, guard, at_least_size, *literals) == z3.sat:
                model = solver.model()
                break
        model = self._canonical(guard, model)
        chosen = set(self._malicious(model))
        placement = [m if i in chosen else z3.Not(m) for i, m in enumerate(self.enc.mal)]
        occupancy = self.enc.occupancy
        entries = {v.get_id() for v in occupancy.entered_malicious.values()}
        choices = [(v, True) for v in occupancy.entered_malicious.values()]
        choices += [(v, False) for v in self._run_variables() if v.get_id() not in entries]
        return self._first_run(guard, placement, choices, model)

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

    def _least(
        self, guard: z3.BoolRef, extra: list[z3.BoolRef], terms: list[z3.BoolRef], name: str, lower_bound: int = 0
    ) -> z3.ModelRef:
        """The model (goal ``guard`` on) with the fewest true ``terms``: any model first, then
        bounds growing from ``lower_bound`` by doubling steps below its count, then binary search.
        A bound that cannot be refuted within the effort limit is skipped and minimality is
        marked unproven; after ``_give_ups`` such bounds the best model so far is returned."""
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
        gave_up = 0
        while low < high and gave_up < self._give_ups:
            probe = min(low + step - 1, high - 1) if step < high - low else (low + high) // 2
            bound = self._cardinality_guard(terms, probe, name)
            result = self._bounded_check(solver, guard, *extra, bound, *literals)
            if result == z3.unknown and terms is self.enc.mal:
                # Too hard in general: look for a smaller placement inside the best one found.
                inside = set(self._malicious(best))
                # One cardinality term (none of the others malicious) behind one guard, rather
                # than one negated assumption per worker: in the largest worlds that is 100,000s.
                outside = self._guard(at_most([m for i, m in enumerate(self.enc.mal) if i not in inside], 0))
                result = self._bounded_check(solver, guard, *extra, bound, outside, *literals)
                if result == z3.unsat:
                    result = z3.unknown  # refuted only within the subset: not a proof
            if result == z3.sat:
                best = solver.model()
                high = count(best)
                step = max(1, (high - low) // 2)
            else:
                if result == z3.unknown:
                    self.last_minimal = False
                    gave_up += 1
                low = probe + 1
                step *= 2
        if low < high:
            self.last_minimal = False
        return best

    def _malicious(self, model: z3.ModelRef) -> list[int]:
        """Indices of the workers malicious in ``model`` (unassigned counts as honest).

        Reading every worker's value takes a fraction of a second in the largest worlds, and a
        verdict asks about the same model several times: the answer for the last model is kept
        (with the model, so that its identity stays unique)."""
        last = self._last_malicious
        if last is not None and last[0] is model and last[1] is self.enc:
            return list(last[2])
        ctx, ref = model.ctx.ref(), model.model
        out = []
        for i, decl in enumerate(self._mal_decls()):
            value = z3core.Z3_model_get_const_interp(ctx, ref, decl)
            if value and z3core.Z3_get_bool_value(ctx, value) == 1:
                out.append(i)
        self._last_malicious = (model, self.enc, out)
        return list(out)

    def _mal_decls(self) -> list[object]:
        decls = self._decl_cache.get(id(self.enc))
        if decls is None:
            ctx = self.enc.mal[0].ctx_ref() if self.enc.mal else None
            decls = self._decl_cache[id(self.enc)] = [z3core.Z3_get_app_decl(ctx, m.ast) for m in self.enc.mal]
        return decls

    def _malicious_computing(self, model: z3.ModelRef) -> int:
        """Positions with a malicious occupant at some point (original or entered standby)."""
        occ = self.enc.occupancy
        if not occ.active:
            return sum(1 for i in self._malicious(model) if self.enc.world.workers[i].computing)
        true = true_constants(model)
        return sum(
            1
            for w in self.enc.world.computing
            if constant_name(self.enc.mal[w]) in true
            or (w in occ.entered_malicious and constant_name(occ.entered_malicious[w]) in true)
        )

    def vacuity(self) -> list[Assumption] | None:
        """None when an honest run is possible under the assumptions; otherwise the
        contradictory assumptions (a minimal core)."""
        if self._vacuity is None:
            with self._symbolic():
                nobody = at_most(self.enc.mal, 0) if self.enc.mal else True
                honest_run = conj([nobody] + [neg(c) for c in self.enc.crash])
                result, _ = self._check(honest_run)
                self._vacuity = False if result == z3.sat else (self._minimal_core(honest_run) or [])
        return None if self._vacuity is False else self._vacuity
