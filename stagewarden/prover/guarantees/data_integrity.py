"""The ``data_integrity`` guarantee: every batch that reaches the model is proven."""

from __future__ import annotations

from fractions import Fraction

from stagewarden.prover import trace as tr
from stagewarden.prover.guarantees.common import GuaranteeChecks
from stagewarden.prover.verdict import VIOLATED, GuaranteeResult
from stagewarden.spec import (
    DataIntegrityGuarantee,
)


class DataIntegrityCheck(GuaranteeChecks):
    """The ``data_integrity`` guarantee: every batch that reaches the model is proven."""

    # -- data integrity ----------------------------------------------------------------------

    def _data_integrity(self, g: DataIntegrityGuarantee) -> GuaranteeResult:
        enc = self.enc
        targets = self._targets(["poison_data"])
        goal = self._level_goal(targets, "lt", Fraction(1), False)
        if self._sat(goal) is None:
            trivial = self._trivial(g)
            if trivial is not None:
                return trivial
            return self._holds(
                g,
                lambda: self._level_goal(targets, "lt", Fraction(1), False),
                "holds: every batch that reaches the model is proven against the committed data",
            )
        model = self._minimal_model(goal)
        w, c, kind, effects, _ = self._describe_unit(model, targets, "lt", Fraction(1), False)
        d, rows = enc.effect_values(model, effects, self._malicious_computing(model))
        trace = tr.detection_trace(self, model, g, w, c, kind, rows, d, Fraction(1), False)
        return GuaranteeResult(
            g.id,
            g.kind,
            VIOLATED,
            f"violated: stage-0 worker {enc.world.workers[w].name} can feed a poisoned batch undetected",
            trace=trace,
        )
