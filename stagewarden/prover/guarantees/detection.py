"""The ``detection`` guarantee: the weakest detection level a tampered unit can have."""

from __future__ import annotations

from stagewarden.prover import trace as tr
from stagewarden.prover.figure_text import format_comparison, format_pair
from stagewarden.prover.guarantees.common import GuaranteeChecks, _exact
from stagewarden.prover.probability import format_probability
from stagewarden.prover.verdict import HOLDS, VIOLATED, Figure, GuaranteeResult
from stagewarden.spec import (
    TAMPERING_CAPABILITIES,
    DetectionGuarantee,
    probability_fraction,
)


class DetectionCheck(GuaranteeChecks):
    """The ``detection`` guarantee: the weakest detection level a tampered unit can have."""

    # -- detection ------------------------------------------------------------------------

    def _detection(self, g: DetectionGuarantee) -> GuaranteeResult:
        spec, enc = self.spec, self.enc
        of = list(g.of) if g.of is not None else [c for c in TAMPERING_CAPABILITIES if c in spec.adversary.capabilities]
        bound = probability_fraction(g.probability)
        sdc_possible = self._sat(enc.sdc) is not None
        if bound == 0:
            return GuaranteeResult(
                g.id, g.kind, HOLDS, "holds: a detection probability of at least 0 needs no proof", trivially=True
            )
        trivial = self._trivial(g, lambda: self.enc.sdc)
        if trivial is not None:
            return trivial
        targets = self._targets(of)
        goal = self._level_goal(targets, "lt", bound, sdc_possible)
        levels = self._levels(targets, sdc_possible)
        if self._sat(goal) is None:
            result = self._holds(
                g,
                lambda: self._level_goal(targets, "lt", bound, sdc_possible),
                "holds: every tampered unit in scope is detected with probability >= "
                f"{format_probability(float(bound))}",
            )
            above = [lv for lv in levels if lv >= bound]
            if above and self._sat(self._level_goal(targets, "le", above[-1], sdc_possible)) is not None:
                worst = self._min_level(above, lambda lv: self._level_goal(targets, "le", lv, sdc_possible))
                result.figure = Figure(
                    "detection probability",
                    float(worst),
                    float(bound),
                    ">=",
                    exact=_exact(worst),
                    bound_exact=_exact(bound),
                )
                shown_worst, shown_bound = format_pair(worst, bound)
                result.summary = (
                    "holds: every tampered unit in scope is detected with probability >= "
                    f"{shown_bound} (worst case {shown_worst})"
                )
            return result
        candidates = [lv for lv in levels if lv < bound]
        worst = (
            self._min_level(candidates, lambda lv: self._level_goal(targets, "le", lv, sdc_possible))
            if candidates
            else bound
        )
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
        summary = (
            f"violated: {what} a {tr.KIND_NAMES[kind]} unit of worker {who} is detected with probability "
            f"{format_comparison(d, '<', bound)}"
        )
        return GuaranteeResult(
            g.id,
            g.kind,
            VIOLATED,
            summary,
            trace=trace,
            figure=Figure(
                "detection probability", float(d), float(bound), ">=", exact=_exact(d), bound_exact=_exact(bound)
            ),
        )
