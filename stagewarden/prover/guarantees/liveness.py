"""The ``liveness`` guarantee: no run within budget stalls the job or leaves every replica
without a worker in some stage (docs/semantics.rst, ``liveness``)."""

from __future__ import annotations

import z3

from stagewarden.prover.fastz3 import Term, conj, disj, neg, to_z3
from stagewarden.prover.guarantees.common import GuaranteeChecks, _pb_ge
from stagewarden.prover.liveness_count import NotCountable, decide
from stagewarden.prover.liveness_runs import LivenessRun, LivenessRuns
from stagewarden.prover.liveness_search import PLACEMENT_LIMIT, TooLarge, search
from stagewarden.prover.liveness_trace import liveness_trace
from stagewarden.prover.session import SolverGaveUp
from stagewarden.prover.verdict import HOLDS as HOLDS_VERDICT
from stagewarden.prover.verdict import VIOLATED, GuaranteeResult
from stagewarden.spec import LivenessGuarantee

#: The most event variables the unrolled runs may have: beyond it (tens of thousands of variables
#: take minutes and gigabytes to build and solve) a world the state search cannot cover and the
#: closed-form bound cannot clear is answered unknown, never guessed.
UNROLL_LIMIT = 20_000
HOLDS = "holds: every stage of some replica keeps a worker and no step can be stalled forever"


