"""The ``bounded_damage`` guarantee: the best adversary's chance to leave more than K tampered
units in the model, over the tries the run allows.
"""

from __future__ import annotations

from fractions import Fraction

import z3

from stagewarden.prover import trace as tr
from stagewarden.prover.damage import Damage, Try, damage, units_per_kind
from stagewarden.prover.encoding import CAPABILITY_KINDS, KINDS
from stagewarden.prover.explain import assumption_ref
from stagewarden.prover.fastz3 import ModelView, Term, conj, disj, holds_in
from stagewarden.prover.figure_text import format_comparison
from stagewarden.prover.guarantees.common import GuaranteeChecks, _at_least, _exact
from stagewarden.prover.probability import Prob, skip_damage
from stagewarden.prover.session import CANONICAL_WORKERS
from stagewarden.prover.verdict import HOLDS, UNKNOWN, VIOLATED, Figure, GuaranteeResult
from stagewarden.spec import (
    TAMPERING_CAPABILITIES,
    BoundedDamageGuarantee,
    probability_fraction,
)


class BoundedDamageCheck(GuaranteeChecks):
    """The ``bounded_damage`` guarantee: the best adversary's chance to leave more than K tampered
    units in the model, over the tries the run allows."""

    def _tries(self, model: z3.ModelRef) -> list[tuple[Try, dict[str, object]]]:
        """The tries of the run summarised by ``model``: every position's malicious original
        occupant, and every malicious standby worker that entered a position, with its levels."""
        enc = self.enc
        units = units_per_kind(self.spec)
        m = self._malicious_computing(model)
        occ = enc.occupancy
        standby_names = iter(self._entered_standby_names(model))
        view = ModelView(model)
        malicious = set(self._malicious(model))
        out: list[tuple[Try, dict[str, object]]] = []
        for w in enc.world.computing:
            entered = occ.entered_malicious.get(w)
            entered_here = entered is not None and view.holds(entered)
            if w not in malicious and not entered_here:
                continue
            name = enc.world.workers[w].name
            holders = [name] if w in malicious else []
            if entered_here:
                holders.append(f"{next(standby_names, 'standby')} (entered {name})")
            kind_d: dict[str, Fraction] = {}
            kind_cap: dict[str, str] = {}
            for c, kind in self._worker_kinds(w):
                if not view.holds(enc.tamperable(w, c)):
                    continue
                d, _ = enc.effect_values(view, enc.effects(w, c, kind), m)
                if kind not in kind_d or d < kind_d[kind]:
                    kind_d[kind], kind_cap[kind] = d, c
            if not kind_d:
                continue
            for holder in holders:
                attempt = Try(holder, kind_d, units)
                row: dict[str, object] = {
                    "worker": holder,
                    "detection": float(attempt.weakest),
                    "units": attempt.weakest_units(),
                    "kinds": {
                        x: {"capability": kind_cap[x], "detection": float(d), "units": units[x]}
                        for x, d in kind_d.items()
                    },
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
            return self._holds(
                g,
                lambda: conj(
                    [self._unmasked(), disj([self._worker_level(w, "lt", Fraction(1)) for w in self._local_workers()])]
                ),
                "holds: every tampered unit is detected or masked, so none stays undetected",
                figure=Figure("Pr[more than K undetected]", 0.0, float(bound), "<=", exact="0"),
            )
        targets = [(w, c, kind) for w in computing for c, kind in self._worker_kinds(w)]
        levels = [lv for lv in self._levels(targets, False) if lv < 1]
        skip_mode = "rollback" not in spec.defense.response and "eject" not in spec.defense.response
        # Dominating counts: the most malicious workers that can reach each level (per kind in skip mode).
        groups: list[tuple[str | None, Fraction]] = [
            (kind, lv) for lv in levels for kind in (KINDS if skip_mode else (None,))
        ]
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
            n, model, exact = self._maximise(
                kind, lv, conj([unmasked, self._budget_bound(self._level_terms(kind, lv))])
            )
            counts[(kind, lv)] = n
            unproven = unproven or not exact
            if model is not None:
                best_models.append(model)
        bound_prob = self._dominating_damage(counts, k)
        verdict_cmp = bound_prob.compare(bound)
        if verdict_cmp is not None and verdict_cmp <= 0:
            # Holds: no placement exceeds the per-level maxima; explain why they are bounded.
            def exceed() -> Term:
                return conj(
                    [
                        self._unmasked(),
                        disj(
                            [
                                conj(
                                    [
                                        self._budget_bound(self._level_terms(kind, lv)),
                                        _at_least(self._level_terms(kind, lv), n + 1),
                                    ]
                                )
                                for (kind, lv), n in counts.items()
                            ]
                        ),
                    ]
                )

            result = self._holds(
                g,
                exceed,
                f"holds: the best adversary leaves more than {k} undetected units with probability "
                f"at most {format_comparison(bound_prob, '<=', bound)}",
                figure=_damage_figure(bound_prob, bound),
            )
            result.assumptions += [
                assumption_ref(enc, a)
                for a in enc.assumptions
                if a.key in self._response_keys() and a.key not in {x.key for x in result.assumptions}
            ]
            return result
        # Find the worst concrete placement: the joint dominating one, else the best found.
        # A placement found while counting that already attains every count is a joint one;
        # and when a count is only an unrefuted upper bound (its search ran out of effort), the
        # joint query asks for at least that many workers, which the count's own search could
        # not find within the same effort: it is skipped, and the placements found decide.
        if len(enc.mal) <= CANONICAL_WORKERS and not unproven:
            # Small worlds: candidates that do not depend on the solver's history (the maxima
            # are exact, so these goals are), the dominating placement's first.
            reached = [_at_least(self._level_terms(kd, lv), n) for (kd, lv), n in counts.items() if n]
            goals = [conj([unmasked, *reached]), *(conj([unmasked, r]) for r in reached)]
            best_models = [m for m in map(self._fullest_model, goals) if m is not None]
        candidates = list(best_models)
        attained = any(
            all(holds_in(cand, _at_least(self._level_terms(kind, lv), n)) for (kind, lv), n in counts.items() if n > 0)
            for cand in best_models
        )
        if not attained and not unproven:
            joint = conj(
                [unmasked] + [_at_least(self._level_terms(kind, lv), n) for (kind, lv), n in counts.items() if n > 0]
            )
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
        if (
            not found.tight
            and found.lower is not None
            and found.prob.compare(bound) == 1
            and found.lower.compare(bound) != 1
        ):
            return GuaranteeResult(
                g.id,
                g.kind,
                UNKNOWN,
                f"unknown: the bound {format_comparison(prob, 'exceeds', bound)} but the strategy it "
                f"assumes may not exist; the best strategy shown to exist reaches {found.lower}",
                figure=Figure("Pr[more than K undetected]", prob.value, float(bound), "<="),
                reason="probability bound not tight",
            )
        at_least = ""
        if not found.tight and found.lower is not None:
            # Violated on a strategy that exists: report what it attains, not the bound.
            prob, at_least = found.lower, "at least "
        cmp = prob.compare(bound)
        figure = _damage_figure(prob, bound)
        if cmp is None or cmp <= 0:
            return GuaranteeResult(
                g.id,
                g.kind,
                UNKNOWN,
                f"unknown: the dominating bound {format_comparison(bound_prob, 'exceeds', bound)} "
                f"but the worst placement found reaches only {prob}",
                figure=figure,
                reason="probability bound not tight",
            )
        trace = tr.damage_trace(self, model, g, rows, prob, bound)
        summary = (
            f"violated: the adversary leaves more than {k} undetected units with probability "
            f"{at_least}{format_comparison(prob, '>', bound)}"
        )
        return GuaranteeResult(g.id, g.kind, VIOLATED, summary, figure=figure, trace=trace)

    def _response_keys(self) -> set[str]:
        """The response assumptions a damage proof rests on: rollback and eject where present
        (together they give one attempt per try), else every response listed."""
        response = self.spec.defense.response
        keys = {f"response:{r}" for r in ("rollback", "eject") if r in response}
        return keys or {f"response:{r}" for r in response}

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


def _dominating_vector(counts: dict[Fraction, int]) -> list[Fraction]:
    """Levels of the dominating placement: ``n_l`` workers at levels <= l for each level l."""
    vector: list[Fraction] = []
    for lv in sorted(counts):
        while len(vector) < counts[lv]:
            vector.append(lv)
    return vector


def _damage_figure(prob: Prob, bound: Fraction) -> Figure:
    """The figure of a bounded_damage verdict: the damage probability against its bound."""
    return Figure(
        "Pr[more than K undetected]",
        prob.value,
        float(bound),
        "<=",
        exact=_exact(prob.exact),
        bound_exact=_exact(bound),
    )
