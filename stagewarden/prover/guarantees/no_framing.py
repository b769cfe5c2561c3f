"""The ``no_framing`` guarantee: no honest worker can be blamed."""

from __future__ import annotations

from stagewarden.prover import trace as tr
from stagewarden.prover.fastz3 import disj, holds_in
from stagewarden.prover.guarantees.common import GuaranteeChecks
from stagewarden.prover.verdict import VIOLATED, GuaranteeResult
from stagewarden.spec import (
    NoFramingGuarantee,
)


class NoFramingCheck(GuaranteeChecks):
    """The ``no_framing`` guarantee: no honest worker can be blamed."""

    # -- no framing ---------------------------------------------------------------------------

    def _no_framing(self, g: NoFramingGuarantee) -> GuaranteeResult:
        scope = 0 if self._replicas_alike else None
        mechanisms = self.framing_mechanisms(scope)
        goal = disj([cond for *_, cond in mechanisms])
        if self._sat(goal) is None:
            trivial = self._trivial(g)
            if trivial is not None:
                return trivial
            return self._holds(
                g,
                lambda: disj([cond for *_, cond in self.framing_mechanisms(scope)]),
                "holds: no honest worker can be blamed",
            )
        model = self._minimal_model(goal)
        mechanism, victim, attackers = next((name, v, a) for name, v, a, cond in mechanisms if holds_in(model, cond))
        trace = tr.framing_trace(self, model, g, mechanism, victim, attackers)
        name = self.enc.world.workers[victim].name
        return GuaranteeResult(
            g.id, g.kind, VIOLATED, f"violated: honest worker {name} can be blamed ({mechanism})", trace=trace
        )