class LivenessCheck(GuaranteeChecks):
    """The ``liveness`` guarantee, decided over every run of crashes, ejections, framings and
    standby entries: by searching the runs state by state where the world is small enough
    (:mod:`stagewarden.prover.liveness_search`), else by counting removals where no removal rule
    depends on the run's state (:mod:`stagewarden.prover.liveness_count`), else on the unrolled
    runs (:mod:`stagewarden.prover.liveness_runs`); a holding verdict is explained by an unsat
    core of the closed-form bound or of the unrolled goal."""

    def _liveness(self, g: LivenessGuarantee) -> GuaranteeResult:
        runs = LivenessRuns(self.enc, tick=self._remaining_ms)
        placements = self.limits.liveness_search_placements
        run: LivenessRun | None
        try:
            run = search(runs, PLACEMENT_LIMIT if placements is None else placements)
        except TooLarge:
            try:
                counted = decide(runs)
            except NotCountable as why:
                if self._sat(self._liveness_bound()) is None:  # met by every violating run: there is none
                    return self._holds(g, self._liveness_bound, HOLDS)
                run = self._unrolled(runs, str(why))
            else:
                if counted.run is None:
                    return self._counted_holds(g, runs, counted.why)
                run = counted.run
        if run is None:
            return self._liveness_holds(g, runs)
        trace = liveness_trace(self, runs, run, g)
        return GuaranteeResult(g.id, g.kind, VIOLATED, "violated: " + trace["#meta"]["description"], trace=trace)

    def _unrolled(self, runs: LivenessRuns, why: str) -> LivenessRun | None:
        """A violating run of the unrolled runs, or None where there is none; beyond
        ``UNROLL_LIMIT`` event variables the verdict is unknown."""
        if runs.size > UNROLL_LIMIT:
            raise SolverGaveUp(
                f"liveness: the runs of this world are too large to decide exactly ({runs.size} event "
                f"variables, more than {UNROLL_LIMIT}), the counts do not decide them ({why}) and the "
                "closed-form bound does not rule a violation out"
            )
        goal, stall, _ = runs.goal()
        model = self._sat(goal)
        if model is not None:
            model = self._minimal_model(goal, extra_objective=runs.event_terms())
        return None if model is None else runs.run(model, stall)

    def _liveness_holds(self, g: LivenessGuarantee, runs: LivenessRuns) -> GuaranteeResult:
        """Holds, explained by the closed-form bound's unsat core where the bound is
        unsatisfiable, else by the unrolled goal's."""
        if self._sat(self._liveness_bound()) is None:
            return self._holds(g, self._liveness_bound, HOLDS)
        return self._holds(g, lambda: LivenessRuns(self.enc, tick=self._remaining_ms).goal()[0], HOLDS)

    def _counted_holds(self, g: LivenessGuarantee, runs: LivenessRuns, why: str) -> GuaranteeResult:
        """Holds as the counts decide it (``why``), explained by the closed-form bound's unsat
        core where the bound is refuted within the effort limit, or by the unrolled goal's where
        the runs are small enough to unroll; else the note says that no core was found."""
        summary = f"{HOLDS} ({why})"
        bound = self._liveness_bound()
        if self._bounded_check(self._solver(), self._guard(bound), *self.enc.literals()) == z3.unsat:
            return self._holds(g, self._liveness_bound, summary)
        if runs.size <= UNROLL_LIMIT:
            return self._holds(g, lambda: LivenessRuns(self.enc, tick=self._remaining_ms).goal()[0], summary)
        result = GuaranteeResult(g.id, g.kind, HOLDS_VERDICT, summary)
        result.notes.append(
            "the verdict is proven by counting removals (docs/semantics.rst, liveness), but the assumptions it "
            "rests on are not listed: the closed-form bound was not refuted within the effort limit and the runs "
            f"are too large to unroll ({runs.size} event variables, more than {UNROLL_LIMIT})"
        )
        return result

    def _liveness_bound(self) -> Term:
        """A coarser violation goal in closed form, written to be met by every violating run (it
        counts a slot emptied by one removal, whatever its copies, lets every framing empty its
        replica and use up the standby pool, and counts checks whatever is vacant). It decides
        no verdict: where it is unsatisfiable, its unsat core explains a holding verdict far
        faster than the unrolled runs' would."""
        enc, world = self.enc, self.enc.world
        eject, skip = enc.response["eject"], enc.response["skip_stage"]
        withhold = enc.cap["withhold"]
        computing = world.computing
        # A malicious standby worker acts in a position once a crash has emptied it (without
        # eject, a crash is the only way in).
        entrant = conj([enc.crash[0], disj([enc.mal[w] for w in world.standby_workers])]) if enc.crash else False
        any_certain = disj([enc.catchable(world.primary(s, 0), True) for s in range(world.stages)])
        certain = disj([conj([enc.mal[w], enc.catchable(w, True)]) for w in computing] + [conj([entrant, any_certain])])
        withholder = conj([withhold, disj([enc.mal[w] for w in computing] + [entrant])])
        stall = conj([neg(eject), neg(skip), disj([withholder, certain])])
        removable = {w: conj([enc.mal[w], eject, disj([withhold, enc.catchable(w, False)])]) for w in computing}
        any_slot = disj([enc.catchable(world.primary(s, 0), False) for s in range(world.stages)])
        standby_removable = [conj([enc.mal[w], eject, disj([withhold, any_slot])]) for w in world.standby_workers]
        hit = {
            r: disj([removable[w] for s in range(world.stages) for w in world.slots[(s, r)]])
            for r in range(world.replicas)
        }
        flexible = [(to_z3(t), 1) for t in standby_removable if t is not False] + [(c, 1) for c in enc.crash]
        framed: dict[int, Term] = {}
        for r in range(world.replicas):
            framed[r] = conj([eject, disj([cond for *_, cond in self.framing_mechanisms(r)])])
        any_framed = disj(list(framed.values()))
        replicas = world.replicas
        # Framing empties its replicas and eats the standby pool; every other replica needs a removal.
        with_framing = conj(
            [any_framed, _pb_ge(flexible + [(to_z3(disj([framed[r], hit[r]])), 1) for r in range(replicas)], replicas)]
        )
        # Otherwise: removals >= R + K (sum a_r + F - K >= R), and flexible ones cover replicas without a_r.
        removals = [(to_z3(t), 1) for t in removable.values() if t is not False]
        without = conj(
            [
                neg(any_framed),
                _pb_ge(removals + flexible + [(b, -1) for b in enc.standby], replicas),
                _pb_ge(flexible + [(to_z3(hit[r]), 1) for r in range(replicas) if hit[r] is not False], replicas),
            ]
        )
        empty = disj([with_framing, without])
        # Implied by the budget (each removal term needs its own malicious worker); stated so that
        # the solver refutes too-large removal counts by cardinality instead of by search.
        empty = conj([empty, self._budget_bound(list(removable.values()) + standby_removable)])
        return disj([stall, empty])
