"""The ``overhead`` guarantee: the checks' cost by the cost model."""

from __future__ import annotations

from fractions import Fraction

from stagewarden.prover import trace as tr
from stagewarden.prover.figure_text import format_comparison
from stagewarden.prover.guarantees.common import GuaranteeChecks, _exact, _line_of
from stagewarden.prover.session import RECEIPT_COMPUTE, STATISTICAL_COMPUTE
from stagewarden.prover.verdict import HOLDS, VIOLATED, AssumptionRef, Figure, GuaranteeResult
from stagewarden.spec import (
    OverheadGuarantee,
    RedundantNeighbourCheck,
    ReplicateCheck,
    SpotCheck,
    StatisticalCheck,
)


class OverheadCheck(GuaranteeChecks):
    """The ``overhead`` guarantee: the checks' cost by the cost model."""

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
                items.append(
                    (f"redundant_neighbour: {stages - 1} of {stages} stages computed twice", path, share, share)
                )
            elif isinstance(check, SpotCheck):
                items.append(
                    (f"spot_check re-executes {check.rate} of the units", path, Fraction(str(check.rate)), Fraction(0))
                )
            elif isinstance(check, ReplicateCheck):
                items.append(
                    (
                        f"replicate: {check.factor} copies of every unit",
                        path,
                        Fraction(check.factor - 1),
                        Fraction(check.factor - 1),
                    )
                )
            elif isinstance(check, StatisticalCheck):
                items.append(("statistical detector on messages", path, STATISTICAL_COMPUTE, Fraction(0)))
        if spec.defense.receipts:
            items.append(
                ("receipts: hashing and signing every unit", ("defense", "receipts"), RECEIPT_COMPUTE, Fraction(0))
            )
        return items

    def _overhead(self, g: OverheadGuarantee) -> GuaranteeResult:
        items = self.overhead_costs()
        compute = sum((c for _, _, c, _ in items), Fraction(0))
        memory = sum((m for _, _, _, m in items), Fraction(0))
        limit_c = Fraction(str(g.max_compute))
        limit_m = Fraction(str(g.max_memory)) if g.max_memory is not None else None
        breakdown = [
            {"item": what, "location": _line_of(self.loaded, path), "compute": float(c), "memory": float(m)}
            for what, path, c, m in items
        ]
        over_c = compute > limit_c
        over_m = limit_m is not None and memory > limit_m
        figure = Figure(
            "extra compute", float(compute), float(limit_c), "<=", exact=_exact(compute), bound_exact=_exact(limit_c)
        )
        refs = [
            AssumptionRef(
                f"cost:{n}", f"{what}: +{float(c):.3g} compute, +{float(m):.3g} memory", _line_of(self.loaded, path)
            )
            for n, (what, path, c, m) in enumerate(items)
        ]
        if over_c or over_m:
            which = []
            if over_c:
                which.append(f"extra compute {format_comparison(compute, '>', limit_c, 'cost')}")
            if limit_m is not None and memory > limit_m:
                which.append(f"extra memory {format_comparison(memory, '>', limit_m, 'cost')}")
            trace = {
                "#meta": tr.meta(self, g, "; ".join(which)),
                "params": tr.params(self.spec),
                "malicious": [],
                "vars": [],
                "states": [],
                "costs": breakdown,
                "outcome": {
                    "compute": float(compute),
                    "memory": float(memory),
                    "max_compute": float(limit_c),
                    "max_memory": None if limit_m is None else float(limit_m),
                },
            }
            return GuaranteeResult(
                g.id, g.kind, VIOLATED, "violated: " + "; ".join(which), figure=figure, trace=trace, assumptions=refs
            )
        summary = f"holds: extra compute {format_comparison(compute, '<=', limit_c, 'cost')}"
        if limit_m is not None:
            summary += f", extra memory {format_comparison(memory, '<=', limit_m, 'cost')}"
        return GuaranteeResult(g.id, g.kind, HOLDS, summary, figure=figure, assumptions=refs)
