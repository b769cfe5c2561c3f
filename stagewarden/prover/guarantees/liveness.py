"""The ``liveness`` guarantee: removals and stalls within budget never stop training."""

from __future__ import annotations

from typing import Any

from stagewarden.prover import trace as tr
from stagewarden.prover.fastz3 import Term, conj, disj, neg, to_z3
from stagewarden.prover.guarantees.common import GuaranteeChecks, _pb_ge
from stagewarden.prover.verdict import VIOLATED, GuaranteeResult
from stagewarden.spec import (
    LivenessGuarantee,
)


class LivenessCheck(GuaranteeChecks):
    """The ``liveness`` guarantee: removals and stalls within budget never stop training."""

    # -- liveness ---------------------------------------------------------------------------

    def liveness_goal(self) -> tuple[Term, dict[str, Any]]:
        """The liveness violation formula and its named parts (for the trace)."""
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
        return disj([stall, empty]), {
            "stall": stall,
            "withholder": withholder,
            "certain": certain,
            "framed": framed,
            "removable": removable,
            "standby_removable": standby_removable,
            "empty": empty,
        }

    def _liveness(self, g: LivenessGuarantee) -> GuaranteeResult:
        goal, parts = self.liveness_goal()
        if self._sat(goal) is None:
            return self._holds(
                g,
                lambda: self.liveness_goal()[0],
                "holds: every stage of some replica keeps a worker and no step can be stalled forever",
            )
        # Without a stall or framing, every removal beyond the crashes needs its own malicious
        # worker, and R + K removals are needed: a lower bound that spares a hard refutation.
        lower = 0
        if self._sat(parts["stall"]) is None and self._sat(disj(list(parts["framed"].values()))) is None:
            lower = max(0, self.enc.world.replicas + self.spec.topology.standby - self.spec.adversary.faults.crash)
        model = self._minimal_model(goal, extra_objective=list(self.enc.crash), lower_bound=lower)
        trace = tr.liveness_trace(self, model, g, parts)
        return GuaranteeResult(g.id, g.kind, VIOLATED, "violated: " + trace["#meta"]["description"], trace=trace)
